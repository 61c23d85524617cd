"""The delivery predicate, clause by clause, and its fan-out form (UNI-DEL)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unisock.channels import parse_channel, parse_pattern
from unisock.delivery import (
    ConnectionView,
    EventView,
    PreparedEvent,
    SubscriptionView,
    recipients,
    should_deliver,
)
from unisock.filters import compile_filter

NOW = 1_000_000


def _sub(pattern: str, flt: Any = None) -> SubscriptionView:
    return SubscriptionView(parse_pattern(pattern), None if flt is None else compile_filter(flt))


def _conn(**changes: Any) -> ConnectionView:
    base = ConnectionView(
        tenant="acme",
        sub="bob",
        connection_id="c-bob",
        state="open",
        expires_at_ms=NOW + 1,
        subscriptions=(_sub("tasks.>"),),
    )
    return dataclasses.replace(base, **changes)


def _event(channel: str = "tasks.42", **changes: Any) -> EventView:
    base = EventView(
        tenant="acme",
        channel=parse_channel(channel),
        owner=None,
        event_type="task.updated",
        attrs={"priority": 2},
        publisher_connection="c-alice",
    )
    return dataclasses.replace(base, **changes)


def _both(conn: ConnectionView, event: EventView, now: int = NOW) -> bool:
    """should_deliver, checked against the fan-out form on every call."""
    result = should_deliver(conn, event, now)
    assert PreparedEvent.of(event).delivers_to(conn, now) is result
    return result


def test_event_is_delivered_when_every_clause_holds() -> None:
    assert _both(_conn(), _event())


# Clause 1: state and token expiry.


@pytest.mark.parametrize("state", ["open", "draining"])
def test_delivery_continues_while_open_or_draining(state: str) -> None:
    assert _both(_conn(state=state), _event())


@pytest.mark.parametrize("state", ["awaiting_hello", "closed", "closing"])
def test_no_delivery_outside_open_or_draining(state: str) -> None:
    assert not _both(_conn(state=state), _event())


def test_no_delivery_once_the_token_has_expired() -> None:
    assert not _both(_conn(expires_at_ms=NOW), _event())
    assert not _both(_conn(expires_at_ms=NOW - 1), _event())
    assert _both(_conn(expires_at_ms=NOW), _event(), now=NOW - 1)


# Clause 2: tenant isolation.


def test_no_delivery_across_tenants() -> None:
    assert not _both(_conn(tenant="globex"), _event())
    assert not _both(_conn(tenant="globex", subscriptions=(_sub("$me"),)), _event("$me"))


def test_system_events_cross_tenants() -> None:
    conn = _conn(tenant="globex", subscriptions=(_sub("$sys.>"),))
    assert _both(conn, _event("$sys.maint", tenant=None))
    assert _both(conn, _event("$sys.maint", tenant="acme"))


# Clause 3: private channels.


def test_private_event_reaches_only_its_owner() -> None:
    conn = _conn(subscriptions=(_sub("$me.>"),))
    assert _both(conn, _event("$me.inbox", owner="bob"))
    assert not _both(conn, _event("$me.inbox", owner="carol"))
    assert not _both(conn, _event("$me.inbox", owner=None))


# Clause 4: subscriptions and filters.


def test_no_delivery_without_a_matching_subscription() -> None:
    assert not _both(_conn(subscriptions=()), _event())
    assert not _both(_conn(subscriptions=(_sub("tasks.*.x"),)), _event())
    assert not _both(_conn(subscriptions=(_sub(">"),)), _event("$me.x", owner="bob"))


def test_filter_decides_for_its_subscription() -> None:
    passing = _sub("tasks.*", {"eq": ["priority", 2]})
    failing = _sub("tasks.*", {"gt": ["priority", 5]})
    by_type = _sub("tasks.*", {"eq": ["$event", "task.created"]})
    assert _both(_conn(subscriptions=(passing,)), _event())
    assert not _both(_conn(subscriptions=(failing,)), _event())
    assert not _both(_conn(subscriptions=(by_type,)), _event())


def test_any_one_admitting_subscription_is_enough() -> None:
    failing = _sub("tasks.*", {"gt": ["priority", 5]})
    other = _sub("chat.>")
    assert _both(_conn(subscriptions=(failing, other, _sub("tasks.42"))), _event())
    assert not _both(_conn(subscriptions=(failing, other)), _event())


# Clauses 5 and 6: targeting.


def test_to_restricts_delivery_to_named_users() -> None:
    assert _both(_conn(), _event(to=frozenset({"bob", "carol"})))
    assert not _both(_conn(), _event(to=frozenset({"carol"})))


def test_exclude_removes_named_users() -> None:
    assert not _both(_conn(), _event(exclude=frozenset({"bob"})))
    assert _both(_conn(), _event(exclude=frozenset({"carol"})))


def test_exclude_wins_over_to() -> None:
    assert not _both(_conn(), _event(to=frozenset({"bob"}), exclude=frozenset({"bob"})))


# Clause 7: exclude_self.


def test_exclude_self_skips_only_the_publishing_connection() -> None:
    event = _event(exclude_self=True, publisher_connection="c-bob")
    assert not _both(_conn(), event)
    assert _both(_conn(connection_id="c-bob-2"), event)
    assert _both(_conn(), _event(exclude_self=False, publisher_connection="c-bob"))
    assert _both(_conn(), _event(exclude_self=True, publisher_connection=None))


def test_recipients_lists_each_receiving_connection_once() -> None:
    receiving = _conn(subscriptions=(_sub("tasks.>"), _sub("tasks.42"), _sub("tasks.*")))
    other_tenant = _conn(tenant="globex", connection_id="c-g")
    closed = _conn(state="closed", connection_id="c-closed")
    assert recipients(_event(), [receiving, other_tenant, closed], NOW) == [receiving]


# The fan-out form must agree with the reference predicate on every input.

subs = st.sampled_from(["bob", "carol"])
channel_names = st.sampled_from(["tasks.42", "tasks.7", "$me.inbox", "$me", "$sys.maint"])
pattern_names = st.sampled_from(["tasks.>", "tasks.42", "*.7", "$me.>", "$me", "$sys.>", ">"])
filter_objs = st.sampled_from([None, {"eq": ["priority", 2]}, {"ne": ["$event", "x"]}])
user_sets = st.none() | st.frozensets(subs, min_size=1)

conns = st.builds(
    ConnectionView,
    tenant=st.sampled_from(["acme", "globex"]),
    sub=subs,
    connection_id=st.sampled_from(["c1", "c2"]),
    state=st.sampled_from(["open", "draining", "closed"]),
    expires_at_ms=st.integers(NOW - 1, NOW + 1),
    subscriptions=st.lists(st.builds(_sub, pattern_names, filter_objs), max_size=3).map(tuple),
)
events = st.builds(
    EventView,
    tenant=st.sampled_from(["acme", "globex", None]),
    channel=channel_names.map(parse_channel),
    owner=st.none() | subs,
    event_type=st.sampled_from(["x", "task.updated"]),
    attrs=st.dictionaries(st.just("priority"), st.sampled_from([1, 2, True])),
    to=user_sets,
    exclude=user_sets,
    exclude_self=st.booleans(),
    publisher_connection=st.none() | st.sampled_from(["c1", "c2"]),
)


@given(conns, events)
def test_fan_out_form_agrees_with_the_reference_predicate(
    conn: ConnectionView, event: EventView
) -> None:
    expected = should_deliver(conn, event, NOW)
    assert PreparedEvent.of(event).delivers_to(conn, NOW) is expected
    assert (recipients(event, [conn], NOW) == [conn]) is expected
