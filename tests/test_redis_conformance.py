"""The server conformance suite against two reference nodes sharing one Redis.

Both nodes run as ``unisock serve --broker redis://...`` with the short timers of
``conformance/reference-server.toml``, on a private ``redis-server``; the suite spreads its
connections over both (``--node-url``) and gets every operator hook: draining the first node,
losing the history (FLUSHALL), and a broker outage (SIGSTOP then SIGCONT of Redis).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from redis_support import SCALE, NodeProcess, private_redis

SECRET = "cluster-conformance-secret-0123456789abcdef"
CONFIG = Path(__file__).resolve().parent.parent / "conformance" / "reference-server.toml"
SUITE_TIMEOUT_S = 900 * SCALE


def _redis_cli() -> str:
    found = shutil.which("redis-cli")
    if found is None:
        pytest.skip("no redis-cli on PATH")
    return found


@pytest.mark.slow
def test_two_nodes_on_one_redis_pass_the_server_suite_with_connections_on_both(
    tmp_path: Path,
) -> None:
    cli = _redis_cli()
    with private_redis() as redis_server:
        broker = ["--config", str(CONFIG), "--broker", redis_server.url]
        nodes = [NodeProcess(*broker, secret=SECRET, log=tmp_path / f"node{i}.log") for i in (1, 2)]
        try:
            report_dir = tmp_path / "report"
            env = {k: v for k, v in os.environ.items() if k != "UNISOCK_SECRET"}
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "unisock_conformance.runner",
                    "server",
                    nodes[0].url,
                    "--node-url",
                    nodes[1].url,
                    "--secret",
                    SECRET,
                    "--profile",
                    "quick",
                    "--seed",
                    "20251",
                    "--report-dir",
                    str(report_dir),
                    "--drain-command",
                    f"kill -TERM {nodes[0].pid}",
                    "--reset-command",
                    f"{cli} -p {redis_server.port} FLUSHALL",
                    "--outage-command",
                    f"kill -STOP {redis_server.pid}",
                    "--recover-command",
                    f"kill -CONT {redis_server.pid}",
                    "--coalescing-channel",
                    "coal.test",
                    "--example-event-types",
                ],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=SUITE_TIMEOUT_S,
                check=False,
            )
        finally:
            redis_server.resume()
            for node in nodes:
                node.stop()
        logs = "".join((tmp_path / f"node{i}.log").read_text()[-3000:] for i in (1, 2))
        assert result.returncode == 0, result.stdout[-6000:] + logs
    report: dict[str, Any] = json.loads((report_dir / "report.json").read_text("utf-8"))
    assert report["summary"]["verdict"].startswith("conforming"), report["summary"]
    # Only waits beyond the quick profile's budget (history.max_age_ms is 300 s here) may
    # leave a MUST unrun; every hook a cluster check needs is given.
    not_run = {
        entry["id"]
        for entry in report["requirements"]
        if entry["level"] == "MUST" and entry["outcome"] == "not-run"
    }
    for_time = {
        ident
        for test in report["tests"]
        if test["outcome"] == "not-run" and "skipped for time" in test["message"]
        for ident in test["requirements"]
    }
    assert not_run <= for_time, sorted(not_run - for_time)
    outcomes = {entry["id"]: entry["outcome"] for entry in report["requirements"]}
    for ident in (
        "UNI-SESS-14",
        "UNI-DEL-34",
        "UNI-PUB-22",
        "UNI-ERR-11",
        "UNI-ERR-16",
        "UNI-ERR-17",
        "UNI-DEL-8",
        "UNI-DEL-19",
        "UNI-CLOSE-21",
    ):
        assert outcomes[ident] == "pass", (ident, outcomes[ident])
    checks = {t["id"].rsplit("::", 1)[-1]: t["outcome"] for t in report["tests"]}
    not_run = sorted(name for name, outcome in checks.items() if outcome == "not-run")
    assert not any("cluster" in name or "outage" in name for name in not_run), not_run
