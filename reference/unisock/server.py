"""The asyncio server: a thin adapter between ``websockets`` and :class:`SessionCore`.

It owns sockets, timers, the outbound queues and the fan-out index; every protocol decision is
the core's. Fan-out encodes each event once: the broker builds the JSON frame, this module
builds the WebSocket frame once, and the same bytes are written to every recipient's transport.
A recipient that is not keeping up gets its frames queued (bounded by ``max_queue``) instead of
stalling anyone else, and is cut with 4200 when the queue overflows (UNI-LIM).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State as WsState
from websockets.server import ServerProtocol

from unisock._version import PROTOCOL_TOKEN
from unisock.auth import TokenVerifier
from unisock.broker import Broker, BrokerUnavailable, ChannelKey, PublishResult, StoredEvent
from unisock.brokers import build_broker
from unisock.closecodes import CloseCode, close_name
from unisock.collector import Collector
from unisock.config import EventTypeRegistry, ServerConfig
from unisock.errors import InternalError, ReplyError, ServiceRestart, Unavailable
from unisock.memory_broker import MemoryBroker
from unisock.messages import add_coalesced
from unisock.metrics import Metrics
from unisock.retention import IdleSweeper
from unisock.session import (
    Action,
    Authenticated,
    Close,
    Deliver,
    InternalFailure,
    RefuseUnlessDuplicate,
    Revoked,
    Send,
    SessionCore,
    StartPublish,
    StartSubscribe,
    StopSubscribe,
    fanout_view,
)
from unisock.settings import Settings
from unisock.wsframe import text_frame

if TYPE_CHECKING:
    from unisock.redis_broker import RedisBroker

__all__ = ["UnisockServer", "freeze_startup_objects", "run_server", "start_collector"]

log = logging.getLogger("unisock.server")

HIGH_WATER = 64 * 1024
"""Transport buffer size above which frames wait in the connection's own queue."""

BATCH_FRAMES = 16
"""Frames gathered for one connection in one loop turn before they are written anyway."""

RETRY_AFTER_UNAVAILABLE_MS = 1000


INBOUND_BUDGET = 8
"""Messages one connection may have handled in a row before the reader yields to others."""

PUBLISH_DEPTH = 64
"""Publishes of one connection handed to the broker and not yet answered, at most: the reader
reads no further until the oldest is answered (TCP then slows the publisher down)."""


def now_ms() -> int:
    """Wall-clock milliseconds: offsets' timestamps and token expiry are wall-clock based."""
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class _Queued:
    """A frame waiting for a slow transport; events keep what coalescing needs."""

    data: bytes
    event: StoredEvent | None = None
    coalesced: tuple[int, ...] = ()


@dataclass(eq=False, slots=True)
class _Conn:
    """One live connection: its socket, its core and its outbound queue."""

    ws: ServerConnection
    core: SessionCore
    transport: asyncio.WriteTransport
    """``ws``'s transport and protocol, held here: the fan-out reaches them once per frame."""
    protocol: ServerProtocol
    tenant: str | None = None
    index: dict[str, tuple[str, Any]] = field(default_factory=dict)
    queue: deque[_Queued] | None = None
    """Frames waiting for a slow transport; created when first needed."""
    out: list[bytes] | None = None
    """Frames of this loop turn, written together at its end (one system call)."""
    timer: asyncio.TimerHandle | None = None
    deadline: int | None = None
    """When ``timer`` fires (the core's next deadline it was armed for)."""
    closing: bool = False
    writer: asyncio.Task[None] | None = None
    closer: asyncio.Task[None] | None = None
    awaiting: bool = False
    """The reader awaits broker work for this connection and reads nothing meanwhile."""
    publishes: deque[tuple[str, asyncio.Task[PublishResult]]] | None = None
    """Publishes handed to the broker and not yet answered, oldest first (request id, work)."""
    replier: asyncio.Task[None] | None = None
    """Answers ``publishes`` in order; ends when none is left."""


class _Protocol(ServerProtocol):
    """A protocol whose library-detected failures close with the registry's reason.

    websockets closes oversize (1009) and non-UTF-8 (1007) frames itself, with a descriptive
    reason; the spec wants the registry name instead (UNI-CLOSE-9), and no detail leaks.
    """

    def fail(self, code: int, reason: str = "") -> None:
        super().fail(code, close_name(int(code)) or reason)


class _Connection(ServerConnection):
    """A connection over :class:`_Protocol`, sharing its attribute names with every other."""

    def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        super().__init__(protocol, *args, **kwargs)
        # websockets builds the protocol itself. Switching its class costs a small dictionary
        # per connection (its values stay shared); wrapping its ``fail`` cost three times that.
        protocol.__class__ = _Protocol
        # Set by websockets only in connection_made, which runs after every connection of
        # a burst was created. CPython 3.11 stops adding names to a class's shared key table
        # as instances pile up, so names first seen then give each connection a dictionary
        # of its own (1.5 KiB) for the life of the process. Named now, they are shared.
        self.recv_messages = None  # type: ignore[assignment]
        self.transport = None  # type: ignore[assignment]


class _Index:
    """Which connections can possibly want an event, so the predicate runs only on those.

    Exact subscriptions are indexed by channel key; wildcard ones by scope (tenant, owner,
    namespace) and first segment when it is literal, so an event meets only the patterns
    that start like its channel, however many patterns others hold. The delivery predicate
    still decides for every candidate (UNI-DEL).
    """

    def __init__(self) -> None:
        self.exact: dict[ChannelKey, set[_Conn]] = {}
        self.scoped: dict[tuple[str | None, str | None, str, str | None], set[_Conn]] = {}

    def add(self, conn: _Conn, action: StartSubscribe) -> None:
        if action.head is not None:
            self.exact.setdefault(action.head, set()).add(conn)
            conn.index[action.pattern.text] = ("exact", action.head)
        else:
            tokens = action.pattern.tokens
            first = tokens[0] if tokens and tokens[0] not in _WILDCARDS else None
            key = (*action.scope, first)
            self.scoped.setdefault(key, set()).add(conn)
            conn.index[action.pattern.text] = ("scoped", key)

    def remove(self, conn: _Conn, pattern: str) -> None:
        entry = conn.index.pop(pattern, None)
        if entry is None:
            return
        kind, key = entry
        still = any(other == entry for other in conn.index.values())
        if still:
            return
        table: dict[Any, set[_Conn]] = self.exact if kind == "exact" else self.scoped
        members = table.get(key)
        if members is not None:
            members.discard(conn)
            if not members:
                del table[key]

    def drop(self, conn: _Conn) -> None:
        for pattern in list(conn.index):
            self.remove(conn, pattern)

    def candidates(self, key: ChannelKey) -> Iterable[_Conn]:
        exact = self.exact.get(key)
        name = key.name
        if key.owner is not None:
            scope: tuple[str | None, str | None, str] = (key.tenant, key.owner, "$me")
            name = name.partition(".")[2]
        elif key.tenant is None:
            scope = (None, None, "$sys")
            name = name.partition(".")[2]
        else:
            scope = (key.tenant, None, "tenant")
        scoped = self.scoped
        literal = scoped.get((*scope, name.partition(".")[0]))
        anywhere = scoped.get((*scope, None))
        found = [group for group in (exact, literal, anywhere) if group]
        if len(found) > 1:
            return set().union(*found)
        return found[0] if found else ()


_WILDCARDS = frozenset({"*", ">"})


HttpHandler = Callable[[ServerConnection, Request], "Response | None"]
"""Answers plain HTTP requests on the server's port (an application's pages and API); returns
``None`` for the requests it leaves to the server, WebSocket upgrades among them."""


class UnisockServer:
    """One server node: connections, fan-out, drain, health and metrics.

    ``http`` lets an application serve its own HTTP routes on the same port (GET only, as
    the WebSocket handshake parser reads nothing else); it runs after the health and metrics
    routes and before the drain and origin checks.
    """

    def __init__(
        self,
        settings: Settings,
        broker: Broker | None = None,
        *,
        clock: Callable[[], int] = now_ms,
        http: HttpHandler | None = None,
    ) -> None:
        self.config: ServerConfig = settings.server
        self.verifier = TokenVerifier(settings.auth)
        self.registry = EventTypeRegistry.from_config(self.config)
        self.clock = clock
        self.broker: Broker = broker or build_broker(self.config, clock)
        self.metrics = Metrics()
        self.http = http
        self.conns: dict[str, _Conn] = {}
        self.closed_connections = 0
        """Connections gone since the server started (the collector's measure of churn)."""
        self.index = _Index()
        self._dirty: list[_Conn] = []
        """Connections with frames gathered in this loop turn (``_Conn.out``)."""
        self._flush_pending = False
        """A call of :meth:`_flush` is scheduled for the end of this turn."""
        self._timer_callback = self._on_timer
        """Bound once: every armed timer holds this one instead of a bound method of its own."""
        self.draining = False
        self._idle = asyncio.Event()
        self._server: Server | None = None
        self.sweeper = IdleSweeper(
            self.broker, self.index.candidates, self.config.history_max_age_ms
        )
        self.broker.add_listener(self._on_event)
        self.broker.add_supersede_listener(self._on_supersede)
        self.broker.add_loss_listener(self._on_loss)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen; returns the bound (host, port) (port 0 lets the OS choose)."""
        await self.broker.start()
        self._server = await serve(
            self._handler,
            host,
            port,
            subprotocols=[PROTOCOL_TOKEN],  # type: ignore[list-item]  # UNI-TR: refuse others
            process_request=self._process_request,
            compression=None,  # encode once: no per-connection deflate state
            max_size=self.config.max_message_bytes,  # UNI-LIM: larger frames close with 1009
            ping_interval=None,  # UNI-HB: heartbeats are application-level
            max_queue=4,
            server_header=None,
            create_connection=_Connection,
        )
        if self.config.discard_idle_channels:
            self.sweeper.start()  # UNI-SEC-14
        sock = next(iter(self._server.sockets))
        bound = sock.getsockname()
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        """Stop listening, close every connection with 1001 ``going_away``, then the broker.

        The closes are sent here rather than left to the library, whose shutdown close
        carries no reason (UNI-CLOSE-9 binds every close the server sends)."""
        await self.sweeper.stop()
        if self._server is not None:
            self._server.server.close()  # no new connection while the open ones close
            code, reason = CloseCode.GOING_AWAY, "going_away"
            for conn in list(self.conns.values()):
                self._close(conn, code, reason)
            known = {conn.ws for conn in self.conns.values()}
            closing = [conn.closer for conn in self.conns.values() if conn.closer is not None]
            closing += [  # connections that have not said hello yet
                asyncio.create_task(ws.close(code, reason))
                for ws in self._server.connections
                if ws not in known
            ]
            await asyncio.gather(*closing, return_exceptions=True)
            self._server.close(close_connections=True)  # any still opening, and the handlers
            await self._server.wait_closed()
        await self.broker.close()

    async def drain(self, window_ms: int | None = None) -> None:
        """Tell every client to reconnect elsewhere, spread over the window (UNI-CLOSE drain)."""
        self.draining = True
        for conn in list(self.conns.values()):
            self._apply_sync(conn, conn.core.drain(window_ms))
            self._schedule(conn)
        window = self.config.drain_window_ms if window_ms is None else window_ms
        if self.conns:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), window / 1000 + 5)

    # -- HTTP side: health, metrics, origin ----------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return connection.respond(*self._health())
        if path == "/metrics":
            response = connection.respond(HTTPStatus.OK, self.metrics.render().decode())
            response.headers["Content-Type"] = "text/plain; version=0.0.4"
            return response
        if self.http is not None:
            answer = self.http(connection, request)
            if answer is not None:
                return answer
        if self.draining:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
        origin = request.headers.get("Origin")
        if not self.config.origin_allowed(origin):
            return connection.respond(HTTPStatus.FORBIDDEN, "origin not allowed\n")  # UNI-SEC
        return None

    def _health(self) -> tuple[HTTPStatus, str]:
        """200 only while serving with a reachable broker, so load balancers route around a
        node that drains or cannot reach Redis; the broker's state is reported either way."""
        reachable = self.broker.reachable()
        status = "draining" if self.draining else "ok" if reachable else "unavailable"
        code = HTTPStatus.OK if status == "ok" else HTTPStatus.SERVICE_UNAVAILABLE
        body = {"status": status, "broker": "ok" if reachable else "unreachable"}
        return code, json.dumps(body) + "\n"

    # -- one connection ------------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        # The handshake is done and nothing reads its headers again: an idle connection
        # need not keep them (about 2 KiB). Emptied in place, as websockets' parser keeps
        # the request itself for the life of the connection.
        if ws.request is not None:
            ws.request.headers.clear()
        ws.response = None
        core = SessionCore(self.config, self.verifier, uuid.uuid4().hex, self.clock, self.registry)
        conn = _Conn(ws, core, ws.transport, ws.protocol)
        self.conns[core.connection_id] = conn
        self._schedule(conn)
        budget = INBOUND_BUDGET
        try:
            while True:
                # recv() rather than ``async for``: no async generator per connection, and
                # no local keeps the last message or its actions while the connection idles.
                message = await ws.recv()
                decoded = None
                if conn.publishes is not None:
                    if isinstance(message, str):
                        decoded = core.pipelined_publish(message)
                    if decoded is None:
                        # Earlier publishes are answered before the core sees anything else
                        # (UNI-TR-27): an unsubscribe, say, takes effect after theirs.
                        await self._answered(conn)
                await self._apply(conn, self._receive(core, message, decoded))
                if conn.closing:
                    break
                self._schedule(conn)
                budget -= 1
                if budget == 0:
                    # Buffered messages are read without suspending: a flooding peer would
                    # hold the loop. After a few, every other connection gets its turn.
                    budget = INBOUND_BUDGET
                    await asyncio.sleep(0)
        except ConnectionClosed:
            pass
        except Exception as failure:
            # A defect escaped the core: this connection ends with 1011 and no detail, never
            # the library's default 1000, and every other connection goes on (UNI-ERR-10).
            log.error("connection %s failed", core.connection_id, exc_info=failure)
            self._apply_sync(conn, core.internal_failure())
        finally:
            await self._cleanup(conn)

    def _receive(
        self, core: SessionCore, message: str | bytes, decoded: dict[str, Any] | None
    ) -> list[Action]:
        self.metrics.messages_in.inc()
        if isinstance(message, str):
            return core.receive_text(message, decoded)
        return core.receive_binary()

    async def _cleanup(self, conn: _Conn) -> None:
        conn.core.connection_closed()
        if conn.timer is not None:
            conn.timer.cancel()
        if conn.writer is not None:
            conn.writer.cancel()
        self.index.drop(conn)
        self.conns.pop(conn.core.connection_id, None)
        self.closed_connections += 1
        if not self.conns:
            self._idle.set()
        identity = conn.core.identity
        if identity is not None and conn.tenant is not None:
            self.metrics.connections.labels(identity.tenant).dec()
            if not identity.is_broadcaster:
                with contextlib.suppress(Exception):
                    await self.broker.unregister_connection(
                        identity.tenant, identity.sub, conn.core.connection_id
                    )
        if conn.closer is not None:
            await conn.closer  # the close code the core chose, never a default 1000
        elif conn.ws.state is not WsState.CLOSED:
            with contextlib.suppress(Exception):
                await conn.ws.close()

    async def _apply(self, conn: _Conn, actions: list[Action]) -> None:
        """Carry out the core's actions in order; broker work is awaited in place, except a
        publish, which is pipelined behind the connection's earlier ones (see _pipeline)."""
        if conn.publishes is not None and not (
            len(actions) == 1 and isinstance(actions[0], StartPublish)
        ):
            await self._answered(conn)  # a refused publish, say, is answered after them
        for action in actions:
            if isinstance(action, StartSubscribe):
                self.index.add(conn, action)
                work = self._subscribe(conn, action)
            elif isinstance(action, StartPublish):
                await self._pipeline(conn, action)
                continue
            elif isinstance(action, RefuseUnlessDuplicate):
                work = self._refuse_unless_duplicate(conn, action)
            elif isinstance(action, Authenticated):
                work = self._authenticated(conn, action)
            else:
                self._apply_one(conn, action)
                continue
            conn.awaiting = True
            try:
                await work
            finally:
                conn.awaiting = False

    def _apply_sync(self, conn: _Conn, actions: list[Action]) -> None:
        """Actions produced outside the reader (timers, supersede, fan-out): never broker work."""
        for action in actions:
            self._apply_one(conn, action)

    def _apply_one(self, conn: _Conn, action: Action) -> None:
        if isinstance(action, Send):
            self._write(conn, action.frame.encode())
        elif isinstance(action, Deliver):
            self._write_event(conn, text_frame(action.event.frame.encode()), action.event)
        elif isinstance(action, Close):
            self._close(conn, action.code, action.reason)
        elif isinstance(action, StopSubscribe):
            self.index.remove(conn, action.pattern)
        elif isinstance(action, InternalFailure):
            log.error(
                "internal failure on connection %s: %s",
                conn.core.connection_id,
                type(action.error).__name__,
                exc_info=action.error,
            )
        elif isinstance(action, Revoked):
            pass  # each revoked pattern also produced a StopSubscribe
        else:  # pragma: no cover - the Action union is closed
            raise TypeError(f"unexpected action {action!r}")

    async def _authenticated(self, conn: _Conn, action: Authenticated) -> None:
        identity = action.identity
        conn.tenant = identity.tenant
        self.metrics.connections.labels(identity.tenant).inc()
        self._schedule(conn)
        if identity.is_broadcaster:
            return  # UNI-SESS: broadcaster connections are exempt from supersede
        try:
            await self.broker.register_connection(
                identity.tenant,
                identity.sub,
                identity.sid,
                conn.core.connection_id,
                self.config.max_connections_per_user,
            )
        except BrokerUnavailable as error:
            log.warning("could not register connection %s: %s", conn.core.connection_id, error)
        except Exception:
            log.exception("could not register connection %s", conn.core.connection_id)

    async def _subscribe(self, conn: _Conn, action: StartSubscribe) -> None:
        core = conn.core
        pattern = action.pattern.text
        try:
            head = await self.broker.head(action.head) if action.head is not None else None
            self._apply_sync(conn, core.subscribe_result(pattern, head))
            resumed = {key for key, _ in action.from_positions}
            for key, position in action.from_positions:
                replay = await self.broker.replay(key, position)
                self._count_resume(replay.gap)
                self._apply_sync(conn, core.replay_actions(pattern, key, replay))
            if action.since is not None:
                keys = await self.broker.channels(*action.scope)
                for key in action.since_keys(keys):
                    if key in resumed:
                        continue
                    replay = await self.broker.replay_since(key, action.since)
                    self._count_resume(replay.gap)
                    self._apply_sync(conn, core.replay_actions(pattern, key, replay))
            self._apply_sync(conn, core.subscription_active(pattern))
        except Exception as failure:
            _log_failure("subscribe", core.connection_id, failure)
            self._apply_sync(conn, core.subscribe_failed(pattern, _failure_error(failure)))

    def _count_resume(self, gap: str | None) -> None:
        if gap is None:
            self.metrics.resume_hits.inc()
        else:
            self.metrics.resume_gaps.labels(gap).inc()

    async def _pipeline(self, conn: _Conn, action: StartPublish) -> None:
        """Hand a publish to the broker and go on reading: a burst of publishes from one
        connection reaches the broker together (one round trip to Redis for many) instead of
        one round trip apart.

        Order holds: the broker applies publishes in the order they start (its contract), the
        replier answers them in that order, and the reader lets the core see nothing but
        another publish until they are answered (UNI-TR-27).
        """
        pending = conn.publishes
        if pending is not None and len(pending) >= PUBLISH_DEPTH:
            # Brokers answer in the order publishes started: once this one is answered, at
            # most PUBLISH_DEPTH - 1 are still with the broker.
            oldest = pending[-PUBLISH_DEPTH][1]
            if not oldest.done():
                conn.awaiting = True
                try:
                    await asyncio.wait((oldest,))
                finally:
                    conn.awaiting = False
            pending = conn.publishes  # the replier may have answered them all meanwhile
        work = asyncio.ensure_future(self.broker.publish(action.record))
        if pending is None:
            pending = conn.publishes = deque()
            conn.replier = asyncio.create_task(self._reply_in_order(conn, pending))
        pending.append((action.request_id, work))

    async def _reply_in_order(
        self, conn: _Conn, pending: deque[tuple[str, asyncio.Task[PublishResult]]]
    ) -> None:
        """Answer the connection's publishes, oldest first, as the broker settles them; a
        failure is answered like any other (UNI-PUB-25: one reply each)."""
        try:
            while pending:
                request_id, work = pending[0]
                try:
                    result = await work
                except Exception as failure:
                    _log_failure("publish", conn.core.connection_id, failure)
                    error = _failure_error(failure)
                    self._apply_sync(conn, conn.core.publish_failed(request_id, error))
                else:
                    if not result.duplicate:
                        self.metrics.published.inc()
                    self._apply_sync(conn, conn.core.publish_result(request_id, result))
                pending.popleft()
        finally:
            conn.publishes = None
            conn.replier = None

    async def _answered(self, conn: _Conn) -> None:
        """Wait until every publish the connection started is answered."""
        replier = conn.replier
        if replier is None:
            return
        conn.awaiting = True
        try:
            await asyncio.shield(replier)
        finally:
            conn.awaiting = False

    async def _refuse_unless_duplicate(self, conn: _Conn, action: RefuseUnlessDuplicate) -> None:
        core = conn.core
        try:
            original = await self.broker.find_duplicate(
                action.key, action.message_id, action.publisher_tenant
            )
        except Exception as failure:
            _log_failure("dedup lookup", core.connection_id, failure)
            original = None
        if original is None:
            self._apply_sync(conn, core.publish_failed(action.request_id, action.error))
        else:
            result = PublishResult(original, duplicate=True)
            self._apply_sync(conn, core.publish_result(action.request_id, result))

    # -- fan-out -------------------------------------------------------------------------------

    def _on_event(self, event: StoredEvent) -> None:
        """Broker listener: route one sequenced event to every connection that accepts it."""
        candidates = self.index.candidates(event.record.key)
        if not candidates:
            return
        now = self.clock()
        view = fanout_view(event)  # predicate work that depends only on the event: once
        frame: bytes | None = None
        delivered = 0
        dirty = self._dirty
        # A copy: writing can cut a slow consumer, which removes it from the index (UNI-LIM-8).
        for conn in tuple(candidates):
            core = conn.core
            if conn.closing or not core.accepts(event, now, view):
                continue
            if frame is None:
                # Once per event for every recipient, and never when filters, targeting or
                # epochs leave no candidate to write to.
                frame = text_frame(event.frame.encode())
            delivered += 1
            if core.pending_gaps:
                # UNI-DEL-19: the epoch_changed gap goes first, through the same queue.
                self._apply_sync(conn, core.take_gaps())
                if conn.closing:
                    continue
            # _send's two common cases, inlined: this runs once per recipient of every event.
            out = conn.out
            if out is not None:
                if len(out) < BATCH_FRAMES:
                    out.append(frame)  # writable earlier in this very turn
                    continue
            elif not conn.queue and conn.transport.get_write_buffer_size() < HIGH_WATER:
                conn.out = [frame]  # the connection's first frame of this turn
                dirty.append(conn)
                continue
            self._send(conn, frame, event)
        if dirty:
            self._flush_soon()
        if delivered:
            self.metrics.messages_out.inc(delivered)  # one increment per event, not per frame
            self.metrics.deliveries.inc(delivered)
            self.metrics.latency.observe(max(0, self.clock() - event.ts) / 1000)

    def _write_event(self, conn: _Conn, frame: bytes, event: StoredEvent) -> None:
        self._send(conn, frame, event)
        self.metrics.messages_out.inc()

    def _write(self, conn: _Conn, payload: bytes) -> None:
        self._send(conn, text_frame(payload))
        self.metrics.messages_out.inc()

    def _send(self, conn: _Conn, frame: bytes, event: StoredEvent | None = None) -> None:
        """Every frame to a connection goes through here, in order.

        Frames of one loop turn are gathered and written together when the turn ends, so a
        burst of events costs one system call per connection instead of one per event.
        """
        out = conn.out
        if out is not None:
            if len(out) < BATCH_FRAMES:
                out.append(frame)
                return
            self._flush_one(conn)  # a full batch; the connection stays listed for this turn
        # A connection whose WebSocket is closing gathers too: the flush drops what it gathered.
        if (
            conn.queue  # behind frames already waiting
            or conn.closing
            or conn.transport.get_write_buffer_size() >= HIGH_WATER
        ):
            # Once per frame of every fan-out, so inline: a slow transport, or one going away.
            self._enqueue(conn, _Queued(frame, event))
            return
        conn.out = [frame]
        if out is not None:
            return
        self._flush_soon()
        self._dirty.append(conn)

    def _flush_soon(self) -> None:
        """Have :meth:`_flush` run when this loop turn ends, once however many gather."""
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """End of the loop turn: write what each connection gathered."""
        self._flush_pending = False
        dirty, self._dirty = self._dirty, []
        is_open = WsState.OPEN
        for conn in dirty:  # _flush_one, inlined: once per connection written to per turn
            out = conn.out
            if out is None:
                continue
            conn.out = None
            if conn.protocol.state is is_open:
                conn.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _flush_one(self, conn: _Conn) -> None:
        out, conn.out = conn.out, None
        # Nothing may follow a close frame (which websockets may have sent meanwhile).
        if out and conn.protocol.state is WsState.OPEN:
            conn.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _enqueue(self, conn: _Conn, item: _Queued) -> None:
        """Queue behind a slow transport; coalesce by key; cut at ``max_queue`` (UNI-LIM)."""
        if conn.closing:
            return
        if conn.out is not None:
            self._flush_one(conn)  # gathered frames go first
        if conn.queue is None:
            conn.queue = deque()
        event = item.event
        if event is not None and event.record.coalesce_key is not None:
            item = self._coalesce(conn, item, event)
        conn.queue.append(item)
        if len(conn.queue) > self.config.max_queue:
            self.metrics.drops.inc()
            conn.queue.clear()
            self._apply_sync(conn, conn.core.slow_consumer())
            return
        if conn.writer is None or conn.writer.done():
            conn.writer = asyncio.get_running_loop().create_task(self._drain_queue(conn))

    def _coalesce(self, conn: _Conn, item: _Queued, event: StoredEvent) -> _Queued:
        """Replace a queued event with the same (channel, key) by this one (UNI-DEL coalescing)."""
        record = event.record
        assert conn.queue is not None
        for queued in list(conn.queue):
            older = queued.event
            if (
                older is not None
                and older.record.key == record.key
                and older.record.coalesce_key == record.coalesce_key
            ):
                conn.queue.remove(queued)
                offsets = (*queued.coalesced, older.offset)
                self.metrics.coalesced.inc()
                frame = text_frame(add_coalesced(event.frame, offsets).encode())
                return _Queued(frame, event, offsets)
        return item

    async def _drain_queue(self, conn: _Conn) -> None:
        """Write queued frames as the transport drains, in order."""
        queue = conn.queue
        assert queue is not None
        try:
            while queue and not conn.closing:
                if conn.transport.get_write_buffer_size() >= HIGH_WATER:
                    await conn.ws.drain()
                    continue
                if conn.protocol.state is not WsState.OPEN:
                    return
                conn.transport.write(queue.popleft().data)
        except (ConnectionClosed, ConnectionError):
            return

    # -- closing, timers, supersede ------------------------------------------------------------

    def _close(self, conn: _Conn, code: int, reason: str) -> None:
        if conn.closing:
            return
        if conn.out is not None:
            self._flush_one(conn)  # frames the core sent before closing precede the close frame
        conn.closing = True
        if conn.queue is not None:
            conn.queue.clear()
        self.metrics.closes.labels(str(code)).inc()
        self.index.drop(conn)
        conn.closer = asyncio.get_running_loop().create_task(self._send_close(conn, code, reason))

    async def _send_close(self, conn: _Conn, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await conn.ws.close(code, reason)

    def _schedule(self, conn: _Conn) -> None:
        """Arm the connection's one timer for the core's next deadline (kept when unchanged:
        this runs after every inbound message)."""
        deadline = None if conn.closing else conn.core.next_deadline_ms()
        if conn.timer is not None:
            if deadline == conn.deadline:
                return
            conn.timer.cancel()
            conn.timer = None
        conn.deadline = deadline
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, (deadline - self.clock()) / 1000)
        conn.timer = loop.call_later(delay, self._timer_callback, conn)

    def _on_timer(self, conn: _Conn) -> None:
        conn.timer = None
        now = self.clock()
        if conn.awaiting:
            conn.core.reading_paused(now)  # a slow broker is not a dead peer (UNI-ERR-16)
        self._apply_sync(conn, conn.core.tick(now))
        self._schedule(conn)

    def _on_supersede(self, connection_id: str) -> None:
        conn = self.conns.get(connection_id)
        if conn is not None:
            self._apply_sync(conn, conn.core.superseded())  # UNI-SESS: close 4001

    def _on_loss(self) -> None:
        """This node missed events its broker no longer holds: every connection closes with
        1012 at once, and its client resumes elsewhere or here, getting the events or an
        explicit gap (UNI-DEL-23, UNI-ERR-17)."""
        error = ServiceRestart(window_ms=self.config.drain_window_ms)
        for conn in list(self.conns.values()):
            self._apply_sync(conn, conn.core.abort(error))


def _failure_error(failure: Exception) -> ReplyError:
    """UNI-ERR-10/11: only an unreachable broker is ``unavailable`` (a retry may succeed);
    any other failure would repeat on every retry, so it is ``internal_error``."""
    if isinstance(failure, BrokerUnavailable | OSError):
        return Unavailable("broker unavailable", retry_after_ms=RETRY_AFTER_UNAVAILABLE_MS)
    return InternalError()


def _log_failure(what: str, connection_id: str, failure: Exception) -> None:
    """A broker outage in one line; anything else with its stack trace (a defect)."""
    if isinstance(failure, BrokerUnavailable):
        log.warning("%s refused on connection %s: %s", what, connection_id, failure)
    else:
        log.error("%s failed on connection %s", what, connection_id, exc_info=failure)


def _reset_later(broker: RedisBroker) -> None:
    async def reset() -> None:
        try:
            await broker.reset()
        except Exception:
            log.exception("history reset failed")

    task = asyncio.get_running_loop().create_task(reset())
    _background.add(task)
    task.add_done_callback(_background.discard)


_background: set[asyncio.Task[None]] = set()


def _redis_broker_class() -> type[RedisBroker]:
    from unisock.redis_broker import RedisBroker  # only deployments on Redis import redis-py

    return RedisBroker


def freeze_startup_objects() -> None:
    """Take what start-up built out of the cyclic garbage collector's reach.

    Schemas, compiled validators, registries and modules (about 40,000 objects) live as
    long as the process; left in the oldest generation, every full collection walks them
    again, a pause that every client of the node feels as latency. Objects made later, the
    connections' among them, are :func:`start_collector`'s.
    """
    gc.collect()
    gc.freeze()


def start_collector(server: UnisockServer) -> Collector:
    """Keep the connections' long-lived state out of full collections too (see
    :mod:`unisock.collector`): they run when connections churn, not while events flow."""
    collector = Collector(lambda: len(server.conns), lambda: server.closed_connections)
    collector.start()
    return collector


async def run_server(
    settings: Settings,
    host: str,
    port: int,
    *,
    on_ready: Callable[[str, int], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; SIGTERM drains first (UNI-CLOSE drain).

    SIGHUP makes the broker discard its retained history under a new epoch.
    """
    server = UnisockServer(settings)
    bound_host, bound_port = await server.start(host, port)
    freeze_startup_objects()
    collector = start_collector(server)
    if on_ready is not None:
        on_ready(bound_host, bound_port)
    try:
        await _serve_until_stopped(server)
    finally:
        await collector.stop()


async def _serve_until_stopped(server: UnisockServer) -> None:
    stop = asyncio.Event()
    drain = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, drain.set)
        broker = server.broker
        if isinstance(broker, MemoryBroker):
            # UNI-DEL-8: discarding retained history starts a new epoch (operators, tests).
            loop.add_signal_handler(signal.SIGHUP, broker.reset)
        elif isinstance(broker, _redis_broker_class()):
            loop.add_signal_handler(signal.SIGHUP, _reset_later, broker)
    waiters = {
        asyncio.create_task(stop.wait()),
        asyncio.create_task(drain.wait()),
    }
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for task in waiters:
        task.cancel()
    if drain.is_set():
        log.info("draining")
        await server.drain()
    await server.close()
