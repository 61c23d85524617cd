"""The Unisock reference client: one asyncio WebSocket per session, resumed across reconnects.

A :class:`Client` keeps the application's *desired* state (subscriptions, unacknowledged
publishes, last position per channel) apart from any one connection. Each connection is
authenticated with ``hello``, then every subscription is re-sent with the positions the
client holds and every unacknowledged publish is re-sent with its original ``message_id``.
What happens after a close is decided by the close code's class (section 9): stop, get a
new token, back off, or reconnect now.

Typical use::

    client = Client("wss://rt.example.com/", token_provider)
    await client.connect()
    await client.subscribe("tasks.>")
    async for item in client.events():
        ...  # Event, Gap (resync the channel) or SubscriptionEnded
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import cache
from typing import Any, Final, TypeAlias, TypeVar, cast
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed as _WsConnectionClosed
from websockets.exceptions import InvalidHandshake, InvalidURI
from websockets.typing import Origin, Subprotocol
from websockets.uri import parse_uri

from unisock import errors
from unisock._version import PROTOCOL_TOKEN, __version__
from unisock.backoff import DEFAULTS, BackoffParams, backoff_delay, drain_delay
from unisock.broker import Position
from unisock.channels import Namespace, matches, parse_channel, parse_pattern
from unisock.closecodes import ReconnectClass, close_class, close_name, parse_close_reason
from unisock.filters import MAX_NODES, compile_filter
from unisock.schemas import SERVER_MESSAGE_TYPES, format_errors, validator_for

__all__ = [
    "Ack",
    "Client",
    "ClientError",
    "ClientState",
    "CloseInfo",
    "ConnectionClosed",
    "Event",
    "Gap",
    "HeartbeatParams",
    "Item",
    "LimitExceeded",
    "MessageTooLarge",
    "NotConnected",
    "Position",
    "PublishExpired",
    "SessionInfo",
    "Subscription",
    "SubscriptionEnded",
    "Superseded",
    "TokenProvider",
    "UnknownServerError",
    "Welcome",
]

log = logging.getLogger("unisock.client")
_T = TypeVar("_T")

TokenProvider: TypeAlias = Callable[[], "Awaitable[str] | str"]
"""Returns a fresh token; called before every connection attempt and on ``token_expiring``."""

DEFAULT_AUTH_TIMEOUT_MS: Final = 10000
DEFAULT_DEDUP_WINDOW_MS: Final = 120000


# --- errors -----------------------------------------------------------------------------------


class ClientError(errors.LocalError):
    """Root of the failures that only a client reports (the server sent no ``error``)."""


class NotConnected(ClientError):
    """The client is closed, or was never started with :meth:`Client.connect`."""


class ConnectionClosed(ClientError):
    """The client stopped after a close it does not recover from; ``close`` says which."""

    def __init__(self, close: CloseInfo) -> None:
        super().__init__(f"connection closed: {close.code} {close.name}")
        self.close = close


class Superseded(ConnectionClosed):
    """Closed with 4001: the same session was opened elsewhere (UNI-CLOSE-24)."""


class LimitExceeded(ClientError, ValueError):
    """The request breaks an announced limit; it was refused locally, not sent (UNI-LIM-4)."""


class MessageTooLarge(LimitExceeded):
    """The request is larger than the announced ``max_message_bytes`` (UNI-LIM-3)."""


class PublishExpired(ClientError):
    """An unacknowledged publish can no longer be retried safely (UNI-SEC-12)."""


class UnknownServerError(errors.ReplyError):
    """An ``error`` whose code this client does not know (UNI-ERR-13); ``code`` is the wire code."""


@cache
def _unknown_error_class(code: str) -> type[UnknownServerError]:
    name = "".join(part.title() for part in code.split("_")) or "Unknown"
    return cast(type[UnknownServerError], type(name, (UnknownServerError,), {"code": code}))


def _error_from_message(msg: Mapping[str, Any]) -> errors.ReplyError:
    """The typed exception for an ``error`` message, chosen by ``code`` only (UNI-ERR-14)."""
    code = str(msg["code"])
    text = str(msg.get("message", ""))
    rid = msg.get("id")
    rid = rid if isinstance(rid, str) else None
    details = msg.get("details")
    details = dict(details) if isinstance(details, Mapping) else None
    retry = msg.get("retry_after_ms")
    retry_ms = retry if isinstance(retry, int) and not isinstance(retry, bool) else 0
    klass = errors.error_classes().get(code)
    if klass is errors.RateLimited:
        return errors.RateLimited(text, retry_after_ms=retry_ms, request_id=rid)
    if klass is errors.Unavailable:
        return errors.Unavailable(text, retry_after_ms=retry_ms, request_id=rid)
    if klass is errors.InvalidEventData:
        pointer = str((details or {}).get("pointer", ""))
        return errors.InvalidEventData(text, pointer=pointer, request_id=rid)
    if klass is errors.InternalError:
        return errors.InternalError(request_id=rid)
    if klass is None:
        klass = _unknown_error_class(code)
    return klass(text, request_id=rid, details=details)


# --- values handed to the application ------------------------------------------------------


class ClientState(Enum):
    """Where the client is; reported through ``on_state_change``."""

    IDLE = "idle"
    CONNECTING = "connecting"
    OPEN = "open"
    DRAINING = "draining"
    WAITING = "waiting"
    """Between connections, waiting out a backoff or drain delay."""
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class HeartbeatParams:
    """``welcome.heartbeat``; the silence bound is ``interval_ms + timeout_ms`` (UNI-HB-9)."""

    interval_ms: int
    timeout_ms: int

    @property
    def silence_ms(self) -> int:
        return self.interval_ms + self.timeout_ms


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """``welcome.session``: who the server says this connection is."""

    tenant: str
    sub: str
    role: str
    expires_at: int
    sid: str | None = None


@dataclass(frozen=True, slots=True)
class Welcome:
    """The parts of ``welcome`` the client acts on; ``raw`` keeps the whole message."""

    connection_id: str
    spec_version: str
    session: SessionInfo
    heartbeat: HeartbeatParams
    backoff: BackoffParams
    limits: Mapping[str, Any]
    dedup_window_ms: int
    features: frozenset[str]
    raw: Mapping[str, Any]

    @classmethod
    def from_message(cls, msg: Mapping[str, Any]) -> Welcome:
        session = msg["session"]
        heartbeat = msg["heartbeat"]
        backoff = msg["backoff"]
        return cls(
            connection_id=msg["connection_id"],
            spec_version=msg["spec_version"],
            session=SessionInfo(
                tenant=session["tenant"],
                sub=session["sub"],
                role=session.get("role", "user"),
                expires_at=session["expires_at"],
                sid=session.get("sid"),
            ),
            heartbeat=HeartbeatParams(heartbeat["interval_ms"], heartbeat["timeout_ms"]),
            backoff=BackoffParams(
                base_ms=backoff["base_ms"],
                cap_ms=backoff["cap_ms"],
                floor_ms=backoff["floor_ms"],
                reset_after_ms=backoff["reset_after_ms"],
            ),
            limits=dict(msg.get("limits", {})),
            dedup_window_ms=msg.get("dedup_window_ms", DEFAULT_DEDUP_WINDOW_MS),
            # Unknown feature names are kept but never acted on (UNI-LC-14).
            features=frozenset(msg.get("features", ())),
            raw=msg,
        )


@dataclass(frozen=True, slots=True)
class Event:
    """A delivered event, after client-side deduplication (UNI-DEL-30)."""

    channel: str
    epoch: str
    offset: int
    event: str
    data: Any
    message_id: str
    ts: int
    attrs: Mapping[str, Any] = field(default_factory=dict)
    publisher: str | None = None
    coalesced: tuple[int, ...] = ()
    """Offsets this event superseded on a slow connection: merged, not lost (UNI-DEL-28)."""


@dataclass(frozen=True, slots=True)
class Gap:
    """Resync signal: the application's view of ``channel`` may be incomplete (UNI-DEL-31/32).

    ``reason`` is the gap's reason, or ``epoch_changed`` when an event arrived in a new epoch.
    Delivery continues after (``epoch``, ``offset``).
    """

    channel: str
    epoch: str
    offset: int
    reason: str


@dataclass(frozen=True, slots=True)
class SubscriptionEnded:
    """A subscription ended without the application asking: ``revoked`` by a refresh, or
    refused with an error code when it was re-sent after a reconnect."""

    channel: str
    reason: str


Item: TypeAlias = Event | Gap | SubscriptionEnded
"""What :meth:`Client.events` yields."""


@dataclass(frozen=True, slots=True)
class Subscription:
    """A confirmed subscription: ``position`` is the head for a pattern without wildcards."""

    channel: str
    filter: Mapping[str, Any] | None
    ts: int
    position: Position | None


@dataclass(frozen=True, slots=True)
class Ack:
    """A publish was sequenced and stored; ``duplicate`` when the message_id was seen before."""

    channel: str
    message_id: str
    epoch: str
    offset: int
    duplicate: bool
    id: str | None = None
    """The ``id`` of the publish request this acknowledges."""


@dataclass(frozen=True, slots=True)
class CloseInfo:
    """Why a connection ended. ``local`` is true when the client ended it, or none was made.

    Local ends use registry codes for their meaning: 1006 for a transport failure, a missing
    ``welcome`` or a silent server (UNI-HB-9), 4300 when the client left a draining server,
    1000 when the application closed the client.
    """

    code: int
    reason: str = ""
    local: bool = False

    @property
    def name(self) -> str:
        parsed = parse_close_reason(self.reason).name if self.reason else ""
        return parsed or close_name(self.code) or "unknown"

    @property
    def retry_after_ms(self) -> int | None:
        return parse_close_reason(self.reason).retry_after_ms

    @property
    def window_ms(self) -> int | None:
        return parse_close_reason(self.reason).window_ms

    @property
    def reconnect_class(self) -> ReconnectClass:
        return close_class(self.code)

    @property
    def superseded(self) -> bool:
        """A distinct outcome: the server closed this session for a newer one (UNI-CLOSE-24)."""
        return self.code == 4001 and not self.local


# --- internal bookkeeping -------------------------------------------------------------------


@dataclass(slots=True)
class _Sub:
    channel: str
    filter: Mapping[str, Any] | None
    matcher: Any
    confirmed: bool = False
    sent_gen: int = -1
    active_gen: int = -1
    """The connection on which ``subscribed`` arrived (UNI-SUB-15)."""
    ts: int | None = None
    position: Position | None = None
    waiters: list[asyncio.Future[Subscription]] = field(default_factory=list)

    def snapshot(self) -> Subscription:
        return Subscription(self.channel, self.filter, self.ts or 0, self.position)


@dataclass(slots=True)
class _Publish:
    fields: dict[str, Any]
    future: asyncio.Future[Ack]
    sent_gen: int = -1
    first_sent: float | None = None


@dataclass(slots=True)
class _Request:
    kind: str
    key: str
    future: asyncio.Future[Any] | None = None
    plain: bool = False
    """For subscribe: carried neither ``from`` nor ``since`` (UNI-DEL-29)."""


class _Stop(Exception):
    """Ends the run loop with the given close."""

    def __init__(self, close: CloseInfo) -> None:
        super().__init__(close.name)
        self.close = close


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


async def _resolve_token(token: str | TokenProvider) -> str:
    if isinstance(token, str):
        return token
    value = token()
    if inspect.isawaitable(value):
        value = await value
    if not isinstance(value, str) or not value:
        raise TypeError("the token provider must return a non-empty string")
    return value


# --- the client -----------------------------------------------------------------------------


class Client:
    """An asyncio Unisock client: one connection at a time for all subscriptions (UNI-SESS-4).

    ``token`` is a JWT string or a provider called before each connection and on
    ``token_expiring``; only a provider lets the client recover from 4100/4101. The token
    goes only into ``hello`` and ``refresh``, never into the URL, headers or logs
    (UNI-AUTH-1, UNI-SEC-5, UNI-SEC-7). Plain ``ws:`` is refused for hosts other than the
    loopback interface unless ``allow_insecure`` is set.
    ``time_scale`` multiplies every client timer. ``rng`` draws backoff jitter. ``sleep``
    and ``clock`` (monotonic seconds) replace the reconnect waits and the clock that measures
    the floor, the reset period and the dedup window; tests use them to observe delays.
    """

    def __init__(
        self,
        url: str,
        token: str | TokenProvider,
        *,
        origin: str | None = None,
        headers: Mapping[str, str] | None = None,
        subprotocols: Sequence[str] = (),
        client_name: str = "unisock-python",
        client_version: str = __version__,
        reconnect: bool = True,
        allow_insecure: bool = False,
        request_timeout: float = 10.0,
        time_scale: float = 1.0,
        rng: random.Random | None = None,
        on_gap: Callable[[Gap], None] | None = None,
        on_state_change: Callable[[ClientState], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        try:
            uri = parse_uri(url)
        except InvalidURI as exc:
            raise ValueError(f"not a WebSocket URL: {exc}") from None
        parts = urlsplit(url)
        # Tokens travel only in hello (UNI-AUTH-1, UNI-SEC-5).
        if isinstance(token, str) and token in f"{parts.path}?{parts.query}#{parts.fragment}":
            raise ValueError("the token must not appear in the URL")
        if not uri.secure and not _is_loopback(uri.host) and not allow_insecure:
            # No hello over plain ws: beyond this machine unless asked for (UNI-SEC-4).
            raise ValueError("use a wss: URL (or allow_insecure=True for development)")
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self._url = url
        self._token = token
        self._origin = origin
        self._headers = dict(headers or {})
        # The client always offers unisock.v1 (UNI-TR-1) and may offer more (UNI-TR-2).
        offered = [PROTOCOL_TOKEN, *(p for p in subprotocols if p != PROTOCOL_TOKEN)]
        self._subprotocols = [Subprotocol(p) for p in offered]
        self._client_info = {"name": client_name, "version": client_version}
        self._reconnect = reconnect
        self._request_timeout = request_timeout
        self._scale = time_scale
        self._rng = rng or random.Random()
        self._gap_callback = on_gap
        self._state_callback = on_state_change
        self._sleep = sleep or asyncio.sleep
        self._clock = clock or time.monotonic

        self._state = ClientState.IDLE
        self._welcome: Welcome | None = None
        self._backoff = DEFAULTS
        self._auth_timeout_ms = DEFAULT_AUTH_TIMEOUT_MS
        self._positions: dict[str, Position] = {}
        self._subs: dict[str, _Sub] = {}
        self._publishes: dict[str, _Publish] = {}
        self._rate_limited: dict[str, float] = {}
        self._requests: dict[str, _Request] = {}
        self._ids = itertools.count(1)
        self._gen = 0
        self._ws: ClientConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._opened: asyncio.Future[Welcome] | None = None
        self._items: asyncio.Queue[Item | None] = asyncio.Queue()
        self._closed = asyncio.Event()
        self._last_close: CloseInfo | None = None
        self._local_close: CloseInfo | None = None
        self._drain_window_ms: int | None = None
        self._last_token: str | None = None
        self._attempt = 0
        self._last_attempt_at: float | None = None
        self._stopping = False

    # -- public API ---------------------------------------------------------------------------

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def welcome(self) -> Welcome | None:
        """The ``welcome`` of the current (or last) connection."""
        return self._welcome

    @property
    def last_close(self) -> CloseInfo | None:
        """How the last connection ended; ``superseded`` marks a 4001 (UNI-CLOSE-24)."""
        return self._last_close

    def positions(self) -> dict[str, Position]:
        """The last position per channel (UNI-DEL-29), kept across reconnects and 4001."""
        return dict(self._positions)

    def subscriptions(self) -> list[str]:
        """The patterns the client keeps subscribed across reconnects."""
        return list(self._subs)

    async def connect(self, timeout: float | None = None) -> Welcome:
        """Start the client and wait for the first ``welcome``.

        Failed attempts are retried as their close class says; raises :class:`ConnectionClosed`
        (:class:`Superseded` for 4001) when the client stops instead, ``TimeoutError`` (and
        closes the client) when ``timeout`` seconds pass first. Calling it again after a stop
        reconnects explicitly, keeping positions and subscriptions (UNI-CLOSE-2, UNI-SESS-17).
        """
        if self._runner is not None and not self._runner.done():
            if self._welcome is not None and self._state in (
                ClientState.OPEN,
                ClientState.DRAINING,
            ):
                return self._welcome
        else:
            self._start()
        assert self._opened is not None
        try:
            return await asyncio.wait_for(asyncio.shield(self._opened), timeout)
        except TimeoutError:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection with 1000 and stop reconnecting; ends :meth:`events`."""
        self._stopping = True
        ws = self._ws
        if ws is not None:
            self._local_close = CloseInfo(1000, "normal", local=True)
            with contextlib.suppress(Exception):
                await ws.close(1000, "normal")
        runner = self._runner
        if runner is not None and not runner.done():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        if self._state is not ClientState.CLOSED:
            self._finish(CloseInfo(1000, "normal", local=True))

    async def wait_closed(self) -> CloseInfo | None:
        """Wait until the client has stopped; returns the close that stopped it."""
        await self._closed.wait()
        return self._last_close

    async def events(self) -> AsyncIterator[Item]:
        """Events, gaps and ended subscriptions, in arrival order, until the client stops."""
        while True:
            item = await self._items.get()
            if item is None:
                self._items.put_nowait(None)  # let every other reader stop too
                return
            yield item

    async def subscribe(
        self,
        channel: str,
        *,
        filter: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Subscription:
        """Subscribe to a channel or pattern; kept and re-sent after every reconnect.

        The pattern and filter are checked locally first (UNI-CH-7) and sent unchanged
        (UNI-CH-6). Server refusals raise the typed error of their code.
        """
        self._check_running()
        parse_pattern(channel)
        if filter is not None:
            # Over max_filter_nodes is refused locally too (UNI-LIM-4).
            compile_filter(dict(filter), max_nodes=self._limit("max_filter_nodes", MAX_NODES))
        if channel in self._subs:
            raise errors.AlreadySubscribed(f"already subscribed to {channel!r}")
        sub = _Sub(channel, dict(filter) if filter is not None else None, parse_pattern(channel))
        self._subs[channel] = sub
        future: asyncio.Future[Subscription] = asyncio.get_running_loop().create_future()
        sub.waiters.append(future)
        if self._is_open():
            await self._send_subscribe(sub)
        try:
            return await self._wait(future, timeout)
        except TimeoutError:
            self._subs.pop(channel, None)
            raise

    async def unsubscribe(self, channel: str, *, timeout: float | None = None) -> None:
        """Stop a subscription; it will not be re-sent after a reconnect."""
        sub = self._subs.pop(channel, None)
        if sub is None:
            raise errors.NotSubscribed(f"not subscribed to {channel!r}")
        for waiter in sub.waiters:
            if not waiter.done():
                waiter.cancel()
        if not self._is_open() or sub.sent_gen != self._gen:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        rid = self._next_id("u")
        self._requests[rid] = _Request("unsubscribe", channel, future)
        try:
            await self._send({"type": "unsubscribe", "id": rid, "channel": channel})
        except _WsConnectionClosed:
            return  # the server drops every subscription of a closed connection
        with contextlib.suppress(errors.NotSubscribed, ConnectionClosed):
            await self._wait(future, timeout)

    async def publish(
        self,
        channel: str,
        event: str,
        data: Any,
        *,
        message_id: str | None = None,
        attrs: Mapping[str, Any] | None = None,
        to: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        exclude_self: bool = False,
        key: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
    ) -> Ack:
        """Publish one event and wait for its ``ack``.

        A publish whose ack was lost with the connection is re-sent on the next connection
        with the same ``message_id`` (UNI-PUB-38), so the server deduplicates it. A
        ``rate_limited`` refusal raises :class:`unisock.errors.RateLimited` and is not retried.
        ``to``, ``exclude`` or ``user`` on a ``$sys`` channel raise ``ValueError`` before
        anything is sent (UNI-CH-15).
        """
        self._check_running()
        if parse_channel(channel).namespace is Namespace.SYS:
            targeting = [
                name
                for name, value in (("to", to), ("exclude", exclude), ("user", user))
                if value is not None
            ]
            if targeting:
                raise ValueError(f"a $sys publish cannot carry {', '.join(targeting)} (UNI-CH-15)")
        mid = message_id if message_id is not None else _uuid()
        until = self._rate_limited.get(mid)
        now = self._clock()
        if until is not None and now < until:
            # Never re-send a rate-limited publish before retry_after_ms (UNI-PUB-32).
            remaining = int((until - now) * 1000 / self._scale) + 1
            raise errors.RateLimited("publish is still rate limited", retry_after_ms=remaining)
        self._rate_limited.pop(mid, None)
        max_targets = self._limit("max_targets", 0)
        max_attrs = self._limit("max_attrs", 0)
        for name, targets in (("to", to), ("exclude", exclude)):
            if targets is not None and max_targets and len(targets) > max_targets:
                raise LimitExceeded(f"{name} names more than {max_targets} users (UNI-LIM-4)")
        if attrs is not None and max_attrs and len(attrs) > max_attrs:
            raise LimitExceeded(f"more than {max_attrs} attrs (UNI-LIM-4)")
        existing = self._publishes.get(mid)
        if existing is not None:
            return await self._wait(existing.future, timeout, shield=True)
        fields: dict[str, Any] = {
            "channel": channel,
            "event": event,
            "data": data,
            "message_id": mid,
        }
        optional = {"attrs": attrs, "to": to, "exclude": exclude, "key": key, "user": user}
        for name, value in optional.items():
            if value is not None:
                fields[name] = dict(value) if isinstance(value, Mapping) else value
        if to is not None:
            fields["to"] = list(to)
        if exclude is not None:
            fields["exclude"] = list(exclude)
        if exclude_self:
            fields["exclude_self"] = True
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        pending = _Publish(fields, future)
        self._publishes[mid] = pending
        if self._is_open():
            await self._send_publish(pending)
        try:
            return await self._wait(future, timeout, shield=True)
        except TimeoutError:
            self._publishes.pop(mid, None)
            raise

    async def refresh(self, token: str | None = None, *, timeout: float | None = None) -> int:
        """Replace the token in-band (UNI-AUTH-22); returns the new ``expires_at``.

        Without ``token`` the provider is asked. Refusals raise ``TokenInvalid`` or
        ``TokenMismatch``; the old token stays in force.
        """
        if not self._is_open():
            raise NotConnected("refresh needs an open connection")
        new_token = token if token is not None else await _resolve_token(self._token)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        rid = self._next_id("r")
        self._requests[rid] = _Request("refresh", rid, future)
        try:
            await self._send({"type": "refresh", "id": rid, "token": new_token})
        except _WsConnectionClosed:
            raise NotConnected("connection lost") from None
        expires_at = await self._wait(future, timeout)
        self._last_token = new_token
        return expires_at

    # -- helpers for the API ------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._runner is None or self._runner.done():
            raise NotConnected("call connect() first")

    def _is_open(self) -> bool:
        return self._ws is not None and self._state in (ClientState.OPEN, ClientState.DRAINING)

    def _limit(self, name: str, default: int) -> int:
        if self._welcome is None:
            return default
        value = self._welcome.limits.get(name, default)
        return value if isinstance(value, int) else default

    def _next_id(self, prefix: str) -> str:
        # Ids are never reused within the client's life, so never on one connection (UNI-TR-24).
        return f"{prefix}{next(self._ids)}"

    def _seconds(self, ms: float) -> float:
        return ms * self._scale / 1000

    async def _wait(
        self, future: asyncio.Future[_T], timeout: float | None, *, shield: bool = False
    ) -> _T:
        limit = self._request_timeout * self._scale if timeout is None else timeout
        awaited: Awaitable[_T] = asyncio.shield(future) if shield else future
        return await asyncio.wait_for(awaited, limit)

    def _set_state(self, state: ClientState) -> None:
        if state is self._state:
            return
        self._state = state
        if self._state_callback is not None:
            try:
                self._state_callback(state)
            except Exception:
                log.exception("on_state_change callback failed")

    # -- sending ------------------------------------------------------------------------------

    async def _send(self, msg: Mapping[str, Any]) -> None:
        """Send one JSON object as one text message (UNI-TR-10), within the size limit."""
        ws = self._ws
        if ws is None:
            raise NotConnected("no open connection")
        text = json.dumps(msg, separators=(",", ":"), ensure_ascii=False)
        limit = self._limit("max_message_bytes", 0)
        if limit and len(text.encode("utf-8")) > limit:
            raise MessageTooLarge(f"{msg.get('type')} is larger than {limit} bytes (UNI-LIM-3)")
        await ws.send(text)

    async def _send_subscribe(self, sub: _Sub) -> None:
        if sub.sent_gen == self._gen:
            return
        sub.sent_gen = self._gen
        rid = self._next_id("s")
        msg: dict[str, Any] = {"type": "subscribe", "id": rid, "channel": sub.channel}
        if sub.filter is not None:
            msg["filter"] = sub.filter
        if sub.confirmed:
            # Resume (UNI-CLOSE-8): every held position the pattern matches (UNI-DEL-20), and
            # `since` for channels without one (UNI-DEL-21).
            start = {
                name: {"epoch": pos.epoch, "offset": pos.offset}
                for name, pos in self._positions.items()
                if _matches(sub.matcher, name)
            }
            if start:
                msg["from"] = start
            if sub.ts is not None:
                msg["since"] = sub.ts
        plain = "from" not in msg and "since" not in msg
        self._requests[rid] = _Request("subscribe", sub.channel, plain=plain)
        try:
            await self._send(msg)
        except MessageTooLarge as exc:
            self._drop_sub(sub, exc)
        except _WsConnectionClosed:
            pass  # re-sent after the next welcome

    async def _send_publish(self, pending: _Publish) -> None:
        if pending.sent_gen == self._gen:
            return
        pending.sent_gen = self._gen
        mid = pending.fields["message_id"]
        now = self._clock()
        if pending.first_sent is None:
            pending.first_sent = now
        elif now - pending.first_sent > self._seconds(self._dedup_window_ms()):
            # Past the dedup window a re-send would be a new event (UNI-SEC-12).
            self._fail_publish(mid, PublishExpired(f"publish {mid} unconfirmed past the window"))
            return
        rid = self._next_id("p")
        self._requests[rid] = _Request("publish", mid)
        try:
            await self._send({"type": "publish", "id": rid, **pending.fields})
        except MessageTooLarge as exc:
            self._fail_publish(mid, exc)
        except _WsConnectionClosed:
            pass  # re-sent after the next welcome, same message_id (UNI-PUB-38)

    def _dedup_window_ms(self) -> int:
        if self._welcome is None:
            return DEFAULT_DEDUP_WINDOW_MS
        return self._welcome.dedup_window_ms

    def _fail_publish(self, mid: str, exc: BaseException) -> None:
        pending = self._publishes.pop(mid, None)
        if pending is not None and not pending.future.done():
            pending.future.set_exception(exc)
            pending.future.exception()  # retrieved here: the caller may have timed out

    def _drop_sub(self, sub: _Sub, exc: BaseException) -> None:
        if self._subs.get(sub.channel) is sub:
            del self._subs[sub.channel]
        for waiter in sub.waiters:
            if not waiter.done():
                waiter.set_exception(exc)
                waiter.exception()
        sub.waiters.clear()

    # -- the run loop -------------------------------------------------------------------------

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = False
        self._attempt = 0  # n is 0 when the client starts (UNI-CLOSE-15)
        self._closed.clear()
        # Keep what the application has not read yet, minus the end marker of the last run.
        items: asyncio.Queue[Item | None] = asyncio.Queue()
        while not self._items.empty():
            item = self._items.get_nowait()
            if item is not None:
                items.put_nowait(item)
        self._items = items
        self._opened = loop.create_future()
        self._runner = loop.create_task(self._run(), name="unisock-client")

    async def _run(self) -> None:
        token: str | None = None
        try:
            while True:
                await self._wait_floor()
                if token is None:
                    try:
                        token = await _resolve_token(self._token)
                    except Exception:
                        log.warning("token provider failed; retrying with backoff")
                        close = CloseInfo(1006, "token_unavailable", local=True)
                        await self._after_close(close, opened_at=None)
                        continue
                self._last_token = token
                close, opened_at = await self._connection(token)
                token = None
                if self._stopping:
                    raise _Stop(close)  # the application closed: no reconnect (UNI-CLOSE-7)
                if close.reconnect_class is ReconnectClass.NEW_TOKEN and self._reconnect:
                    token = await self._new_token(close)
                await self._after_close(close, opened_at)
        except _Stop as stop:
            self._finish(stop.close)
        except Exception:
            # A bug must not leave the application waiting on a dead client.
            log.exception("client run loop failed")
            self._finish(CloseInfo(1011, "internal_error", local=True))

    async def _new_token(self, close: CloseInfo) -> str:
        """Class new_token: reconnect only with a token the application supplies (UNI-CLOSE-3)."""
        if isinstance(self._token, str):
            raise _Stop(close)
        try:
            token = await _resolve_token(self._token)
        except Exception:
            log.warning("token provider failed after %s; stopping", close.name)
            raise _Stop(close) from None
        if close.code in (4100, 4101) and token == self._last_token:
            # The same token again counts as none (UNI-CLOSE-4).
            log.warning("token provider returned the rejected token; stopping")
            raise _Stop(close)
        return token

    async def _after_close(self, close: CloseInfo, opened_at: float | None) -> None:
        """Act on the close's class (UNI-CLOSE-1, UNI-CLOSE-12): stop, or wait its delay."""
        self._last_close = close
        klass = close.reconnect_class
        if not self._reconnect or klass is ReconnectClass.NEVER:
            # 4001 lands here: a superseded session never reconnects by itself
            # (UNI-CLOSE-2, UNI-CLOSE-24).
            raise _Stop(close)
        params = self._backoff
        if opened_at is not None and self._clock() - opened_at >= self._seconds(
            params.reset_after_ms
        ):
            self._attempt = 0  # the connection was stable (UNI-CLOSE-15)
        drain_window, self._drain_window_ms = self._drain_window_ms, None
        if klass is ReconnectClass.NOW:
            if close.local:
                delay_ms = 0  # left a draining server after its drawn delay (UNI-CLOSE-22)
            else:
                # W: the reason's window, else the drain message's, else cap (UNI-CLOSE-23).
                window = close.window_ms if close.window_ms is not None else drain_window
                delay_ms = max(drain_delay(window, params, self._rng), close.retry_after_ms or 0)
        else:
            # UNI-CLOSE-5, UNI-CLOSE-13.
            delay_ms = backoff_delay(params, self._attempt, self._rng, close.retry_after_ms)
        self._attempt += 1  # n grows with each reconnection attempt (UNI-CLOSE-15)
        self._set_state(ClientState.WAITING)
        if delay_ms > 0:
            await self._sleep(self._seconds(delay_ms))

    async def _wait_floor(self) -> None:
        """Never two connection attempts closer than the floor F (UNI-CLOSE-16)."""
        if self._last_attempt_at is not None:
            remaining = self._last_attempt_at + self._seconds(self._backoff.floor) - self._clock()
            if remaining > 1e-6:  # ignore clock rounding
                await self._sleep(remaining)
        self._last_attempt_at = self._clock()

    def _finish(self, close: CloseInfo) -> None:
        self._last_close = close
        self._set_state(ClientState.CLOSED)
        failure: ConnectionClosed = (
            Superseded(close) if close.superseded else ConnectionClosed(close)
        )
        if self._opened is not None and not self._opened.done():
            self._opened.set_exception(failure)
            self._opened.exception()
        for sub in list(self._subs.values()):
            for waiter in sub.waiters:
                if not waiter.done():
                    waiter.set_exception(failure)
                    waiter.exception()
            sub.waiters.clear()
            sub.sent_gen = -1
        for mid in list(self._publishes):
            self._fail_publish(mid, failure)
        self._fail_requests(failure)
        for task in list(self._tasks):
            task.cancel()
        self._items.put_nowait(None)
        self._closed.set()

    def _fail_requests(self, exc: BaseException) -> None:
        for request in self._requests.values():
            future = request.future
            if future is not None and not future.done():
                future.set_exception(exc)
                future.exception()
        self._requests.clear()

    # -- one connection -----------------------------------------------------------------------

    async def _connection(self, token: str) -> tuple[CloseInfo, float | None]:
        """Open, authenticate and serve one connection; return how it ended."""
        self._set_state(ClientState.CONNECTING)
        self._local_close = None
        self._drain_window_ms = None
        try:
            ws = await connect(
                self._url,
                subprotocols=self._subprotocols,
                origin=None if self._origin is None else Origin(self._origin),
                additional_headers=self._headers or None,
                compression=None,
                ping_interval=None,  # liveness is judged on Unisock messages (section 8)
                open_timeout=self._seconds(self._auth_timeout_ms),
                close_timeout=self._seconds(self._auth_timeout_ms),
                max_size=None,
            )
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            log.info("connection attempt failed: %s", type(exc).__name__)
            return CloseInfo(1006, "connect_failed", local=True), None
        self._gen += 1
        self._ws = ws
        opened_at: float | None = None
        try:
            if ws.subprotocol != PROTOCOL_TOKEN:
                # No hello on a connection that did not select unisock.v1 (UNI-TR-6).
                self._local_close = CloseInfo(1006, "no_subprotocol", local=True)
                await ws.close(1002, "protocol_error")
                return self._local_close, None
            # hello is the first and, until welcome, the only message (UNI-LC-2, UNI-LC-3).
            await ws.send(
                json.dumps({"type": "hello", "token": token, "client": self._client_info})
            )
            welcome = await self._await_welcome(ws)
            if welcome is None:
                return self._closed_info(ws), None
            opened_at = self._clock()
            await self._on_welcome(welcome)
            await self._read_loop(ws, welcome.heartbeat)
        except _WsConnectionClosed:
            pass
        finally:
            self._ws = None
            # Replies of this connection can no longer arrive; requests are re-sent or failed.
            for request in self._requests.values():
                future = request.future
                if future is None or future.done():
                    continue
                if request.kind == "unsubscribe":
                    future.set_result(None)  # the server dropped it with the rest
                else:
                    future.set_exception(NotConnected("connection lost"))
                    future.exception()
            self._requests.clear()
            for task in list(self._tasks):
                task.cancel()
        return self._closed_info(ws), opened_at

    def _closed_info(self, ws: ClientConnection) -> CloseInfo:
        if self._local_close is not None:
            return self._local_close
        received = ws.protocol.close_rcvd
        if received is None:
            return CloseInfo(1006, "abnormal", local=True)
        return CloseInfo(received.code, received.reason)

    async def _abort(self, ws: ClientConnection, close: CloseInfo) -> None:
        """Drop the connection without a closing handshake (UNI-HB-9)."""
        self._local_close = close
        ws.transport.abort()
        with contextlib.suppress(Exception):
            await ws.wait_closed()

    async def _await_welcome(self, ws: ClientConnection) -> Welcome | None:
        """The first server message must be ``welcome`` within auth_timeout_ms (UNI-HB-12)."""
        try:
            raw = await asyncio.wait_for(ws.recv(), self._seconds(self._auth_timeout_ms))
        except TimeoutError:
            await self._abort(ws, CloseInfo(1006, "welcome_timeout", local=True))
            return None
        if isinstance(raw, bytes):
            # Binary, whatever it carries: UNI-TR-12 holds before welcome too.
            self._local_close = CloseInfo(1003, "unsupported_data", local=True)
            await ws.close(1003, "unsupported_data")
            return None
        msg = _decode(raw)
        if msg is None or msg.get("type") != "welcome" or _invalid(msg):
            # Close, send nothing more, and retry with backoff as after a lost connection
            # (UNI-LC-21).
            log.warning("expected welcome; closing")
            self._local_close = CloseInfo(1006, "bad_welcome", local=True)
            await ws.close(1002, "protocol_error")
            return None
        return Welcome.from_message(msg)

    async def _on_welcome(self, welcome: Welcome) -> None:
        # The most recent welcome replaces every default (UNI-LC-15, UNI-HB-11).
        self._welcome = welcome
        self._backoff = welcome.backoff
        self._auth_timeout_ms = self._limit("auth_timeout_ms", DEFAULT_AUTH_TIMEOUT_MS)
        self._set_state(ClientState.OPEN)
        for sub in list(self._subs.values()):
            await self._send_subscribe(sub)
        for pending in list(self._publishes.values()):
            await self._send_publish(pending)
        if self._opened is not None and not self._opened.done():
            self._opened.set_result(welcome)

    async def _read_loop(self, ws: ClientConnection, heartbeat: HeartbeatParams) -> None:
        silence = self._seconds(heartbeat.silence_ms)
        # Read continuously; the application reads from a buffer (UNI-LIM-10).
        while True:
            try:
                raw = await asyncio.wait_for(ws.recv(), silence)
            except TimeoutError:
                # Nothing at all for interval + timeout: the server is dead (UNI-HB-9, HB-10).
                log.info("no message for %d ms; reconnecting", heartbeat.silence_ms)
                await self._abort(ws, CloseInfo(1006, "heartbeat_timeout", local=True))
                return
            if isinstance(raw, bytes):
                self._local_close = CloseInfo(1003, "unsupported_data", local=True)
                await ws.close(1003, "unsupported_data")  # UNI-TR-12
                return
            msg = _decode(raw)
            if msg is None:
                log.warning("ignored a frame that is not a JSON object")
                continue
            await self._dispatch(ws, msg)

    # -- incoming messages --------------------------------------------------------------------

    async def _dispatch(self, ws: ClientConnection, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind not in SERVER_MESSAGE_TYPES:
            return  # unknown types are ignored (UNI-TR-22)
        problems = _invalid(msg)
        if problems:
            log.warning("ignored an invalid %s message: %s", kind, problems[0])
            return
        # `welcome` after the first is ignored; so is `pong`: we send no ping (UNI-HB-15).
        handler = getattr(self, f"_handle_{kind}", None)
        if handler is None:
            return
        try:
            await handler(ws, msg)
        except (_WsConnectionClosed, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("failed to handle a %s message", kind)

    async def _handle_ping(self, ws: ClientConnection, msg: dict[str, Any]) -> None:
        # Echo nonce and id (UNI-HB-8).
        pong: dict[str, Any] = {"type": "pong"}
        pong.update((k, msg[k]) for k in ("id", "nonce") if k in msg)
        await self._send(pong)

    async def _handle_event(self, ws: ClientConnection, msg: dict[str, Any]) -> None:
        channel, epoch, offset = msg["channel"], msg["epoch"], msg["offset"]
        active = [
            sub
            for sub in self._subs.values()
            if sub.active_gen == self._gen and _matches(sub.matcher, channel)
        ]
        if not active:
            return  # no subscription between subscribed and unsubscribed (UNI-SUB-15)
        known = self._positions.get(channel)
        if known is not None and known.epoch == epoch and offset <= known.offset:
            return  # already seen (UNI-DEL-30); epochs compare by equality only (UNI-DEL-10)
        if known is not None and known.epoch != epoch:
            self._emit_gap(Gap(channel, epoch, offset - 1, "epoch_changed"))  # UNI-DEL-32
        # Offsets skipped on this connection are not a loss (UNI-DEL-33); offsets listed in
        # `coalesced` are below `offset` and so count as seen (UNI-DEL-28).
        self._positions[channel] = Position(epoch, offset)
        for sub in active:
            sub.ts = max(sub.ts or 0, msg["ts"])
        self._items.put_nowait(
            Event(
                channel=channel,
                epoch=epoch,
                offset=offset,
                event=msg["event"],
                data=msg["data"],
                message_id=msg["message_id"],
                ts=msg["ts"],
                attrs=msg.get("attrs", {}),
                publisher=msg.get("publisher"),
                coalesced=tuple(msg.get("coalesced", ())),
            )
        )

    async def _handle_gap(self, ws: ClientConnection, msg: dict[str, Any]) -> None:
        gap = Gap(msg["channel"], msg["epoch"], msg["offset"], msg["reason"])
        self._positions[gap.channel] = Position(gap.epoch, gap.offset)  # UNI-DEL-31
        self._emit_gap(gap)

    def _emit_gap(self, gap: Gap) -> None:
        if self._gap_callback is not None:
            try:
                self._gap_callback(gap)
            except Exception:
                log.exception("on_gap callback failed")
        self._items.put_nowait(gap)

    async def _handle_subscribed(self, ws: ClientConnection, msg: dict[str, Any]) -> None:
        request = self._take_request(msg, "subscribe")
        if request is None:
            return
        sub = self._subs.get(request.key)
        if sub is None:
            return
        sub.confirmed = True
        sub.active_gen = self._gen
        sub.ts = max(sub.ts or 0, msg["ts"])
        head = msg.get("position")
        if head is not None:
            sub.position = Position(head["epoch"], head["offset"])
            known = self._positions.get(sub.channel)
            # A plain subscribe starts at the head (UNI-DEL-29); never move back in an epoch.
            if request.plain and (
                known is None or known.epoch != head["epoch"] or known.offset < head["offset"]
            ):
                self._positions[sub.channel] = sub.position
        snapshot = sub.snapshot()
        for waiter in sub.waiters:
            if not waiter.done():
                waiter.set_result(snapshot)
        sub.waiters.clear()

    async def _handle_unsubscribed(self, ws: ClientConnection, msg: dict[str, Any]) -> None:
        if "id" in msg:
            request = self._take_request(msg, "unsubscribe")
            if request is not None and request.future is not None and not request.future.done():
                request.future.set_result(None)
            return
        # Revoked, e.g. grants narrowed by a refresh: never re-sent (UNI-SUB-16).
        sub = self._subs.get(msg["channel"])
        if sub is not None:
            reason = msg.get("reason", "revoked")
            self._drop_sub(sub, errors.Forbidden(f"subscription {reason}"))
            self._items.put_nowait(SubscriptionEnded(sub.channel, reason))

    async def _handle_ack(self, ws: ClientConnection, msg: dict[str, Any]) -> None:
        request = self._take_request(msg, "publish")
        if request is None:
            return
        pending = self._publishes.pop(request.key, None)
        if pending is not None and not pending.future.done():
            pending.future.set_result(
                Ack(
                    channel=msg["channel"],
                    message_id=msg["message_id"],
                    epoch=msg["epoch"],
                    offset=msg["offset"],
                    duplicate=bool(msg.get("duplicate", False)),
                    id=msg["id"],
                )
            )

    async def _handle_error(self, ws: ClientConnection, msg: dict[str, Any]) -> None:
        exc = _error_from_message(msg)
        if "id" not in msg:
            log.warning("server error without id: %s", msg["code"])  # resolves nothing
            return
        request = self._requests.pop(msg["id"], None)  # matched by id only (UNI-ERR-12)
        if request is None:
            return
        if request.kind == "publish":
            if isinstance(exc, errors.RateLimited):
                self._rate_limited[request.key] = self._clock() + self._seconds(exc.retry_after_ms)
            self._fail_publish(request.key, exc)
        elif request.kind == "subscribe":
            sub = self._subs.get(request.key)
            if sub is not None:
                if sub.confirmed:
                    # A re-sent subscription the server now refuses: tell the application.
                    self._items.put_nowait(SubscriptionEnded(sub.channel, str(msg["code"])))
                self._drop_sub(sub, exc)
        elif request.future is not None and not request.future.done():
            request.future.set_exception(exc)
            request.future.exception()

    async def _handle_refreshed(self, ws: ClientConnection, msg: dict[str, Any]) -> None:
        request = self._take_request(msg, "refresh")
        if request is not None and request.future is not None and not request.future.done():
            request.future.set_result(msg["expires_at"])

    async def _handle_token_expiring(self, ws: ClientConnection, msg: dict[str, Any]) -> None:
        """Refresh in-band, never by reconnecting (UNI-AUTH-24); a failure lets it expire."""
        if isinstance(self._token, str):
            return
        self._spawn(self._refresh_quietly())

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:
            log.warning("token refresh failed (%s); the connection will expire", type(exc).__name__)

    async def _handle_drain(self, ws: ClientConnection, msg: dict[str, Any]) -> None:
        """Leave at max(F, U(0, window_ms)) after receipt (UNI-CLOSE-22)."""
        if self._state is ClientState.DRAINING:
            return
        self._set_state(ClientState.DRAINING)
        self._drain_window_ms = msg["window_ms"]
        delay = self._seconds(drain_delay(msg["window_ms"], self._backoff, self._rng))
        self._spawn(self._leave_after(ws, delay))

    async def _leave_after(self, ws: ClientConnection, delay: float) -> None:
        await self._sleep(delay)
        # Close the old connection with 1000 before opening the next (UNI-SESS-5).
        # Recorded as a local 4300 so that the class is `now` with no further delay.
        self._local_close = CloseInfo(4300, "drain", local=True)
        await ws.close(1000, "drain")

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _take_request(self, msg: Mapping[str, Any], kind: str) -> _Request | None:
        rid = msg.get("id")
        if not isinstance(rid, str):
            return None
        request = self._requests.get(rid)
        if request is None or request.kind != kind:
            return None
        del self._requests[rid]
        return request


def _matches(pattern: Any, channel: str) -> bool:
    try:
        return matches(pattern, parse_channel(channel))
    except ValueError:
        return False


def _decode(raw: str | bytes) -> dict[str, Any] | None:
    try:
        msg = json.loads(raw)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) else None


def _invalid(msg: Mapping[str, Any]) -> list[str]:
    """Schema errors of a server message of known type (unknown members are allowed)."""
    return format_errors(validator_for(f"messages/{msg['type']}"), msg)


def _uuid() -> str:
    return str(uuid.uuid4())
