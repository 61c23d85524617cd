"""The server conformance suite's framework: runner, plugin, grading, reports, connections.

The suite runs in a subprocess against the reference server started in this process on a
port the OS chooses; the grading and the connection helper are tested directly.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import re
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from websockets.sync.server import Server, ServerConnection, serve

from unisock.memory_broker import MemoryBroker
from unisock.messages import encode_event_frame
from unisock.server import UnisockServer
from unisock.settings import load_settings
from unisock_conformance.deployment import (
    Deployment,
    Names,
    default_time_scale,
    hypothesis_profile,
)
from unisock_conformance.flags import for_pytest
from unisock_conformance.grading import (
    TestResult,
    combine,
    exit_status,
    grade_requirements,
    grade_test,
    verdict,
    worst,
)
from unisock_conformance.markers import scan_tests
from unisock_conformance.pacing import Pacer
from unisock_conformance.paths import SPEC_DIR
from unisock_conformance.progress import Progress, summary_lines
from unisock_conformance.report import (
    SCHEMA_PATH,
    RunInfo,
    failure_file,
    requirement_link,
    sanitize_text,
    sanitize_url,
    write_reports,
)
from unisock_conformance.spectext import load_registry
from unisock_conformance.timing import require_time
from unisock_conformance.wire import FrameTimeout, ProtocolViolation, open_conn

SECRET = "conformance-framework-test-secret-0123456789"
SCALE = default_time_scale()
RUN_TIMEOUT_S = 120 * SCALE
QUICK_SUITE_TIMEOUT_S = 900 * SCALE
REFERENCE_CONFIG = Path(__file__).resolve().parent.parent / "conformance" / "reference-server.toml"
# CI runs the quick profile (about 30 s). The full profile (300 stateful programs) passes on
# its own but is not yet reliable inside a whole-suite run against these short server timers.
REFERENCE_PROFILE = "quick"
REGISTRY = load_registry(SPEC_DIR)
ENTRIES = {entry["id"]: entry for entry in REGISTRY["requirements"]}


class ReferenceServer:
    """The reference server on its own asyncio loop in a background thread."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: UnisockServer | None = None
        self.url = ""

    async def _start(self) -> tuple[str, int]:
        self.server = UnisockServer(load_settings(None, secret=self.secret))
        return await self.server.start("127.0.0.1", 0)

    def start(self) -> None:
        self.thread.start()
        host, port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(
            timeout=30 * SCALE
        )
        self.url = f"ws://{host}:{port}/"

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(
                timeout=30 * SCALE
            )
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30 * SCALE)
        self.loop.close()


@pytest.fixture(scope="module")
def reference_server() -> Iterator[ReferenceServer]:
    server = ReferenceServer(SECRET)
    server.start()
    yield server
    server.stop()


def _run(
    argv: list[str], cwd: Path, timeout: float = RUN_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "UNISOCK_SECRET"}
    return subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _runner(url: str, report_dir: Path, *extra: str, secret: str = SECRET) -> list[str]:
    return [
        "-m",
        "unisock_conformance.runner",
        "server",
        url,
        "--secret",
        secret,
        "--report-dir",
        str(report_dir),
        "--junit",
        str(report_dir / "junit.xml"),
        "--seed",
        "12345",
        *extra,
    ]


def _report(report_dir: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((report_dir / "report.json").read_text("utf-8"))
    schema = json.loads(SCHEMA_PATH.read_text("utf-8"))
    Draft202012Validator.check_schema(schema)
    errors = sorted(str(e.message) for e in Draft202012Validator(schema).iter_errors(report))
    assert not errors, errors
    return report


def _outcomes(report: dict[str, Any]) -> dict[str, str]:
    return {entry["id"]: entry["outcome"] for entry in report["requirements"]}


def _assert_complete_and_secret_free(report_dir: Path, report: dict[str, Any]) -> None:
    assert [entry["id"] for entry in report["requirements"]] == list(ENTRIES)
    for entry in report["requirements"]:
        if entry["role"] == "client":
            assert entry["outcome"] == "not-applicable", entry
        elif ENTRIES[entry["id"]].get("verification") == "inspection":
            assert entry["outcome"] == "inspection", entry
        elif not entry["tests"]:
            assert entry["outcome"] == "untested", entry
    for path in report_dir.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text("utf-8"), f"{path.name} leaks the secret"


# -- the suite against the reference server ---------------------------------------------------


def test_runner_exits_0_and_writes_every_report_when_the_smoke_check_passes(
    reference_server: ReferenceServer, tmp_path: Path
) -> None:
    report_dir = tmp_path / "report"
    result = _run(_runner(reference_server.url, report_dir, "-k", "smoke"), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Requirements by level:" in result.stdout and "Verdict: conforming" in result.stdout
    report = _report(report_dir)
    _assert_complete_and_secret_free(report_dir, report)
    assert report["summary"]["exit_status"] == 0
    assert report["target"]["url"] == reference_server.url
    assert report["run"]["seed"] == 12345 and report["run"]["profile"] == "quick"
    smoke = [t for t in report["tests"] if "test_smoke.py" in t["id"]]
    assert [t["outcome"] for t in smoke] == ["pass"]
    others = [t for t in report["tests"] if "test_smoke.py" not in t["id"]]
    assert all(t["outcome"] == "not-run" for t in others)
    suite = ET.parse(report_dir / "junit.xml").getroot()
    assert suite.tag == "testsuite" and suite.get("failures") == "0"
    cases = suite.findall("testcase")
    assert len(cases) == len(report["tests"])
    html = (report_dir / "report.html").read_text("utf-8")
    assert 'href="spec/02-lifecycle.md"' in html
    assert "<script" not in html and "<link" not in html and "http://" not in html
    assert "| [UNI-LC-9](spec/02-lifecycle.md) | MUST |" in (report_dir / "report.md").read_text(
        "utf-8"
    )


def test_plugin_grades_musts_without_checks_as_untested(
    reference_server: ReferenceServer, tmp_path: Path
) -> None:
    report_dir = tmp_path / "report"
    argv = [
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-c",
        os.devnull,
        "--rootdir",
        str(tmp_path),
        "--pyargs",
        "unisock_conformance.checks.test_smoke",
        f"--unisock-url={reference_server.url}",
        f"--unisock-secret={SECRET}",
        f"--unisock-report-dir={report_dir}",
        "--unisock-spec-link-base=../spec/{section}/",
    ]
    result = _run(argv, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Unisock conformance" in result.stdout
    report = _report(report_dir)
    _assert_complete_and_secret_free(report_dir, report)
    outcomes = _outcomes(report)
    assert outcomes["UNI-LC-9"] == "pass"
    untested = [
        i for i, e in ENTRIES.items() if e["role"] != "client" and outcomes[i] == "untested"
    ]
    assert any(ENTRIES[i]["level"] == "MUST" for i in untested)
    assert report["summary"]["requirements"]["untested"] == len(untested)
    assert 'href="../spec/02-lifecycle/"' in (report_dir / "report.html").read_text("utf-8")


def test_runner_reports_a_refused_token_as_a_setup_error_in_one_line(
    reference_server: ReferenceServer, tmp_path: Path
) -> None:
    report_dir = tmp_path / "report"
    wrong = "a-different-secret-than-the-server-has-0123456789"
    result = _run(_runner(reference_server.url, report_dir, "-k", "smoke", secret=wrong), tmp_path)
    assert result.returncode == 12, result.stdout + result.stderr
    errors = [line for line in result.stdout.splitlines() if line.startswith("Setup error:")]
    assert errors == [
        f"Setup error: {reference_server.url} refused the suite's token (close 4100): "
        "check --secret, --issuer and --audience"
    ]
    assert "Verdict: setup error (exit status 12)" in result.stdout
    assert "FAIL" not in result.stdout
    report = _report(report_dir)
    assert report["summary"]["verdict"] == "setup error"
    assert report["summary"]["setup_error"]["kind"] == "token-refused"
    assert report["summary"]["failed_musts"] == []
    assert wrong not in (report_dir / "report.json").read_text("utf-8")
    suite = ET.parse(report_dir / "junit.xml").getroot()
    assert suite.get("failures") == "0"


@pytest.fixture
def draining_server() -> Iterator[str]:
    """A WebSocket endpoint that refuses every handshake with 503, as a draining node does."""

    def refuse(connection: ServerConnection, request: Any) -> Any:
        return connection.respond(503, "draining\n")

    with serve(lambda connection: None, "127.0.0.1", 0, process_request=refuse) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        host, port = server.socket.getsockname()[:2]
        yield f"ws://{host}:{port}/"
        server.shutdown()
        thread.join(timeout=30 * SCALE)


def _closed_port_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"ws://127.0.0.1:{port}/"


@pytest.mark.parametrize(
    ("case", "status", "line"),
    [
        ("unreachable", 10, r"cannot reach ws://127\.0\.0\.1:\d+/: .*[Cc]onnect"),
        ("origin", 11, r"refused the WebSocket handshake \(HTTP 403\); is 'https://evil\.test' "),
        ("draining", 13, r"is draining \(HTTP 503\): run the suite against a node that serves"),
        ("token-command", 14, r"token command: the token command exited with status 1 "),
    ],
)
def test_preflight_names_each_setup_error_in_one_line_with_its_own_status(
    reference_server: ReferenceServer,
    draining_server: str,
    tmp_path: Path,
    case: str,
    status: int,
    line: str,
) -> None:
    url = {"unreachable": _closed_port_url(), "draining": draining_server}.get(
        case, reference_server.url
    )
    argv = ["-m", "unisock_conformance.runner", "server", url, "--report-dir", str(tmp_path)]
    if case == "token-command":
        argv += ["--token-command", f"{sys.executable} -c 'import sys; sys.exit(1)'"]
    else:
        argv += ["--secret", SECRET]
    if case == "origin":
        argv += ["--origin", "https://evil.test"]
    result = _run([*argv, "-k", "smoke"], tmp_path)
    assert result.returncode == status, result.stdout + result.stderr
    errors = [text for text in result.stdout.splitlines() if text.startswith("Setup error:")]
    assert len(errors) == 1 and re.search(line, errors[0]), result.stdout
    assert _report(tmp_path)["summary"]["setup_error"]["message"] in errors[0]


def _plugin_argv(url: str, tmp_path: Path, report_dir: Path, *modules: str) -> list[str]:
    return [
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-c",
        os.devnull,
        "--rootdir",
        str(tmp_path),
        "-v",
        "--pyargs",
        *(f"unisock_conformance.checks.{module}" for module in modules),
        f"--unisock-url={url}",
        f"--unisock-secret={SECRET}",
        f"--unisock-report-dir={report_dir}",
        "--unisock-seed=7",
    ]


def test_plugin_runs_drain_checks_last_and_grades_them_not_run_without_the_hook(
    reference_server: ReferenceServer, tmp_path: Path
) -> None:
    report_dir = tmp_path / "report"
    argv = _plugin_argv(
        reference_server.url, tmp_path, report_dir, "test_drain", "test_cluster", "test_smoke"
    )
    result = _run(argv, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    ran = [
        "drain" in line.split("::")[-1].split()[0]
        for line in result.stdout.splitlines()
        if "::test_" in line and (" PASSED" in line or " SKIPPED" in line)
    ]
    assert ran == [False] * 6 + [True] * 6, result.stdout  # cluster, smoke, then drain
    report = _report(report_dir)
    tests = {t["id"].rsplit("::", 1)[-1]: t for t in report["tests"]}
    drain = [t for name, t in tests.items() if "drain" in name]
    assert len(drain) == 6
    # Under plain pytest, messages name the plugin's options.
    assert all(
        t["outcome"] == "not-run" and "needs --unisock-drain-command" in t["message"] for t in drain
    )
    cluster = tests["test_server_supersedes_a_session_opened_again_on_another_node"]
    assert cluster["outcome"] == "not-run" and "needs --unisock-node-url" in cluster["message"]
    outcomes = _outcomes(report)
    assert outcomes["UNI-CLOSE-21"] == outcomes["UNI-SESS-14"] == "not-run"
    assert outcomes["UNI-CONF-5"] == "inspection"
    # A server run grades server and broadcaster requirements; client ones are not applicable.
    inspected = [
        e
        for e in ENTRIES.values()
        if e.get("verification") == "inspection" and e["role"] != "client"
    ]
    assert report["summary"]["by_level"]["MUST"]["inspection"] == len(inspected) > 0
    assert "| inspection |" in (report_dir / "report.md").read_text("utf-8")


def test_plugin_judges_every_server_close_after_all_other_checks_drain_included(
    reference_server: ReferenceServer, tmp_path: Path
) -> None:
    """The UNI-CLOSE-9 observer runs after the drain checks and judges the closes that the
    checks before it met; with no close met, it is not run rather than passed."""
    report_dir = tmp_path / "report"
    argv = _plugin_argv(reference_server.url, tmp_path, report_dir, "test_drain", "test_close")
    result = _run(argv, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    ran = [
        line.split("::")[-1].split()[0]
        for line in result.stdout.splitlines()
        if "::test_" in line and (" PASSED" in line or " SKIPPED" in line)
    ]
    observer = "test_every_close_the_server_started_in_the_run_follows_the_grammar"
    assert ran[-1] == observer and "drain" in ran[-2], ran
    tests = {t["id"].rsplit("::", 1)[-1]: t for t in _report(report_dir)["tests"]}
    assert tests[observer]["outcome"] == "pass", tests[observer]
    alone = tmp_path / "alone"
    alone.mkdir()
    argv = _plugin_argv(reference_server.url, alone, alone / "report", "test_close")
    argv += ["-k", "every_close"]
    result = _run(argv, tmp_path)
    tests = {t["id"].rsplit("::", 1)[-1]: t for t in _report(alone / "report")["tests"]}
    assert tests[observer]["outcome"] == "not-run", tests[observer]
    assert "no check of this run saw the server close" in tests[observer]["message"]


class TwoNodes:
    """Two reference server nodes on one event loop, sharing one in-memory broker unless
    ``shared`` is false (then they are two separate deployments)."""

    def __init__(self, *, shared: bool = True) -> None:
        self.shared = shared
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.servers: list[UnisockServer] = []
        self.urls: list[str] = []

    async def _start(self) -> list[tuple[str, int]]:
        settings = load_settings(None, secret=SECRET)
        broker = MemoryBroker(encode_frame=encode_event_frame)
        self.servers = [UnisockServer(settings, broker if self.shared else None) for _ in range(2)]
        return [await server.start("127.0.0.1", 0) for server in self.servers]

    def start(self) -> None:
        self.thread.start()
        bound = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30 * SCALE)
        self.urls = [f"ws://{host}:{port}/" for host, port in bound]

    def stop(self) -> None:
        for server in self.servers:
            asyncio.run_coroutine_threadsafe(server.close(), self.loop).result(30 * SCALE)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30 * SCALE)
        self.loop.close()


@pytest.mark.parametrize("shared", [True, False], ids=["one-broker", "two-brokers"])
def test_cluster_checks_pass_only_when_the_nodes_share_a_broker(
    tmp_path: Path, shared: bool
) -> None:
    nodes = TwoNodes(shared=shared)
    nodes.start()
    try:
        report_dir = tmp_path / "report"
        argv = _plugin_argv(nodes.urls[0], tmp_path, report_dir, "test_cluster")
        result = _run([*argv, f"--unisock-node-url={nodes.urls[1]}"], tmp_path)
    finally:
        nodes.stop()
    assert result.returncode == (0 if shared else 1), result.stdout + result.stderr
    report = _report(report_dir)
    expected = "pass" if shared else "fail"
    assert [t["outcome"] for t in report["tests"]] == [expected] * 5
    outcomes = _outcomes(report)
    assert outcomes["UNI-SESS-14"] == outcomes["UNI-DEL-34"] == expected


def test_deployment_checks_every_node_url_and_reports_only_which_hooks_were_given() -> None:
    with pytest.raises(ValueError, match="ws://"):
        Deployment("ws://a/", node_urls=("http://b/",))
    deployment = Deployment(
        "ws://a/",
        node_urls=("ws://b/",),
        drain_command="kill -TERM 1",
        reset_command="kill -HUP 1",
        coalescing_channel="c.x",
    )
    public = deployment.public()
    assert public["nodes"] == 2 and public["drain_command"] is True
    assert (
        public["reset_command"] is True and Deployment("ws://a/").public()["reset_command"] is False
    )
    assert "kill" not in json.dumps(public) and public["coalescing_channel"] == "c.x"
    with pytest.raises(RuntimeError, match="status 3"):
        Deployment("ws://a/", drain_command="exit 3").run_drain_command()
    with pytest.raises(RuntimeError, match="--drain-command"):
        Deployment("ws://a/").run_drain_command()
    with pytest.raises(RuntimeError, match="reset command exited with status 4"):
        Deployment("ws://a/", reset_command="exit 4").run_reset_command()
    with pytest.raises(RuntimeError, match="--reset-command"):
        Deployment("ws://a/").run_reset_command()


def test_runner_refuses_to_run_without_a_way_to_mint_tokens(tmp_path: Path) -> None:
    result = _run(["-m", "unisock_conformance.runner", "server", "ws://127.0.0.1:9/"], tmp_path)
    assert result.returncode == 2
    assert "--secret" in result.stderr


class ServedProcess:
    """``unisock serve`` as a subprocess on a port the OS chooses, as an operator runs it."""

    def __init__(self, config: Path, secret: str, log: Path) -> None:
        env = {**os.environ, "UNISOCK_SECRET": secret}
        argv = ["-m", "unisock.cli", "serve", "--port", "0", "--config", str(config)]
        self.log = log.open("w", encoding="utf-8")  # a file: a full pipe would stall the server
        self.process = subprocess.Popen(
            [sys.executable, *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline()  # "unisock X serving unisock.v1 on ws://H:P/"
        match = re.search(r"serving unisock\.v1 on (ws://\S+)", first)
        assert match is not None, f"unexpected first line from unisock serve: {first!r}"
        self.url = match.group(1)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30 * SCALE)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.log.close()


def _broadcaster_suite_ids() -> set[str]:
    """Requirement IDs a ``--role broadcaster`` client-suite run grades (not the server run)."""
    from unisock_conformance.client_suite.framework import CHECKS
    from unisock_conformance.client_suite.runner import TIERS_FOR_ROLE

    tiers = TIERS_FOR_ROLE["broadcaster"]
    return {ident for spec in CHECKS if spec.tier in tiers for ident in spec.requirements}


@pytest.mark.slow
def test_suite_passes_against_the_reference_server_with_conformance_timers(
    tmp_path: Path,
) -> None:
    """The run documented in conformance/reference-server.toml: every MUST that the suite
    can check passes, drain included; what is not run says why."""
    served = ServedProcess(REFERENCE_CONFIG, SECRET, tmp_path / "server.log")
    try:
        report_dir = tmp_path / "report"
        result = _run(
            _runner(
                served.url,
                report_dir,
                "--profile",
                REFERENCE_PROFILE,
                "--drain-command",
                f"kill -TERM {served.process.pid}",
                "--reset-command",
                f"kill -HUP {served.process.pid}",
                "--coalescing-channel",
                "coal.test",
                "--example-event-types",
            ),
            tmp_path,
            timeout=QUICK_SUITE_TIMEOUT_S,
        )
        # The drain checks ran last and stopped the server through its SIGTERM drain.
        assert served.wait(timeout=30 * SCALE) == 0
    finally:
        served.stop()
    report = _report(report_dir)
    _assert_complete_and_secret_free(report_dir, report)
    ET.parse(report_dir / "junit.xml")
    assert (report_dir / "report.html").is_file()
    failed = [entry["id"] for entry in report["summary"]["failed_musts"]]
    assert result.returncode == 0, f"failed MUSTs: {failed}\n{result.stdout[-4000:]}"
    by_client_suite = _broadcaster_suite_ids()
    unexpected = {
        entry["id"]: entry["outcome"]
        for entry in report["requirements"]
        if entry["level"] == "MUST"
        and entry["outcome"]
        not in ("pass", "not-run", "unimplemented", "inspection", "not-applicable")
        and not (entry["role"] == "client" and entry["outcome"] == "not-applicable")
        and not (entry["role"] == "broadcaster" and entry["id"] in by_client_suite)
    }
    assert unexpected == {}
    outcomes = _outcomes(report)
    for ident in (
        "UNI-LC-17",
        "UNI-LC-18",
        "UNI-LC-20",
        "UNI-CLOSE-19",
        "UNI-CLOSE-20",
        "UNI-CLOSE-21",
    ):
        assert outcomes[ident] == "pass", ident
    assert outcomes["UNI-LIM-7"] == "pass" and outcomes["UNI-CONF-1"] == "pass"
    # The observer of every server close judged what the other checks met, drain included.
    observer = next(e for e in report["tests"] if "every_close_the_server_started" in e["id"])
    assert observer["outcome"] == "pass", observer["message"]
    for ident in ("UNI-DEL-8", "UNI-DEL-19", "UNI-DEL-23", "UNI-DEL-25", "UNI-DEL-26"):
        assert outcomes[ident] == "pass", ident
    # One node only: the cross-node rules cannot be run, and say so; nor can an outage.
    assert outcomes["UNI-SESS-14"] == outcomes["UNI-DEL-34"] == "not-run"
    assert outcomes["UNI-ERR-16"] == outcomes["UNI-ERR-17"] == "not-run"
    reasons = {t["id"].rsplit("::", 1)[-1]: t["message"] for t in report["tests"]}
    assert "needs --node-url" in reasons["test_server_counts_the_per_user_cap_over_every_node"]


def test_plugin_does_nothing_without_unisock_url(tmp_path: Path) -> None:
    (tmp_path / "test_inert.py").write_text(
        "from hypothesis import settings\n"
        "def test_inert(request):\n"
        "    assert request.config.pluginmanager.get_plugin('unisock-suite') is None\n"
        "    assert not settings.get_current_profile_name().startswith('unisock-')\n",
        "utf-8",
    )
    result = _run(
        [
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-c",
            os.devnull,
            "--rootdir",
            str(tmp_path),
            "-q",
            "--strict-markers",
            str(tmp_path / "test_inert.py"),
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- grading ----------------------------------------------------------------------------------


def _result(status: str, *ids: str, message: str = "") -> TestResult:
    return TestResult(f"test_x.py::test_{len(ids)}_{status}", ids, status, message)  # type: ignore[arg-type]


def test_failed_check_of_a_must_is_graded_fail() -> None:
    assert grade_test(_result("failed", "UNI-X-1"), ["MUST"]) == "fail"
    assert grade_test(_result("failed", "UNI-X-1", "UNI-X-2"), ["SHOULD", "MUST"]) == "fail"


def test_failed_check_of_only_shoulds_is_graded_non_strict() -> None:
    assert grade_test(_result("failed", "UNI-X-1"), ["SHOULD"]) == "non-strict"
    assert grade_test(_result("failed", "UNI-X-1", "UNI-X-2"), ["SHOULD", "MAY"]) == "non-strict"


def test_skipped_checks_are_graded_unimplemented_or_not_run_by_reason() -> None:
    absent = _result("skipped", "UNI-X-1", message="unimplemented: no coalescing")
    assert grade_test(absent, ["MUST"]) == "unimplemented"
    assert grade_test(_result("skipped", "UNI-X-1", message="not-run: needs"), ["MUST"]) == (
        "not-run"
    )
    assert grade_test(_result("deselected", "UNI-X-1"), ["MUST"]) == "not-run"
    assert grade_test(_result("passed", "UNI-X-1"), ["MUST"]) == "pass"


def test_requirement_passes_when_one_check_ran_and_none_failed() -> None:
    assert combine(["pass", "not-run"]) == "pass"
    assert combine(["not-run", "unimplemented"]) == "unimplemented"
    assert combine(["not-applicable", "not-run"]) == "not-run"
    assert combine(["not-applicable", "pass"]) == "pass"
    assert combine(["not-applicable"]) == "not-applicable"
    assert combine(["pass", "non-strict", "not-run"]) == "non-strict"
    assert combine(["non-strict", "fail"]) == "fail"


def test_worst_outcome_orders_fail_over_non_strict_over_unimplemented_over_not_run() -> None:
    assert worst([]) == "pass"
    assert worst(["pass", "not-run"]) == "not-run"
    assert worst(["not-run", "unimplemented", "pass"]) == "unimplemented"
    assert worst(["unimplemented", "non-strict"]) == "non-strict"
    assert worst(["pass", "fail", "non-strict"]) == "fail"


REGISTRY_SAMPLE: dict[str, Any] = {
    "spec_version": "1.0.0",
    "requirements": [
        {"id": "UNI-A-1", "level": "MUST", "role": "server", "section": "01-a", "summary": ""},
        {"id": "UNI-A-2", "level": "SHOULD", "role": "server", "section": "01-a", "summary": ""},
        {"id": "UNI-A-3", "level": "MUST", "role": "client", "section": "01-a", "summary": ""},
        {"id": "UNI-A-4", "level": "MUST", "role": "broadcaster", "section": "01-a", "summary": ""},
        {
            "id": "UNI-A-5",
            "level": "MUST",
            "role": "server",
            "section": "01-a",
            "summary": "",
            "feature": "coalescing",
        },
    ],
}


def test_requirement_takes_the_worst_outcome_over_its_checks() -> None:
    results = [
        TestResult("t.py::ok", ("UNI-A-1", "UNI-A-2"), "passed"),
        TestResult("t.py::bad", ("UNI-A-1",), "failed", "boom"),
        TestResult("t.py::feature", ("UNI-A-5",), "passed"),
    ]
    grades = grade_requirements(REGISTRY_SAMPLE, results, features=frozenset())
    outcome = {ident: grade.outcome for ident, grade in grades.requirements.items()}
    assert outcome == {
        "UNI-A-1": "fail",
        "UNI-A-2": "pass",
        "UNI-A-3": "not-applicable",
        "UNI-A-4": "untested",
        "UNI-A-5": "unimplemented",
    }
    assert grades.requirements["UNI-A-1"].tests == ("t.py::ok", "t.py::bad")
    assert grades.tests == {"t.py::ok": "pass", "t.py::bad": "fail", "t.py::feature": "pass"}
    assert exit_status(grades) == 1 and verdict(grades) == "non-conforming"


def test_failed_should_gives_exit_status_0_and_a_non_strict_verdict() -> None:
    results = [
        TestResult("t.py::ok", ("UNI-A-1", "UNI-A-4", "UNI-A-5"), "passed"),
        TestResult("t.py::should", ("UNI-A-2",), "failed"),
    ]
    grades = grade_requirements(REGISTRY_SAMPLE, results, features=frozenset({"coalescing"}))
    assert grades.requirements["UNI-A-2"].outcome == "non-strict"
    assert grades.requirements["UNI-A-5"].outcome == "pass"
    assert exit_status(grades) == 0 and verdict(grades) == "conforming (non-strict)"


def test_feature_requirements_are_unimplemented_without_the_announced_feature() -> None:
    """Section 14.3: grading reads the registry's tags; guards of absent features still bind."""
    ids = ("UNI-PUB-16", "UNI-PUB-19", "UNI-PUB-20", "UNI-DEL-25", "UNI-DEL-26", "UNI-DEL-27")
    results = [TestResult("t.py::all", ids, "passed")]
    registry = load_registry(SPEC_DIR)
    bare = grade_requirements(registry, results, features=frozenset())
    outcome = {ident: bare.requirements[ident].outcome for ident in ids}
    assert outcome == {
        "UNI-PUB-16": "unimplemented",
        "UNI-PUB-19": "unimplemented",
        "UNI-PUB-20": "pass",
        "UNI-DEL-25": "pass",
        "UNI-DEL-26": "unimplemented",
        "UNI-DEL-27": "pass",
    }
    full = grade_requirements(registry, results, features=frozenset({"typed_events", "coalescing"}))
    assert {full.requirements[ident].outcome for ident in ids} == {"pass"}


def test_not_run_must_does_not_fail_the_run() -> None:
    results = [TestResult("t.py::secret", ("UNI-A-1",), "skipped", "not-run: needs a secret")]
    grades = grade_requirements(REGISTRY_SAMPLE, results, features=None)
    assert grades.requirements["UNI-A-1"].outcome == "not-run"
    assert exit_status(grades) == 0


def test_verdict_counts_the_musts_not_run_and_require_complete_fails_on_them() -> None:
    hook = "not-run: needs --drain-command"
    results = [
        TestResult("t.py::drain", ("UNI-A-1", "UNI-A-4"), "skipped", hook),
        TestResult("t.py::should", ("UNI-A-2",), "passed"),
    ]
    grades = grade_requirements(REGISTRY_SAMPLE, results, features=frozenset({"coalescing"}))
    assert verdict(grades) == "conforming, 2 MUSTs not run"
    assert exit_status(grades) == 0 and exit_status(grades, require_complete=True) == 6
    results.append(TestResult("t.py::other", ("UNI-A-1", "UNI-A-4"), "passed"))
    grades = grade_requirements(REGISTRY_SAMPLE, results, features=frozenset({"coalescing"}))
    assert verdict(grades) == "conforming"  # one check ran: the skipped one does not count
    assert exit_status(grades, require_complete=True) == 0
    results[1] = TestResult("t.py::should", ("UNI-A-2",), "failed", "E   nope")
    results[2] = TestResult("t.py::other", ("UNI-A-4",), "passed")
    grades = grade_requirements(REGISTRY_SAMPLE, results, features=frozenset({"coalescing"}))
    assert verdict(grades) == "conforming (non-strict), 1 MUST not run"


def test_summary_lists_musts_not_run_with_the_option_that_runs_them() -> None:
    deployment = Deployment("ws://h/", secret=SECRET, seed=3)
    results = {
        "t.py::drain": TestResult(
            "t.py::drain", ("UNI-A-1", "UNI-A-4"), "skipped", "not-run: needs --drain-command"
        ),
        "t.py::idle": TestResult(
            "t.py::idle",
            ("UNI-A-2",),
            "skipped",
            "not-run: skipped for time: x needs 450.6 s of waiting, more than this run's budget "
            "of 120.0 s per timing check; run with --time-budget 452 or --profile full",
        ),
    }
    grades = grade_requirements(REGISTRY_SAMPLE, results.values(), features=None)
    cli = "\n".join(summary_lines(grades, results, deployment))
    assert "MUST requirements not run (2), and why:\n  UNI-A-1, UNI-A-4\n" in cli
    assert "      needs --drain-command" in cli
    assert "1 timing check(s) skipped for time; --time-budget 452 runs them all:" in cli
    assert "Verdict: conforming, 2 MUSTs not run (seed 3)" in cli
    plain = "\n".join(summary_lines(grades, results, deployment, cli=False))
    assert "--unisock-time-budget 452 runs them all" in plain


def test_messages_name_the_options_of_the_mode_the_suite_runs_in() -> None:
    text = "needs --drain-command and --node-url; run with --time-budget 9 or --profile full"
    assert for_pytest(text) == (
        "needs --unisock-drain-command and --unisock-node-url; run with "
        "--unisock-time-budget 9 or --unisock-profile full"
    )
    assert for_pytest("--unisock-seed 3 and --secrets") == "--unisock-seed 3 and --secrets"


# -- deployment, names, reports ---------------------------------------------------------------


def test_deployment_scales_timeouts_and_keeps_secrets_out_of_public_data() -> None:
    deployment = Deployment("wss://h.example/ws", secret=SECRET, time_scale=2.5, seed=7)
    assert deployment.timeout(2.0) == 5.0
    assert SECRET not in json.dumps(deployment.public())
    assert deployment.can_sign() and deployment.can_mint()
    with pytest.raises(ValueError):
        Deployment("http://h.example/")
    assert hypothesis_profile("full") == "unisock-full"


def test_names_are_fixed_by_seed_and_test_and_differ_between_tests() -> None:
    first, again, other = Names(1, "t.py::a"), Names(1, "t.py::a"), Names(1, "t.py::b")
    assert first.tenant() == again.tenant() and first.channel() == again.channel()
    assert first.tenant() != other.tenant() and Names(2, "t.py::a").user() != first.user()
    channels = {first.channel() for _ in range(50)}
    assert len(channels) == 50


def test_reports_never_show_url_credentials_queries_or_tokens() -> None:
    assert sanitize_url("wss://u:p@h.example:8443/ws?token=abc#x") == "wss://h.example:8443/ws"
    deployment = Deployment("ws://h/", secret=SECRET)
    token = deployment.mint("acme", "alice")
    cleaned = sanitize_text(f"got {token} with {SECRET}", deployment)
    assert token not in cleaned and SECRET not in cleaned
    assert requirement_link("03-tokens", "spec/") == "spec/03-tokens.md"
    assert requirement_link("03-tokens#claims", "../spec/{section}/") == "../spec/03-tokens/#claims"


def test_static_scan_finds_function_class_and_module_markers(tmp_path: Path) -> None:
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "IDS = ('UNI-B-2', 'UNI-B-3')\n"
        "pytestmark = [pytest.mark.requirement('UNI-B-9')]\n"
        "@pytest.mark.requirement('UNI-B-1', *IDS)\n"
        "def test_one(): ...\n"
        "@pytest.mark.requirement('UNI-B-4')\n"
        "class TestGroup:\n"
        "    def test_two(self): ...\n"
        "TestMachine = object\n"
        "TestMachine.pytestmark = pytest.mark.requirement('UNI-B-5')\n",
        "utf-8",
    )
    assert scan_tests(tmp_path) == {
        "test_sample.py::test_one": ["UNI-B-9", "UNI-B-1", "UNI-B-2", "UNI-B-3"],
        "test_sample.py::TestGroup::test_two": ["UNI-B-9", "UNI-B-4"],
        "test_sample.py::TestMachine": ["UNI-B-9", "UNI-B-5"],
    }


# -- connections ------------------------------------------------------------------------------


class ScriptedServer:
    """A bare WebSocket server that sends fixed frames, to test the checks' connection."""

    def __init__(self, frames: list[str], *, echo: bool = True) -> None:
        self.frames = frames
        self.echo = echo
        self.received: list[str] = []
        self.server: Server = serve(
            self._handler,
            "127.0.0.1",
            0,
            subprotocols=["unisock.v1"],  # type: ignore[list-item]
        )
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"ws://127.0.0.1:{self.server.socket.getsockname()[1]}/"

    def _handler(self, ws: ServerConnection) -> None:
        for frame in self.frames:
            ws.send(frame)
        for message in ws:
            self.received.append(str(message))
            if self.echo:
                ws.send('{"type":"pong","id":"echo"}')

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10 * SCALE)


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    # No echo: a reply to the automatic pong could arrive after the invalid frame and race
    # the assertion on what was recorded.
    server = ScriptedServer(['{"type":"ping","nonce":"n1"}', '{"type":"event"}'], echo=False)
    yield server
    server.close()


def test_connection_answers_ping_and_fails_on_a_schema_invalid_frame(
    scripted: ScriptedServer,
) -> None:
    conn = open_conn(scripted.url, timeout=5 * SCALE)
    try:
        with pytest.raises(ProtocolViolation, match=r"server-message\.json"):
            conn.expect("pong")
        assert conn.frames == [{"type": "ping", "nonce": "n1"}]
        assert conn.sent == [{"type": "pong", "nonce": "n1"}]
        with pytest.raises(ProtocolViolation):
            conn.recv()
    finally:
        conn.close()


def test_connection_keeps_frames_it_passes_over_and_times_out_cleanly() -> None:
    server = ScriptedServer(['{"type":"pong","id":"a"}', '{"type":"pong","id":"b"}'])
    conn = open_conn(server.url, timeout=5 * SCALE)
    try:
        assert conn.expect("pong", where=lambda f: f.get("id") == "b")["id"] == "b"
        assert conn.unmatched == [{"type": "pong", "id": "a"}]
        assert conn.recv() == {"type": "pong", "id": "a"}
        with pytest.raises(FrameTimeout):
            conn.recv(timeout=0.05 * SCALE)
        reply = conn.request({"type": "ping", "id": "echo"})
        assert reply == {"type": "pong", "id": "echo"}
    finally:
        conn.close()
        server.close()


def test_progress_prints_one_line_per_area_and_the_failures_with_their_rerun_command() -> None:
    deployment = Deployment("ws://h/", secret=SECRET, seed=3)
    stream = io.StringIO()
    progress = Progress(deployment, stream=stream, tty=False)
    progress.start(3)
    progress.test_done(TestResult("test_auth.py::test_a", ("UNI-A-1",), "passed"), "pass")
    bad = TestResult("test_auth.py::test_b", ("UNI-A-1",), "failed", f"leaked {SECRET}")
    progress.test_done(bad, "fail")
    progress.test_done(TestResult("test_subscribe.py::test_c", ("UNI-A-2",), "passed"), "pass")
    grades = grade_requirements(REGISTRY_SAMPLE, [bad], features=None)
    progress.finish(grades, {bad.nodeid: bad})
    text = stream.getvalue()
    assert "\x1b" not in text and SECRET not in text
    assert "FAIL test_auth.py::test_b [UNI-A-1]" in text
    assert "rerun: --seed 3 -k 'test_b'" in text
    assert "auth           1 pass, 1 fail" in text and "subscribe      1 pass" in text
    assert "Failed MUST requirements:" in text and "Verdict: non-conforming (seed 3)" in text


def test_failed_check_naming_its_broken_rule_fails_only_that_rule() -> None:
    model = TestResult(
        "t.py::model", ("UNI-A-1", "UNI-A-2", "UNI-A-4"), "failed", "boom", violated=("UNI-A-2",)
    )
    grades = grade_requirements(REGISTRY_SAMPLE, [model], features=None)
    outcome = {ident: grade.outcome for ident, grade in grades.requirements.items()}
    assert outcome["UNI-A-2"] == "non-strict"
    assert outcome["UNI-A-1"] == "not-run" and outcome["UNI-A-4"] == "not-run"
    assert grades.tests["t.py::model"] == "non-strict"
    assert exit_status(grades) == 0


def test_not_applicable_checks_leave_a_requirement_not_applicable_unless_one_ran() -> None:
    skipped = TestResult("t.py::na", ("UNI-A-1",), "skipped", "not-applicable: no issuer")
    grades = grade_requirements(REGISTRY_SAMPLE, [skipped], features=None)
    assert grades.requirements["UNI-A-1"].outcome == "not-applicable"
    assert grades.tests["t.py::na"] == "not-applicable"
    ran = TestResult("t.py::ok", ("UNI-A-1",), "passed")
    grades = grade_requirements(REGISTRY_SAMPLE, [skipped, ran], features=None)
    assert grades.requirements["UNI-A-1"].outcome == "pass"


def test_pacer_spends_one_token_less_than_the_burst_then_waits() -> None:
    pacer = Pacer.from_limits({"publish_rate": {"per_second": 1000, "burst": 3}})
    assert pacer is not None
    pacer.take()
    pacer.take()
    assert not pacer.ready() and pacer.wait_s() > 0
    pacer.take()
    assert pacer.waited_s > 0
    for limits in ({}, {"publish_rate": {"per_second": 0, "burst": 3}}, {"publish_rate": 5}):
        assert Pacer.from_limits(limits) is None


def test_timing_check_beyond_the_budget_is_not_run_and_names_the_budget_that_runs_it() -> None:
    quick = Deployment("ws://a/", profile="quick")
    require_time(quick, 59.0, "a short wait")
    with pytest.raises(
        pytest.skip.Exception, match=r"not-run: skipped for time:.*--time-budget 91"
    ):
        require_time(quick, 90.0, "a long wait")
    require_time(Deployment("ws://a/", time_budget_s=100.0), 90.0, "a long wait")
    # Never "3.0 s exceeds the budget of 3.0 s"; no --profile hint when --time-budget rules.
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_time(Deployment("ws://a/", time_budget_s=3.0), 3.01, "a wait")
    assert "needs 3.1 s of waiting, more than this run's budget of 3.0 s" in str(skipped.value)
    assert "--profile" not in str(skipped.value)


def test_report_keeps_a_long_failure_whole_in_a_linked_file(tmp_path: Path) -> None:
    deployment = Deployment("ws://a/")
    text = "E   step\n" * 2000
    results = {"t.py::model": TestResult("t.py::model", ("UNI-A-1",), "failed", text)}
    grades = grade_requirements(REGISTRY_SAMPLE, results.values(), features=None)
    run = RunInfo(deployment, 0.0, 1.0, None, 1)
    write_reports(tmp_path, REGISTRY_SAMPLE, grades, results, run)
    report = _report(tmp_path)
    [entry] = report["tests"]
    assert entry["message_file"] == failure_file("t.py::model")
    assert len(entry["message"]) < len(text) and entry["message_file"] in entry["message"]
    assert text.strip() in (tmp_path / entry["message_file"]).read_text("utf-8")
    Draft202012Validator(json.loads(SCHEMA_PATH.read_text("utf-8"))).validate(report)


def test_a_stalled_flood_sizes_its_second_half_to_keep_events_and_pings_within_max_queue() -> None:
    from unisock_conformance.checks.test_limits import events_within_queue

    def outstanding(more: int, elapsed_s: float) -> int:
        stall = elapsed_s + 1.5 * more * elapsed_s / 508
        return 508 + more + math.ceil(stall / 0.4) + 2

    previous = 1024
    for elapsed_s in (0.5, 2.0, 4.4, 20.0, 60.0):
        more = events_within_queue(1024, 508, elapsed_s, 0.4)
        # the most events that fit: one more would not, with the pings of a longer stall
        assert outstanding(more, elapsed_s) <= 1024 < outstanding(more + 1, elapsed_s)
        assert more <= previous  # a slower first half leaves room for fewer
        previous = more
    # the first half alone left room for more pings than the queue holds: nothing more
    assert events_within_queue(1024, 508, 300.0, 0.4) == 0
