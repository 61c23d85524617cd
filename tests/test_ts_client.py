"""The client conformance suite grades the TypeScript client, under Node.js and in Chromium.

The adapters are started exactly as the README says (``npm --prefix reference/js run
--silent adapter`` and ``adapter:browser``). Broken variants of the TypeScript client are
built by substituting source at build time (``tests/broken_clients/ts_variants.mjs``); the
suite must fail each one on its requirement. Variants run a few at a time, since each run
mostly waits on timers.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from unisock_conformance.client_suite.runner import ClientRun, run_suite

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "reference" / "js"
VARIANTS = ROOT / "tests" / "broken_clients" / "ts_variants.mjs"
SCALE = float(os.environ.get("UNISOCK_TIME_SCALE", "1.0"))
NODE_ADAPTER = ["npm", "--prefix", str(JS), "run", "--silent", "adapter"]
BROWSER_ADAPTER = ["npm", "--prefix", str(JS), "run", "--silent", "adapter:browser"]
# Every connection attempt of a page crosses Chromium's renderer, browser and network
# processes, which on this shared 2-core machine adds latency beyond the suite's upper
# tolerance of 100 ms + 10 %; spec 16.6's time scale is made for that. Lower bounds and the
# distribution thresholds do not scale.
BROWSER_SCALE = max(SCALE, 2.0)
PARALLEL_VARIANTS = 3

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (JS / "node_modules").is_dir(),
    reason="Node.js and the reference/js packages are needed (make setup)",
)


@pytest.fixture(scope="module")
def built() -> Path:
    """dist/ from the current sources (a build takes about a second)."""
    subprocess.run(["node", "tools/build.mjs"], cwd=JS, check=True)
    return JS / "dist"


def _browser_available() -> bool:
    return Path(os.environ.get("UNISOCK_CHROMIUM", "/usr/bin/chromium")).exists()


def _problems(result: ClientRun) -> dict[str, str]:
    return {node: r.message for node, r in result.results.items() if r.status != "passed"}


def _variants() -> list[dict[str, str]]:
    script = (
        f"import({json.dumps(VARIANTS.as_uri())}).then(m => console.log(JSON.stringify("
        "m.VARIANTS.map(({patches, ...rest}) => rest))))"
    )
    out = subprocess.run(
        ["node", "--input-type=module", "-e", script], check=True, capture_output=True, text=True
    )
    variants: list[dict[str, str]] = json.loads(out.stdout)
    return variants


@pytest.mark.slow
def test_ts_client_under_node_passes_the_whole_client_suite(built: Path) -> None:
    result = asyncio.run(run_suite(NODE_ADAPTER, time_scale=SCALE))
    assert _problems(result) == {}
    assert result.exit_status == 0
    assert result.adapter_info["client"]["name"] == "unisock-js"
    assert result.grades is not None
    assert result.grades.requirements["UNI-CLOSE-13"].outcome == "pass"


@pytest.mark.slow
def test_ts_client_in_chromium_passes_the_whole_client_suite(built: Path) -> None:
    if not _browser_available():
        if os.environ.get("UNISOCK_REQUIRE_BROWSER"):
            pytest.fail("Chromium is required (make browser)")
        pytest.skip("Chromium is not installed")
    result = asyncio.run(run_suite(BROWSER_ADAPTER, time_scale=BROWSER_SCALE))
    assert _problems(result) == {}
    assert result.exit_status == 0
    assert result.adapter_info["adapter"]["name"] == "unisock-js-chromium-adapter"
    assert result.adapter_info["client"]["name"] == "unisock-js"


@pytest.mark.slow
def test_client_suite_fails_each_broken_ts_variant_on_its_requirement(built: Path) -> None:
    variants = _variants()
    assert len(variants) >= 8
    # Inside reference/js, so that the adapters find the packages they import.
    out = built / "variants"
    for variant in variants:
        subprocess.run(
            ["node", "tools/build.mjs", "--variant", variant["name"], "--out", str(out)],
            cwd=JS,
            check=True,
            capture_output=True,
        )
        (out / "adapter-node.js").replace(out / f"{variant['name']}.js")

    async def grade(variant: dict[str, str], gate: asyncio.Semaphore) -> tuple[str, str, int]:
        async with gate:
            command = ["node", str(out / f"{variant['name']}.js")]
            result = await run_suite(
                command, keywords=(variant["keyword"],), time_scale=SCALE, strict=True
            )
        assert result.grades is not None
        smoke = [r for node, r in result.results.items() if "/smoke.py::" in node]
        smoke_ok = bool(smoke) and all(r.status == "passed" for r in smoke)
        outcome = result.grades.requirements[variant["requirement"]].outcome
        return outcome, "smoke ok" if smoke_ok else "smoke failed", result.exit_status

    async def grade_all() -> list[tuple[str, str, int]]:
        gate = asyncio.Semaphore(PARALLEL_VARIANTS)
        return list(await asyncio.gather(*(grade(v, gate) for v in variants)))

    outcomes = dict(zip((v["name"] for v in variants), asyncio.run(grade_all()), strict=True))
    expected = {v["name"]: (v["grade"], "smoke ok", 1) for v in variants}
    assert outcomes == expected
