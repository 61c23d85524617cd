"""The I/O-free server session: events in, actions out (spec sections 2-12).

:class:`SessionCore` owns one connection's protocol state. The adapter feeds it what arrived
(``receive_text``, ``receive_binary``), the time (``tick``) and the results of broker work it was
asked to do (``subscribe_result``, ``replay_actions``, ``subscription_active``,
``publish_result``), and carries out the returned actions in order. The core never awaits,
never touches a socket and never reads the wall clock except through the injected ``clock``.

For fan-out the adapter asks :meth:`SessionCore.accepts` per connection; it costs
O(subscriptions), encodes nothing, and the adapter sends ``event.frame`` (encoded once), after
any frames in :attr:`SessionCore.pending_gaps` (UNI-DEL-19).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from unisock import jsonlimits
from unisock.auth import Identity, TokenVerifier
from unisock.broker import (
    GAP_EPOCH_CHANGED,
    ChannelKey,
    Position,
    PublishRecord,
    PublishResult,
    Replay,
    StoredEvent,
)
from unisock.channels import (
    Channel,
    Namespace,
    Pattern,
    matches,
    parse_channel,
    parse_pattern,
    publish_allowed,
    subscribe_allowed,
)
from unisock.closecodes import CloseCode, format_close_reason
from unisock.config import EventTypeRegistry, ServerConfig
from unisock.delivery import ConnectionView, EventView, PreparedEvent, SubscriptionView
from unisock.errors import (
    AlreadyAuthenticated,
    AlreadySubscribed,
    AuthFailed,
    AuthTimeout,
    CloseError,
    Forbidden,
    HeartbeatTimeout,
    InternalError,
    InvalidMessage,
    InvalidPosition,
    LocalError,
    MessageTooBig,
    NotSubscribed,
    ProtocolViolation,
    RateLimited,
    ReplyError,
    RequestError,
    SlowConsumer,
    SubscriptionLimit,
    TokenExpired,
    TokenInvalid,
    TokenMismatch,
    UnsupportedData,
)
from unisock.filters import Filter, compile_filter, evaluate
from unisock.messages import (
    ClientMessage,
    Drain,
    Error,
    Gap,
    Hello,
    Message,
    Ping,
    Pong,
    Publish,
    Refresh,
    Refreshed,
    SessionInfo,
    Subscribe,
    Subscribed,
    TokenExpiring,
    Unsubscribe,
    Unsubscribed,
    Welcome,
    encode,
    encode_ack,
    parse_client_message,
)
from unisock.ratelimit import TokenBucket
from unisock.state import Input, State, next_state

__all__ = [
    "Action",
    "Authenticated",
    "Close",
    "Deliver",
    "FanoutView",
    "InternalFailure",
    "RefuseUnlessDuplicate",
    "Revoked",
    "Send",
    "SessionCore",
    "StartPublish",
    "StartSubscribe",
    "StopSubscribe",
    "event_view",
    "fanout_view",
]


# --- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Queue ``frame`` (a complete text frame) for the peer."""

    frame: str


@dataclass(frozen=True, slots=True)
class Deliver:
    """Queue a stored event (replayed or held back during subscribe) like a live event.

    The adapter sends ``event.frame``; it goes through the same outbound queue (and coalescing)
    as events accepted by :meth:`SessionCore.accepts`.
    """

    event: StoredEvent


@dataclass(frozen=True, slots=True)
class Close:
    """Send a close frame with ``code`` and ``reason``, then stop; nothing else follows."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The session is open: register it with the broker (supersede, UNI-SESS)."""

    identity: Identity


@dataclass(frozen=True, slots=True)
class StartSubscribe:
    """Fetch what a new subscription needs from the broker, then report back (UNI-SUB, UNI-DEL).

    ``head`` is the key of a pattern without wildcards (its position goes into ``subscribed``);
    ``from_positions`` are resolved resume positions; ``since`` applies to matched channels not
    in ``from_positions`` (see :meth:`since_keys`); ``scope`` is the argument triple of
    ``Broker.channels`` for finding the channels of a wildcard pattern.
    """

    request_id: str
    pattern: Pattern
    filter: Filter | None
    from_positions: tuple[tuple[ChannelKey, Position], ...]
    since: int | None
    head: ChannelKey | None
    scope: tuple[str | None, str | None, str]

    def since_keys(self, keys: Iterable[ChannelKey]) -> list[ChannelKey]:
        """The keys among ``keys`` that ``since`` replays: matched, and not resumed by ``from``."""
        if self.since is None:
            return []
        resumed = {key for key, _ in self.from_positions}
        return [
            key
            for key in keys
            if key not in resumed and matches(self.pattern, parse_channel(key.name))
        ]


@dataclass(frozen=True, slots=True)
class StopSubscribe:
    """A subscription ended (unsubscribe, revocation, failed subscribe): drop any index of it."""

    pattern: str


@dataclass(frozen=True, slots=True)
class StartPublish:
    """Hand ``record`` to ``Broker.publish`` and report with ``publish_result``/``_failed``."""

    request_id: str
    record: PublishRecord


@dataclass(frozen=True, slots=True)
class RefuseUnlessDuplicate:
    """Ask ``Broker.find_duplicate``: ack the original if found, else reply ``error``.

    Report with ``publish_result`` (as a duplicate) or ``publish_failed`` (UNI-PUB-24).
    """

    request_id: str
    key: ChannelKey
    message_id: str
    error: RequestError
    publisher_tenant: str | None = None
    """Scopes the lookup on ``$sys`` channels (UNI-SEC-19)."""


@dataclass(frozen=True, slots=True)
class Revoked:
    """A refresh removed these subscriptions (already answered with ``unsubscribed``)."""

    patterns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class InternalFailure:
    """An unexpected exception; the peer saw only ``internal_error``. Log it (no token inside)."""

    error: Exception


Action = (
    Send
    | Deliver
    | Close
    | Authenticated
    | StartSubscribe
    | StopSubscribe
    | StartPublish
    | RefuseUnlessDuplicate
    | Revoked
    | InternalFailure
)


# --- event views (shared by all sessions: one per event, not one per recipient) --------------

_VIEW_CACHE_SIZE = 256
_view_cache: dict[int, tuple[StoredEvent, PreparedEvent]] = {}


def event_view(event: StoredEvent) -> PreparedEvent:
    """The delivery-predicate view of ``event``, built once and reused across a fan-out."""
    cached = _view_cache.get(id(event))
    if cached is not None and cached[0] is event:
        return cached[1]
    record = event.record
    prepared = PreparedEvent.of(
        EventView(
            tenant=record.key.tenant,
            channel=parse_channel(record.key.name),
            owner=record.key.owner,
            event_type=record.event_type,
            attrs=record.attrs or {},
            to=record.to,
            exclude=record.exclude,
            exclude_self=record.exclude_self,
            publisher_connection=record.publisher_connection,
        )
    )
    if len(_view_cache) >= _VIEW_CACHE_SIZE:
        del _view_cache[next(iter(_view_cache))]
    _view_cache[id(event)] = (event, prepared)
    return prepared


_Scope = tuple[str | None, str | None, str]
"""A ChannelKey as a plain tuple (tenant, owner, name): hashed and compared in C."""


def _scope(key: ChannelKey) -> _Scope:
    return (key.tenant, key.owner, key.name)


@dataclass(frozen=True, slots=True)
class FanoutView:
    """What the per-recipient check needs from one event, computed once per fan-out."""

    prepared: PreparedEvent
    scope: _Scope
    position: tuple[str, int]
    untargeted: bool
    """No ``to``, ``exclude`` or ``exclude_self``: clauses 5-7 hold for every recipient."""


def fanout_view(event: StoredEvent) -> FanoutView:
    """Build once per event; pass to :meth:`SessionCore.accepts` for every candidate."""
    record = event.record
    return FanoutView(
        event_view(event),
        _scope(record.key),
        (event.epoch, event.offset),
        record.to is None and record.exclude is None and not record.exclude_self,
    )


# --- subscriptions ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Subscription:
    request_id: str
    pattern: Pattern
    filter: Filter | None
    head: ChannelKey | None
    resumes: bool = False
    """A pattern without wildcards that asked for replay (``from`` or ``since``)."""
    active: bool = False
    answered: bool = False
    revoked: bool = False
    unsubscribe_id: str | None = None
    held: list[StoredEvent] | None = None
    """Live events that arrived during set-up; created when the first one does."""
    overflow: bool = False

    @property
    def view(self) -> SubscriptionView:
        return SubscriptionView(self.pattern, self.filter)


_DELIVERING = (State.OPEN, State.DRAINING)


class SessionCore:
    """One server-side connection, without I/O (UNI-LC and everything a session enforces)."""

    # One per connection: slots keep idle connections small (``__dict__`` stays available,
    # created only if something sets an attribute not listed here).
    __slots__ = (
        "__dict__",
        "_active_view",
        "_bucket",
        "_clock",
        "_coalescing",
        "_created_ms",
        "_deliver_until",
        "_drain_deadline_ms",
        "_drain_window_ms",
        "_filtered",
        "_last",
        "_last_rx_ms",
        "_next_ping_ms",
        "_pending_view",
        "_plain",
        "_subs",
        "_system_namespace",
        "_typed_events",
        "_warned",
        "config",
        "connection_id",
        "identity",
        "pending_gaps",
        "registry",
        "state",
        "verifier",
    )

    def __init__(
        self,
        config: ServerConfig,
        verifier: TokenVerifier,
        connection_id: str,
        clock: Callable[[], int],
        registry: EventTypeRegistry | None = None,
    ) -> None:
        self.config = config
        self.verifier = verifier
        self.connection_id = connection_id
        self._clock = clock
        self.registry = registry if registry is not None else EventTypeRegistry.from_config(config)
        self.state = State.AWAITING_HELLO
        self.identity: Identity | None = None
        self._created_ms = clock()
        self._last_rx_ms = self._created_ms
        self._next_ping_ms = 0
        self._drain_deadline_ms: int | None = None
        self._drain_window_ms = config.drain_window_ms
        self._warned = False
        self._bucket: TokenBucket | None = None
        """The publish rate limit, made at the first publish (a bucket starts full)."""
        self._subs: dict[str, _Subscription] = {}
        self._last: dict[_Scope, tuple[str, int]] = {}
        self.pending_gaps: list[str] = []
        """Encoded ``gap`` frames to write before the event just accepted (UNI-DEL-19)."""
        self._active_view: ConnectionView | None = None
        self._plain: frozenset[_Scope] = frozenset()
        self._filtered: dict[_Scope, Filter] | None = None
        self._deliver_until = 0
        self._pending_view: ConnectionView | None = None
        features = frozenset(config.features)
        # Optional features act only when announced (UNI-CH-16, UNI-PUB-20, UNI-DEL-25).
        self._coalescing = config.coalescing_patterns() if "coalescing" in features else ()
        self._system_namespace = "system_namespace" in features
        self._typed_events = "typed_events" in features

    # -- introspection -------------------------------------------------------------------------

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """Patterns of active subscriptions (``subscribed`` sent, not yet unsubscribed)."""
        return tuple(text for text, sub in self._subs.items() if sub.active)

    def view(self) -> ConnectionView:
        """This connection as the delivery predicate sees it (active subscriptions only)."""
        identity = self.identity
        return ConnectionView(
            tenant=identity.tenant if identity else "",
            sub=identity.sub if identity else "",
            connection_id=self.connection_id,
            state=self.state.value,
            expires_at_ms=identity.expires_at_ms if identity else 0,
            subscriptions=tuple(sub.view for sub in self._subs.values() if sub.active),
        )

    def next_deadline_ms(self) -> int | None:
        """When :meth:`tick` next has something to do (``None`` once closed)."""
        if self.state is State.AWAITING_HELLO:
            return self._created_ms + self.config.auth_timeout_ms
        if self.state is State.CLOSED or self.identity is None:
            return None
        deadlines = [
            self.identity.expires_at_ms,
            self._next_ping_ms,
            self._last_rx_ms + self._dead_after_ms,
        ]
        if not self._warned:
            deadlines.append(self.identity.expires_at_ms - self.config.refresh_warning_ms)
        if self._drain_deadline_ms is not None:
            deadlines.append(self._drain_deadline_ms)
        return min(deadlines)

    @property
    def _dead_after_ms(self) -> int:
        return self.config.heartbeat_interval_ms + self.config.heartbeat_timeout_ms

    # -- state helpers -------------------------------------------------------------------------

    def _move(self, event: Input) -> None:
        state = next_state(self.state, event)
        if state is not self.state:
            # The views follow the state; every request moves OPEN to OPEN, which leaves
            # them as they are (subscription changes refresh them where they happen).
            self.state = state
            self._refresh_views()

    def _close(self, event: Input, code: int, reason: str) -> list[Action]:
        self._move(event)
        return [Close(code, reason)]

    def _close_error(self, event: Input, error: CloseError) -> list[Action]:
        return self._close(event, error.close_code, error.close_reason())

    def _refresh_views(self) -> None:
        """Rebuild the cached predicate views after any change to state or subscriptions."""
        if self.state not in _DELIVERING or self.identity is None:
            self._active_view = self._pending_view = None
            self._plain = frozenset()
            self._filtered = None
            self._deliver_until = 0
            return
        # Active exact subscriptions without a filter: for an untargeted event on one of
        # these keys, clauses 2-7 of the predicate hold by construction (UNI-DEL).
        self._plain = frozenset(
            _scope(sub.head)
            for sub in self._subs.values()
            if sub.active and sub.head is not None and sub.filter is None
        )
        self._deliver_until = self.identity.expires_at_ms
        base = self.view()
        self._active_view = base if base.subscriptions else None
        pending = tuple(
            sub.view for sub in self._subs.values() if not sub.active and not sub.revoked
        )
        self._pending_view = (
            ConnectionView(
                base.tenant, base.sub, base.connection_id, base.state, base.expires_at_ms, pending
            )
            if pending
            else None
        )
        self._filtered = None if self._pending_view is not None else self._exact_filters()

    def _exact_filters(self) -> dict[_Scope, Filter] | None:
        """The filters of the active exact subscriptions by key, when every active one is exact.

        Then an untargeted event on a key that is neither here nor in ``_plain`` matches no
        subscription (clause 4), and on a key here it is delivered when its one filter passes:
        clauses 2-3 hold by construction, as for ``_plain``. ``None`` leaves every decision to
        the predicate: a wildcard subscription, or two filters on one key.
        """
        filtered: dict[_Scope, Filter] = {}
        for sub in self._subs.values():
            if not sub.active:
                continue
            if sub.head is None:
                return None
            if sub.filter is None:
                continue
            scope = _scope(sub.head)
            if scope in filtered:
                return None
            filtered[scope] = sub.filter
        return filtered

    # -- inbound frames ------------------------------------------------------------------------

    def receive_text(self, text: str, decoded: dict[str, Any] | None = None) -> list[Action]:
        """One inbound text frame (``decoded``: from :meth:`pipelined_publish`).

        Nothing escapes: a defect anywhere below closes this connection with 1011 and no
        detail (UNI-ERR-10), never the transport's default close.
        """
        try:
            return self._receive_text(text, decoded)
        except Exception as exc:
            return [*self.internal_failure(), InternalFailure(exc)]

    def internal_failure(self) -> list[Action]:
        """An unexpected failure left this connection unusable: close 1011 ``internal_error``."""
        if self.state is State.CLOSED:
            return []
        return self._close(Input.CLOSE, CloseCode.INTERNAL_ERROR, "internal_error")

    def _receive_text(self, text: str, decoded: dict[str, Any] | None) -> list[Action]:
        if self.state is State.CLOSED:
            return []
        now = self._clock()
        self._last_rx_ms = now
        if _too_big(text, self.config.max_message_bytes):
            return self._close_error(Input.CLOSE, MessageTooBig())  # UNI-LIM
        if self.state is State.AWAITING_HELLO:
            return self._receive_hello(text, now)
        if self.identity is not None and now >= self.identity.expires_at_ms:
            # UNI-AUTH-21: nothing (a late refresh included) is applied once the token expired.
            return self._close_error(Input.TOKEN_EXPIRED, TokenExpired())
        try:
            message = parse_client_message(
                text, max_filter_nodes=self.config.max_filter_nodes, decoded=decoded
            )
        except RequestError as exc:
            self._move(Input.REQUEST)
            if exc.message_type == "publish":
                # UNI-PUB-24: the rate limit is the first step, whatever fails later.
                retry = self._take_publish_token(now)
                if retry is not None:
                    limited = RateLimited("publish rate exceeded", retry_after_ms=retry)
                    return [_reply_error(limited, exc.request_id)]
            return [_reply_error(exc)]
        self._move(Input.REQUEST)
        try:
            return self._dispatch(message, now)
        except ReplyError as exc:
            return [_reply_error(exc)]
        except Exception as exc:  # UNI-ERR: internals never reach the wire
            return [_reply_error(InternalError(_request_id(message))), InternalFailure(exc)]

    def pipelined_publish(self, text: str) -> dict[str, Any] | None:
        """``text`` decoded, when it may reach :meth:`receive_text` while earlier publishes
        still await their replies; else None.

        Only a publish qualifies, in a state where taking it changes nothing but the rate
        bucket, so the core answers the earlier ones as it would have before (UNI-TR-27).
        Anything else waits for those replies, so that its effects follow theirs. Hand the
        result to :meth:`receive_text`, which then does not decode ``text`` again.
        """
        identity = self.identity
        if self.state not in _DELIVERING or identity is None:
            return None
        if _too_big(text, self.config.max_message_bytes) or self._clock() >= identity.expires_at_ms:
            return None  # closes the connection
        try:
            obj = jsonlimits.loads(text)
        except jsonlimits.JsonLimitError:
            return None
        if isinstance(obj, dict) and obj.get("type") == "publish":
            return obj
        return None

    def receive_binary(self) -> list[Action]:
        """A binary frame: Unisock is text only (UNI-TR, close 1003)."""
        if self.state is State.CLOSED:
            return []
        return self._close_error(Input.CLOSE, UnsupportedData())

    def connection_closed(self) -> list[Action]:
        """The transport is gone (close frame either way, or TCP loss)."""
        if self.state is not State.CLOSED:
            self._move(Input.CLOSE)
        return []

    def abort(self, error: CloseError) -> list[Action]:
        """Close for a rule the adapter detected (e.g. :class:`SlowConsumer` at ``max_queue``)."""
        if self.state is State.CLOSED:
            return []
        return self._close_error(Input.CLOSE, error)

    def slow_consumer(self) -> list[Action]:
        """The outbound queue exceeded ``max_queue`` (UNI-LIM, close 4200)."""
        return self.abort(SlowConsumer())

    def superseded(self) -> list[Action]:
        """A newer connection of the same session (or the per-user cap) replaces this one."""
        if self.state is State.CLOSED:
            return []
        return self._close(Input.CLOSE, CloseCode.SUPERSEDED, "superseded")  # UNI-SESS

    def drain(self, window_ms: int | None = None, reason: str | None = None) -> list[Action]:
        """Start draining: tell the client to move, close with 4300 after the window."""
        window = self.config.drain_window_ms if window_ms is None else window_ms
        if self.state is State.AWAITING_HELLO:
            # Only welcome or a close may follow a hello, so an unauthenticated peer gets a close.
            return self._close(
                Input.DRAIN, CloseCode.DRAIN, format_close_reason("drain", window_ms=window)
            )
        if self.state is not State.OPEN:
            return []
        self._move(Input.DRAIN)
        self._drain_deadline_ms = self._clock() + window
        self._drain_window_ms = window
        return [_send(Drain(window_ms=window, reason=reason))]

    # -- time ----------------------------------------------------------------------------------

    def reading_paused(self, now_ms: int) -> None:
        """The adapter is awaiting the broker for this connection and reads nothing meanwhile.

        Whatever the peer sent is waiting unread, so its silence proves nothing: its liveness
        clock restarts now instead of a heartbeat timeout closing it (UNI-HB, UNI-ERR-16).
        """
        self._last_rx_ms = max(self._last_rx_ms, now_ms)

    def tick(self, now_ms: int) -> list[Action]:
        """Deadlines: auth timeout, expiry, dead peer, drain end, expiry warning, server ping."""
        if self.state is State.AWAITING_HELLO:
            if now_ms >= self._created_ms + self.config.auth_timeout_ms:
                return self._close_error(Input.AUTH_TIMEOUT, AuthTimeout())  # UNI-LC
            return []
        identity = self.identity
        if self.state is State.CLOSED or identity is None:
            return []
        if now_ms >= identity.expires_at_ms:
            return self._close_error(Input.TOKEN_EXPIRED, TokenExpired())  # UNI-AUTH
        if now_ms - self._last_rx_ms >= self._dead_after_ms:
            return self._close_error(Input.HEARTBEAT_TIMEOUT, HeartbeatTimeout())  # UNI-HB
        if self._drain_deadline_ms is not None and now_ms >= self._drain_deadline_ms:
            # UNI-CLOSE-11: a client that missed `drain` still spreads its reconnect.
            reason = format_close_reason("drain", window_ms=self._drain_window_ms)
            return self._close(Input.DRAIN_TIMEOUT, CloseCode.DRAIN, reason)
        actions = self._expiry_warning(now_ms)
        if now_ms >= self._next_ping_ms:
            # UNI-HB: the server pings every interval, whatever else is sent.
            interval = self.config.heartbeat_interval_ms
            self._next_ping_ms += interval
            if self._next_ping_ms <= now_ms:  # the adapter ticked late: do not ping in bursts
                self._next_ping_ms = now_ms + interval
            actions.append(_send(Ping()))
        return actions

    def _expiry_warning(self, now_ms: int) -> list[Action]:
        """UNI-AUTH: ``token_expiring`` once per token, ``refresh_warning_ms`` before ``exp``."""
        identity = self.identity
        assert identity is not None
        if self._warned or now_ms < identity.expires_at_ms - self.config.refresh_warning_ms:
            return []
        self._warned = True
        return [_send(TokenExpiring(expires_at=identity.expires_at))]

    # -- hello ---------------------------------------------------------------------------------

    def _receive_hello(self, text: str, now: int) -> list[Action]:
        try:
            message = parse_client_message(text, max_filter_nodes=self.config.max_filter_nodes)
        except RequestError:
            return self._close_error(Input.HELLO_BAD, ProtocolViolation())  # UNI-LC
        if not isinstance(message, Hello):
            return self._close_error(Input.HELLO_BAD, ProtocolViolation())
        try:
            identity = self.verifier.verify(message.token, now / 1000)
        except AuthFailed as exc:
            return self._close_error(Input.HELLO_BAD, exc)  # UNI-AUTH, close 4100
        except Exception as exc:  # UNI-ERR: no internals; the client backs off
            self._move(Input.HELLO_BAD)
            return [Close(CloseCode.INTERNAL_ERROR, "internal_error"), InternalFailure(exc)]
        self.identity = identity
        self._last_rx_ms = now
        self._next_ping_ms = now + self.config.heartbeat_interval_ms
        self._move(Input.HELLO_OK)
        welcome = Welcome(
            connection_id=self.connection_id,
            session=SessionInfo(
                tenant=identity.tenant,
                sub=identity.sub,
                sid=identity.sid,
                role=identity.role,
                expires_at=identity.expires_at,
            ),
            settings=self.config.welcome_payload(),
        )
        actions: list[Action] = [_send(welcome), Authenticated(identity)]
        actions.extend(self._expiry_warning(now))
        return actions

    # -- requests ------------------------------------------------------------------------------

    def _dispatch(self, message: ClientMessage, now: int) -> list[Action]:
        if isinstance(message, Publish):
            return self._publish(message, now)
        if isinstance(message, Subscribe):
            return self._subscribe(message)
        if isinstance(message, Unsubscribe):
            return self._unsubscribe(message)
        if isinstance(message, Ping):
            return [_send(Pong(id=message.id, nonce=message.nonce))]  # UNI-HB
        if isinstance(message, Pong):
            return []
        if isinstance(message, Refresh):
            return self._refresh(message, now)
        # UNI-LC: a second hello changes nothing.
        raise AlreadyAuthenticated("the session is already authenticated", request_id=message.id)

    def _identity(self) -> Identity:
        identity = self.identity
        assert identity is not None, "requests are dispatched only after hello"
        return identity

    def _key(self, channel: Channel, owner: str | None = None) -> ChannelKey:
        """UNI-CH: names are tenant-relative; ``$me`` resolves to its owner, ``$sys`` to none."""
        identity = self._identity()
        if channel.namespace is Namespace.SYS:
            return ChannelKey(None, None, channel.name)
        if channel.namespace is Namespace.ME:
            return ChannelKey(identity.tenant, owner or identity.sub, channel.name)
        return ChannelKey(identity.tenant, None, channel.name)

    def _subscribe(self, message: Subscribe) -> list[Action]:
        rid = message.id
        identity = self._identity()
        # The parser already turned bad names, filters and resume keys into invalid_channel,
        # invalid_filter and invalid_position (UNI-CH, UNI-SUB); these calls cannot fail.
        pattern = parse_pattern(message.channel)
        flt: Filter | None = None
        if message.filter is not None:
            flt = compile_filter(message.filter, max_nodes=self.config.max_filter_nodes)
        positions: list[tuple[ChannelKey, Position]] = []
        for name, position in (message.from_ or {}).items():
            channel = parse_channel(name)
            if not matches(pattern, channel):
                raise InvalidPosition(f"from: {name} is not matched by the pattern", request_id=rid)
            positions.append((self._key(channel), position))
        if not subscribe_allowed(identity.subscribe_grants, pattern) or (
            pattern.namespace is Namespace.SYS and not self._system_namespace
        ):
            raise Forbidden("subscription outside grants", request_id=rid)  # UNI-CH, UNI-CH-16
        if message.channel in self._subs:
            raise AlreadySubscribed("already subscribed to this pattern", request_id=rid)
        if len(self._subs) >= self.config.max_subscriptions:
            raise SubscriptionLimit(
                f"at most {self.config.max_subscriptions} subscriptions", request_id=rid
            )  # UNI-LIM
        head = None if pattern.wildcard else self._key(parse_channel(message.channel))
        resumes = head is not None and (
            message.since is not None or any(key == head for key, _ in positions)
        )
        self._subs[message.channel] = _Subscription(rid, pattern, flt, head, resumes)
        self._refresh_views()
        if pattern.namespace is Namespace.SYS:
            scope: tuple[str | None, str | None, str] = (None, None, Namespace.SYS.value)
        elif pattern.namespace is Namespace.ME:
            scope = (identity.tenant, identity.sub, Namespace.ME.value)
        else:
            scope = (identity.tenant, None, Namespace.TENANT.value)
        return [StartSubscribe(rid, pattern, flt, tuple(positions), message.since, head, scope)]

    def _unsubscribe(self, message: Unsubscribe) -> list[Action]:
        sub = self._subs.get(message.channel)
        if sub is None or sub.unsubscribe_id is not None:
            raise NotSubscribed("no such subscription", request_id=message.id)  # UNI-SUB
        if not sub.answered:
            # Answer after `subscribed`, so every request gets its reply in a sensible order.
            sub.unsubscribe_id = message.id
            return []
        return self._remove(message.channel, [_send(_unsubscribed(message.channel, message.id))])

    def _remove(self, text: str, actions: list[Action]) -> list[Action]:
        """Drop a subscription now: no event is delivered because of it after this (UNI-SUB)."""
        del self._subs[text]
        self._refresh_views()
        remaining = [sub.pattern for sub in self._subs.values()]
        for key in list(self._last):
            channel = parse_channel(key[2])
            if not any(matches(pattern, channel) for pattern in remaining):
                del self._last[key]
        actions.append(StopSubscribe(text))
        return actions

    def _publish(self, message: Publish, now: int) -> list[Action]:
        """UNI-PUB-24: rate, validity, authorization, dedup, typed event, sequencing."""
        rid = message.id
        identity = self._identity()
        config = self.config
        retry = self._take_publish_token(now)
        if retry is not None:
            raise RateLimited("publish rate exceeded", retry_after_ms=retry, request_id=rid)
        channel = parse_channel(message.channel)  # checked by the parser (invalid_channel)
        for name, targets in (("to", message.to), ("exclude", message.exclude)):
            if targets is not None and len(targets) > config.max_targets:
                raise InvalidMessage(
                    f"{name} lists more than {config.max_targets} users", request_id=rid
                )  # UNI-LIM
        if message.attrs is not None and len(message.attrs) > config.max_attrs:
            raise InvalidMessage(f"more than {config.max_attrs} attrs", request_id=rid)
        if channel.namespace is Namespace.SYS and (
            message.to is not None or message.exclude is not None or message.user is not None
        ):
            raise InvalidMessage("to, exclude and user are not allowed on $sys", request_id=rid)
        if channel.namespace is not Namespace.ME and message.user is not None:
            raise InvalidMessage("user is only for $me channels", request_id=rid)
        if not publish_allowed(
            identity.publish_grants, channel, identity.role, identity.sub, message.user
        ) or (channel.namespace is Namespace.SYS and not self._system_namespace):
            raise Forbidden("publish outside grants", request_id=rid)  # UNI-CH, UNI-PUB
        key = self._key(channel, message.user)
        try:
            if self._typed_events:
                self.registry.check(message.event, message.data)  # UNI-PUB typed events
        except RequestError as exc:
            exc.request_id = rid
            # Dedup comes before the typed-event check: a retry of an accepted event is
            # still acknowledged, so the adapter asks the broker before refusing.
            return [RefuseUnlessDuplicate(rid, key, message.message_id, exc, identity.tenant)]
        coalesce = message.key if message.key is not None and self._coalesces(channel) else None
        record = PublishRecord(
            key=key,
            event_type=message.event,
            data=message.data,
            message_id=message.message_id,
            attrs=None if message.attrs is None else dict(message.attrs),
            to=None if message.to is None else frozenset(message.to),
            exclude=None if message.exclude is None else frozenset(message.exclude),
            exclude_self=message.exclude_self,
            coalesce_key=coalesce,
            publisher_sub=identity.sub,
            publisher_connection=self.connection_id,
            publisher_tenant=identity.tenant,
        )
        return [StartPublish(rid, record)]

    def _take_publish_token(self, now: int) -> int | None:
        """UNI-PUB-24: ``None`` when a publish may go on, else the ms until it may."""
        bucket = self._bucket
        if bucket is None:
            config = self.config
            bucket = self._bucket = TokenBucket(
                config.publish_rate_per_second, config.publish_rate_burst
            )
        return bucket.try_take(now)

    def _coalesces(self, channel: Channel) -> bool:
        return any(matches(pattern, channel) for pattern in self._coalescing)

    def _refresh(self, message: Refresh, now: int) -> list[Action]:
        old = self._identity()
        try:
            new = self.verifier.verify(message.token, now / 1000)
        except AuthFailed:
            raise TokenInvalid("the new token does not verify", request_id=message.id) from None
        if not old.same_principal(new):
            raise TokenMismatch("the new token names another principal", request_id=message.id)
        self.identity = new
        self._warned = False
        actions: list[Action] = []
        revoked: list[str] = []
        for text, sub in list(self._subs.items()):
            if subscribe_allowed(new.subscribe_grants, sub.pattern):
                continue
            if sub.answered:
                revoked.append(text)
                actions.append(_send(_unsubscribed(text, None)))
                self._remove(text, actions)
            else:
                sub.revoked = True  # answered with `forbidden` when the broker reports back
        if revoked:
            actions.append(Revoked(tuple(revoked)))
        # UNI-AUTH-20: the revocations precede `refreshed`.
        actions.append(_send(Refreshed(id=message.id, expires_at=new.expires_at)))
        self._refresh_views()
        actions.extend(self._expiry_warning(now))
        return actions

    # -- broker results ------------------------------------------------------------------------

    def subscribe_result(self, pattern: str, head: Position | None = None) -> list[Action]:
        """The broker work for ``pattern`` is done: answer ``subscribed`` (UNI-SUB).

        ``head`` is the current position of a pattern without wildcards. Then feed
        :meth:`replay_actions` per replayed channel and finish with :meth:`subscription_active`.
        """
        sub = self._subs.get(pattern)
        if sub is None or sub.answered or self.state not in _DELIVERING:
            return []
        if sub.revoked:
            return self.subscribe_failed(pattern, Forbidden("subscription outside grants"))
        if sub.head is not None and head is None:
            raise LocalError("subscribe_result needs the head of a pattern without wildcards")
        sub.answered = True
        actions: list[Action] = [
            _send(
                Subscribed(
                    id=sub.request_id,
                    channel=pattern,
                    ts=self._clock(),
                    position=head if sub.head is not None else None,
                )
            )
        ]
        if sub.head is not None and head is not None and not sub.resumes:
            # Live delivery continues after the announced head (events up to it are history);
            # a resuming subscription advances when its replay is reported (UNI-DEL-15).
            self._advance(sub.head, head)
            actions.extend(self.take_gaps())  # another subscription saw an older epoch
        if sub.unsubscribe_id is not None:
            return self._remove(
                pattern, [*actions, _send(_unsubscribed(pattern, sub.unsubscribe_id))]
            )
        return actions

    def subscribe_failed(self, pattern: str, error: ReplyError) -> list[Action]:
        """The broker work failed (e.g. :class:`~unisock.errors.Unavailable`); nothing changes."""
        sub = self._subs.get(pattern)
        if sub is None or sub.answered or self.state not in _DELIVERING:
            return []
        actions: list[Action] = [_reply_error(error, sub.request_id)]
        if sub.unsubscribe_id is not None:
            actions.append(_reply_error(NotSubscribed("the subscribe failed"), sub.unsubscribe_id))
        return self._remove(pattern, actions)

    def replay_actions(self, pattern: str, key: ChannelKey, replay: Replay) -> list[Action]:
        """Replayed history of one channel for the new subscription (UNI-DEL resume).

        A gap becomes a ``gap`` message and live delivery continues after the head; events are
        delivered when they satisfy the predicate, in offset order, never twice.
        """
        sub = self._subs.get(pattern)
        if sub is None or not sub.answered or sub.active or self.state not in _DELIVERING:
            return []
        now = self._clock()
        actions: list[Action] = []
        if replay.gap is not None:
            actions.append(
                _send(
                    Gap(
                        channel=key.name,
                        epoch=replay.head.epoch,
                        offset=replay.head.offset,
                        reason=replay.gap,
                    )
                )
            )
            self._advance(key, replay.head, force=True)
        view = self._single_view(sub)
        for event in replay.events:
            if event_view(event).delivers_to(view, now):
                self._deliver(event, actions)
        if replay.gap is None:
            self._advance(key, replay.head)
            actions.extend(self.take_gaps())
        return actions

    def subscription_active(self, pattern: str) -> list[Action]:
        """Replay is flushed: the subscription now takes live events (UNI-SUB, UNI-DEL).

        Events that arrived while the subscription was being set up are delivered now, after
        the replay, unless the replay already covered them.
        """
        sub = self._subs.get(pattern)
        if sub is None or not sub.answered or sub.active or self.state not in _DELIVERING:
            return []
        if sub.overflow:
            return self.slow_consumer()
        sub.active = True
        held, sub.held = sub.held or (), None
        self._refresh_views()
        now = self._clock()
        view = self._single_view(sub)
        actions: list[Action] = []
        for event in held:
            if event_view(event).delivers_to(view, now):
                self._deliver(event, actions)
        return actions

    def publish_result(self, request_id: str, result: PublishResult) -> list[Action]:
        """The broker sequenced (or deduplicated) the publish: ``ack`` (UNI-PUB)."""
        if self.state not in _DELIVERING:
            return []
        event = result.event
        record = event.record
        return [
            Send(
                encode_ack(
                    request_id,
                    record.key.name,
                    record.message_id,
                    event.epoch,
                    event.offset,
                    result.duplicate,
                )
            )
        ]

    def publish_failed(self, request_id: str, error: ReplyError) -> list[Action]:
        """The broker could not sequence the publish; nothing was sequenced (UNI-PUB)."""
        if self.state not in _DELIVERING:
            return []
        return [_reply_error(error, request_id)]

    # -- delivery ------------------------------------------------------------------------------

    def accepts(self, event: StoredEvent, now_ms: int, view: FanoutView | None = None) -> bool:
        """Whether ``event`` goes to this connection now (UNI-DEL predicate), O(subscriptions).

        ``True`` commits the adapter to queue ``event.frame``. Events for subscriptions still
        being set up are held and delivered by :meth:`subscription_active`. ``view`` is
        :func:`fanout_view` of ``event``, built once per fan-out by the caller.
        """
        if view is None:
            view = fanout_view(event)
        # Clause 1 (open/draining, not expired) plus an active exact filter-less subscription
        # on this very key: nothing else to decide for an untargeted event (UNI-DEL).
        scope = view.scope
        if view.untargeted and now_ms < self._deliver_until and scope in self._plain:
            # _fresh_at, inlined: this is the per-recipient hot path of every fan-out.
            position = view.position
            last = self._last.get(scope)
            if last is not None:
                if last[0] == position[0]:
                    if position[1] <= last[1]:
                        return False
                else:
                    self._epoch_gap(scope, position[0], position[1] - 1)
            self._last[scope] = position
            return True
        filtered = self._filtered
        if filtered is not None and view.untargeted and now_ms < self._deliver_until:
            # Only exact subscriptions, none being set up: one filter decides, if any (UNI-DEL).
            flt = filtered.get(scope)
            if flt is None:
                return False
            facts = view.prepared.event
            return evaluate(flt, facts.event_type, facts.attrs) and self._fresh_at(
                scope, view.position
            )
        active = self._active_view
        pending = self._pending_view
        if active is None and pending is None:
            return False
        prepared = view.prepared
        if active is not None and prepared.delivers_to(active, now_ms):
            return self._fresh_at(scope, view.position)
        if pending is not None and prepared.delivers_to(pending, now_ms):
            self._hold(event, now_ms)
        return False

    def _hold(self, event: StoredEvent, now_ms: int) -> None:
        for sub in self._subs.values():
            if sub.active or sub.revoked:
                continue
            if event_view(event).delivers_to(self._single_view(sub), now_ms):
                if sub.held is None:
                    sub.held = []
                if len(sub.held) >= self.config.max_queue:
                    sub.overflow = True  # UNI-LIM: the setup backlog counts like a queue
                else:
                    sub.held.append(event)

    def _single_view(self, sub: _Subscription) -> ConnectionView:
        identity = self._identity()
        return ConnectionView(
            identity.tenant,
            identity.sub,
            self.connection_id,
            self.state.value,
            identity.expires_at_ms,
            (sub.view,),
        )

    def _fresh(self, event: StoredEvent) -> bool:
        """UNI-DEL order: per channel, strictly increasing offsets within an epoch."""
        return self._fresh_at(_scope(event.record.key), (event.epoch, event.offset))

    def _fresh_at(self, scope: _Scope, position: tuple[str, int]) -> bool:
        last = self._last.get(scope)
        if last is not None:
            if last[0] == position[0]:
                if position[1] <= last[1]:
                    return False
            else:
                self._epoch_gap(scope, position[0], position[1] - 1)
        self._last[scope] = position
        return True

    def _advance(self, key: ChannelKey, head: Position, *, force: bool = False) -> None:
        """Move the channel's last position to ``head``; ``force`` when a gap was just sent."""
        scope = _scope(key)
        last = self._last.get(scope)
        if not force and last is not None and last[0] != head.epoch:
            self._epoch_gap(scope, head.epoch, head.offset)
        if force or last is None or last[0] != head.epoch or last[1] < head.offset:
            self._last[scope] = (head.epoch, head.offset)

    def _epoch_gap(self, scope: _Scope, epoch: str, offset: int) -> None:
        """UNI-DEL-19: the connection learns of a new epoch before any event of it."""
        gap = Gap(channel=scope[2], epoch=epoch, offset=max(offset, 0), reason=GAP_EPOCH_CHANGED)
        self.pending_gaps.append(encode(gap))

    def take_gaps(self) -> list[Action]:
        """Pending epoch-change gaps as actions, clearing them; they precede the next event."""
        gaps, self.pending_gaps = self.pending_gaps, []
        return [Send(frame) for frame in gaps]

    def _deliver(self, event: StoredEvent, actions: list[Action]) -> None:
        """Append ``event`` unless already delivered, after any epoch gap it causes."""
        if self._fresh(event):
            if self.pending_gaps:
                actions.extend(self.take_gaps())
            actions.append(Deliver(event))


# --- helpers ----------------------------------------------------------------------------------


def _send(message: Message) -> Send:
    return Send(encode(message))


def _reply_error(error: ReplyError, request_id: str | None = None) -> Send:
    return _send(Error.from_dict(error.to_message(request_id)))


def _unsubscribed(channel: str, request_id: str | None) -> Unsubscribed:
    reason = "requested" if request_id is not None else "revoked"
    return Unsubscribed(channel=channel, reason=reason, id=request_id)


def _request_id(message: ClientMessage) -> str | None:
    return message.id


def _too_big(text: str, limit: int) -> bool:
    """UNI-LIM ``max_message_bytes`` counts UTF-8 octets; skip encoding when it cannot matter."""
    if len(text) > limit:
        return True
    if len(text) * 4 <= limit:
        return False
    return len(text.encode("utf-8")) > limit
