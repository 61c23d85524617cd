"""The conformance oracle agrees with every language-agnostic vector it has a rule for."""

from __future__ import annotations

import pytest

from unisock_conformance.oracle import Rules
from unisock_conformance.vectors import run_vectors

ORACLE_FEATURES = (
    "channel-names",
    "patterns",
    "matching",
    "containment",
    "publish-authorization",
    "filters",
    "delivery",
)


@pytest.mark.parametrize("feature", ORACLE_FEATURES)
def test_oracle_passes_every_vector_of_feature(feature: str) -> None:
    results = run_vectors(Rules(), [feature])
    assert results, f"no vectors for {feature}"
    failed = [f"{r.description}: {r.outcome} {r.detail}" for r in results if r.outcome != "pass"]
    assert failed == []


def test_oracle_leaves_no_rule_feature_unimplemented() -> None:
    outcomes = {r.outcome for r in run_vectors(Rules(), ORACLE_FEATURES)}
    assert outcomes == {"pass"}
