"""Test connections: a synchronous WebSocket client that checks every frame on arrival.

Each :class:`Conn` runs one reader thread. The thread parses every frame the server sends,
validates it against ``schemas/v1/server-message.json`` (UNI-TR-9), answers ``ping`` with
``pong`` (UNI-HB), runs the ``on_frame`` hooks (the oracle's leak checks) and queues it.
A frame that breaks the schema, or a hook that fails, fails the test at the next call on any
connection of the same test, including a call that is already waiting.

Frames are *consumed* by :meth:`Conn.recv`, :meth:`Conn.expect` and :meth:`Conn.request`;
frames those calls pass over stay in :attr:`Conn.unmatched` for later calls. The history
:attr:`Conn.frames` and the views :meth:`Conn.events` / :meth:`Conn.wait_events` never consume.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from unisock.schemas import validate_server_message
from unisock_conformance.closes import SERVER_CLOSES, SeenClose
from unisock_conformance.pacing import Pacer

__all__ = [
    "PROTOCOL",
    "Conn",
    "ConnGroup",
    "FrameTimeout",
    "HandshakeRefused",
    "ProtocolViolation",
    "open_conn",
    "stalling_socket",
    "widen_receive_buffer",
]

PROTOCOL: Final = "unisock.v1"
# websockets >= 16 warns unless a directly returned connection is asked for explicitly.
_LEGACY: Final[dict[str, Any]] = (
    {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}
)
MISSING: Final[Any] = object()

Frame = dict[str, Any]
FrameHook = Callable[["Conn", Frame], None]


class FrameTimeout(AssertionError):
    """An expected frame did not arrive in time."""


class ProtocolViolation(AssertionError):
    """The server sent something the spec forbids (schema-invalid frame, binary frame, ...)."""


class HandshakeRefused(AssertionError):
    """The WebSocket handshake did not complete; ``status`` is the HTTP status if any."""

    def __init__(self, message: str, status: int | None = None, body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class _Closed:
    """Queue sentinel: the reader saw the connection close."""


class _Wake:
    """Queue sentinel: a connection of the group recorded a failure."""


_CLOSED: Final = _Closed()
_WAKE: Final = _Wake()
_QueueItem = Frame | _Closed | _Wake


class ConnGroup:
    """The connections of one test: a failure seen on one fails the waits of all."""

    def __init__(self, check: str = "") -> None:
        self.check_id = check
        """The check these connections belong to (its node ID), named where a close is logged."""
        self.conns: list[Conn] = []
        self.failures: list[str] = []
        self.reported = False
        self._lock = threading.Lock()

    def fail(self, message: str) -> None:
        with self._lock:
            self.failures.append(message)
            conns = list(self.conns)
        for conn in conns:
            conn._queue.put(_WAKE)

    def check(self) -> None:
        """Raise the first recorded failure, if any."""
        with self._lock:
            first = self.failures[0] if self.failures else None
        if first is not None:
            self.reported = True
            raise ProtocolViolation(first)

    def check_unreported(self) -> None:
        """At teardown: raise a failure that no wait of the test has raised yet."""
        if not self.reported:
            self.check()

    def close_all(self) -> None:
        for conn in list(self.conns):
            conn.close()


class Conn:
    """One test connection. Create with :func:`open_conn` (or the ``connect`` fixture)."""

    def __init__(
        self,
        ws: ClientConnection,
        *,
        name: str,
        default_timeout: float,
        group: ConnGroup | None = None,
        message_ids: Callable[[], str] | None = None,
    ) -> None:
        self.ws = ws
        self.name = name
        self.default_timeout = default_timeout
        self.subprotocol: str | None = ws.subprotocol
        self.welcome: Frame | None = None
        self.frames: list[Frame] = []
        self.unmatched: list[Frame] = []
        self.sent: list[Frame | str | bytes] = []
        self.auto_pong = True
        self.pace = True
        """Pace publishes below the announced rate (set False to exhaust the bucket on purpose)."""
        self.pacer: Pacer | None = None
        self.on_frame: list[FrameHook] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed_at: float | None = None  # time.monotonic() when the reader saw the close
        self.closed = threading.Event()
        self.group = group if group is not None else ConnGroup()
        self.group.conns.append(self)
        self._queue: queue.Queue[_QueueItem] = queue.Queue()
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._message_ids = message_ids or self._default_message_id
        self._reader = threading.Thread(target=self._read, name=f"unisock-{name}", daemon=True)
        self._reader.start()

    def __repr__(self) -> str:
        return f"<Conn {self.name} {self.ws.request.path if self.ws.request else ''}>"

    # -- reader thread -----------------------------------------------------------------------

    def _read(self) -> None:
        try:
            while True:
                data = self.ws.recv()
                self._on_message(data)
        except ConnectionClosed as closed:
            rcvd = closed.rcvd
            if rcvd is not None:
                self.close_code, self.close_reason = rcvd.code, rcvd.reason
                if closed.rcvd_then_sent is not False:  # the server's own close, not an echo
                    seen = SeenClose(self.group.check_id, self.name, rcvd.code, rcvd.reason)
                    SERVER_CLOSES.record(seen)
            else:
                self.close_code, self.close_reason = 1006, ""
        except Exception as error:  # a broken transport must not kill the run silently
            self.close_code, self.close_reason = 1006, f"{type(error).__name__}: {error}"
        finally:
            self.closed_at = time.monotonic()
            self.closed.set()
            self._queue.put(_CLOSED)

    def _on_message(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            self.group.fail(f"{self.name}: server sent a binary frame (UNI-TR-9): {data[:200]!r}")
            return
        try:
            frame = json.loads(data)
        except ValueError:
            self.group.fail(
                f"{self.name}: server sent a frame that is not JSON (UNI-TR-9): {data[:200]!r}"
            )
            return
        errors = validate_server_message(frame)
        if errors or not isinstance(frame, dict):
            self.group.fail(
                f"{self.name}: server frame violates schemas/v1/server-message.json (UNI-TR-9): "
                f"{'; '.join(errors[:5])}\n  frame: {data[:500]}"
            )
            return
        with self._lock:
            self.frames.append(frame)
        if frame.get("type") == "ping" and self.auto_pong:
            pong: Frame = {"type": "pong"}
            if "nonce" in frame:
                pong["nonce"] = frame["nonce"]
            with contextlib.suppress(ConnectionClosed):
                self.send(pong)
        for hook in list(self.on_frame):
            try:
                hook(self, frame)
            except AssertionError as error:
                self.group.fail(f"{self.name}: {error}")
            except Exception as error:
                self.group.fail(f"{self.name}: frame hook raised {type(error).__name__}: {error}")
        self._queue.put(frame)

    # -- sending ---------------------------------------------------------------------------------

    def send(self, message: Mapping[str, Any] | str) -> None:
        """Send a text frame; a mapping is encoded as compact JSON.

        A ``publish`` mapping waits for the connection's pacer first (see
        :mod:`unisock_conformance.pacing`) unless :attr:`pace` is off.
        """
        if (
            self.pace
            and self.pacer is not None
            and not isinstance(message, str)
            and message.get("type") == "publish"
        ):
            self.pacer.take()
        text = (
            message
            if isinstance(message, str)
            else json.dumps(message, separators=(",", ":"), ensure_ascii=False)
        )
        with self._send_lock:
            self.sent.append(dict(message) if not isinstance(message, str) else message)
            self.ws.send(text)

    def send_bytes(self, data: bytes) -> None:
        """Send a binary frame (the spec forbids them: UNI-TR-11)."""
        with self._send_lock:
            self.sent.append(data)
            self.ws.send(data)

    def next_id(self, prefix: str = "r") -> str:
        """A request id unique on this connection."""
        return f"{prefix}{next(self._ids)}"

    def _default_message_id(self) -> str:
        return f"{self.name}-m{next(self._ids)}"

    # -- receiving ---------------------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.default_timeout if timeout is None else timeout)

    def _pump(self, deadline: float, what: str) -> None:
        """Move one received frame into ``unmatched``; raise on failure, close or timeout."""
        self.group.check()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FrameTimeout(f"{self.name}: timed out waiting for {what}{self._context()}")
        try:
            item = self._queue.get(timeout=remaining)
        except queue.Empty:
            raise FrameTimeout(
                f"{self.name}: timed out waiting for {what}{self._context()}"
            ) from None
        if isinstance(item, _Wake):
            self.group.check()
            return
        if isinstance(item, _Closed):
            self._queue.put(_CLOSED)  # keep later waits failing fast
            self.group.check()
            raise AssertionError(
                f"{self.name}: connection closed ({self.close_code} {self.close_reason!r}) "
                f"while waiting for {what}{self._context()}"
            )
        self.unmatched.append(item)

    def _context(self) -> str:
        pending = ", ".join(_brief(frame) for frame in self.unmatched[-5:])
        return f"; unconsumed frames: [{pending}]" if pending else ""

    def recv(self, timeout: float | None = None) -> Frame:
        """The next unconsumed frame (raises :class:`FrameTimeout`)."""
        deadline = self._deadline(timeout)
        while not self.unmatched:
            self._pump(deadline, "any frame")
        self.group.check()
        return self.unmatched.pop(0)

    def expect(
        self,
        type_: str | None,
        *,
        timeout: float | None = None,
        where: Callable[[Frame], bool] | None = None,
        skip: Iterable[str] = ("ping",),
    ) -> Frame:
        """The next unconsumed frame of ``type_`` (any type if None) satisfying ``where``.

        Frames of the types in ``skip`` met before it are consumed; others stay unmatched.
        """
        skipped = frozenset(skip) - ({type_} if type_ is not None else set())
        deadline = self._deadline(timeout)
        what = f"{type_ or 'a frame'}" + (" matching the condition" if where else "")
        scanned = 0
        while True:
            while scanned < len(self.unmatched):
                frame = self.unmatched[scanned]
                if frame.get("type") in skipped:
                    del self.unmatched[scanned]
                    continue
                if (type_ is None or frame.get("type") == type_) and (
                    where is None or where(frame)
                ):
                    del self.unmatched[scanned]
                    self.group.check()
                    return frame
                scanned += 1
            self._pump(deadline, what)

    def request(self, message: Mapping[str, Any], *, timeout: float | None = None) -> Frame:
        """Send a request with an ``id`` and return the reply echoing that id (any type)."""
        ident = message.get("id")
        if not isinstance(ident, str):
            raise ValueError("request() needs a message with a string id")
        self.send(message)
        return self.expect(
            None,
            timeout=timeout,
            where=lambda frame: frame.get("id") == ident and frame.get("type") != "ping",
        )

    def hello(self, token: str, *, timeout: float | None = None, **extra: Any) -> Frame:
        """Send ``hello`` and wait for ``welcome`` (UNI-LC-9)."""
        self.send({"type": "hello", "token": token, **extra})
        reply = self.expect(None, timeout=timeout, skip=())
        if reply.get("type") != "welcome":
            raise AssertionError(f"{self.name}: expected welcome after hello, got {_brief(reply)}")
        self.set_welcome(reply)
        return reply

    def set_welcome(self, welcome: Frame) -> None:
        """Record the ``welcome`` this connection received and pace publishes by its limits."""
        self.welcome = welcome
        limits = welcome.get("limits")
        self.pacer = Pacer.from_limits(limits) if isinstance(limits, Mapping) else None

    def subscribe(
        self,
        channel: str,
        *,
        filter: Mapping[str, Any] | None = None,
        from_: Mapping[str, Any] | None = None,
        since: int | None = None,
        timeout: float | None = None,
        id: str | None = None,
    ) -> Frame:
        """Subscribe and return ``subscribed``; an error reply raises AssertionError."""
        message: Frame = {"type": "subscribe", "id": id or self.next_id("s"), "channel": channel}
        if filter is not None:
            message["filter"] = dict(filter)
        if from_ is not None:
            message["from"] = dict(from_)
        if since is not None:
            message["since"] = since
        return _expect_reply(self, self.request(message, timeout=timeout), "subscribed", message)

    def unsubscribe(self, channel: str, *, timeout: float | None = None) -> Frame:
        """Unsubscribe and return ``unsubscribed``; an error reply raises AssertionError."""
        message: Frame = {"type": "unsubscribe", "id": self.next_id("u"), "channel": channel}
        return _expect_reply(self, self.request(message, timeout=timeout), "unsubscribed", message)

    def publish(
        self,
        channel: str,
        event: str = "test.event",
        data: Any = MISSING,
        *,
        message_id: str | None = None,
        attrs: Mapping[str, Any] | None = None,
        to: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        exclude_self: bool | None = None,
        key: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        id: str | None = None,
    ) -> Frame:
        """Publish and return the ``ack``; an error reply raises AssertionError."""
        message = self.publish_message(
            channel,
            event,
            data,
            message_id=message_id,
            attrs=attrs,
            to=to,
            exclude=exclude,
            exclude_self=exclude_self,
            key=key,
            user=user,
            id=id,
        )
        return _expect_reply(self, self.request(message, timeout=timeout), "ack", message)

    def publish_message(
        self,
        channel: str,
        event: str = "test.event",
        data: Any = MISSING,
        *,
        message_id: str | None = None,
        attrs: Mapping[str, Any] | None = None,
        to: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        exclude_self: bool | None = None,
        key: str | None = None,
        user: str | None = None,
        id: str | None = None,
    ) -> Frame:
        """The ``publish`` message :meth:`publish` sends (for checks that expect an error)."""
        message: Frame = {
            "type": "publish",
            "id": id or self.next_id("p"),
            "channel": channel,
            "event": event,
            "data": {} if data is MISSING else data,
            "message_id": message_id or self._message_ids(),
        }
        optional: dict[str, Any] = {
            "attrs": dict(attrs) if attrs is not None else None,
            "to": list(to) if to is not None else None,
            "exclude": list(exclude) if exclude is not None else None,
            "exclude_self": exclude_self,
            "key": key,
            "user": user,
        }
        message.update({name: value for name, value in optional.items() if value is not None})
        return message

    def events(self, channel: str | None = None) -> list[Frame]:
        """Every ``event`` frame received so far (optionally on one channel); not consumed."""
        with self._lock:
            return [
                frame
                for frame in self.frames
                if frame.get("type") == "event"
                and (channel is None or frame.get("channel") == channel)
            ]

    def wait_events(
        self,
        predicate: Callable[[Frame], bool],
        count: int = 1,
        timeout: float | None = None,
    ) -> list[Frame]:
        """Wait until ``count`` received events satisfy ``predicate``; returns them all.

        Reads the history; nothing is consumed.
        """
        deadline = self._deadline(timeout)
        while True:
            found = [frame for frame in self.events() if predicate(frame)]
            if len(found) >= count:
                self.group.check()
                return found
            self._pump(deadline, f"{count} matching events (have {len(found)})")

    def expect_close(self, timeout: float | None = None) -> tuple[int, str]:
        """Wait for the server to close; returns (code, reason). 1006 = no close frame."""
        wait = self.default_timeout if timeout is None else timeout
        if not self.closed.wait(wait):
            self.group.check()
            raise FrameTimeout(
                f"{self.name}: server did not close within {wait:.1f}s{self._context()}"
            )
        self.group.check()
        # Frames that arrived before the close stay available to recv/expect.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, dict):
                self.unmatched.append(item)
        self._queue.put(_CLOSED)
        assert self.close_code is not None
        return self.close_code, self.close_reason or ""

    def assert_no_frame(
        self,
        type_: str,
        fence: Callable[[], Frame | None] | Callable[[], None],
        *,
        fence_where: Callable[[Frame], bool] | None = None,
        where: Callable[[Frame], bool] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Prove that no ``type_`` frame (matching ``where``) arrives before a fence.

        ``fence()`` makes the server send this connection a later frame (usually a publish
        on a channel this connection is subscribed to); ``fence_where`` recognises it. All
        frames delivered before the fence have arrived once it has (per-channel ordering).
        When ``fence_where`` is None, ``fence()`` must return the ack of the fence publish and
        the fence is the event with that ack's channel, offset and message id (the message id
        too: a leaked event of another tenant may share the fence's channel name and offset).
        """
        ack = fence()
        if fence_where is None:
            if not isinstance(ack, dict) or ack.get("type") != "ack":
                raise ValueError("assert_no_frame: give fence_where or return the fence's ack")
            channel, offset = ack.get("channel"), ack.get("offset")
            message_id = ack.get("message_id")

            def fence_where(frame: Frame) -> bool:
                return (
                    frame.get("type") == "event"
                    and frame.get("channel") == channel
                    and frame.get("offset") == offset
                    and frame.get("message_id") == message_id
                )

        matcher = fence_where
        deadline = self._deadline(timeout)
        while True:
            for frame in self.unmatched:
                if matcher(frame):
                    break
            else:
                self._pump(deadline, "the fence frame")
                continue
            break
        index = next(i for i, frame in enumerate(self.unmatched) if matcher(frame))
        before = self.unmatched[:index]
        offending = [
            frame
            for frame in before
            if frame.get("type") == type_ and (where is None or where(frame))
        ]
        del self.unmatched[index]
        if offending:
            raise AssertionError(
                f"{self.name}: received {len(offending)} unexpected {type_} frame(s) before the "
                f"fence: {', '.join(_brief(frame) for frame in offending[:3])}"
            )

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close politely; safe to call twice."""
        with contextlib.suppress(Exception):  # already gone: nothing to do
            self.ws.close(code, reason)
        self._reader.join(timeout=self.default_timeout)


def _brief(frame: Frame) -> str:
    keys = ("type", "id", "code", "channel", "offset", "event")
    return "{" + ", ".join(f"{key}={frame[key]!r}" for key in keys if key in frame) + "}"


def _expect_reply(conn: Conn, reply: Frame, type_: str, message: Frame) -> Frame:
    if reply.get("type") != type_:
        raise AssertionError(
            f"{conn.name}: expected {type_} for {message.get('type')} "
            f"{message.get('channel')!r}, got {json.dumps(reply)}"
        )
    return reply


def open_conn(
    url: str,
    *,
    name: str = "conn",
    subprotocols: Sequence[str] | None = (PROTOCOL,),
    origin: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    timeout: float = 5.0,
    group: ConnGroup | None = None,
    message_ids: Callable[[], str] | None = None,
) -> Conn:
    """Open a WebSocket to ``url``; a refused handshake raises :class:`HandshakeRefused`."""
    try:
        ws = connect(
            url,
            subprotocols=list(subprotocols) if subprotocols else None,  # type: ignore[arg-type]
            origin=origin,  # type: ignore[arg-type]
            additional_headers=list(headers) or None,
            compression=None,
            open_timeout=timeout,
            ping_interval=None,  # liveness is the protocol's ping/pong (UNI-HB-5)
            close_timeout=timeout,
            max_size=None,
            max_queue=None,
            **_LEGACY,
        )
    except InvalidStatus as refused:
        response = refused.response
        raise HandshakeRefused(
            f"{name}: handshake refused with HTTP {response.status_code}",
            response.status_code,
            bytes(response.body or b""),
        ) from None
    except InvalidHandshake as error:
        raise HandshakeRefused(f"{name}: handshake failed: {error}") from None
    return Conn(ws, name=name, default_timeout=timeout, group=group, message_ids=message_ids)


STALL_RECEIVE_BUFFER: Final = 4096
"""Receive buffer of a reader that stalls: its frames then back up into the server's queue."""
STALL_SEGMENT: Final = 1024
"""Largest TCP segment such a reader announces: a quarter of its buffer (see below)."""


def stalling_socket(family: int = socket.AF_INET) -> socket.socket:
    """An unconnected TCP socket for a reader that will stop reading and later read back.

    A receive buffer of a few KiB makes a stalled reader fill the server's outbound queue
    instead of megabytes of kernel buffers. On its own it can wedge the connection: the
    sender may cut segments of half the largest window it saw (about 2 KiB), while this
    receiver advertises whole multiples of the largest segment it received, which can come
    to one segment just under that size. The sender then waits for a larger window that
    never comes, and its zero-window probe, which would send anyway, is postponed by every
    incoming acknowledgement: a reader that keeps sending heartbeats at a short interval
    never sees another byte. Announcing segments no larger than a quarter of the buffer
    keeps the advertised window at least one of the sender's segments.
    """
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALL_RECEIVE_BUFFER)
    if hasattr(socket, "TCP_MAXSEG"):  # not on every platform: without it the wedge can occur
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, STALL_SEGMENT)
    return sock


def widen_receive_buffer(sock: socket.socket) -> None:
    """Give a reader stalled on a tiny receive buffer a normal one before it reads back.

    A buffer of a few KiB is smaller than one loopback segment: the sender's kernel can then
    push data only through zero-window probes, a few KiB at growing intervals, and reading
    back a full queue would take tens of seconds for reasons of TCP alone.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)


class Periodic:
    """Calls ``send`` every ``every_s`` seconds on a thread of its own, until closed.

    For traffic a check keeps up beside its own steps: unsolicited pongs from a stalled
    reader, so that it is never silent (UNI-HB), or pings the server must not need. Once
    ``send`` fails, the connection is gone and the check itself reports how it ended.
    """

    def __init__(self, send: Callable[[], None], every_s: float) -> None:
        self.send, self.every_s = send, every_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            try:
                self.send()
            except (OSError, ConnectionClosed):
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
