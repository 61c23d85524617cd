"""Terminal output of ``unisock conformance``: a live counter while checks run, a summary
table at the end. Plain lines (one per check module) when the output is not a terminal."""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, TextIO

from unisock_conformance.deployment import Deployment
from unisock_conformance.flags import for_pytest
from unisock_conformance.grading import SETUP_ERROR, Grades, TestResult, not_run_musts, verdict
from unisock_conformance.report import (
    RunInfo,
    failure_file,
    group_tests,
    not_run_reasons,
    rerun_hint,
    sanitize_text,
    sanitize_url,
)
from unisock_conformance.timing import TIME_PREFIX

if TYPE_CHECKING:
    from unisock_conformance.preflight import SetupError

__all__ = ["Progress", "summary_lines"]

_COLOURS: Final = {
    "pass": "32",
    "fail": "31",
    "non-strict": "33",
    "unimplemented": "36",
    "not-run": "90",
    "not-applicable": "90",
}
_ORDER: Final = ("pass", "fail", "non-strict", "unimplemented", "not-run", "not-applicable")
_COLUMNS: Final = (
    "pass",
    "fail",
    "non-strict",
    "unimplemented",
    "not-run",
    "untested",
    "inspection",
)


def _area(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    return module.removesuffix(".py").removeprefix("test_")


class Progress:
    """Live display: counts by outcome, the area being checked, failures as they happen."""

    def __init__(
        self, deployment: Deployment, stream: TextIO | None = None, tty: bool | None = None
    ) -> None:
        self.deployment = deployment
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.colour = self.tty and "NO_COLOR" not in os.environ
        self.total = 0
        self.done = 0
        self.counts: Counter[str] = Counter()
        self.area: str | None = None
        self.area_counts: Counter[str] = Counter()
        self.report_dir: str | None = None
        """Where the reports go; a failure's line then names the file with its whole text."""

    def _paint(self, outcome: str, text: str) -> str:
        code = _COLOURS.get(outcome)
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and code else text

    def _write(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def _status(self) -> None:
        if not self.tty:
            return
        counts = "  ".join(
            self._paint(outcome, f"{outcome} {self.counts[outcome]}")
            for outcome in _ORDER
            if self.counts[outcome] or outcome in ("pass", "fail")
        )
        self.stream.write(f"\r\x1b[2K[{self.done}/{self.total}] {counts}  {self.area or ''}")
        self.stream.flush()

    def _flush_area(self) -> None:
        if self.area is None or self.tty:
            return
        counts = ", ".join(f"{self.area_counts[o]} {o}" for o in _ORDER if self.area_counts[o])
        self._write(f"{self.area:<14} {counts}")

    def start(self, total: int) -> None:
        self.total = total
        self._write(
            f"Unisock server conformance: {sanitize_url(self.deployment.url)} "
            f"(profile {self.deployment.profile}, seed {self.deployment.seed}, "
            f"{total} checks)"
        )
        self._status()

    def notice(self, line: str) -> None:
        """A line the person running the suite must see (setup errors, drain ahead)."""
        self._flush_area()
        self.area = None
        self._write(line)
        self._status()

    def collect_error(self, nodeid: str, text: str) -> None:
        self._write(self._paint("fail", f"ERROR collecting {nodeid or 'the suite'}"))
        self._write(_indent(sanitize_text(text, self.deployment)))
        self._status()

    def test_done(self, result: TestResult, outcome: str) -> None:
        area = _area(result.nodeid)
        if area != self.area:
            self._flush_area()
            self.area = area
            self.area_counts = Counter()
        self.done += 1
        self.counts[outcome] += 1
        self.area_counts[outcome] += 1
        if outcome in ("fail", "non-strict"):
            label = "FAIL" if outcome == "fail" else "NON-STRICT"
            ids = ", ".join(result.violated or result.requirements)
            self._write(self._paint(outcome, f"{label} {result.nodeid} [{ids}]"))
            self._write(_indent(_short(sanitize_text(result.message, self.deployment))))
            self._write(f"    rerun: {rerun_hint(result.nodeid, self.deployment.seed)}")
            if self.report_dir:
                whole = f"{self.report_dir.rstrip('/')}/{failure_file(result.nodeid)}"
                self._write(f"    whole failure: {whole}")
        self._status()

    def finish(
        self, grades: Grades, results: Mapping[str, TestResult], run: RunInfo | None = None
    ) -> None:
        self._flush_area()
        if self.tty:
            self.stream.write("\r\x1b[2K")
        setup_error = run.setup_error if run is not None else None
        for line in summary_lines(grades, results, self.deployment, setup_error=setup_error):
            self.stream.write(line + "\n")
        self.stream.flush()


def _short(text: str) -> str:
    """The ``E`` lines of a pytest failure and its location; the report has the rest."""
    lines = text.strip().splitlines()
    errors = [line for line in lines if line.startswith("E ")]
    if not errors:
        return "\n".join(lines[-15:])
    location = [line for line in lines if line.startswith("/") or ".py:" in line[:200]]
    return "\n".join(errors[:12] + location[-1:])


def _indent(text: str, limit: int = 25) -> str:
    lines = text.strip().splitlines()
    if len(lines) > limit:
        lines = [*lines[:limit], f"[... {len(lines) - limit} more lines]"]
    return "\n".join(f"    {line}" for line in lines)


def _not_run_lines(grades: Grades, results: Mapping[str, TestResult]) -> list[str]:
    """The MUSTs not run, grouped by what would run them."""
    musts = not_run_musts(grades)
    if not musts:
        return []
    by_reason: dict[str, list[str]] = {}
    for grade in musts:
        reasons = not_run_reasons(grade, results) or ["no check selected"]
        by_reason.setdefault(reasons[0], []).append(grade.id)
    lines = ["", f"MUST requirements not run ({len(musts)}), and why:"]
    for reason, idents in sorted(by_reason.items(), key=lambda item: -len(item[1])):
        shown = idents if len(idents) <= 12 else [*idents[:10], f"and {len(idents) - 10} more"]
        lines.append(f"  {', '.join(shown)}")
        lines.append(f"      {_one_line(reason)}")
    return lines


_BUDGET: Final = re.compile(r"--time-budget (\d+)")


def _time_lines(results: Mapping[str, TestResult], cli: bool) -> list[str]:
    """Timing checks skipped for time, and the budget that runs them all."""
    skipped = [r for r in results.values() if r.message.strip().startswith(TIME_PREFIX)]
    if not skipped:
        return []
    budgets = [int(m.group(1)) for r in skipped for m in [_BUDGET.search(r.message)] if m]
    hint = f"--time-budget {max(budgets)}" if budgets else "a larger --time-budget"
    hint = hint if cli else for_pytest(hint)
    return [
        "",
        f"{len(skipped)} timing check(s) skipped for time; {hint} runs them all:",
        *(f"  {r.nodeid.rsplit('::', 1)[-1]}" for r in skipped),
    ]


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def summary_lines(
    grades: Grades,
    results: Mapping[str, TestResult],
    deployment: Deployment,
    seed_option: str = "--seed",
    *,
    setup_error: SetupError | None = None,
    cli: bool = True,
) -> list[str]:
    """The end-of-run table per level, the failed MUSTs with their checks, the MUSTs not run
    with what runs them, and the verdict (spec 14.2); a setup error replaces all of it."""
    if setup_error is not None:
        return [
            "",
            f"Setup error: {setup_error.message}",
            "No check was run.",
            "",
            f"Verdict: {SETUP_ERROR} (exit status {setup_error.status})",
        ]
    applicable = [g for g in grades.requirements.values() if g.outcome != "not-applicable"]
    header = f"{'level':<8}" + "".join(f"{c:>15}" for c in _COLUMNS) + f"{'total':>8}"
    lines = ["", "Requirements by level:", header]
    for level in ("MUST", "SHOULD", "MAY"):
        counts = Counter(g.outcome for g in applicable if g.level == level)
        lines.append(
            f"{level:<8}"
            + "".join(f"{counts.get(c, 0):>15}" for c in _COLUMNS)
            + f"{sum(counts.values()):>8}"
        )
    tests = Counter(grades.tests.values())
    lines.append(
        "Checks: "
        + ", ".join(f"{tests.get(o, 0)} {o}" for o in _ORDER)
        + f" (of {len(grades.tests)})"
    )
    failed = [g for g in applicable if g.level == "MUST" and g.outcome == "fail"]
    if failed:
        lines += ["", "Failed MUST requirements:"]
        for grade in failed:
            lines.append(f"  {grade.id} ({grade.section}) {grade.summary}")
            failing = [t for t in grade.tests if grades.tests.get(t) == "fail"]
            lines += [f"      {entry}" for entry in group_tests(failing)]
    lines += _not_run_lines(grades, results)
    lines += _time_lines(results, cli)
    inspection = sum(1 for g in applicable if g.level == "MUST" and g.outcome == "inspection")
    if inspection:
        lines.append(
            f"{inspection} MUST requirement(s) verified by inspection, not by the suite "
            "(see report)."
        )
    lines += ["", f"Verdict: {verdict(grades)} (seed {deployment.seed})"]
    failing = sorted(n for n, o in grades.tests.items() if o == "fail")
    if failing:
        lines.append(
            f"Rerun one failing check with the same options plus "
            f"{rerun_hint(failing[0], deployment.seed, seed_option)}"
        )
    return lines
