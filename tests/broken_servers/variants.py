"""Deliberately broken variants of the reference server, applied as monkeypatches.

The shipped server has no switches for any of this: each variant replaces one function or
method of :mod:`unisock` by name, at import time, before the server starts. A target that no
longer exists raises :class:`VariantTargetMissing`, so a refactor of the reference can never
turn a variant silently into the unbroken server. ``tests/test_broken_servers.py`` runs the
server conformance suite against each variant and requires the intended requirement to fail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from unisock import (
    auth,
    delivery,
    errors,
    filters,
    jsonlimits,
    memory_broker,
    messages,
    server,
    session,
)
from unisock.broker import PublishRecord, Replay
from unisock.config import EventTypeRegistry
from unisock.errors import Unavailable
from unisock.memory_broker import MemoryBroker
from unisock.ratelimit import TokenBucket
from unisock.schemas import validator_for
from unisock.server import UnisockServer
from unisock.session import Close, Send, SessionCore, StartPublish
from unisock.state import Input

__all__ = ["VARIANTS", "Variant", "VariantTargetMissing", "apply"]


class VariantTargetMissing(LookupError):
    """The reference no longer has what a variant patches: the variant must be updated."""


def _original(owner: Any, name: str) -> Any:
    """The current ``owner.name``, or a loud failure when a refactor removed it."""
    try:
        return owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
    except (KeyError, AttributeError):
        raise VariantTargetMissing(f"{getattr(owner, '__name__', owner)}.{name}") from None


def _replace(owner: Any, name: str, value: Any) -> None:
    _original(owner, name)
    setattr(owner, name, value)


def _wrap_method(owner: type, name: str, make: Callable[[Any], Any]) -> None:
    """Replace ``owner.name`` by ``make(original)``."""
    _replace(owner, name, make(_original(owner, name)))


# --- tenancy -----------------------------------------------------------------------------------


def cross_tenant() -> None:
    """Fan-out offers every event to every subscriber and the predicate skips the tenant clause."""
    of = _original(delivery.PreparedEvent, "of").__func__

    def prepared_of(cls: type[delivery.PreparedEvent], event: Any) -> delivery.PreparedEvent:
        prepared: delivery.PreparedEvent = of(cls, event)
        return dataclasses.replace(prepared, cross_tenant=True)

    def candidates(self: Any, key: Any) -> set[Any]:
        found: set[Any] = set()
        for table in (self.exact, self.scoped):
            for members in table.values():
                found |= members
        return found

    _replace(delivery.PreparedEvent, "of", classmethod(prepared_of))
    _replace(server._Index, "candidates", candidates)


# --- resume and history ------------------------------------------------------------------------


def resume_drops_first() -> None:
    """Replay after ``from`` starts one event late: offset O+1 is never replayed."""

    def make(original: Any) -> Any:
        async def replay(self: MemoryBroker, key: Any, after: Any) -> Replay:
            result: Replay = await original(self, key, after)
            return dataclasses.replace(result, events=result.events[1:])

        return replay

    _wrap_method(MemoryBroker, "replay", make)


def gap_not_signalled() -> None:
    """A resume older than the history replays what is left instead of sending a gap."""
    exceeded = _original(memory_broker, "GAP_WINDOW_EXCEEDED")

    def make(original: Any) -> Any:
        async def replay(self: MemoryBroker, key: Any, after: Any) -> Replay:
            result: Replay = await original(self, key, after)
            if result.gap != exceeded:
                return result
            retained = tuple(self._channels[key].history)
            return dataclasses.replace(result, events=retained, gap=None)

        return replay

    _wrap_method(MemoryBroker, "replay", make)


def position_invalid_at_head() -> None:
    """A ``from`` offset equal to the head (nothing to replay) is answered ``position_invalid``."""
    invalid = _original(memory_broker, "GAP_POSITION_INVALID")

    def make(original: Any) -> Any:
        async def replay(self: MemoryBroker, key: Any, after: Any) -> Replay:
            result: Replay = await original(self, key, after)
            if result.gap is None and after.offset == result.head.offset:
                return dataclasses.replace(result, events=(), gap=invalid)
            return result

        return replay

    _wrap_method(MemoryBroker, "replay", make)


def position_past_head_accepted() -> None:
    """A ``from`` offset one past the head is taken for the head: no ``position_invalid``."""

    def make(original: Any) -> Any:
        async def replay(self: MemoryBroker, key: Any, after: Any) -> Replay:
            channel = self._channels.get(key)
            if channel is not None and after.offset == channel.head + 1:
                after = dataclasses.replace(after, offset=channel.head)
            result: Replay = await original(self, key, after)
            return result

        return replay

    _wrap_method(MemoryBroker, "replay", make)


def replay_ignores_filter() -> None:
    """Replay skips the subscription's filter; live delivery still applies it."""

    def make(original: Any) -> Any:
        def replay_actions(self: SessionCore, pattern: str, key: Any, replay: Any) -> list[Any]:
            sub = self._subs.get(pattern)
            saved = sub.filter if sub is not None else None
            if sub is not None:
                sub.filter = None
            try:
                return list(original(self, pattern, key, replay))
            finally:
                if sub is not None:
                    sub.filter = saved

        return replay_actions

    _wrap_method(SessionCore, "replay_actions", make)


def replay_ignores_targeting() -> None:
    """Replay skips ``to``, ``exclude`` and ``exclude_self``; live delivery still applies them."""
    event_view = _original(session, "event_view")

    def untargeted(event: Any) -> delivery.PreparedEvent:
        prepared: delivery.PreparedEvent = event_view(event)
        view = dataclasses.replace(prepared.event, to=None, exclude=None, exclude_self=False)
        return dataclasses.replace(prepared, event=view, excluded_connection=None)

    def make(original: Any) -> Any:
        def replay_actions(self: SessionCore, pattern: str, key: Any, replay: Any) -> list[Any]:
            session.event_view = untargeted
            try:
                return list(original(self, pattern, key, replay))
            finally:
                session.event_view = event_view

        return replay_actions

    _wrap_method(SessionCore, "replay_actions", make)


def _rewrite_subscribe(change: Callable[[Any], Any]) -> None:
    """The session decides a subscribe, then its resume instructions are altered on the way."""

    def make(original: Any) -> Any:
        def subscribe(self: SessionCore, message: Any) -> list[Any]:
            return [
                change(a) if isinstance(a, session.StartSubscribe) else a
                for a in original(self, message)
            ]

        return subscribe

    _wrap_method(SessionCore, "_subscribe", make)


def since_overrides_from() -> None:
    """A subscribe with ``since`` drops its ``from`` entries: every channel resumes by time."""
    _rewrite_subscribe(
        lambda a: dataclasses.replace(a, from_positions=()) if a.since is not None else a
    )


def since_dropped_with_from() -> None:
    """A subscribe with ``from`` entries drops ``since``: the other channels are not replayed."""
    _rewrite_subscribe(lambda a: dataclasses.replace(a, since=None) if a.from_positions else a)


def since_gap_exclusive() -> None:
    """A ``since`` equal to the ``ts`` of the last evicted event replays what is left, no gap."""
    exceeded = _original(memory_broker, "GAP_WINDOW_EXCEEDED")

    def make(original: Any) -> Any:
        async def replay_since(self: MemoryBroker, key: Any, since_ts: int) -> Replay:
            result: Replay = await original(self, key, since_ts)
            channel = self._channels.get(key)
            if result.gap == exceeded and channel is not None and channel.evicted_ts == since_ts:
                kept = tuple(e for e in channel.history if e.ts >= since_ts)
                return dataclasses.replace(result, events=kept, gap=None)
            return result

        return replay_since

    _wrap_method(MemoryBroker, "replay_since", make)


# --- publishing --------------------------------------------------------------------------------


def dedup_ignored() -> None:
    """A retried ``message_id`` is sequenced (and delivered) again."""

    def make(original: Any) -> Any:
        async def publish(self: MemoryBroker, record: Any) -> Any:
            self._dedup.pop((record.key, record.dedup_tenant, record.message_id), None)
            return await original(self, record)

        return publish

    async def find_duplicate(
        self: MemoryBroker, key: Any, message_id: str, publisher_tenant: str | None = None
    ) -> None:
        return None

    _wrap_method(MemoryBroker, "publish", make)
    _replace(MemoryBroker, "find_duplicate", find_duplicate)


def dedup_survives_reset() -> None:
    """Losing the history keeps the dedup records: a retry in the new epoch of an old event's
    ``message_id`` is acknowledged as a duplicate of the lost event."""

    def make(original: Any) -> Any:
        def reset(self: MemoryBroker) -> str:
            kept, expiry = dict(self._dedup), list(self._dedup_expiry)
            epoch: str = original(self)
            self._dedup.update(kept)
            self._dedup_expiry.extend(expiry)
            return epoch

        return reset

    _wrap_method(MemoryBroker, "reset", make)


def offsets_skip() -> None:
    """Every publish after the first skips one offset: 1, 3, 5..."""

    def make(original: Any) -> Any:
        async def publish(self: MemoryBroker, record: Any) -> Any:
            channel = self._channels.get(record.key)
            if channel is not None and channel.head > 0:
                channel.head += 1
            return await original(self, record)

        return publish

    _wrap_method(MemoryBroker, "publish", make)


def _rewrite_publish(**changes: Any) -> None:
    """The session builds the record, then a field of the publish is dropped on the way."""

    def make(original: Any) -> Any:
        def publish(self: SessionCore, message: Any, now: int) -> list[Any]:
            return [
                dataclasses.replace(a, record=dataclasses.replace(a.record, **changes))
                if isinstance(a, StartPublish)
                else a
                for a in original(self, message, now)
            ]

        return publish

    _wrap_method(SessionCore, "_publish", make)


def to_ignored() -> None:
    """``to`` is dropped: a targeted event reaches every subscriber."""
    _rewrite_publish(to=None)


def exclude_ignored() -> None:
    """``exclude`` is dropped: excluded users still receive the event."""
    _rewrite_publish(exclude=None)


def exclude_self_ignored() -> None:
    """``exclude_self`` is dropped: the publishing connection receives its own event."""
    _rewrite_publish(exclude_self=False)


def rate_limit_ignored() -> None:
    """The publish token bucket never runs dry."""

    def try_take(self: TokenBucket, now_ms: int) -> int | None:
        return None

    _replace(TokenBucket, "try_take", try_take)


def _refund(core: SessionCore) -> None:
    bucket = core._bucket
    if bucket is not None:  # made at the first publish: until then there is nothing to refund
        bucket._tokens = min(float(bucket.burst), bucket._tokens + 1.0)


def refused_publish_free() -> None:
    """A publish refused by the session (``forbidden``, too many targets) gives its token back."""

    def make(original: Any) -> Any:
        def publish(self: SessionCore, message: Any, now: int) -> list[Any]:
            try:
                return list(original(self, message, now))
            except errors.RateLimited:
                raise
            except errors.ReplyError:
                _refund(self)
                raise

        return publish

    _wrap_method(SessionCore, "_publish", make)


def malformed_publish_free() -> None:
    """A publish the parser refuses (``invalid_channel``, ``invalid_message``) costs nothing."""

    def make(original: Any) -> Any:
        def receive_text(self: SessionCore, text: str) -> list[Any]:
            actions = list(original(self, text))
            if self.identity is not None and '"publish"' in text and len(actions) == 1:
                action = actions[0]
                if isinstance(action, Send):
                    reply = json.loads(action.frame)
                    if reply.get("code") in ("invalid_channel", "invalid_message"):
                        _refund(self)
            return actions

        return receive_text

    _wrap_method(SessionCore, "receive_text", make)


def duplicate_publish_free() -> None:
    """A duplicate publish is acknowledged and its token given back."""

    def make(original: Any) -> Any:
        def publish_result(self: SessionCore, request_id: str, result: Any) -> list[Any]:
            if result.duplicate:
                _refund(self)
            return list(original(self, request_id, result))

        return publish_result

    _wrap_method(SessionCore, "publish_result", make)


def rate_limited_charged() -> None:
    """A publish refused for the rate still takes a token: the bucket goes into debt."""
    try_take = _original(TokenBucket, "try_take")

    def patched(self: TokenBucket, now_ms: int) -> int | None:
        retry: int | None = try_take(self, now_ms)
        if retry is not None:
            self._tokens -= 1.0
            return max(1, math.ceil((1.0 - self._tokens) * 1000.0 / self.per_second))
        return None

    _replace(TokenBucket, "try_take", patched)


def every_request_charged() -> None:
    """Pings, subscribes and unsubscribes take a publish token too."""

    def make(original: Any) -> Any:
        def dispatch(self: SessionCore, message: Any, now: int) -> list[Any]:
            if not isinstance(message, messages.Publish):
                self._take_publish_token(now)
            return list(original(self, message, now))

        return dispatch

    _wrap_method(SessionCore, "_dispatch", make)


# --- delivery ----------------------------------------------------------------------------------


def filter_ignored() -> None:
    """Subscription filters are parsed and then never evaluated."""

    def evaluate(flt: Any, event_type: str, attrs: Any) -> bool:
        return True

    _replace(delivery, "evaluate", evaluate)
    _replace(session, "evaluate", evaluate)  # the session's own path for all-exact connections


def delivery_after_expiry() -> None:
    """The server honours ``exp`` 1.5 s late: events keep flowing after the token expired."""
    _original(auth.Identity, "expires_at_ms")
    late = property(lambda self: self.expires_at * 1000 + 1500)
    _replace(auth.Identity, "expires_at_ms", late)


def refresh_keeps_delivery_cutoff() -> None:
    """A refresh puts the new token in force for requests and the close timer, but live
    delivery still stops at the ``exp`` of the token the connection said ``hello`` with."""
    refresh_views = _original(SessionCore, "_refresh_views")
    first_exp: dict[str, int] = {}

    def patched(self: SessionCore) -> None:
        refresh_views(self)
        if self.identity is None:
            return
        cutoff = first_exp.setdefault(self.connection_id, self.identity.expires_at_ms)
        self._deliver_until = min(self._deliver_until, cutoff)
        for name in ("_active_view", "_pending_view"):
            view = getattr(self, name)
            if view is not None:
                setattr(self, name, dataclasses.replace(view, expires_at_ms=cutoff))

    _replace(SessionCore, "_refresh_views", patched)


def refresh_keeps_first_exp() -> None:
    """``refreshed`` announces the new ``exp`` but the connection keeps the first token's."""

    def make(original: Any) -> Any:
        def refresh(self: SessionCore, message: Any, now: int) -> list[Any]:
            old = self.identity
            actions = list(original(self, message, now))
            if old is not None and self.identity is not old and self.identity is not None:
                self.identity = dataclasses.replace(self.identity, expires_at=old.expires_at)
                self._refresh_views()
            return actions

        return refresh

    _wrap_method(SessionCore, "_refresh", make)


def delivery_after_unsubscribe() -> None:
    """``unsubscribed`` is sent but the subscription keeps matching events."""
    remove = _original(SessionCore, "_remove")
    view = _original(SessionCore, "view")
    ghosts: dict[str, list[Any]] = {}

    def patched_remove(self: SessionCore, text: str, actions: list[Any]) -> list[Any]:
        sub = self._subs.get(text)
        if sub is not None and sub.active:
            ghosts.setdefault(self.connection_id, []).append(sub.view)
        return [a for a in remove(self, text, actions) if not isinstance(a, session.StopSubscribe)]

    def patched_view(self: SessionCore) -> delivery.ConnectionView:
        base: delivery.ConnectionView = view(self)
        extra = tuple(ghosts.get(self.connection_id, ()))
        return dataclasses.replace(base, subscriptions=base.subscriptions + extra)

    _replace(SessionCore, "_remove", patched_remove)
    _replace(SessionCore, "view", patched_view)


def reordered_fanout() -> None:
    """Fan-out of two consecutive events of a channel is swapped; the per-connection order
    guard is gone, so subscribers see offset n+1 before n."""
    add_listener = _original(MemoryBroker, "add_listener")
    _original(SessionCore, "_fresh_at")
    refresh_views = _original(SessionCore, "_refresh_views")

    def patched_add_listener(self: MemoryBroker, listener: Callable[[Any], None]) -> None:
        held: list[Any] = []

        def flush() -> None:
            while held:
                listener(held.pop(0))

        def swapping(event: Any) -> None:
            if held and held[0].record.key == event.record.key:
                listener(event)
                flush()
            elif held:
                flush()
                listener(event)
            else:
                held.append(event)
                asyncio.get_running_loop().call_later(0.05, flush)

        add_listener(self, swapping)

    def fresh_at(self: SessionCore, scope: Any, position: tuple[str, int]) -> bool:
        self._last[scope] = position
        return True

    def patched_refresh_views(self: SessionCore) -> None:
        refresh_views(self)
        if not hasattr(self, "_plain"):
            raise VariantTargetMissing("SessionCore._plain")
        self._plain = frozenset()  # no fast path: every event goes through _fresh_at

    _replace(MemoryBroker, "add_listener", patched_add_listener)
    _replace(SessionCore, "_fresh_at", fresh_at)
    _replace(SessionCore, "_refresh_views", patched_refresh_views)


# --- limits, sessions, heartbeats, close codes -------------------------------------------------


def publish_overtaken() -> None:
    """Pipelined publishes hold nothing back: a request that arrives while the connection's
    publishes await the broker is applied and answered at once, ahead of them."""

    async def answered(self: UnisockServer, conn: Any) -> None:
        return None

    _replace(UnisockServer, "_answered", answered)


def subscription_cap_ignored() -> None:
    """``max_subscriptions`` is announced in ``welcome`` but never enforced."""

    def make(original: Any) -> Any:
        def subscribe(self: SessionCore, message: Any) -> list[Any]:
            config = self.config
            self.config = dataclasses.replace(config, max_subscriptions=1 << 30)
            try:
                return list(original(self, message))
            finally:
                self.config = config

        return subscribe

    _wrap_method(SessionCore, "_subscribe", make)


def supersede_ignored() -> None:
    """A second connection with the same ``sid`` leaves the first one open."""

    def on_supersede(self: UnisockServer, connection_id: str) -> None:
        return None

    _replace(UnisockServer, "_on_supersede", on_supersede)


def superseded_closes_4200() -> None:
    """Supersede closes with 4200 (the slow-consumer class) instead of 4001."""

    def make(original: Any) -> Any:
        def superseded(self: SessionCore) -> list[Any]:
            return [
                Close(4200, "slow_consumer") if isinstance(a, Close) else a for a in original(self)
            ]

        return superseded

    _wrap_method(SessionCore, "superseded", make)


def auth_failure_closes_4000() -> None:
    """A rejected token closes with 4000 (protocol error) instead of 4100."""
    _original(errors.AuthFailed, "close_code")
    errors.AuthFailed.close_code = 4000


def heartbeat_not_sent() -> None:
    """The server never sends its own ``ping``."""

    def is_ping(action: Any) -> bool:
        return isinstance(action, Send) and json.loads(action.frame).get("type") == "ping"

    def make(original: Any) -> Any:
        def tick(self: SessionCore, now_ms: int) -> list[Any]:
            return [a for a in original(self, now_ms) if not is_ping(a)]

        return tick

    _wrap_method(SessionCore, "tick", make)


def timer_closes_explained() -> None:
    """The closes of the auth and heartbeat timers explain themselves after the name
    (``auth_timeout;after_ms=...``): the grammar of close reasons has no such parameter."""

    def explained(action: Any) -> Any:
        if isinstance(action, Close) and action.code in (4102, 4201):
            return Close(action.code, f"{action.reason.split(';')[0]};after_ms=5000")
        return action

    def make(original: Any) -> Any:
        def tick(self: SessionCore, now_ms: int) -> list[Any]:
            return [explained(a) for a in original(self, now_ms)]

        return tick

    _wrap_method(SessionCore, "tick", make)


# --- hostile input -----------------------------------------------------------------------------


def _no_nesting_limit() -> None:
    """Values nest as deep as the JSON parser survives (no UNI-TR-29 limit)."""
    check = _original(jsonlimits, "check_value")
    _replace(jsonlimits, "check_value", lambda value, max_nesting=0: check(value, 10**9))


def _defects_close_1000() -> None:
    """An exception escaping the core ends the connection with the transport's 1000."""

    def internal_failure(self: SessionCore) -> list[Any]:
        return self._close(Input.CLOSE, 1000, "")

    _replace(SessionCore, "internal_failure", internal_failure)


def deep_filter_crashes() -> None:
    """The whole subscribe, deep filter included, goes through recursive schema validation
    before the filter's depth is checked; the recursion error closes with 1000."""
    _no_nesting_limit()
    _defects_close_1000()
    precheck = _original(messages, "_precheck")

    def validated(kind: str, obj: Any, rid: Any, max_filter_nodes: int) -> None:
        if kind == "subscribe":
            list(validator_for("messages/subscribe").iter_errors(obj))
        precheck(kind, obj, rid, max_filter_nodes)

    _replace(messages, "_precheck", validated)


def token_claims_unchecked() -> None:
    """Signed claims skip the JSON limits: a lone surrogate in ``sub`` reaches ``welcome``,
    whose encoding fails, and the connection closes with 1000."""
    _defects_close_1000()
    _replace(auth, "jsonlimits", SimpleNamespace(check_value=lambda value: None))


def repeat_failure_unavailable() -> None:
    """No nesting limit, and every failed publish is ``unavailable``: data too deep to encode
    is refused as temporary, inviting endless retries."""
    _no_nesting_limit()

    def failure_error(failure: Exception) -> Any:
        return Unavailable("broker unavailable", retry_after_ms=1000)

    _replace(server, "_failure_error", failure_error)


def filter_exact_integers() -> None:
    """Filters compare numbers exactly instead of as binary64 (section 5.5.2)."""
    _replace(filters, "binary64", lambda value: value)


# --- spec decisions -----------------------------------------------------------------------------


def sys_dedup_shared() -> None:
    """``$sys`` dedup records are shared by every tenant, keyed (channel, message_id)."""
    _replace(memory_broker, "dedup_tenant", lambda key, publisher_tenant: None)
    _replace(PublishRecord, "dedup_tenant", property(lambda record: None))


def typed_data_unchecked() -> None:
    """``typed_events`` is announced and the example types are registered, but no publish's
    data is ever checked against its type's schema."""
    _replace(EventTypeRegistry, "check", lambda self, event_type, data: None)


def pattern_epoch_gap_missing() -> None:
    """A subscriber through a wildcard or a filter gets the first event of a new epoch with no
    ``epoch_changed`` gap before it (the exact, filter-less fast path still sends one)."""

    def fresh_at(self: SessionCore, scope: Any, position: tuple[str, int]) -> bool:
        last = self._last.get(scope)
        if last is not None and last[0] == position[0] and position[1] <= last[1]:
            return False
        self._last[scope] = position
        return True

    _replace(SessionCore, "_fresh_at", fresh_at)


# --- registry ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One broken server: the patch, the checks that must catch it, the IDs they must fail."""

    name: str
    patch: Callable[[], None]
    keyword: str
    """``-k`` expression selecting the conformance checks expected to catch it."""
    requirements: frozenset[str]
    """At least one of these must be graded ``fail``."""


def _v(patch: Callable[[], None], keyword: str, *ids: str) -> Variant:
    return Variant(patch.__name__, patch, keyword, frozenset(ids))


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        _v(
            cross_tenant,
            "never_cross_tenants or never_delivers_a_tenant_event",
            "UNI-CH-2",
            "UNI-DEL-11",
        ),
        _v(resume_drops_first, "replays_the_whole_range", "UNI-DEL-15"),
        _v(gap_not_signalled, "window_exceeded_when_history", "UNI-DEL-15", "UNI-DEL-16"),
        _v(position_invalid_at_head, "up_to_the_head_as_valid", "UNI-DEL-15"),
        _v(position_past_head_accepted, "up_to_the_head_as_valid", "UNI-DEL-15"),
        _v(replay_ignores_filter, "replays_only_events_the_predicate", "UNI-DEL-11", "UNI-DEL-36"),
        _v(replay_ignores_targeting, "replays_only_events_the_predicate", "UNI-DEL-11"),
        _v(since_overrides_from, "resumes_from_entries_by_position", "UNI-DEL-15"),
        _v(since_dropped_with_from, "resumes_from_entries_by_position", "UNI-DEL-17"),
        _v(since_gap_exclusive, "since_that_reaches_an_evicted", "UNI-DEL-17"),
        _v(dedup_ignored, "duplicate_with_the_original_position", "UNI-PUB-21"),
        _v(dedup_survives_reset, "retry_of_an_event_of_a_lost_epoch", "UNI-PUB-21", "UNI-PUB-28"),
        _v(offsets_skip, "contiguous_offsets", "UNI-PUB-28", "UNI-DEL-7"),
        _v(to_ignored, "targeted_event_only_to_listed_users", "UNI-PUB-10"),
        _v(exclude_ignored, "never_delivers_to_excluded_users", "UNI-PUB-11"),
        _v(exclude_self_ignored, "exclude_self_to_the_publishing", "UNI-PUB-12"),
        _v(rate_limit_ignored, "rate_limits_publish", "UNI-PUB-30"),
        _v(refused_publish_free, "beyond_the_burst_and_keeps", "UNI-PUB-39", "UNI-PUB-30"),
        _v(malformed_publish_free, "beyond_the_burst_and_keeps", "UNI-PUB-39", "UNI-PUB-30"),
        _v(duplicate_publish_free, "beyond_the_burst_and_keeps", "UNI-PUB-39", "UNI-PUB-30"),
        _v(rate_limited_charged, "beyond_the_burst_and_keeps", "UNI-PUB-30", "UNI-PUB-31"),
        _v(every_request_charged, "no_publish_token_for_other", "UNI-PUB-39", "UNI-PUB-31"),
        _v(filter_ignored, "attributes_pass_the_filter", "UNI-DEL-11", "UNI-SUB-20"),
        _v(delivery_after_expiry, "sequenced_after_the_token_expired", "UNI-DEL-12"),
        _v(refresh_keeps_delivery_cutoff, "whole_lifetime_of_a_refreshed", "UNI-AUTH-16"),
        _v(refresh_keeps_first_exp, "whole_lifetime_of_a_refreshed", "UNI-AUTH-16"),
        _v(
            delivery_after_unsubscribe,
            "delivers_nothing_for_a_subscription_after_unsubscribed",
            "UNI-SUB-14",
        ),
        _v(reordered_fanout, "orders_events_per_channel_under_concurrent", "UNI-DEL-14"),
        _v(publish_overtaken, "burst_of_publishes_in_arrival_order", "UNI-TR-27"),
        _v(subscription_cap_ignored, "beyond_max_subscriptions", "UNI-SUB-5"),
        _v(supersede_ignored, "supersedes_older_connection_of_the_same_session", "UNI-SESS-6"),
        _v(
            superseded_closes_4200,
            "supersedes_older_connection_of_the_same_session",
            "UNI-SESS-6",
            "UNI-SESS-9",
        ),
        _v(auth_failure_closes_4000, "closes_4100_without_error", "UNI-LC-7"),
        _v(heartbeat_not_sent, "pings_every_interval", "UNI-HB-1"),
        _v(
            timer_closes_explained,
            "closes_4201_after_silence or closes_4102_when_no_hello or every_close_the_server",
            "UNI-CLOSE-9",
        ),
        _v(deep_filter_crashes, "deep_filter_and_keeps", "UNI-TR-29", "UNI-SUB-18"),
        _v(token_claims_unchecked, "signed_token_outside_the_json_limits", "UNI-AUTH-26"),
        _v(repeat_failure_unavailable, "data_at_the_nesting_limit", "UNI-TR-29", "UNI-ERR-10"),
        _v(filter_exact_integers, "filter_numbers_as_binary64", "UNI-SUB-20"),
        _v(sys_dedup_shared, "sys_idempotency_records", "UNI-SEC-19"),
        _v(pattern_epoch_gap_missing, "epoch_changed_gap_before_the_first", "UNI-DEL-19"),
        _v(typed_data_unchecked, "registered_event_with_invalid_data", "UNI-PUB-16", "UNI-PUB-17"),
    )
}


def apply(name: str) -> Variant:
    """Patch the reference for variant ``name`` (KeyError for an unknown name)."""
    variant = VARIANTS[name]
    variant.patch()
    return variant
