"""The reference core passes the language-agnostic conformance vectors (UNI-CONF).

The adapter below is the thin layer any implementation writes: it turns the vectors'
JSON inputs into the core's own values and answers with the core's pure rules.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from unisock.backoff import DEFAULTS, BackoffParams, backoff_bounds, backoff_delay
from unisock.channels import (
    ChannelError,
    contains,
    matches,
    parse_channel,
    parse_pattern,
    publish_allowed,
)
from unisock.closecodes import close_class
from unisock.delivery import ConnectionView, EventView, SubscriptionView, should_deliver
from unisock.filters import FilterError, compile_filter, evaluate
from unisock_conformance.vectors import FEATURES, run_vectors

NOW_MS = 1_764_120_000_000

# Message validation is the schema layer's; this file covers the pure rules of the core.
CORE_FEATURES = tuple(feature for feature in FEATURES if feature != "messages")


class CoreRules:
    """The RuleSet the vector runner calls, backed by the reference core."""

    def channel_valid(self, name: str) -> bool:
        try:
            parse_channel(name)
        except ChannelError:
            return False
        return True

    def pattern_valid(self, pattern: str) -> bool:
        try:
            parse_pattern(pattern)
        except ChannelError:
            return False
        return True

    def matches(self, pattern: str, channel: str) -> bool:
        return matches(parse_pattern(pattern), parse_channel(channel))

    def contains(self, grant: str, pattern: str) -> bool:
        return contains(parse_pattern(grant), parse_pattern(pattern))

    def publish_allowed(
        self, grants: list[str], channel: str, role: str, sub: str, user: str | None
    ) -> bool:
        try:
            target = parse_channel(channel)
        except ChannelError:
            return False  # the server answers invalid_channel; either way nothing is published
        patterns = [parse_pattern(grant) for grant in grants]
        return publish_allowed(patterns, target, role, sub, user)

    def filter_valid(self, filter: Any) -> bool:
        try:
            compile_filter(filter)
        except FilterError:
            return False
        return True

    def filter_eval(self, filter: Any, event: dict[str, Any]) -> bool:
        return evaluate(compile_filter(filter), event["event"], event["attrs"])

    def deliver(self, connection: dict[str, Any], event: dict[str, Any]) -> bool:
        subscriptions = tuple(
            SubscriptionView(
                parse_pattern(sub["pattern"]),
                compile_filter(sub["filter"]) if "filter" in sub else None,
            )
            for sub in connection["subscriptions"]
        )
        conn = ConnectionView(
            tenant=connection["tenant"],
            sub=connection["sub"],
            connection_id=connection["connection"],
            state=connection["state"],
            expires_at_ms=NOW_MS if connection["expired"] else NOW_MS + 60_000,
            subscriptions=subscriptions,
        )
        view = EventView(
            tenant=event["tenant"],
            channel=parse_channel(event["channel"]),
            owner=event.get("owner"),
            event_type=event["event"],
            attrs=event["attrs"],
            to=frozenset(event["to"]) if "to" in event else None,
            exclude=frozenset(event["exclude"]) if "exclude" in event else None,
            exclude_self=event["exclude_self"],
            publisher_connection=event["publisher_connection"],
        )
        return should_deliver(conn, view, NOW_MS)

    def backoff_bounds(
        self, params: dict[str, Any], attempt: int, retry_after_ms: int | None
    ) -> tuple[int, int]:
        backoff = BackoffParams(
            base_ms=params["base_ms"],
            cap_ms=params["cap_ms"],
            floor_ms=params["floor_ms"],
            reset_after_ms=params.get("reset_after_ms", DEFAULTS.reset_after_ms),
        )
        low, high = backoff_bounds(backoff, attempt, retry_after_ms)
        # The bounds must be the delay's real range, not just a formula beside it.
        rng = random.Random(attempt)
        for _ in range(32):
            assert low <= backoff_delay(backoff, attempt, rng, retry_after_ms) <= high
        return low, high

    def close_action(self, code: int) -> str:
        return close_class(code).value


def test_core_rules_pass_every_conformance_vector() -> None:
    results = run_vectors(CoreRules(), CORE_FEATURES)
    assert {result.feature for result in results} == set(CORE_FEATURES)
    failures = [r for r in results if r.outcome != "pass"]
    report = "\n".join(
        f"{r.outcome} {r.feature}: {r.description} [{','.join(r.requirements)}] {r.detail}"
        for r in failures
    )
    assert not failures, f"{len(failures)} of {len(results)} vectors failed:\n{report}"


@pytest.mark.parametrize("feature", CORE_FEATURES)
def test_each_core_vector_file_has_cases(feature: str) -> None:
    assert run_vectors(CoreRules(), [feature])
