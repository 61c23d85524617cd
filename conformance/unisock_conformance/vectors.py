"""Runner for the language-agnostic test vectors in ``conformance/vectors/`` (UNI-CONF).

An implementation exposes the pure rules it wants checked as methods of one object (a class
instance or a module). Each vector feature needs one or two of the methods of :class:`RuleSet`;
a feature whose method is missing is graded ``unimplemented``, never ``pass``.

Usage::

    python -m unisock_conformance.vectors MODULE[:OBJECT] [--feature NAME ...] [--verbose]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from unisock_conformance.paths import VECTORS_DIR

__all__ = [
    "FEATURES",
    "RuleSet",
    "VectorCase",
    "VectorFile",
    "VectorResult",
    "load_vectors",
    "main",
    "run_vectors",
    "summarize",
]

Outcome = Literal["pass", "fail", "unimplemented", "error"]

FEATURES: tuple[str, ...] = (
    "channel-names",
    "patterns",
    "matching",
    "containment",
    "publish-authorization",
    "filters",
    "delivery",
    "backoff",
    "close-codes",
    "messages",
)


class RuleSet(Protocol):
    """Pure protocol rules an implementation exposes to the vectors.

    Every method is optional: the runner looks each one up on the object and grades the
    features needing a missing method as ``unimplemented``. The protocol documents the
    signatures; an object with only some of the methods is still accepted by the runner.
    """

    def message_valid(self, direction: str, message: Any) -> bool:
        """Whether ``message`` is schema-valid in ``direction`` (``client``/``server``)."""
        ...

    def channel_valid(self, name: str) -> bool:
        """Whether ``name`` is a canonical channel name."""
        ...

    def pattern_valid(self, pattern: str) -> bool:
        """Whether ``pattern`` is a valid channel pattern."""
        ...

    def matches(self, pattern: str, channel: str) -> bool:
        """Whether ``pattern`` matches the concrete ``channel``."""
        ...

    def contains(self, grant: str, pattern: str) -> bool:
        """Whether every channel matched by ``pattern`` is matched by ``grant``."""
        ...

    def publish_allowed(
        self, grants: list[str], channel: str, role: str, sub: str, user: str | None
    ) -> bool:
        """Whether a publish to ``channel`` is authorised by ``grants`` and ``role``."""
        ...

    def filter_valid(self, filter: Any) -> bool:
        """Whether ``filter`` is a valid filter under the default limits."""
        ...

    def filter_eval(self, filter: Any, event: dict[str, Any]) -> bool:
        """Result of a valid ``filter`` over ``event`` (``{"event": type, "attrs": {...}}``)."""
        ...

    def deliver(self, connection: dict[str, Any], event: dict[str, Any]) -> bool:
        """The delivery predicate: whether ``event`` is delivered to ``connection``."""
        ...

    def backoff_bounds(
        self, params: dict[str, Any], attempt: int, retry_after_ms: int | None
    ) -> tuple[int, int]:
        """Smallest and largest possible reconnect delay in milliseconds."""
        ...

    def close_action(self, code: int) -> str:
        """Reconnect action for a close code: ``never``, ``new_token``, ``backoff``, ``now``."""
        ...


@dataclass(frozen=True)
class VectorCase:
    """One case of a vector file."""

    feature: str
    description: str
    requirements: tuple[str, ...]
    input: Mapping[str, Any]
    expected: Mapping[str, Any]


@dataclass(frozen=True)
class VectorFile:
    """One vector file: all cases of one feature."""

    path: Path
    feature: str
    spec_version: str
    description: str
    cases: tuple[VectorCase, ...]


@dataclass(frozen=True)
class VectorResult:
    """The graded outcome of one case against one implementation."""

    feature: str
    description: str
    requirements: tuple[str, ...]
    outcome: Outcome
    detail: str = ""


def load_vectors(directory: Path = VECTORS_DIR) -> list[VectorFile]:
    """Load every vector file of ``directory`` (the schema file excluded), sorted by name."""
    files: list[VectorFile] = []
    for path in sorted(Path(directory).glob("*.json")):
        if path.name.endswith(".schema.json"):
            continue
        with path.open(encoding="utf-8") as handle:
            document = json.load(handle)
        feature = str(document["feature"])
        cases = tuple(
            VectorCase(
                feature=feature,
                description=str(case["description"]),
                requirements=tuple(str(r) for r in case["requirements"]),
                input=case["input"],
                expected=case["expected"],
            )
            for case in document["cases"]
        )
        files.append(
            VectorFile(
                path=path,
                feature=feature,
                spec_version=str(document["spec_version"]),
                description=str(document["description"]),
                cases=cases,
            )
        )
    return files


class _Unimplemented(Exception):
    """A method the case needs is missing on the rule object."""


def _method(rules: object, name: str) -> Callable[..., Any]:
    method = getattr(rules, name, None)
    if not callable(method):
        raise _Unimplemented(name)
    return method  # type: ignore[no-any-return]


def _check_bool(name: str, got: object, want: object) -> str | None:
    """Return a failure detail, or None when ``got`` is the expected boolean."""
    if not isinstance(got, bool):
        return f"{name} returned {got!r} ({type(got).__name__}), expected a bool"
    if got != want:
        return f"{name} returned {got}, expected {want}"
    return None


def _grade(rules: object, case: VectorCase) -> str | None:
    """Run one case; return a failure detail or None on success."""
    inp, exp = case.input, case.expected
    feature = case.feature
    if feature == "channel-names":
        got = _method(rules, "channel_valid")(inp["name"])
        return _check_bool("channel_valid", got, exp["valid"])
    if feature == "patterns":
        got = _method(rules, "pattern_valid")(inp["pattern"])
        return _check_bool("pattern_valid", got, exp["valid"])
    if feature == "matching":
        got = _method(rules, "matches")(inp["pattern"], inp["channel"])
        return _check_bool("matches", got, exp["matches"])
    if feature == "containment":
        got = _method(rules, "contains")(inp["grant"], inp["pattern"])
        return _check_bool("contains", got, exp["contained"])
    if feature == "publish-authorization":
        got = _method(rules, "publish_allowed")(
            list(inp["grants"]), inp["channel"], inp["role"], inp["sub"], inp.get("user")
        )
        return _check_bool("publish_allowed", got, exp["allowed"])
    if feature == "filters":
        valid = _method(rules, "filter_valid")
        evaluate = _method(rules, "filter_eval") if exp["valid"] else None
        problem = _check_bool("filter_valid", valid(inp["filter"]), exp["valid"])
        if problem is not None or evaluate is None:
            return problem
        return _check_bool("filter_eval", evaluate(inp["filter"], inp["event"]), exp["result"])
    if feature == "delivery":
        got = _method(rules, "deliver")(dict(inp["connection"]), dict(inp["event"]))
        return _check_bool("deliver", got, exp["delivered"])
    if feature == "backoff":
        bounds = _method(rules, "backoff_bounds")(
            dict(inp["params"]), inp["attempt"], inp.get("retry_after_ms")
        )
        want = (exp["min_ms"], exp["max_ms"])
        if not isinstance(bounds, tuple | list) or len(bounds) != 2:
            return f"backoff_bounds returned {bounds!r}, expected a (min_ms, max_ms) pair"
        if (bounds[0], bounds[1]) != want:
            return f"backoff_bounds returned {tuple(bounds)}, expected {want}"
        return None
    if feature == "close-codes":
        action = _method(rules, "close_action")(inp["code"])
        if action != exp["action"]:
            return f"close_action returned {action!r}, expected {exp['action']!r}"
        return None
    if feature == "messages":
        got = _method(rules, "message_valid")(inp["direction"], inp["message"])
        return _check_bool("message_valid", got, exp["valid"])
    raise ValueError(f"unknown vector feature {feature!r}")


def run_case(rules: object, case: VectorCase) -> VectorResult:
    """Grade one case: ``pass``, ``fail``, ``unimplemented`` or ``error`` (it raised)."""
    outcome: Outcome
    try:
        detail = _grade(rules, case)
    except _Unimplemented as missing:
        outcome, detail = "unimplemented", f"no method {missing.args[0]}()"
    except Exception as exc:  # an implementation under test may raise anything
        outcome, detail = "error", f"{type(exc).__name__}: {exc}"
    else:
        outcome, detail = ("pass", "") if detail is None else ("fail", detail)
    return VectorResult(
        feature=case.feature,
        description=case.description,
        requirements=case.requirements,
        outcome=outcome,
        detail=detail,
    )


def run_vectors(
    rules: object,
    features: Iterable[str] | None = None,
    directory: Path = VECTORS_DIR,
) -> list[VectorResult]:
    """Grade every case (or the cases of ``features``) against ``rules``, in file order."""
    wanted = None if features is None else set(features)
    if wanted is not None and not wanted <= set(FEATURES):
        raise ValueError(f"unknown features: {sorted(wanted - set(FEATURES))}")
    results: list[VectorResult] = []
    for vector_file in load_vectors(directory):
        if wanted is not None and vector_file.feature not in wanted:
            continue
        results.extend(run_case(rules, case) for case in vector_file.cases)
    return results


def summarize(results: Sequence[VectorResult]) -> dict[str, Counter[str]]:
    """Count outcomes per feature."""
    summary: dict[str, Counter[str]] = {}
    for result in results:
        summary.setdefault(result.feature, Counter())[result.outcome] += 1
    return summary


def _load_rules(spec: str) -> object:
    """Resolve ``MODULE[:OBJECT]``; a class is instantiated without arguments."""
    module_name, _, attribute = spec.partition(":")
    target: object = importlib.import_module(module_name)
    for part in filter(None, attribute.split(".")):
        target = getattr(target, part)
    if isinstance(target, type):
        target = target()
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: print a per-feature summary; exit 1 on any fail or error."""
    parser = argparse.ArgumentParser(
        prog="python -m unisock_conformance.vectors",
        description="Run the Unisock conformance vectors against an implementation's rules.",
    )
    parser.add_argument("rules", help="MODULE[:OBJECT] exposing the RuleSet methods")
    parser.add_argument("--feature", action="append", choices=FEATURES, help="repeatable")
    parser.add_argument("--vectors", type=Path, default=VECTORS_DIR, help="vector directory")
    parser.add_argument("--verbose", action="store_true", help="also list passing cases")
    args = parser.parse_args(argv)

    results = run_vectors(_load_rules(args.rules), args.feature, args.vectors)
    for result in results:
        if args.verbose or result.outcome in ("fail", "error"):
            ids = ",".join(result.requirements)
            line = f"{result.outcome.upper():<13} {result.feature}: {result.description} [{ids}]"
            print(line if not result.detail else f"{line}\n{'':14}{result.detail}")
    totals: Counter[str] = Counter()
    print(f"{'feature':<24}{'pass':>6}{'fail':>6}{'error':>7}{'unimpl':>8}")
    for feature, counts in summarize(results).items():
        totals.update(counts)
        print(
            f"{feature:<24}{counts['pass']:>6}{counts['fail']:>6}"
            f"{counts['error']:>7}{counts['unimplemented']:>8}"
        )
    print(
        f"{'total':<24}{totals['pass']:>6}{totals['fail']:>6}"
        f"{totals['error']:>7}{totals['unimplemented']:>8}"
    )
    return 1 if totals["fail"] or totals["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
