"""pytest plugin entry point for running the Unisock conformance suite from pytest.

Loaded in every pytest run (``pytest11`` entry point), it only declares its options and
markers unless ``--unisock-url`` is given; then it builds the :class:`Deployment`, loads the
hypothesis profile, grades every check against the requirement registry and writes the
reports. Usage::

    pytest --pyargs unisock_conformance.checks --unisock-url=ws://127.0.0.1:8765/ \\
        --unisock-secret="$UNISOCK_SECRET" --unisock-report-dir=conformance-report
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from unisock_conformance import markers
from unisock_conformance.closes import SERVER_CLOSES
from unisock_conformance.deployment import (
    PROFILES,
    Deployment,
    ServerInfo,
    default_time_scale,
    hypothesis_profile,
)
from unisock_conformance.flags import for_pytest
from unisock_conformance.grading import (
    SERVER_ROLES,
    VIOLATED_PROPERTY,
    Grades,
    TestResult,
    exit_status,
    grade_requirements,
    grade_test,
)
from unisock_conformance.paths import SPEC_DIR
from unisock_conformance.preflight import SetupError, preflight
from unisock_conformance.spectext import load_registry
from unisock_conformance.timing import TIMING_MARKER, Background

__all__ = [
    "DRAIN_MARKER",
    "OBSERVER_MARKER",
    "OUTAGE_MARKER",
    "RESET_MARKER",
    "SUITE_PLUGIN",
    "Suite",
    "get_suite",
]

SUITE_PLUGIN: Final = "unisock-suite"
# Checks carrying this marker stop the deployment from serving: they run after all others.
DRAIN_MARKER: Final = "drain"
# Checks carrying this marker wipe the deployment's history: they run late, before draining.
RESET_MARKER: Final = "reset"
# Checks carrying this marker take the deployment's broker away for a while: they run late too.
OUTAGE_MARKER: Final = "outage"
# Checks carrying this marker judge what every other check saw: they run last of all.
OBSERVER_MARKER: Final = "observer"
DEFAULT_LINK_BASE: Final = "spec/"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("unisock", "Unisock server conformance suite")
    group.addoption("--unisock-url", help="ws:// or wss:// URL of the server under test")
    group.addoption(
        "--unisock-secret",
        default=None,
        help="HS256 shared secret to mint tokens (default: $UNISOCK_SECRET when --unisock-url)",
    )
    group.addoption(
        "--unisock-token-command",
        help="the deployment's signer, speaking the token command protocol (spec 14.6): "
        "one JSON request of claims per line in, one signed token per line out; e.g. "
        "'python -m unisock_conformance.token_command --key key.pem --alg RS256'",
    )
    group.addoption("--unisock-broadcaster-token", help="a broadcaster-role token")
    group.addoption(
        "--unisock-origin",
        help="an Origin the deployment's allowlist contains (test connections send it)",
    )
    group.addoption(
        "--unisock-any-origin",
        action="store_true",
        help="the deployment has no Origin allowlist and accepts every Origin",
    )
    group.addoption(
        "--unisock-header",
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="extra handshake header (repeatable)",
    )
    group.addoption("--unisock-profile", choices=PROFILES, default="quick")
    group.addoption("--unisock-seed", type=int, help="seed for hypothesis and generated names")
    group.addoption(
        "--unisock-time-scale",
        type=float,
        help="multiply every timeout (default $UNISOCK_TIME_SCALE or 1.0)",
    )
    group.addoption("--unisock-report-dir", help="write report.json, report.html, report.md here")
    group.addoption("--unisock-junit", help="write graded JUnit XML here")
    group.addoption(
        "--unisock-spec-link-base",
        default=DEFAULT_LINK_BASE,
        help="link prefix for spec sections in report.html (default 'spec/')",
    )
    group.addoption(
        "--unisock-drain-command",
        metavar="CMD",
        help="shell command that makes the deployment drain (drain checks run last; "
        "without it they are not run)",
    )
    group.addoption(
        "--unisock-reset-command",
        metavar="CMD",
        help="shell command that makes the deployment lose its channel history and offsets "
        "(reset checks run just before the drain checks; without it they are not run)",
    )
    group.addoption(
        "--unisock-outage-command",
        metavar="CMD",
        help="shell command that makes the deployment's broker unreachable; outage checks "
        "need it and --unisock-recover-command (they run late, with the reset checks)",
    )
    group.addoption(
        "--unisock-recover-command",
        metavar="CMD",
        help="shell command that makes the broker reachable again after the outage command",
    )
    group.addoption(
        "--unisock-node-url",
        action="append",
        default=[],
        metavar="URL",
        help="another node of the same deployment, sharing its broker (repeatable)",
    )
    group.addoption(
        "--unisock-coalescing-channel",
        metavar="NAME",
        help="a channel the deployment declares coalescing (coalescing checks need one)",
    )
    group.addoption(
        "--unisock-example-event-types",
        action="store_true",
        help="the deployment registers the example event types of schemas/v1/events",
    )
    group.addoption(
        "--unisock-time-budget",
        type=float,
        metavar="SECONDS",
        help="seconds one timing check may wait (default: 60 in the quick profile, 600 in "
        "full, scaled); timing checks that need longer are not run",
    )
    group.addoption(
        "--unisock-issuer",
        metavar="ISS",
        help="the issuer the deployment requires: tokens the suite signs carry it as iss",
    )
    group.addoption(
        "--unisock-audience",
        metavar="AUD",
        help="the audience the deployment requires: tokens the suite signs carry it as aud",
    )
    group.addoption(
        "--unisock-require-complete",
        action="store_true",
        help="exit with status 6 when any MUST was not run (default: not-run MUSTs are listed "
        "in the verdict but do not fail the run)",
    )
    group.addoption(
        "--unisock-progress",
        action="store_true",
        help="live progress display and summary table (used by `unisock conformance`)",
    )


@pytest.hookimpl(tryfirst=True)  # before hypothesis reads --hypothesis-seed
def pytest_configure(config: pytest.Config) -> None:
    markers.declare(config)
    config.addinivalue_line(
        "markers",
        f"{DRAIN_MARKER}: the check drains the deployment, so it runs after every other check",
    )
    config.addinivalue_line(
        "markers",
        f"{TIMING_MARKER}: a timing check; it runs on a thread of its own from the start",
    )
    config.addinivalue_line(
        "markers",
        f"{RESET_MARKER}: the check wipes the deployment's history, so it runs after every "
        "other check except the drain checks",
    )
    config.addinivalue_line(
        "markers",
        f"{OUTAGE_MARKER}: the check takes the deployment's broker away for a while, so it runs "
        "with the reset checks, after every other check except the drain checks",
    )
    config.addinivalue_line(
        "markers",
        f"{OBSERVER_MARKER}: the check judges what the other checks saw, so it runs after all",
    )
    url = config.getoption("--unisock-url")
    if not url:
        return
    if config.pluginmanager.get_plugin(SUITE_PLUGIN) is not None:
        return  # pytest ran configure again (e.g. pytester); one suite per run
    suite = Suite(config, _deployment_from_options(config))
    config.pluginmanager.register(suite, SUITE_PLUGIN)


def _deployment_from_options(config: pytest.Config) -> Deployment:
    headers: list[tuple[str, str]] = []
    for text in config.getoption("--unisock-header"):
        name, sep, value = str(text).partition(":")
        if not sep or not name.strip():
            raise pytest.UsageError(f"--unisock-header needs NAME:VALUE, got {text!r}")
        headers.append((name.strip(), value.strip()))
    secret = config.getoption("--unisock-secret") or os.environ.get("UNISOCK_SECRET") or None
    token_command = config.getoption("--unisock-token-command")
    broadcaster_token = config.getoption("--unisock-broadcaster-token")
    if secret is None and token_command is None:
        raise pytest.UsageError(
            "the conformance suite needs --unisock-secret (or $UNISOCK_SECRET) or "
            "--unisock-token-command to obtain tokens"
        )
    seed = config.getoption("--unisock-seed")
    if seed is None:
        seed = random.SystemRandom().randrange(1, 2**31)
    scale = config.getoption("--unisock-time-scale")
    try:
        return Deployment(
            url=str(config.getoption("--unisock-url")),
            secret=secret,
            token_command=token_command,
            broadcaster_token=broadcaster_token,
            origin=config.getoption("--unisock-origin"),
            any_origin=bool(config.getoption("--unisock-any-origin")),
            headers=tuple(headers),
            time_scale=float(scale) if scale is not None else default_time_scale(),
            seed=int(seed),
            profile=str(config.getoption("--unisock-profile")),
            drain_command=config.getoption("--unisock-drain-command") or None,
            reset_command=config.getoption("--unisock-reset-command") or None,
            outage_command=config.getoption("--unisock-outage-command") or None,
            recover_command=config.getoption("--unisock-recover-command") or None,
            node_urls=tuple(str(url) for url in config.getoption("--unisock-node-url")),
            coalescing_channel=config.getoption("--unisock-coalescing-channel") or None,
            example_event_types=bool(config.getoption("--unisock-example-event-types")),
            time_budget_s=config.getoption("--unisock-time-budget"),
            issuer=config.getoption("--unisock-issuer") or None,
            audience=config.getoption("--unisock-audience") or None,
        )
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None


def _late_order(item: pytest.Item) -> int:
    """0 for ordinary checks, 1 for reset and outage checks, 2 for drain checks, 3 for the
    observers of them all (a stable sort key)."""
    if item.get_closest_marker(OBSERVER_MARKER) is not None:
        return 3
    if item.get_closest_marker(DRAIN_MARKER) is not None:
        return 2
    late = (RESET_MARKER, OUTAGE_MARKER)
    return 1 if any(item.get_closest_marker(name) is not None for name in late) else 0


def get_suite(config: pytest.Config) -> Suite | None:
    """The active suite of this pytest run, or None without ``--unisock-url``."""
    plugin = config.pluginmanager.get_plugin(SUITE_PLUGIN)
    return plugin if isinstance(plugin, Suite) else None


def _register_hypothesis_profiles(seed: int) -> None:
    from hypothesis import HealthCheck, settings

    common: dict[str, Any] = {
        "deadline": None,
        "database": None,
        "print_blob": True,
        "suppress_health_check": list(HealthCheck),
    }
    settings.register_profile(
        hypothesis_profile("quick"), max_examples=30, stateful_step_count=20, **common
    )
    settings.register_profile(
        hypothesis_profile("full"), max_examples=300, stateful_step_count=50, **common
    )


class Suite:
    """State of one conformance run: the deployment, the probe, results and reports."""

    def __init__(self, config: pytest.Config, deployment: Deployment) -> None:
        self.config = config
        self.deployment = deployment
        self.registry: dict[str, Any] = load_registry(SPEC_DIR)
        self.levels = {e["id"]: e["level"] for e in self.registry["requirements"]}
        self.roles = {e["id"]: e["role"] for e in self.registry["requirements"]}
        self.feature_of = {
            e["id"]: e["feature"] for e in self.registry["requirements"] if e.get("feature")
        }
        self.started_at = time.time()
        self.finished_at: float | None = None
        SERVER_CLOSES.clear()  # a run judges only the closes of its own checks
        self.cli = bool(config.getoption("--unisock-progress"))
        """Run by ``unisock conformance server``: messages name its options, not pytest's."""
        self.require_complete = bool(config.getoption("--unisock-require-complete"))
        self.setup_error: SetupError | None = None
        self._drain_announced = False
        self.items: dict[str, pytest.Item] = {}
        self.results: dict[str, TestResult] = {}
        self.collect_errors: list[tuple[str, str]] = []
        self.grades: Grades | None = None
        self._info: ServerInfo | None = None
        self._probe_error: BaseException | None = None
        self.progress: Any = None
        self.background = Background()
        self._timed: list[pytest.Item] = []
        self._background_started = False
        # Seed hypothesis through its own option, read by its pytest_configure.
        if config.getoption("hypothesis_seed", default=None) is None:
            config.option.hypothesis_seed = str(deployment.seed)
        _register_hypothesis_profiles(deployment.seed)
        from hypothesis import settings

        settings.load_profile(hypothesis_profile(deployment.profile))
        if config.getoption("--unisock-progress"):
            from unisock_conformance.progress import Progress

            self.progress = Progress(deployment)
            self.progress.report_dir = config.getoption("--unisock-report-dir")

    # -- probe ------------------------------------------------------------------------------

    def server_info(self) -> ServerInfo:
        """The welcome of one probe connection, fetched once per run."""
        if self._info is not None:
            return self._info
        if self._probe_error is not None:
            raise self._probe_error
        from unisock_conformance.wire import open_conn

        try:
            name = f"probe{self.deployment.seed:x}"
            token = self.deployment.mint(f"t{name}", f"u{name}")
            conn = open_conn(
                self.deployment.url,
                name="probe",
                origin=self.deployment.origin,
                headers=self.deployment.headers,
                timeout=self.deployment.timeout(),
            )
            try:
                welcome = conn.hello(token)
            finally:
                conn.close()
        except BaseException as error:
            self._probe_error = error
            raise
        self._info = ServerInfo(welcome)
        return self._info

    # -- collection -------------------------------------------------------------------------

    def _is_check(self, item: pytest.Item) -> bool:
        return bool(markers.requirements_of(item)) or _in_checks(item)

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        # Draining ends the deployment's service: those checks go last, in their own order;
        # a reset wipes history other checks rely on: those go just before them.
        items[:] = sorted(items, key=_late_order)
        for item in items:
            if self._is_check(item):
                self.items[item.nodeid] = item
                for ident in markers.requirements_of(item):
                    item.user_properties.append(("requirement", ident))

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        for item in items:
            if item.nodeid in self.items:
                self.results[item.nodeid] = TestResult(
                    item.nodeid, markers.requirements_of(item), "deselected", "deselected"
                )

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        selected = [i for i in session.items if i.nodeid in self.items]
        self._timed = [i for i in selected if i.get_closest_marker(TIMING_MARKER) is not None]
        if self.progress is not None:
            self.progress.start(len(selected))

    def _start_background(self) -> None:
        """Start the timing checks once, when the server's welcome is known."""
        if self._background_started:
            return
        self._background_started = True
        try:
            info = self.server_info()
        except BaseException:
            return  # each check reports the probe's failure itself
        self.background.start(self._timed, self.deployment, info)

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        """A timing check that ran in the background: collect its outcome."""
        future = self.background.outcome(pyfuncitem.nodeid)
        if future is None:
            return None
        future.result()
        return True

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.collect_errors.append((report.nodeid, str(report.longrepr)))
            if self.progress is not None:
                self.progress.collect_error(report.nodeid, str(report.longrepr))

    # -- running ----------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool | None:
        """The preflight, before any check: a setup error ends the run before it starts."""
        selected = [item for item in session.items if item.nodeid in self.items]
        if not selected or self.collect_errors:
            return None
        welcome, error = preflight(self.deployment, cli=self.cli)
        if error is None:
            if welcome:
                self._info = ServerInfo(welcome)
            return None
        self.setup_error = error
        for item in selected:
            self.results[item.nodeid] = TestResult(
                item.nodeid,
                markers.requirements_of(item),
                "skipped",
                f"not-run: setup error: {error.message}",
            )
        return True  # no check runs; the summary names the error

    def _notice(self, line: str) -> None:
        """One line for the person running the suite, in either mode (pytest's output
        capture is suspended, or a check's setup would swallow it)."""
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        suspended = (
            capture.global_and_fixture_disabled()
            if capture is not None
            else contextlib.nullcontext()
        )
        with suspended:
            if self.progress is not None:
                self.progress.notice(line)
                return
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(line)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if item.nodeid not in self.items:
            return
        self._start_background()
        if _late_order(item) > 0:
            self.background.wait_all()  # nothing may run while the server resets or drains
        if (
            _late_order(item) == 2
            and self.deployment.drain_command is not None
            and not self._drain_announced
        ):
            self._drain_announced = True
            self._notice(
                "Drain checks run last: they run --drain-command and leave the server draining"
                if self.cli
                else "Drain checks run last: they run --unisock-drain-command and leave the "
                "server draining"
            )
        ids = markers.requirements_of(item)
        if not ids:
            pytest.fail("conformance check carries no @pytest.mark.requirement(...) ID")
        unknown = [ident for ident in ids if ident not in self.levels]
        if unknown:
            pytest.fail(f"requirement IDs not in the registry: {', '.join(unknown)}")
        needed = set(markers.features_of(item))
        implied = {self.feature_of.get(ident) for ident in ids}
        if len(implied) == 1 and None not in implied:
            needed |= {str(next(iter(implied)))}
        if needed:
            announced = self.server_info().features
            missing = sorted(needed - announced)
            if missing:
                pytest.skip(f"unimplemented: the server does not announce {', '.join(missing)}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        item = self.items.get(report.nodeid)
        if item is None:
            return
        previous = self.results.get(report.nodeid)
        status = previous.status if previous is not None else None
        message = previous.message if previous is not None else ""
        duration = (previous.duration_s if previous is not None else 0.0) + report.duration
        if report.failed:
            if status != "failed":
                message = self._text(_failure_text(report))
            status = "failed"
        elif report.skipped and status != "failed":
            status = "skipped"
            message = self._text(_skip_reason(report))
        elif report.passed and report.when == "call" and status is None:
            status = "passed"
        if status is None and report.when == "teardown":
            status = "passed"
        violated = previous.violated if previous is not None else ()
        for name, value in report.user_properties:
            if name == VIOLATED_PROPERTY and report.failed and isinstance(value, tuple):
                violated = tuple(str(ident) for ident in value)
        self.results[report.nodeid] = TestResult(
            report.nodeid,
            markers.requirements_of(item),
            status or "passed",
            message,
            duration,
            markers.features_of(item),
            violated,
        )
        if report.when == "teardown" and self.progress is not None:
            result = self.results[report.nodeid]
            self.progress.test_done(result, self._grade_one(result))

    def _text(self, text: str) -> str:
        """A message naming the options of the mode the suite runs in."""
        return text if self.cli else for_pytest(text)

    def _grade_one(self, result: TestResult) -> str:
        levels = [
            self.levels[ident]
            for ident in (result.violated or result.requirements)
            if self.roles.get(ident) in SERVER_ROLES
        ]
        return grade_test(result, levels)

    # -- end of run -------------------------------------------------------------------------

    def grade(self) -> Grades:
        features = self._info.features if self._info is not None else None
        self.grades = grade_requirements(self.registry, self.results.values(), features=features)
        return self.grades

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.background.shutdown()
        self.deployment.close()
        self.finished_at = time.time()
        grades = self.grade()
        code = int(exitstatus)
        if self.setup_error is not None:
            code = self.setup_error.status
            session.exitstatus = code
        elif code in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) and not self.collect_errors:
            code = exit_status(grades, require_complete=self.require_complete)
            session.exitstatus = code
        from unisock_conformance.report import RunInfo, write_junit, write_reports

        run = RunInfo(
            deployment=self.deployment,
            started_at=self.started_at,
            finished_at=self.finished_at,
            server_info=self._info,
            exit_status=code,
            collect_errors=tuple(self.collect_errors),
            setup_error=self.setup_error,
            cli=self.cli,
        )
        report_dir = self.config.getoption("--unisock-report-dir")
        if report_dir:
            write_reports(
                Path(report_dir),
                self.registry,
                grades,
                self.results,
                run,
                link_base=str(self.config.getoption("--unisock-spec-link-base")),
            )
        junit = self.config.getoption("--unisock-junit")
        if junit:
            write_junit(Path(junit), grades, self.results, run)
        if self.progress is not None:
            self.progress.finish(grades, self.results, run)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.progress is not None or self.grades is None:
            return
        from unisock_conformance.progress import summary_lines

        terminalreporter.section("Unisock conformance")
        lines = summary_lines(
            self.grades,
            self.results,
            self.deployment,
            "--unisock-seed",
            setup_error=self.setup_error,
            cli=False,
        )
        for line in lines:
            terminalreporter.write_line(line)


def _in_checks(item: pytest.Item) -> bool:
    try:
        return Path(str(item.path)).resolve().is_relative_to(markers.CHECKS_DIR)
    except (OSError, ValueError):
        return False


def _failure_text(report: pytest.TestReport) -> str:
    text = report.longreprtext or ""
    return text if report.when == "call" else f"[{report.when}] {text}"


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
        return reason.removeprefix("Skipped: ")
    return str(longrepr)


def iter_checks(config: pytest.Config) -> Iterator[pytest.Item]:
    """The collected conformance checks (for tools built on the plugin)."""
    suite = get_suite(config)
    if suite is not None:
        yield from suite.items.values()
