"""Grades (spec section 14.2): from raw test results to per-test and per-requirement outcomes.

A failed check fails each MUST it carries and makes each SHOULD or MAY it carries
``non-strict`` (a check that names the rules it found broken fails only those). A requirement
fails when one of its checks does, passes when one ran and none failed, and is otherwise
``unimplemented``, ``not-run`` or ``not-applicable`` as its checks say; a requirement of an
optional feature the server does not announce is ``unimplemented`` (UNI-CONF-2); one with no
check at all is ``untested``; one of another role is ``not-applicable``. A requirement the
registry marks ``"verification": "inspection"`` cannot be observed through the protocol: it
is listed as ``inspection`` (spec 14.2), for review, and never graded from checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from unisock_conformance.deployment import NOT_APPLICABLE_PREFIX, UNIMPLEMENTED_PREFIX

__all__ = [
    "EXIT_CONFORMING",
    "EXIT_DRAINING",
    "EXIT_HANDSHAKE_REFUSED",
    "EXIT_INCOMPLETE",
    "EXIT_INTERNAL",
    "EXIT_NON_CONFORMING",
    "EXIT_TOKEN_COMMAND",
    "EXIT_TOKEN_REFUSED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "OUTCOMES",
    "REQUIREMENT_OUTCOMES",
    "SERVER_ROLES",
    "SETUP_ERROR",
    "SEVERITY",
    "VERIFICATION_INSPECTION",
    "VIOLATED_PROPERTY",
    "Grades",
    "Outcome",
    "RequirementGrade",
    "RequirementOutcome",
    "TestResult",
    "Verdict",
    "combine",
    "exit_status",
    "grade_requirements",
    "grade_test",
    "not_run_musts",
    "outcome_for_level",
    "verdict",
    "worst",
]

Outcome = Literal["pass", "fail", "non-strict", "unimplemented", "not-run", "not-applicable"]
RequirementOutcome = Literal[
    "pass",
    "fail",
    "non-strict",
    "unimplemented",
    "not-run",
    "untested",
    "inspection",
    "not-applicable",
]
Status = Literal["passed", "failed", "skipped", "deselected"]
Verdict = str
"""Spec 14.2: ``conforming`` or ``conforming (non-strict)``, each possibly followed by
``, N MUSTs not run``; ``non-conforming``; ``setup error``."""
SETUP_ERROR: Final = "setup error"

# Exit statuses of a server run (documented in the conformance how-to).
EXIT_CONFORMING: Final = 0
EXIT_NON_CONFORMING: Final = 1
EXIT_USAGE: Final = 2
EXIT_INCOMPLETE: Final = 6
"""``--require-complete`` and at least one applicable MUST was not run."""
EXIT_UNREACHABLE: Final = 10
EXIT_HANDSHAKE_REFUSED: Final = 11
EXIT_TOKEN_REFUSED: Final = 12
EXIT_DRAINING: Final = 13
EXIT_TOKEN_COMMAND: Final = 14
EXIT_INTERNAL: Final = 70

OUTCOMES: Final[tuple[Outcome, ...]] = (
    "pass",
    "fail",
    "non-strict",
    "unimplemented",
    "not-run",
    "not-applicable",
)
REQUIREMENT_OUTCOMES: Final[tuple[RequirementOutcome, ...]] = (
    "pass",
    "fail",
    "non-strict",
    "unimplemented",
    "not-run",
    "untested",
    "inspection",
    "not-applicable",
)
# Worst-of order: a requirement is only as good as its weakest check. A check that found the
# requirement's condition absent from the deployment (``not-applicable``) says the least.
SEVERITY: Final[Mapping[Outcome, int]] = {
    "not-applicable": -1,
    "pass": 0,
    "not-run": 1,
    "unimplemented": 2,
    "non-strict": 3,
    "fail": 4,
}
SERVER_ROLES: Final = frozenset({"server", "broadcaster"})
# Registry ``verification`` value of requirements no run can observe (spec 14.2).
VERIFICATION_INSPECTION: Final = "inspection"
# pytest user property by which a failed check names the rules it found broken: the failure
# is graded against those only; its other requirements count as not run by that check.
VIOLATED_PROPERTY: Final = "unisock-violated"


@dataclass(frozen=True)
class TestResult:
    """One check as pytest ran it (or did not: ``deselected``)."""

    __test__ = False  # not a pytest test class despite the name

    nodeid: str
    requirements: tuple[str, ...]
    status: Status
    message: str = ""
    duration_s: float = 0.0
    features: tuple[str, ...] = ()
    violated: tuple[str, ...] = ()
    """For a failed check that knows which of its rules broke: those rules, first first."""


@dataclass(frozen=True)
class RequirementGrade:
    """One registry entry with its outcome and the checks that carry it."""

    id: str
    level: str
    role: str
    section: str
    summary: str
    feature: str | None
    outcome: RequirementOutcome
    tests: tuple[str, ...]


@dataclass
class Grades:
    """Everything a report needs: graded tests and requirements."""

    tests: dict[str, Outcome] = field(default_factory=dict)
    requirements: dict[str, RequirementGrade] = field(default_factory=dict)


def worst(outcomes: Iterable[Outcome]) -> Outcome:
    """The worst outcome (``pass`` for none)."""
    result: Outcome | None = None
    for outcome in outcomes:
        if result is None or SEVERITY[outcome] > SEVERITY[result]:
            result = outcome
    return "pass" if result is None else result


# How the checks of one requirement combine (spec 14.2): a failure decides; otherwise one
# check that ran and passed makes it ``pass`` (a skipped check beside it does not undo that);
# only when none ran is it ``unimplemented``, ``not-run`` or ``not-applicable``.
_REQUIREMENT_ORDER: Final[tuple[Outcome, ...]] = (
    "fail",
    "non-strict",
    "pass",
    "unimplemented",
    "not-run",
    "not-applicable",
)


def combine(outcomes: Iterable[Outcome]) -> Outcome:
    """A requirement's outcome from the outcomes of all of its checks (``pass`` for none)."""
    present = set(outcomes)
    return next((outcome for outcome in _REQUIREMENT_ORDER if outcome in present), "pass")


def _skip_outcome(message: str) -> Outcome:
    text = message.strip()
    if text.startswith(UNIMPLEMENTED_PREFIX):
        return "unimplemented"
    if text.startswith(NOT_APPLICABLE_PREFIX):
        return "not-applicable"
    return "not-run"


def outcome_for_level(result: TestResult, level: str, ident: str | None = None) -> Outcome:
    """What one test says about one requirement (``ident``) of ``level``.

    A failed test that names the rules it found broken fails only those; for its other
    requirements it stopped before it could tell, so it counts as not run.
    """
    if result.status == "passed":
        return "pass"
    if result.status == "failed":
        if result.violated and ident is not None and ident not in result.violated:
            return "not-run"
        return "fail" if level == "MUST" else "non-strict"
    if result.status == "deselected":
        return "not-run"
    return _skip_outcome(result.message)


def grade_test(result: TestResult, levels: Sequence[str]) -> Outcome:
    """A test's outcome: worst over the (applicable) requirement levels it carries.

    A failed test with no applicable requirement (a defect of the check) counts as ``fail``.
    """
    return worst(outcome_for_level(result, level) for level in (levels or ("MUST",)))


def grade_requirements(
    registry: Mapping[str, Any],
    results: Iterable[TestResult],
    *,
    features: frozenset[str] | None = None,
    roles: frozenset[str] = SERVER_ROLES,
) -> Grades:
    """Grade every registry requirement (and every test) for a run of the given ``roles``.

    ``features`` is what the server announced (None when unknown, e.g. it was unreachable).
    """
    entries: dict[str, Mapping[str, Any]] = {
        entry["id"]: entry for entry in registry["requirements"]
    }
    grades = Grades()
    by_requirement: dict[str, list[Outcome]] = {ident: [] for ident in entries}
    tests_of: dict[str, list[str]] = {ident: [] for ident in entries}
    for result in results:
        known = [ident for ident in result.requirements if ident in entries]
        levels = [entries[i]["level"] for i in known if entries[i]["role"] in roles]
        if result.violated:
            levels = [entries[i]["level"] for i in result.violated if i in entries] or levels
        grades.tests[result.nodeid] = grade_test(result, levels)
        for ident in known:
            tests_of[ident].append(result.nodeid)
            by_requirement[ident].append(outcome_for_level(result, entries[ident]["level"], ident))
    for ident, entry in entries.items():
        feature = entry.get("feature")
        outcome: RequirementOutcome
        if entry["role"] not in roles:
            outcome = "not-applicable"
        elif entry.get("verification") == VERIFICATION_INSPECTION:
            outcome = "inspection"
        elif not tests_of[ident]:
            outcome = "untested"
        elif feature is not None and features is not None and feature not in features:
            outcome = "unimplemented"
        else:
            outcome = combine(by_requirement[ident])
        grades.requirements[ident] = RequirementGrade(
            id=ident,
            level=entry["level"],
            role=entry["role"],
            section=entry["section"],
            summary=entry.get("summary", ""),
            feature=feature,
            outcome=outcome,
            tests=tuple(tests_of[ident]),
        )
    return grades


def not_run_musts(grades: Grades) -> list[RequirementGrade]:
    """The applicable MUSTs none of whose checks ran (in registry order)."""
    return [g for g in grades.requirements.values() if g.level == "MUST" and g.outcome == "not-run"]


def verdict(grades: Grades) -> Verdict:
    """Spec 14.2: any ``fail`` -> non-conforming; else conforming, ``(non-strict)`` when a
    recommendation failed, and ``, N MUSTs not run`` when absolute requirements went unchecked.
    """
    outcomes = {grade.outcome for grade in grades.requirements.values()}
    if "fail" in outcomes:
        return "non-conforming"
    base = "conforming (non-strict)" if "non-strict" in outcomes else "conforming"
    count = len(not_run_musts(grades))
    if count:
        return f"{base}, {count} MUST{'s' if count != 1 else ''} not run"
    return base


def exit_status(grades: Grades, *, require_complete: bool = False) -> int:
    """0 when no MUST that was run failed; 1 when one did; with ``require_complete``,
    ``EXIT_INCOMPLETE`` when none failed but at least one was not run (untested MUSTs have no
    check to run). A check graded ``fail`` also makes it 1, even when its IDs are of another
    role.
    """
    failed = any(
        grade.outcome == "fail" and grade.level == "MUST" for grade in grades.requirements.values()
    )
    if failed or "fail" in grades.tests.values():
        return EXIT_NON_CONFORMING
    if require_complete and not_run_musts(grades):
        return EXIT_INCOMPLETE
    return EXIT_CONFORMING
