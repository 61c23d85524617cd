"""Grades (spec section 14.2): from raw test results to per-test and per-requirement outcomes.

A failed check fails each MUST it carries and makes each SHOULD or MAY it carries
``non-strict``. A requirement takes the worst outcome over its checks; a requirement of an
optional feature the server does not announce is ``unimplemented`` (UNI-CONF-2); one with no
check at all is ``untested``; one of another role is ``not-applicable``. A requirement the
registry marks ``"verification": "inspection"`` cannot be observed through the protocol: it
is listed as ``inspection`` (spec 14.2), for review, and never graded from checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from unisock_conformance.deployment import UNIMPLEMENTED_PREFIX

__all__ = [
    "OUTCOMES",
    "REQUIREMENT_OUTCOMES",
    "SERVER_ROLES",
    "SEVERITY",
    "VERIFICATION_INSPECTION",
    "Grades",
    "Outcome",
    "RequirementGrade",
    "RequirementOutcome",
    "TestResult",
    "Verdict",
    "exit_status",
    "grade_requirements",
    "grade_test",
    "outcome_for_level",
    "verdict",
    "worst",
]

Outcome = Literal["pass", "fail", "non-strict", "unimplemented", "not-run"]
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
Verdict = Literal["conforming", "conforming (non-strict)", "non-conforming"]

OUTCOMES: Final[tuple[Outcome, ...]] = ("pass", "fail", "non-strict", "unimplemented", "not-run")
REQUIREMENT_OUTCOMES: Final[tuple[RequirementOutcome, ...]] = (
    *OUTCOMES,
    "untested",
    "inspection",
    "not-applicable",
)
# Worst-of order: a requirement is only as good as its weakest check.
SEVERITY: Final[Mapping[Outcome, int]] = {
    "pass": 0,
    "not-run": 1,
    "unimplemented": 2,
    "non-strict": 3,
    "fail": 4,
}
SERVER_ROLES: Final = frozenset({"server", "broadcaster"})
# Registry ``verification`` value of requirements no run can observe (spec 14.2).
VERIFICATION_INSPECTION: Final = "inspection"


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
    result: Outcome = "pass"
    for outcome in outcomes:
        if SEVERITY[outcome] > SEVERITY[result]:
            result = outcome
    return result


def _skip_outcome(message: str) -> Outcome:
    return "unimplemented" if message.strip().startswith(UNIMPLEMENTED_PREFIX) else "not-run"


def outcome_for_level(result: TestResult, level: str) -> Outcome:
    """What one test says about one requirement of ``level``."""
    if result.status == "passed":
        return "pass"
    if result.status == "failed":
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
        grades.tests[result.nodeid] = grade_test(result, levels)
        for ident in known:
            tests_of[ident].append(result.nodeid)
            by_requirement[ident].append(outcome_for_level(result, entries[ident]["level"]))
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
            outcome = worst(by_requirement[ident])
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


def verdict(grades: Grades) -> Verdict:
    """Spec 14.2: any ``fail`` -> non-conforming; else any ``non-strict`` -> non-strict."""
    outcomes = {grade.outcome for grade in grades.requirements.values()}
    if "fail" in outcomes:
        return "non-conforming"
    if "non-strict" in outcomes:
        return "conforming (non-strict)"
    return "conforming"


def exit_status(grades: Grades) -> int:
    """0 when no MUST that was run failed (not-run and untested MUSTs are reported, not fatal).

    A check graded ``fail`` also makes it 1, even when its IDs are of another role.
    """
    failed = any(
        grade.outcome == "fail" and grade.level == "MUST" for grade in grades.requirements.values()
    )
    return 1 if failed or "fail" in grades.tests.values() else 0
