"""The harness server: a scripted Unisock server that the client checks control.

It speaks just enough of the protocol to drive a client (``welcome``, automatic replies to
subscribe, unsubscribe, publish and refresh, pings) and lets a check inject every fault the
client rules of the spec react to: close codes, TCP drops, stalls, drains, gaps, epoch
changes, duplicated and reordered events. Every frame the client sends is validated against
the client-message schema on arrival; every connection records its handshake and timing on
one monotonic clock, so reconnection delays are measured by the server, not reported by
the client under test. Written from the spec; nothing here imports the reference client.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import jwt
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, NegotiationError
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from unisock.schemas import validate_client_message

__all__ = [
    "PROTOCOL",
    "Frame",
    "HConn",
    "Harness",
    "Signal",
    "Violation",
    "now_ms",
]

PROTOCOL: Final = "unisock.v1"
DEFAULT_TENANT: Final = "acme"
DEFAULT_SUB: Final = "alice"
_T = TypeVar("_T")


def now_ms() -> int:
    """Wall-clock milliseconds, for the ``ts`` of events the harness sends."""
    return int(time.time() * 1000)


class Signal:
    """Wakes every waiter whenever anything observable changes; waits are predicates."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def bump(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, probe: Callable[[], _T | None], timeout: float) -> _T | None:
        """The first non-None value of ``probe`` within ``timeout`` seconds, else None."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = probe()
            if value is not None:
                return value
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            event = self._event
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                return probe()


@dataclass
class Frame:
    """One frame the client sent, as received."""

    at: float
    raw: str | bytes
    message: Any
    problems: list[str]

    @property
    def type(self) -> str | None:
        if isinstance(self.message, dict) and isinstance(self.message.get("type"), str):
            return str(self.message["type"])
        return None


@dataclass(frozen=True)
class Violation:
    """A rule a frame or handshake broke, with the requirement IDs it concerns."""

    requirements: tuple[str, ...]
    text: str


@dataclass
class Behaviour:
    """What the harness answers on its own; checks switch parts off to script replies."""

    auto_pong: bool = True
    auto_subscribe: bool = True
    auto_unsubscribe: bool = True
    auto_ack: bool = True
    auto_refresh: bool = True
    pings: bool = True


def _default_welcome() -> dict[str, Any]:
    return {
        "type": "welcome",
        "protocol": PROTOCOL,
        "spec_version": "1.0.0",
        "heartbeat": {"interval_ms": 5000, "timeout_ms": 5000},
        "backoff": {"base_ms": 100, "cap_ms": 800, "floor_ms": 150, "reset_after_ms": 60000},
        "limits": {
            "max_message_bytes": 65536,
            "max_subscriptions": 100,
            "publish_rate": {"per_second": 50, "burst": 100},
            "max_queue": 1024,
            "max_connections_per_user": 5,
            "auth_timeout_ms": 10000,
            "max_filter_nodes": 32,
            "max_targets": 100,
            "max_attrs": 16,
        },
        "history": {"max_count": 1000, "max_age_ms": 300000},
        "dedup_window_ms": 120000,
        "refresh_warning_ms": 60000,
        "features": ["coalescing", "system_namespace", "typed_events"],
    }


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _has_wildcard(pattern: str) -> bool:
    return any(token in ("*", ">") for token in pattern.split("."))


class HConn:
    """One connection the client opened to the harness."""

    def __init__(
        self,
        harness: Harness,
        ws: ServerConnection,
        index: int,
        requested_at: float,
        path: str,
        headers: list[tuple[str, str]],
    ) -> None:
        self.harness = harness
        self.ws = ws
        self.index = index
        self.requested_at = requested_at
        self.path = path
        self.headers = headers
        self.frames: list[Frame] = []
        self.hello: dict[str, Any] | None = None
        self.welcome: dict[str, Any] | None = None
        self.welcome_at: float | None = None
        self.ended_at: float | None = None
        self.ended_by: str | None = None
        self.client_close: tuple[int, str] | None = None
        """The close frame the client sent first; None if it sent none (or replied to ours)."""
        self.silent = False
        self.last_sent_at: float | None = None
        """When the last frame's write began. Not when it ended: the client can read a frame on
        loopback before ``send`` returns, and a pause of this process then (a collection, a
        busy core) would count against a client that waits exactly as long as it must."""
        self.behaviour = dataclasses.replace(harness.behaviour)
        self.acks: dict[str, dict[str, Any]] = {}
        self._ping_task: asyncio.Task[None] | None = None
        self._nonces = itertools.count(1)

    # -- observation ------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self.ended_at is None

    @property
    def token(self) -> str | None:
        token = (self.hello or {}).get("token")
        return token if isinstance(token, str) else None

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f.message for f in self.frames if f.type == kind]

    async def frame(
        self,
        kind: str,
        timeout: float,
        where: Callable[[dict[str, Any]], bool] | None = None,
        start: int = 0,
    ) -> dict[str, Any] | None:
        """The first frame of ``kind`` (from index ``start``) matching ``where``."""

        def probe() -> dict[str, Any] | None:
            for item in self.frames[start:]:
                if item.type == kind and (where is None or where(item.message)):
                    return dict(item.message)
            return None

        return await self.harness.signal.wait_for(probe, timeout)

    async def ended(self, timeout: float) -> bool:
        """Wait until the connection has ended (either side)."""
        return bool(await self.harness.signal.wait_for(lambda: self.ended_at, timeout))

    # -- sending ----------------------------------------------------------------------------

    async def send(self, message: Mapping[str, Any] | str) -> None:
        if self.silent or not self.open:
            return
        text = message if isinstance(message, str) else json.dumps(message)
        started = time.monotonic()
        try:
            await self.ws.send(text)
            self.last_sent_at = started
        except ConnectionClosed:
            pass

    async def send_bytes(self, data: bytes, *, text: bool = False) -> None:
        """A binary frame, or with ``text`` a text frame carrying arbitrary bytes."""
        started = time.monotonic()
        try:
            await self.ws.send(data, text=text)
            self.last_sent_at = started
        except ConnectionClosed:
            pass

    def welcome_message(self, **overrides: Any) -> dict[str, Any]:
        """The welcome for this hello, not sent: the harness profile, then ``overrides``.

        A check that answers hello with something else starts from it (a welcome broken
        on purpose); only :meth:`send_welcome` counts the connection as welcomed.
        """
        claims = self.harness.claims_of(self.token)
        session: dict[str, Any] = {
            "tenant": claims.get("tenant", DEFAULT_TENANT),
            "sub": claims.get("sub", DEFAULT_SUB),
            "role": claims.get("role", "user"),
            "expires_at": int(claims.get("exp", time.time() + 3600)),
        }
        welcome = _merge(_default_welcome(), self.harness.profile)
        welcome = _merge(welcome, overrides)
        welcome["connection_id"] = f"h{self.index}"
        welcome.setdefault("session", session)
        return welcome

    async def send_welcome(self, **overrides: Any) -> dict[str, Any]:
        """Answer the hello; values come from the harness profile, then ``overrides``."""
        welcome = self.welcome_message(**overrides)
        self.welcome = welcome
        self.welcome_at = time.monotonic()
        await self.send(welcome)
        if self.behaviour.pings:
            self._ping_task = asyncio.ensure_future(self._pinger(welcome["heartbeat"]))
        self.harness.signal.bump()
        return welcome

    async def _pinger(self, heartbeat: Mapping[str, Any]) -> None:
        interval = float(heartbeat["interval_ms"]) / 1000
        while self.open and not self.silent:
            await asyncio.sleep(interval)
            await self.send({"type": "ping", "nonce": f"hb-{next(self._nonces)}"})

    async def event(
        self,
        channel: str,
        epoch: str,
        offset: int,
        *,
        event: str = "test.event",
        data: Any = None,
        message_id: str | None = None,
        ts: int | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "type": "event",
            "channel": channel,
            "epoch": epoch,
            "offset": offset,
            "event": event,
            "data": {"n": offset} if data is None else data,
            "message_id": message_id or f"{channel}:{epoch}:{offset}",
            "ts": now_ms() if ts is None else ts,
            **extra,
        }
        await self.send(frame)
        return frame

    async def close(self, code: int, reason: str = "") -> None:
        """Close with ``code``; the end is timed when the close frame goes out."""
        self._mark_end("harness")
        self._stop_pings()
        with contextlib.suppress(ConnectionClosed):
            await self.ws.close(code, reason)

    def drop(self) -> None:
        """Lose the TCP connection: no close frame (the client sees 1006)."""
        self._mark_end("harness")
        self._stop_pings()
        transport = self.ws.transport
        if transport is not None:
            transport.abort()

    def stall(self) -> None:
        """Half-open: keep the TCP connection but send nothing, not even pings or pongs."""
        self.silent = True
        self._stop_pings()

    def _stop_pings(self) -> None:
        if self._ping_task is not None:
            self._ping_task.cancel()

    def _mark_end(self, by: str) -> None:
        if self.ended_at is None:
            self.ended_at = time.monotonic()
            self.ended_by = by
            self.harness.signal.bump()

    # -- receiving --------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            async for raw in self.ws:
                await self._on_frame(raw)
        except ConnectionClosed:
            pass
        finally:
            self._stop_pings()
            if self.ended_at is None:
                received = self.ws.protocol.close_rcvd
                if received is not None:
                    self.client_close = (received.code, received.reason)
                self._mark_end("client")
            self.harness.signal.bump()

    async def _on_frame(self, raw: str | bytes) -> None:
        at = time.monotonic()
        problems: list[str] = []
        message: Any = None
        if isinstance(raw, bytes):
            problems.append("binary frame")
            self.harness.violate(("UNI-TR-10",), f"connection {self.index}: a binary frame")
        else:
            try:
                message = json.loads(raw)
            except ValueError:
                problems.append("not JSON")
            if not problems:
                problems = validate_client_message(message)
            if self.harness.any_channel and all(p.startswith("/channel:") for p in problems):
                problems = []  # sent unchanged as the application gave it (UNI-CH-6)
            if problems:
                self.harness.violate(
                    ("UNI-TR-10",),
                    f"connection {self.index}: invalid frame {raw[:200]!r}: {problems[:3]}",
                )
        frame = Frame(at, raw, message, problems)
        self.frames.append(frame)
        self._check_lifecycle(frame)
        self.harness.signal.bump()
        await self._auto_reply(frame)

    def _check_lifecycle(self, frame: Frame) -> None:
        first = len(self.frames) == 1
        if first and frame.type != "hello":
            self.harness.violate(
                ("UNI-LC-2",), f"connection {self.index}: first frame is {frame.type!r}"
            )
        elif frame.type == "hello" and not first:
            self.harness.violate(("UNI-LC-8",), f"connection {self.index}: a second hello")
        elif self.welcome is None and not first:
            self.harness.violate(
                ("UNI-LC-3",), f"connection {self.index}: {frame.type!r} sent before welcome"
            )
        if first and frame.type == "hello":
            self.hello = frame.message
            self.harness.check_hello(self)

    async def _auto_reply(self, frame: Frame) -> None:
        msg = frame.message
        kind = frame.type
        if not isinstance(msg, dict) or frame.problems or self.silent:
            return
        behaviour = self.behaviour
        if kind == "ping" and behaviour.auto_pong:
            pong: dict[str, Any] = {"type": "pong"}
            pong.update((k, msg[k]) for k in ("id", "nonce") if k in msg)
            await self.send(pong)
        elif kind == "subscribe" and behaviour.auto_subscribe:
            await self.send(self.harness.subscribed_reply(msg))
            hook = self.harness.on_subscribe
            if hook is not None:
                await hook(self, msg)
        elif kind == "unsubscribe" and behaviour.auto_unsubscribe:
            await self.send(
                {
                    "type": "unsubscribed",
                    "id": msg["id"],
                    "channel": msg["channel"],
                    "reason": "requested",
                }
            )
        elif kind == "publish" and behaviour.auto_ack:
            await self.send(self.harness.ack_for(msg))
        elif kind == "refresh" and behaviour.auto_refresh:
            claims = self.harness.claims_of(msg.get("token"))
            expires = int(claims.get("exp", time.time() + 3600))
            await self.send({"type": "refreshed", "id": msg["id"], "expires_at": expires})


@dataclass
class Harness:
    """The harness server of one check: its connections, tokens, channel heads and faults."""

    profile: dict[str, Any] = field(default_factory=dict)
    behaviour: Behaviour = field(default_factory=Behaviour)
    connections: list[HConn] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    heads: dict[str, tuple[str, int]] = field(default_factory=dict)
    on_subscribe: Callable[[HConn, dict[str, Any]], Awaitable[None]] | None = None
    any_channel: bool = False
    """Accept frames whose only fault is a ``channel`` outside the grammar: names a check
    gives the application on purpose, which a client may send unchanged (UNI-CH-6)."""
    handshake_hold_s: float = 0.0
    """How long the harness holds each opening handshake before its ``101`` response."""
    select_protocol: bool = True
    """Whether the ``101`` response selects ``unisock.v1``; False answers without one."""
    signal: Signal = field(default_factory=Signal)
    _secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    _claims: dict[str, dict[str, Any]] = field(default_factory=dict)
    _requests: dict[int, tuple[float, str, list[tuple[str, str]]]] = field(default_factory=dict)
    _server: Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _offsets: dict[str, int] = field(default_factory=dict)
    _published: dict[str, dict[str, Any]] = field(default_factory=dict)
    _jti: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    url: str = ""

    async def start(self) -> str:
        self._server = await serve(
            self._handler,
            "127.0.0.1",
            0,
            subprotocols=[Subprotocol(PROTOCOL)],
            select_subprotocol=self._select_subprotocol,
            process_request=self._process_request,
            ping_interval=None,
            compression=None,
            max_size=None,
            close_timeout=1,
        )
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/"
        return self.url

    async def stop(self) -> None:
        for conn in self.connections:
            conn._stop_pings()
            if conn.open:
                conn.drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()

    # -- tokens -----------------------------------------------------------------------------

    def mint(
        self,
        *,
        sub: str = DEFAULT_SUB,
        broadcaster: bool = False,
        ttl_s: float = 3600,
        exp: int | None = None,
    ) -> str:
        """A JWT the harness accepts; ``exp`` is the expiry in seconds since the epoch."""
        claims: dict[str, Any] = {
            "sub": sub,
            "tenant": DEFAULT_TENANT,
            "exp": exp if exp is not None else int(time.time() + ttl_s),
            "iat": int(time.time()),
            "jti": f"j{next(self._jti)}",
            "grants": {"subscribe": [">", "$me.>"], "publish": [">", "$me.>"]},
        }
        if broadcaster:
            claims["role"] = "broadcaster"
        token = jwt.encode(claims, self._secret, algorithm="HS256")
        self._claims[token] = claims
        return token

    def claims_of(self, token: object) -> dict[str, Any]:
        return self._claims.get(token, {}) if isinstance(token, str) else {}

    def secrets_for_report(self) -> list[str]:
        return [self._secret, *self._claims]

    # -- faults and bookkeeping -------------------------------------------------------------

    def violate(self, requirements: tuple[str, ...], text: str) -> None:
        self.violations.append(Violation(requirements, text))

    def check_hello(self, conn: HConn) -> None:
        """Where the token may travel: only in hello and refresh (UNI-AUTH-1, UNI-SEC-5)."""
        token = conn.token
        offered = [
            part.strip()
            for name, value in conn.headers
            if name.lower() == "sec-websocket-protocol"
            for part in value.split(",")
        ]
        if PROTOCOL not in offered:
            self.violate(("UNI-TR-1",), f"connection {conn.index} offered {offered}")
        if not token:
            return
        if token in conn.path:
            self.violate(("UNI-AUTH-1",), f"connection {conn.index}: token in the URL")
        for name, value in conn.headers:
            if token in value:
                self.violate(("UNI-SEC-5",), f"connection {conn.index}: token in header {name}")

    def subscribed_reply(self, msg: Mapping[str, Any]) -> dict[str, Any]:
        channel = str(msg["channel"])
        reply: dict[str, Any] = {
            "type": "subscribed",
            "id": msg["id"],
            "channel": channel,
            "ts": now_ms(),
        }
        if not _has_wildcard(channel):
            epoch, offset = self.heads.get(channel, ("e-1", 0))
            reply["position"] = {"epoch": epoch, "offset": offset}
        return reply

    def ack_for(self, msg: Mapping[str, Any]) -> dict[str, Any]:
        """Sequence a publish once per message_id; repeats get the original position."""
        channel, mid = str(msg["channel"]), str(msg["message_id"])
        known = self._published.get(mid)
        if known is None:
            offset = self._offsets.get(channel, 0) + 1
            self._offsets[channel] = offset
            known = {"channel": channel, "message_id": mid, "epoch": "e-1", "offset": offset}
            self._published[mid] = known
            duplicate = False
        else:
            duplicate = True
        return {"type": "ack", "id": msg["id"], **known, "duplicate": duplicate}

    def publishes(self, message_id: str | None = None) -> list[tuple[HConn, Frame]]:
        """Every publish frame received (of one message_id), in arrival order."""
        found = [
            (conn, frame)
            for conn in self.connections
            for frame in conn.frames
            if frame.type == "publish"
            and (message_id is None or frame.message.get("message_id") == message_id)
        ]
        return sorted(found, key=lambda pair: pair[1].at)

    async def connection(self, index: int, timeout: float) -> HConn | None:
        """The connection with this index (0 = first), once it has arrived."""

        def probe() -> HConn | None:
            return self.connections[index] if len(self.connections) > index else None

        return await self.signal.wait_for(probe, timeout)

    async def hello(self, index: int, timeout: float) -> HConn | None:
        """Connection ``index`` once its hello has arrived."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = await self.connection(index, timeout)
        if conn is None:
            return None
        remaining = max(0.0, deadline - loop.time())
        found = await self.signal.wait_for(
            lambda: conn if conn.hello is not None or not conn.open else None, remaining
        )
        return found if found is not None and found.hello is not None else None

    # -- websockets callbacks ---------------------------------------------------------------

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        # The earliest moment the harness sees an attempt: the delay measurements start here.
        self._requests[id(connection)] = (
            time.monotonic(),
            request.path,
            list(request.headers.raw_items()),
        )
        if self.handshake_hold_s > 0:
            await asyncio.sleep(self.handshake_hold_s)
        return None

    def _select_subprotocol(
        self, connection: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        if not self.select_protocol:
            return None  # a 101 without Sec-WebSocket-Protocol (UNI-TR-6)
        if PROTOCOL in offered:
            return Subprotocol(PROTOCOL)
        raise NegotiationError("unisock.v1 not offered")

    async def _handler(self, ws: ServerConnection) -> None:
        requested_at, path, headers = self._requests.pop(
            id(ws), (time.monotonic(), ws.request.path if ws.request else "", [])
        )
        conn = HConn(self, ws, len(self.connections), requested_at, path, headers)
        self.connections.append(conn)
        self.signal.bump()
        await conn.run()
