"""``unisock conformance client -- ADAPTER_COMMAND...``: run the client suite.

Each check gets a fresh harness server and a fresh adapter process. The smoke tier runs
first; if the adapter breaks the adapter protocol there, the run stops with exit status 3
("adapter broken") and every other check is ``not-run``. Results are graded with the
server suite's grading and written with its report writers, for roles client and
broadcaster. Exit status: 0 when every MUST that ran passed, 1 otherwise, 2 for usage
errors, 3 when the adapter is broken.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from unisock_conformance.client_suite import (  # noqa: F401 - registers the checks
    checks_broadcaster,
    checks_delivery,
    checks_heartbeat,
    checks_reconnect,
    checks_smoke,
    checks_tokens,
    checks_wire,
)
from unisock_conformance.client_suite.driver import AdapterBroken, AdapterProcess, Skipped
from unisock_conformance.client_suite.framework import CHECKS, CheckSpec, Context, Tolerances
from unisock_conformance.client_suite.harness import Harness, Violation
from unisock_conformance.deployment import NOT_RUN_PREFIX
from unisock_conformance.grading import Grades, TestResult, exit_status, grade_requirements
from unisock_conformance.paths import SPEC_DIR
from unisock_conformance.spectext import load_registry

__all__ = [
    "EXIT_ADAPTER_BROKEN",
    "ClientRun",
    "add_client_parser",
    "main",
    "run_client_suite",
    "run_suite",
    "select_checks",
]

EXIT_USAGE: Final = 2
EXIT_ADAPTER_BROKEN: Final = 3
ROLES: Final = {
    "client": frozenset({"client"}),
    "broadcaster": frozenset({"client", "broadcaster"}),
    "all": frozenset({"client", "broadcaster"}),
}
TIERS_FOR_ROLE: Final = {
    "client": ("smoke", "client"),
    "broadcaster": ("smoke", "broadcaster"),
    "all": ("smoke", "client", "broadcaster"),
}
# Rules the harness checks on every frame and handshake of every check (one result each).
DERIVED: Final = (
    ("client_frames_are_valid_messages", ("UNI-TR-10",)),
    ("client_offers_the_subprotocol", ("UNI-TR-1",)),
    ("hello_comes_first_and_alone_until_welcome", ("UNI-LC-2", "UNI-LC-3")),
    ("no_second_hello", ("UNI-LC-8",)),
    ("token_only_in_hello", ("UNI-AUTH-1", "UNI-SEC-5")),
)
ADAPTER_NODE: Final = "client_suite/adapter.py"
ADAPTER_LINES_IDS: Final = ("UNI-ADP-1", "UNI-ADP-2", "UNI-ADP-12")
ADAPTER_EXIT_IDS: Final = ("UNI-ADP-11",)


@dataclass
class ClientRun:
    """Everything one run produced."""

    command: list[str]
    started_at: float
    finished_at: float = 0.0
    results: dict[str, TestResult] = field(default_factory=dict)
    violations: list[tuple[str, Violation]] = field(default_factory=list)
    adapter_problems: list[tuple[str, str]] = field(default_factory=list)
    adapter_info: dict[str, Any] = field(default_factory=dict)
    adapter_broken: str | None = None
    grades: Grades | None = None
    exit_status: int = 0


def select_checks(role: str, keywords: Sequence[str] = ()) -> list[CheckSpec]:
    """The checks of ``role``'s tiers whose name contains one of ``keywords`` (all if none).

    The smoke tier always runs: it is what tells an adapter fault from a client fault.
    """
    tiers = TIERS_FOR_ROLE[role]
    chosen = []
    for spec in CHECKS:
        if spec.tier not in tiers:
            continue
        if spec.tier != "smoke" and keywords and not any(k in spec.name for k in keywords):
            continue
        chosen.append(spec)
    return sorted(chosen, key=lambda spec: TIERS_FOR_ROLE["all"].index(spec.tier))


class _Output:
    """Plain progress lines: one per check, failures with their message."""

    def __init__(self, stream: TextIO | None, verbose: bool) -> None:
        self.stream = stream
        self.verbose = verbose

    def line(self, text: str) -> None:
        if self.stream is not None:
            self.stream.write(text + "\n")
            self.stream.flush()

    def transcript(self, direction: str, text: str) -> None:
        if self.verbose:
            self.line(f"  adapter {direction} {text[:300]}")


async def _run_check(
    spec: CheckSpec,
    command: Sequence[str],
    tol: Tolerances,
    run: ClientRun,
    *,
    validate: bool,
    output: _Output,
) -> list[TestResult]:
    harness = Harness()
    await harness.start()
    adapter = AdapterProcess(
        command,
        harness.signal,
        validate=validate or spec.tier == "smoke",
        on_line=output.transcript if output.verbose else None,
    )
    ctx = Context(harness, adapter, tol)
    started = time.monotonic()
    status, message = "passed", ""
    broken: str | None = None
    try:
        await adapter.start()
        info = await adapter.hello(tol.scale, ctx.timeout)
        run.adapter_info = {k: info[k] for k in ("adapter", "client") if k in info}
        await asyncio.wait_for(spec.run(ctx), spec.timeout_s * tol.scale)
    except AdapterBroken as exc:
        broken = str(exc)
    except Skipped as exc:
        status, message = "skipped", f"{NOT_RUN_PREFIX} the adapter skipped {exc}"
    except AssertionError as exc:
        status, message = "failed", str(exc) or "assertion failed"
    except TimeoutError:
        status, message = "failed", f"the check did not finish within {spec.timeout_s:.0f} s"
    except Exception as exc:  # a check defect must not end the run
        status, message = "failed", f"{type(exc).__name__}: {exc}"
    finally:
        await adapter.stop()
        await harness.stop()
    duration = time.monotonic() - started
    problems = list(adapter.problems)
    if problems:
        broken = "; ".join(([broken] if broken else []) + problems[:3])
    for problem in problems:
        run.adapter_problems.append((spec.nodeid, problem))
    run.violations.extend((spec.nodeid, v) for v in harness.violations)
    if broken is not None:
        tail = adapter.stderr_tail.strip()
        status = "skipped"
        message = f"{NOT_RUN_PREFIX} the adapter broke the adapter protocol: {broken}"
        if tail:
            message += f"\nadapter stderr:\n{tail}"
    elif status == "failed" and adapter.stderr_tail.strip():
        message += f"\nadapter stderr (last lines):\n{adapter.stderr_tail.strip()[-1500:]}"
    results = [TestResult(spec.nodeid, spec.requirements, status, message, duration)]  # type: ignore[arg-type]
    for part in ctx.parts:
        part_status = "failed" if part.failure else ("skipped" if status == "skipped" else "passed")
        part_message = message if status == "skipped" and not part.failure else part.failure or ""
        results.append(
            TestResult(
                f"{spec.nodeid}[{part.name}]",
                part.requirements,
                part_status,  # type: ignore[arg-type]
                part_message,
                0.0,
            )
        )
    if broken is not None and spec.tier == "smoke":
        run.adapter_broken = broken
    return results


def _derived_results(run: ClientRun, ran: bool) -> list[TestResult]:
    """One result per rule checked on every frame, and for the adapter's own protocol."""
    results = []
    for name, ids in DERIVED:
        found = [
            f"{node}: {v.text}" for node, v in run.violations if set(v.requirements) & set(ids)
        ]
        status = "failed" if found else ("passed" if ran else "skipped")
        message = (
            "\n".join(found[:20]) if found else ("" if ran else f"{NOT_RUN_PREFIX} no check ran")
        )
        results.append(TestResult(f"client_suite/wire.py::{name}", ids, status, message))  # type: ignore[arg-type]
    lines = [f"{node}: {p}" for node, p in run.adapter_problems if "did not exit" not in p]
    exits = [f"{node}: {p}" for node, p in run.adapter_problems if "did not exit" in p]
    adapter_rules: tuple[tuple[str, tuple[str, ...], list[str]], ...] = (
        ("adapter_writes_one_valid_reply_per_request", ADAPTER_LINES_IDS, lines),
        ("adapter_exits_on_exit", ADAPTER_EXIT_IDS, exits),
    )
    for name, rule_ids, found in adapter_rules:
        status = "failed" if found else "passed"
        results.append(
            TestResult(f"{ADAPTER_NODE}::{name}", rule_ids, status, "\n".join(found[:20]))  # type: ignore[arg-type]
        )
    return results


async def run_suite(
    command: Sequence[str],
    *,
    role: str = "all",
    keywords: Sequence[str] = (),
    time_scale: float = 1.0,
    validate: bool = False,
    strict: bool = False,
    stream: TextIO | None = None,
    verbose: bool = False,
    exitfirst: bool = False,
    jobs: int = 1,
) -> ClientRun:
    """Run the selected checks against the adapter ``command`` and grade them.

    With ``exitfirst`` the run stops at the first failed check or part: the checks after it
    are not run (a quick verdict for tools that only need to know whether anything fails).
    ``jobs`` checks run at once after the smoke tier (each has its own harness server and
    adapter process, and they mostly wait on timers); results keep the checks' order.
    """
    output = _Output(stream, verbose)
    run = ClientRun(list(command), time.time())
    tol = Tolerances(scale=time_scale)
    specs = select_checks(role, keywords)
    output.line(f"Unisock client conformance: {shlex.join(command)} ({len(specs)} checks)")
    stopped: str | None = None
    outcomes: dict[str, list[TestResult]] = {}
    slots = asyncio.Semaphore(max(1, jobs))

    async def one(spec: CheckSpec) -> None:
        nonlocal stopped
        async with slots:
            if run.adapter_broken is not None or stopped is not None:
                why = f"the adapter is broken: {run.adapter_broken}" if stopped is None else stopped
                reason = f"{NOT_RUN_PREFIX} {why}"
                outcomes[spec.nodeid] = [
                    TestResult(spec.nodeid, spec.requirements, "skipped", reason)
                ]
                return
            results = await _run_check(spec, command, tol, run, validate=validate, output=output)
        outcomes[spec.nodeid] = results
        for result in results:
            label = {"passed": "ok", "failed": "FAIL", "skipped": "not-run"}[result.status]
            output.line(f"{label:>8}  {result.nodeid} ({result.duration_s:.1f} s)")
            if result.status != "passed":
                output.line("          " + result.message.replace("\n", "\n          "))
            if exitfirst and result.status == "failed" and stopped is None:
                stopped = f"stopped after the first failure ({result.nodeid})"

    # The smoke tier runs alone and first: it tells an adapter fault from a client fault.
    for spec in specs:
        if spec.tier == "smoke":
            await one(spec)
    await asyncio.gather(*(one(spec) for spec in specs if spec.tier != "smoke"))
    ran = False
    for spec in specs:
        for result in outcomes[spec.nodeid]:
            run.results[result.nodeid] = result
            ran = ran or result.status != "skipped"
    for result in _derived_results(run, ran):
        run.results[result.nodeid] = result
    registry = load_registry(SPEC_DIR)
    run.grades = grade_requirements(registry, run.results.values(), roles=ROLES[role])
    run.finished_at = time.time()
    if run.adapter_broken is not None:
        run.exit_status = EXIT_ADAPTER_BROKEN
    else:
        run.exit_status = exit_status(run.grades)
        if strict and any(g.outcome == "non-strict" for g in run.grades.requirements.values()):
            run.exit_status = 1
    return run


def add_client_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``client`` command to the ``conformance`` subcommands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "client",
        help="check a client (or broadcaster) through its test adapter",
        description="Run the Unisock client conformance suite: a harness server drives the "
        "client through the adapter command (spec section 16). Exit status 0 when every MUST "
        "that ran passes, 1 when one failed, 3 when the adapter is broken.",
    )
    parser.add_argument("--report-dir", metavar="DIR", help="write report.json/.html/.md here")
    parser.add_argument("--junit", metavar="FILE", help="write JUnit XML here")
    parser.add_argument(
        "--role",
        choices=sorted(ROLES),
        default="all",
        help="client checks, broadcaster checks or both (default all)",
    )
    parser.add_argument(
        "-k",
        dest="keywords",
        action="append",
        default=[],
        metavar="TEXT",
        help="only checks whose name contains TEXT (repeatable; the smoke tier always runs)",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="multiply the harness's timing tolerances and waits (default 1.0)",
    )
    parser.add_argument(
        "--validate",
        action="store_true",
        help="validate every adapter line against the adapter schemas and show the transcript",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit status 1 also when a SHOULD requirement is graded non-strict",
    )
    parser.add_argument(
        "-x",
        "--exitfirst",
        action="store_true",
        help="stop at the first failed check; the rest are not run",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="run N checks at once after the smoke tier (default 1)",
    )
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    parser.add_argument(
        "adapter",
        nargs=argparse.REMAINDER,
        metavar="-- ADAPTER_COMMAND...",
        help="the command that starts the client's test adapter",
    )
    parser.set_defaults(conformance_handler=run_client_suite)
    return parser


def _write_reports(args: argparse.Namespace, run: ClientRun, role: str) -> None:
    from unisock_conformance.client_suite.reporting import write_client_junit, write_client_reports

    assert run.grades is not None
    if args.report_dir:
        write_client_reports(Path(args.report_dir), run, role)
    if args.junit:
        write_client_junit(Path(args.junit), run, role)


def run_client_suite(args: argparse.Namespace) -> int:
    """Entry point of ``unisock conformance client``; returns the exit status."""
    command = list(args.adapter)
    if command and command[0] == "--":
        command = command[1:]
    if args.list:
        for spec in select_checks(args.role):
            print(f"{spec.tier:<12} {spec.name:<70} {' '.join(spec.requirements)}")
        return 0
    if not command:
        print("unisock conformance client: give the adapter command after --", file=sys.stderr)
        return EXIT_USAGE
    if args.jobs < 1:
        print("unisock conformance client: --jobs must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if args.time_scale <= 0:
        print("unisock conformance client: --time-scale must be positive", file=sys.stderr)
        return EXIT_USAGE
    run = asyncio.run(
        run_suite(
            command,
            role=args.role,
            keywords=args.keywords,
            time_scale=args.time_scale,
            validate=args.validate,
            strict=args.strict,
            stream=sys.stdout,
            verbose=args.validate,
            exitfirst=args.exitfirst,
            jobs=args.jobs,
        )
    )
    _write_reports(args, run, args.role)
    from unisock_conformance.client_suite.reporting import summary

    for line in summary(run):
        print(line)
    return run.exit_status


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m unisock_conformance.client_suite.runner [options] -- ADAPTER...``."""
    parser = argparse.ArgumentParser(prog="python -m unisock_conformance.client_suite.runner")
    targets = parser.add_subparsers(dest="target", required=True, metavar="TARGET")
    add_client_parser(targets)
    args = parser.parse_args(["client", *(sys.argv[1:] if argv is None else argv)])
    return int(args.conformance_handler(args))


if __name__ == "__main__":
    sys.exit(main())
