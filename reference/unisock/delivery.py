"""The delivery predicate: who receives an event (spec section 7, UNI-DEL).

:func:`should_deliver` is the normative reference: one pure function over two small
frozen views, one clause per line of the spec. :class:`PreparedEvent` is the same rule
reordered for fan-out (event-only work done once, cheap rejections first); the tests
check that both always agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from unisock.channels import Channel, Namespace, Pattern, matches
from unisock.filters import Filter, evaluate

__all__ = [
    "DELIVERING_STATES",
    "ConnectionView",
    "EventView",
    "PreparedEvent",
    "SubscriptionView",
    "recipients",
    "should_deliver",
]

DELIVERING_STATES = frozenset({"open", "draining"})
"""Connection states in which events are delivered (``draining`` keeps delivering)."""


@dataclass(frozen=True, slots=True)
class SubscriptionView:
    """An active subscription: ``subscribed`` sent and ``unsubscribed`` not yet sent."""

    pattern: Pattern
    filter: Filter | None = None


@dataclass(frozen=True, slots=True)
class ConnectionView:
    """What the predicate needs to know about a connection."""

    tenant: str
    sub: str
    connection_id: str
    state: str
    expires_at_ms: int
    subscriptions: tuple[SubscriptionView, ...]


@dataclass(frozen=True, slots=True)
class EventView:
    """What the predicate needs to know about a sequenced event.

    ``tenant`` is the publisher's tenant (ignored for ``$sys``); ``owner`` is the sub that
    owns a ``$me`` channel (``None`` elsewhere).
    """

    tenant: str | None
    channel: Channel
    owner: str | None
    event_type: str
    attrs: Mapping[str, object]
    to: frozenset[str] | None = None
    exclude: frozenset[str] | None = None
    exclude_self: bool = False
    publisher_connection: str | None = None


def _subscription_admits(sub: SubscriptionView, event: EventView) -> bool:
    return matches(sub.pattern, event.channel) and (
        sub.filter is None or evaluate(sub.filter, event.event_type, event.attrs)
    )


def should_deliver(conn: ConnectionView, event: EventView, now_ms: int) -> bool:
    """Whether ``event`` is delivered to ``conn`` at ``now_ms``: all seven clauses hold.

    Several matching subscriptions still mean one delivery: this is a yes/no answer.
    """
    # 1. UNI-DEL / UNI-AUTH: open or draining, and the token has not expired.
    if conn.state not in DELIVERING_STATES or not now_ms < conn.expires_at_ms:
        return False
    # 2. UNI-CH tenant isolation: $sys crosses tenants, everything else stays in its tenant.
    if event.channel.namespace is not Namespace.SYS and event.tenant != conn.tenant:
        return False
    # 3. UNI-CH private channels: a $me event goes to its owner only.
    if event.channel.namespace is Namespace.ME and event.owner != conn.sub:
        return False
    # 4. UNI-SUB: some active subscription matches the channel and its filter passes.
    if not any(_subscription_admits(sub, event) for sub in conn.subscriptions):
        return False
    # 5. UNI-PUB targeting: `to` names the recipients.
    if event.to is not None and conn.sub not in event.to:
        return False
    # 6. UNI-PUB targeting: `exclude` removes users.
    if event.exclude is not None and conn.sub in event.exclude:
        return False
    # 7. UNI-PUB exclude_self: only the publishing connection, not the publisher's other ones.
    return not (event.exclude_self and conn.connection_id == event.publisher_connection)


@dataclass(frozen=True, slots=True)
class PreparedEvent:
    """:func:`should_deliver` for one event and many connections.

    The clauses that look only at the connection identity (tenant, owner, targets, self)
    run before subscription matching and filter evaluation, which cost the most.
    """

    event: EventView
    cross_tenant: bool
    private: bool
    excluded_connection: str | None

    @classmethod
    def of(cls, event: EventView) -> PreparedEvent:
        namespace = event.channel.namespace
        return cls(
            event=event,
            cross_tenant=namespace is Namespace.SYS,
            private=namespace is Namespace.ME,
            excluded_connection=event.publisher_connection if event.exclude_self else None,
        )

    def delivers_to(self, conn: ConnectionView, now_ms: int) -> bool:
        event = self.event
        if not self.cross_tenant and event.tenant != conn.tenant:
            return False
        if self.private and event.owner != conn.sub:
            return False
        if event.to is not None and conn.sub not in event.to:
            return False
        if event.exclude is not None and conn.sub in event.exclude:
            return False
        if self.excluded_connection is not None and conn.connection_id == self.excluded_connection:
            return False
        if conn.state not in DELIVERING_STATES or not now_ms < conn.expires_at_ms:
            return False
        return any(_subscription_admits(sub, event) for sub in conn.subscriptions)


def recipients(
    event: EventView, connections: Iterable[ConnectionView], now_ms: int
) -> list[ConnectionView]:
    """The connections among ``connections`` that receive ``event``, each at most once."""
    prepared = PreparedEvent.of(event)
    return [conn for conn in connections if prepared.delivers_to(conn, now_ms)]
