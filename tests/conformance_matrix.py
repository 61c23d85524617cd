"""The configuration matrix: the reference server under several valid configurations.

``make matrix`` runs it (``pytest tests/conformance_matrix.py``): every configuration is
served and graded by the quick profile, two at a time, and must be graded conforming with no
failed MUST; the table of outcomes is printed, and written as JSON to the file
``UNISOCK_MATRIX_WRITE`` names (``docs/_data/conformance-matrix.json`` for the docs).

Each configuration is a settings file in ``tests/matrix/`` and the suite options that declare
it (an issuer, an Origin, a token command). A configuration is copied to a scratch folder
with its short timers scaled by ``UNISOCK_TIME_SCALE`` (the suite must answer pings in time on
a loaded machine) and, for asymmetric keys, a fresh key pair beside it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from suite_runs import ROOT, SCALE, Served, SuiteRun, run_suite, write_key_pair

__all__ = ["CONFIGS", "ISSUER", "ORIGIN", "STRICT", "Config", "prepare", "run_config"]

MATRIX_DIR = ROOT / "tests" / "matrix"
SECRET = "matrix-secret-0123456789abcdef0123456789"
ISSUER = "https://id.matrix.test"
AUDIENCE = "unisock-matrix"
ORIGIN = "https://app.matrix.test"
SUITE_TIMEOUT_S = 900 * SCALE
# Timers shorter than this are scaled: the suite's own answers (pong, hello) must fit them.
_SCALED_BELOW_MS = 5000
_TIMERS = ("heartbeat_interval_ms", "heartbeat_timeout_ms", "auth_timeout_ms")
_ISSUED = ("--issuer", ISSUER, "--audience", AUDIENCE)


@dataclass(frozen=True)
class Config:
    """One valid configuration: its settings file and the options that declare it."""

    name: str
    options: tuple[str, ...] = ()
    key: str | None = None
    """``RS256``/``ES256``: tokens come from the shipped token command with a fresh key."""

    @property
    def path(self) -> Path:
        return MATRIX_DIR / f"{self.name}.toml"


CONFIGS: tuple[Config, ...] = (
    Config("small-limits"),
    Config("short-timers"),
    Config("long-timers"),
    Config("issuer-audience", _ISSUED),
    Config("rs256", _ISSUED, key="RS256"),
    Config("origin-allowlist", ("--origin", ORIGIN)),
    Config("any-origin", ("--any-origin",)),
    Config("idle-discard"),
    Config("strict", (*_ISSUED, "--origin", ORIGIN)),
)
STRICT = next(config for config in CONFIGS if config.name == "strict")


def _scaled(text: str) -> str:
    def scale(match: re.Match[str]) -> str:
        value = int(match.group(2))
        if value >= _SCALED_BELOW_MS:
            return match.group(0)
        return f"{match.group(1)}{round(value * SCALE)}"

    return re.sub(rf"^((?:{'|'.join(_TIMERS)}) = )(\d+)", scale, text, flags=re.M)


def prepare(config: Config, folder: Path) -> tuple[Path, tuple[str, ...]]:
    """The settings file to serve (in ``folder``) and the token options for the suite."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = folder / config.path.name
    settings.write_text(_scaled(config.path.read_text("utf-8")), "utf-8")
    if config.key is None:
        return settings, ("--secret", SECRET)
    private, _ = write_key_pair(folder, config.key)
    command = (
        f"{sys.executable} -m unisock_conformance.token_command --key {private} --alg {config.key}"
    )
    return settings, ("--token-command", command)


def run_config(config: Config, folder: Path, seed: int = 1) -> SuiteRun:
    """Serve ``config`` and run the quick profile against it with every hook."""
    settings, tokens = prepare(config, folder)
    served = Served(settings, SECRET, folder / "server.log")
    try:
        return run_suite(
            served.url,
            folder / "report",
            "--seed",
            str(seed),
            "--profile",
            "quick",
            "--coalescing-channel",
            "coal.test",
            "--example-event-types",
            "--reset-command",
            f"kill -HUP {served.pid}",
            "--drain-command",
            f"kill -TERM {served.pid}",
            *tokens,
            *config.options,
            timeout=SUITE_TIMEOUT_S,
        )
    finally:
        served.stop()


PARALLEL = int(os.environ.get("UNISOCK_MATRIX_PARALLEL", "1"))
"""Configurations served and graded at once. One by default: two at a time on a two-core
machine running at half its usual speed failed timing checks of other configurations in each
of two runs (a server ping 0.27 s late, concurrent hellos, a stalled reader read back); the
suite's tolerances assume that the deployment it grades is not starved of CPU."""
BY_NAME = {config.name: config for config in CONFIGS}
# Timing checks a quick run may skip for time at the spec's example values: those that wait
# on history.max_age_ms (300 s there) or dedup_window_ms (120 s), never the heartbeat, auth
# deadline or expiry warning checks.
LONG_WAITS = ("history_max_age", "idle_channel_state", "discarded_channel_state", "dedup_window")


@pytest.fixture(scope="module")
def runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[SuiteRun]]]:
    """Start every selected configuration, two at a time, before the first assertion."""
    wanted = [
        item.callspec.params["name"]
        for item in request.session.items
        if getattr(item, "module", None) is request.module and hasattr(item, "callspec")
    ] or list(BY_NAME)
    folder = tmp_path_factory.mktemp("matrix")
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        yield {
            name: pool.submit(run_config, BY_NAME[name], folder / name)
            for name in dict.fromkeys(wanted)
        }


def _row(config: Config, run: SuiteRun) -> dict[str, Any]:
    musts = run.must_counts()
    summary = run.report.get("summary", {})
    return {
        "configuration": config.name,
        "options": [o for o in config.options if o.startswith("--")]
        + (["--token-command"] if config.key else ["--secret"]),
        "verdict": summary.get("verdict"),
        "must": {
            outcome: musts.get(outcome, 0)
            for outcome in ("pass", "fail", "not-run", "unimplemented", "not-applicable")
        },
        "checks": {k: v for k, v in summary.get("tests", {}).items() if k != "total"},
        "skipped_for_time": sorted(
            name for name, why in run.not_run_checks().items() if "skipped for time" in why
        ),
        "seconds": round(run.seconds, 1),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BY_NAME))
def test_reference_server_is_graded_conforming_under_the_configuration(
    name: str, runs: dict[str, Future[SuiteRun]]
) -> None:
    run = runs[name].result()
    failed = [entry["id"] for entry in run.report.get("summary", {}).get("failed_musts", [])]
    assert run.exit_code == 0 and failed == [], f"{name}: failed MUSTs {failed}\n{run.output}"
    assert str(run.report["summary"]["verdict"]).startswith("conforming"), run.output
    assert run.must_counts().get("pass", 0) > 150, run.must_counts()
    if name == "long-timers":
        skipped = {n for n, why in run.not_run_checks().items() if "skipped for time" in why}
        short = {n for n in skipped if not any(wait in n for wait in LONG_WAITS)}
        assert short == set(), f"skipped at the spec's example timers: {short}"
    if name == "idle-discard":
        outcomes = run.outcomes()
        assert outcomes["UNI-SEC-14"] == "pass" and outcomes["UNI-DEL-35"] == "pass"
        assert outcomes["UNI-PUB-16"] == "unimplemented"  # typed events not announced


@pytest.mark.slow
def test_token_command_runs_as_many_musts_as_a_secret(runs: dict[str, Future[SuiteRun]]) -> None:
    """The same settings verified with HS256 and a secret, or with RS256 and a key only the
    token command holds: the same MUSTs run but two HS256 byte-level rules."""
    secret, command = runs["issuer-audience"].result(), runs["rs256"].result()
    not_run = {i for i, o in command.outcomes().items() if o == "not-run"}
    not_run_with_secret = {i for i, o in secret.outcomes().items() if o == "not-run"}
    # Two HS256 rules need the shared secret byte by byte (the keying of the secret, tokens
    # whatever their typ and kid, whose header a token command chooses): the residual.
    assert not_run - not_run_with_secret == {"UNI-AUTH-27", "UNI-AUTH-29"}
    assert not_run_with_secret <= not_run
    residual = {
        name.split("[")[0] for name in set(command.not_run_checks()) - set(secret.not_run_checks())
    }
    # Payloads that are no JSON object, or no UTF-8, cannot be asked of a token command; the
    # requirements they belong to are still run by the other cases of the same checks.
    assert residual == {
        "test_server_rejects_token_whose_claims_violate_the_schema",
        "test_server_rejects_a_signed_token_outside_the_json_limits",
        "test_server_keys_hs256_with_the_utf8_octets_of_the_secret",
        "test_server_accepts_a_verified_token_whatever_its_typ_and_kid",
    }, residual


@pytest.mark.slow
def test_matrix_table(
    runs: dict[str, Future[SuiteRun]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Print the matrix (and write it where ``UNISOCK_MATRIX_WRITE`` says)."""
    rows = [_row(BY_NAME[name], future.result()) for name, future in runs.items()]
    lines = [
        f"Configuration matrix (quick profile, UNISOCK_TIME_SCALE={SCALE:g}): MUST outcomes",
        f"{'configuration':<18}{'pass':>6}{'not-run':>9}{'unimpl.':>9}{'fail':>6}{'seconds':>9}",
    ]
    for row in rows:
        must = row["must"]
        lines.append(
            f"{row['configuration']:<18}{must['pass']:>6}{must['not-run']:>9}"
            f"{must['unimplemented']:>9}{must['fail']:>6}{row['seconds']:>9}"
        )
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    target = os.environ.get("UNISOCK_MATRIX_WRITE")
    if target:
        data = {"profile": "quick", "time_scale": SCALE, "configurations": rows}
        Path(target).write_text(json.dumps(data, indent=2) + "\n", "utf-8")
    assert all(row["must"]["fail"] == 0 for row in rows), lines
