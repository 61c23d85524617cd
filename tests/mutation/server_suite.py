"""``python -m tests.mutation.server_suite [--time-scale X] [--deployments D,...] [-k UNIT]...``:
the quick server suite against reference servers started from whatever ``unisock`` is first
on the path.

The mutation runner puts a mutated copy of the package first on ``PYTHONPATH``; this
launcher starts ``unisock serve`` from it and runs the quick profile with a fixed seed
against each deployment in turn, stopping at the first that fails; the exit status is that
run's (0: every MUST that ran passed in every deployment). The deployments:

- ``memory``: one server on the in-memory broker with the conformance configuration
  (``conformance/reference-server.toml``), its drain and reset commands and the coalescing
  channel, exactly as the project's own conformance run does;
- ``redis``: two nodes on a private ``redis-server`` with every operator hook: drain of the
  first node, its SIGHUP as reset (the operator's reset of a Redis deployment;
  ``tests/test_redis_conformance.py`` resets with FLUSHALL, the loss of Redis's data),
  SIGSTOP/SIGCONT of Redis as outage and recovery, and the second node's URL. Only a broker
  that can fail, yield or lose events reaches the server's paths for those, and only
  several nodes reach the cross-node rules;
- ``settings``: one server with the settings no other deployment has: the matrix
  configuration ``idle-discard`` (``tests/matrix/idle-discard.toml``: a short history age,
  ``discard_idle_channels``) plus a required issuer and audience. Only the checks that need
  those settings run there (``SETTINGS_CHECKS``: discarded idle state in ``test_security``,
  ``iss`` and ``aud`` in ``test_auth``): everywhere else they are skipped for time or not
  applicable, and every other check already ran against the first two deployments.

A campaign runs niced beside other work, so the server's heartbeat is slower than in that
configuration (``HEARTBEAT``): a starved test client must not be cut as a dead peer, which
would kill a mutant for nothing. The suite reads the timers from ``welcome`` either way.

A unit is a check module (``test_resume``); the run stops at the first failing check. The
status is non-zero when the verdict is anything but plain ``conforming``: a MUST that
fails, and also a recommendation graded ``non-strict`` (``NON_STRICT``), since the unmutated
server meets every SHOULD the suite checks and a report that names one the mutant breaks
has seen the change. A run stopped early on a check that neither fails nor is graded so is
repeated in full, and its status is the full run's.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DEPLOYMENTS", "UNITS", "keyword", "main"]

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "conformance" / "reference-server.toml"
SETTINGS_CONFIG = ROOT / "tests" / "matrix" / "idle-discard.toml"
ISSUER, AUDIENCE = "https://id.campaign.test", "unisock-campaign"
SETTINGS_CHECKS = {
    "test_security": "idle_channel_state or discarded_channel_state",
    "test_auth": "issuer or audience",
}
"""By unit, the checks that only the ``settings`` deployment runs: idle channel state
discarded within a quick run (UNI-SEC-14, UNI-DEL-35), a required ``iss`` and ``aud``
(UNI-AUTH-12, UNI-AUTH-13)."""
CHECKS = ROOT / "conformance" / "unisock_conformance" / "checks"
SECRET = "mutation-campaign-secret-0123456789abcdef"
SEED = "1"
DEPLOYMENTS = ("memory", "redis", "settings")
NON_STRICT = 4
"""Exit status of a run whose verdict is ``conforming (non-strict)``."""
STARTUP_S = 30.0
STOP_S = 20.0
HEARTBEAT = {"heartbeat_interval_ms": 1000, "heartbeat_timeout_ms": 2000}
REDIS_HEARTBEAT = {"heartbeat_interval_ms": 600, "heartbeat_timeout_ms": 1000}
"""Nodes on Redis declare a peer dead sooner than the Redis broker gives up on a request (2 s):
only then does a request left waiting through an outage outlast a peer's liveness, so that
the outage checks see a server that cuts its own waiting connections as dead (UNI-ERR-16)."""

UNITS: tuple[str, ...] = tuple(sorted(p.stem for p in CHECKS.glob("test_*.py")))
"""The server suite's check modules."""


def keyword(units: Sequence[str]) -> str:
    """A ``-k`` expression selecting exactly the checks of these modules.

    ``-k`` matches substrings of names, so a module whose name contains another's
    (``test_coalescing`` in ``test_coalescing_limits``) is excluded explicitly.
    """
    parts = []
    for unit in units:
        longer = [other for other in UNITS if other != unit and unit in other]
        parts.append(f"({unit} and not ({' or '.join(longer)}))" if longer else unit)
    return " or ".join(parts)


def _ready_url(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    line = proc.stdout.readline()
    return line.rsplit(" on ", 1)[1].strip() if " on ws://" in line else ""


def _suite(
    url: str,
    hooks: Sequence[str],
    scale: float,
    units: Sequence[str] | None,
    first: bool,
    checks: str | None = None,
) -> int:
    """One in-process run of the server suite; exit status (with ``first``: stop early)."""
    import pytest

    from unisock_conformance.runner import build_parser, pytest_args

    with tempfile.TemporaryDirectory(prefix="unisock-mutation-report-") as reports:
        argv = ["server", url, "--secret", SECRET, "--profile", "quick"]
        argv += ["--seed", SEED, "--time-scale", str(scale), "--report-dir", reports]
        argv += [*hooks, "--coalescing-channel", "coal.test", "--example-event-types"]
        if checks is not None:
            argv += ["-k", checks]
        elif units is not None:
            argv += ["-k", keyword(units) if units else "<no unit>"]
        args = build_parser().parse_args(argv)
        status = int(pytest.main([*pytest_args(args), *(["-x"] if first else [])]))
        report = Path(reports) / "report.json"
        tests = json.loads(report.read_text("utf-8")).get("tests", []) if report.exists() else []
    graded = {str(t.get("outcome")) for t in tests}
    if status == 0 and "non-strict" in graded:
        print("a recommendation is not met: graded conforming (non-strict)", file=sys.stderr)
        return NON_STRICT
    if first and status == 0 and graded - {"pass", "not-run", "not-applicable"}:
        return -1  # stopped early on a check that does not fail the run: run in full
    return status


def _config(folder: Path, heartbeat: dict[str, int] = HEARTBEAT, source: Path = CONFIG) -> Path:
    """A server configuration (the conformance one by default) with the campaign's heartbeat."""
    lines = []
    for line in source.read_text("utf-8").splitlines():
        name = line.split("=", 1)[0].strip()
        lines.append(f"{name} = {heartbeat[name]}" if name in heartbeat else line)
    path = folder / "server.toml"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def _run(deployment: str, scale: float, units: Sequence[str] | None, first: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="unisock-mutation-server-") as folder:
        if deployment == "redis":
            config = _config(Path(folder), REDIS_HEARTBEAT)
            return _nodes_and_judge(config, Path(folder), scale, units, first)
        if deployment == "settings":
            wanted = [c for u, c in SETTINGS_CHECKS.items() if units is None or u in units]
            if not wanted:
                return 0  # none of its checks is among the units asked for
            config = _config(Path(folder), source=SETTINGS_CONFIG)
            with config.open("a", encoding="utf-8") as extra:
                extra.write(f'\n[auth]\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\n')
            checks = " or ".join(f"({c})" for c in wanted)
            issued = ["--issuer", ISSUER, "--audience", AUDIENCE]
            return _serve_and_judge(config, scale, units, first, checks, issued)
        return _serve_and_judge(_config(Path(folder)), scale, units, first)


def _nodes_and_judge(
    config: Path, folder: Path, scale: float, units: Sequence[str] | None, first: bool
) -> int:
    """Two nodes on a private Redis, with every operator hook the suite takes."""
    sys.path.insert(0, str(ROOT / "tests"))
    from redis_support import NodeProcess, private_redis

    with private_redis() as redis_server:
        args = ["--config", str(config), "--broker", redis_server.url, "--log-level", "CRITICAL"]
        nodes: list[NodeProcess] = []
        try:
            for number in (1, 2):
                nodes.append(NodeProcess(*args, secret=SECRET, log=folder / f"node{number}.log"))
            hooks = ["--node-url", nodes[1].url, "--drain-command", f"kill -TERM {nodes[0].pid}"]
            hooks += ["--reset-command", f"kill -HUP {nodes[0].pid}"]
            hooks += ["--outage-command", f"kill -STOP {redis_server.pid}"]
            hooks += ["--recover-command", f"kill -CONT {redis_server.pid}"]
            return _suite(nodes[0].url, hooks, scale, units, first)
        except RuntimeError as failure:  # a node that did not start
            print(failure, file=sys.stderr)
            return 3
        finally:
            redis_server.resume()
            for node in nodes:
                node.stop()  # SIGINT: a clean exit writes the node's coverage data


def _serve_and_judge(
    config: Path,
    scale: float,
    units: Sequence[str] | None,
    first: bool,
    checks: str | None = None,
    extra_hooks: Sequence[str] = (),
) -> int:
    command = [sys.executable, "-c", "from unisock.cli import main; main()", "serve"]
    command += ["--port", "0", "--secret", SECRET, "--config", str(config)]
    command += ["--log-level", "CRITICAL"]
    proc = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        url = _ready_url(proc, STARTUP_S * scale)
        if not url:
            print("the server did not start", file=sys.stderr)
            return 3
        hooks = ["--drain-command", f"kill -TERM {proc.pid}"]
        hooks += ["--reset-command", f"kill -HUP {proc.pid}", *extra_hooks]
        return _suite(url, hooks, scale, units, first, checks)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # a clean exit writes the server's coverage data
            try:
                proc.wait(timeout=STOP_S * scale)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation.server_suite")
    parser.add_argument("--time-scale", type=float, default=2.0)
    parser.add_argument("-k", dest="units", action="append", choices=UNITS)
    parser.add_argument("--all", action="store_true", help="run the whole suite")
    parser.add_argument(
        "--deployments",
        default=",".join(DEPLOYMENTS),
        help=f"comma-separated, judged in this order (default {','.join(DEPLOYMENTS)})",
    )
    args = parser.parse_args(argv)
    units = None if args.all else (args.units or [])
    deployments = [name for name in args.deployments.split(",") if name]
    unknown = sorted(set(deployments) - set(DEPLOYMENTS))
    if unknown or not deployments:
        parser.error(f"deployments are among {', '.join(DEPLOYMENTS)}, got {unknown or 'none'}")
    os.environ.setdefault("UNISOCK_TIME_SCALE", str(args.time_scale))
    for deployment in deployments:
        status = _run(deployment, args.time_scale, units, first=True)
        if status == -1:
            status = _run(deployment, args.time_scale, units, first=False)
        if status != 0:
            print(f"failed against the {deployment} deployment", file=sys.stderr)
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
