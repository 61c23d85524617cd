"""Run a real :class:`~unisock.server.UnisockServer` on a loopback port and talk to it raw.

Each test owns its event loop (``asyncio.run`` through :func:`asynctest`) and starts its own
server, so tests never share state. :class:`RawClient` speaks the wire protocol directly with
``websockets`` (no reference client logic in between), keeps every frame it receives in order
and waits only on frames, closes or explicit conditions: nothing here sleeps for a fixed time.
Every wait is bounded by :data:`LIMIT`, scaled by ``UNISOCK_TIME_SCALE`` for slow machines;
the bound is reached only when a test fails.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import re
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from unisock._version import PROTOCOL_TOKEN
from unisock.auth import mint_token
from unisock.server import UnisockServer, now_ms
from unisock.settings import Settings, load_settings
from unisock_conformance.wire import stalling_socket

__all__ = [
    "LIMIT",
    "PROTOCOL_TOKEN",
    "SCALE",
    "SECRET",
    "Frame",
    "RawClient",
    "ServerHarness",
    "asynctest",
    "b64url",
    "http_get",
    "metric_value",
    "running_server",
    "shifted_clock",
    "token",
]

SCALE = float(os.environ.get("UNISOCK_TIME_SCALE", "1.0"))
LIMIT = 5.0 * SCALE
"""Upper bound of any single wait; a healthy run never gets near it."""

SECRET = "integration-test-secret-0123456789abcdef"
"""HS256 secret of every test server (at least 32 bytes, RFC 7518)."""

OTHER_SECRET = "a-different-secret-nobody-trusts-0123456789"
"""Signs forged tokens."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(
    tenant: str = "acme",
    sub: str = "alice",
    *,
    subscribe: Iterable[str] = ("tasks.>",),
    publish: Iterable[str] = ("tasks.>",),
    broadcaster: bool = False,
    ttl_s: int = 3600,
    sid: str | None = None,
    now: float | None = None,
    secret: str = SECRET,
    extra_claims: dict[str, Any] | None = None,
) -> str:
    """An HS256 token the test server accepts (unless ``secret`` or the claims say otherwise)."""
    return mint_token(
        secret,
        tenant,
        sub,
        subscribe=subscribe,
        publish=publish,
        broadcaster=broadcaster,
        ttl_s=ttl_s,
        sid=sid,
        now=now,
        extra_claims=extra_claims,
    )


def asynctest(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop, bounded so a hang fails instead of stalling.

    Fixtures (``caplog``, ``tmp_path``...) pass through to the coroutine.
    """

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 6 * LIMIT))

    return run


def shifted_clock(target_ms: int) -> Callable[[], int]:
    """A wall clock that reads ``target_ms`` now and runs at real speed from there.

    Token expiry is in whole seconds; shifting the server's clock to just before a chosen
    ``exp`` makes expiry happen within milliseconds of real time, without fake timers.
    """
    offset = target_ms - now_ms()
    return lambda: now_ms() + offset


class Frame(dict[str, Any]):
    """A received message: the parsed object plus the exact text of the frame."""

    raw: str

    @classmethod
    def parse(cls, raw: str) -> Frame:
        frame = cls(json.loads(raw))
        frame.raw = raw
        return frame


@dataclasses.dataclass
class Closed:
    """How a connection ended, as the client saw it."""

    code: int | None
    reason: str
    frames: list[Frame]
    """Frames received before the close (after any still unread ones)."""


class RawClient:
    """One WebSocket connection speaking raw Unisock frames.

    Received frames are read in order; helpers that look for one kind of frame keep the
    others in a backlog, so nothing is lost and order within the backlog is preserved.
    Server pings are answered only when the test asks (:meth:`pong_pings`); they are kept
    out of the way of other expectations unless ``pings=True``.
    """

    _ids = itertools.count(1)

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.backlog: deque[Frame] = deque()
        self.pings: list[Frame] = []

    # -- sending -------------------------------------------------------------------------------

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(msg))

    async def send_raw(self, data: str | bytes, *, text: bool | None = None) -> None:
        await self.ws.send(data, text=text)

    @classmethod
    def new_id(cls, prefix: str = "r") -> str:
        return f"{prefix}{next(cls._ids)}"

    # -- receiving -----------------------------------------------------------------------------

    async def _read(self, timeout: float) -> Frame:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(raw, str), "the server sent a binary frame"
        return Frame.parse(raw)

    async def recv(self, *, timeout: float = LIMIT, pings: bool = False) -> Frame:
        """The next frame (backlog first); server pings are skipped unless ``pings``."""
        while True:
            frame = self.backlog.popleft() if self.backlog else await self._read(timeout)
            if frame.get("type") == "ping" and not pings:
                self.pings.append(frame)
                continue
            return frame

    async def expect(self, kind: str, *, timeout: float = LIMIT, **fields: Any) -> Frame:
        """The first frame of type ``kind``; frames of other types stay in the backlog."""
        kept: list[Frame] = []
        try:
            while True:
                frame = await self.recv(timeout=timeout, pings=kind == "ping")
                if frame.get("type") == kind:
                    for name, value in fields.items():
                        assert frame.get(name) == value, (name, frame)
                    return frame
                kept.append(frame)
        finally:
            self.backlog.extendleft(reversed(kept))

    async def expect_next(self, kind: str, **fields: Any) -> Frame:
        """The very next frame (pings aside), which must be of type ``kind``."""
        frame = await self.recv()
        assert frame.get("type") == kind, frame
        for name, value in fields.items():
            assert frame.get(name) == value, (name, frame)
        return frame

    async def reply(self, request_id: str) -> Frame:
        """The frame whose ``id`` is ``request_id``; other frames stay in the backlog."""
        kept: list[Frame] = []
        try:
            while True:
                frame = await self.recv()
                if frame.get("id") == request_id:
                    return frame
                kept.append(frame)
        finally:
            self.backlog.extendleft(reversed(kept))

    async def request(self, msg: dict[str, Any]) -> Frame:
        """Send ``msg`` with a fresh ``id`` (unless it has one) and return its reply."""
        msg = dict(msg)
        msg.setdefault("id", self.new_id(msg.get("type", "r")[0]))
        await self.send(msg)
        return await self.reply(msg["id"])

    async def error(self, msg: dict[str, Any], code: str) -> Frame:
        """Send a request that must be refused with ``code``."""
        reply = await self.request(msg)
        assert reply["type"] == "error", reply
        assert reply["code"] == code, reply
        return reply

    async def fence(self) -> list[Frame]:
        """Round-trip a ping and return every frame that arrived before its pong.

        The server handles one connection's messages in order and writes its frames in order,
        so anything it wrote to this connection before reading the ping arrives first.
        """
        nonce = self.new_id("fence-")
        await self.send({"type": "ping", "nonce": nonce})
        frames: list[Frame] = []
        while True:
            frame = await self.recv()
            if frame.get("type") == "pong" and frame.get("nonce") == nonce:
                return frames
            frames.append(frame)

    async def expect_close(self, *, timeout: float = LIMIT) -> Closed:
        """Read until the server closes; returns the close code, reason and unread frames."""
        frames = list(self.backlog)
        self.backlog.clear()
        try:
            while True:
                raw = await asyncio.wait_for(self.ws.recv(), timeout)
                frames.append(Frame.parse(raw) if isinstance(raw, str) else Frame(binary=raw))
        except ConnectionClosed:
            pass
        return Closed(self.ws.close_code, self.ws.close_reason or "", frames)

    async def pong_pings(self, count: int) -> list[float]:
        """Answer ``count`` server pings as they arrive; returns their arrival times."""
        times: list[float] = []
        while len(times) < count:
            ping = await self.expect("ping")
            times.append(time.monotonic())
            reply: dict[str, Any] = {"type": "pong"}
            if "nonce" in ping:
                reply["nonce"] = ping["nonce"]
            await self.send(reply)
        return times

    # -- protocol steps ------------------------------------------------------------------------

    async def hello(self, tok: str, **extra: Any) -> Frame:
        await self.send({"type": "hello", "token": tok, **extra})
        return await self.expect_next("welcome")

    async def subscribe(self, channel: str, **extra: Any) -> Frame:
        reply = await self.request({"type": "subscribe", "channel": channel, **extra})
        assert reply["type"] == "subscribed", reply
        return reply

    async def unsubscribe(self, channel: str) -> Frame:
        reply = await self.request({"type": "unsubscribe", "channel": channel})
        assert reply["type"] == "unsubscribed", reply
        return reply

    async def publish(
        self,
        channel: str,
        data: Any = None,
        *,
        event: str = "note.posted",
        message_id: str | None = None,
        **extra: Any,
    ) -> Frame:
        """Publish and return the ``ack`` (fails the test on an error reply)."""
        reply = await self.publish_raw(channel, data, event=event, message_id=message_id, **extra)
        assert reply["type"] == "ack", reply
        return reply

    async def publish_raw(
        self,
        channel: str,
        data: Any = None,
        *,
        event: str = "note.posted",
        message_id: str | None = None,
        **extra: Any,
    ) -> Frame:
        msg = {
            "type": "publish",
            "channel": channel,
            "event": event,
            "data": data,
            "message_id": message_id or self.new_id("m-"),
            **extra,
        }
        return await self.request(msg)

    async def events(self, count: int) -> list[Frame]:
        """The next ``count`` event frames; other frames stay in the backlog."""
        return [await self.expect("event") for _ in range(count)]

    async def close(self) -> None:
        await self.ws.close()


@dataclasses.dataclass
class ServerHarness:
    """A started server and how to reach it."""

    server: UnisockServer
    host: str
    port: int
    clients: list[RawClient] = dataclasses.field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

    async def open(
        self,
        *,
        path: str = "/",
        subprotocols: list[str] | None = None,
        origin: str | None = None,
        sock: socket.socket | None = None,
        **kwargs: Any,
    ) -> RawClient:
        """A connected, not yet authenticated client."""
        ws = await connect(
            f"ws://{self.host}:{self.port}{path}",
            subprotocols=[PROTOCOL_TOKEN] if subprotocols is None else subprotocols,  # type: ignore[list-item]
            origin=origin,  # type: ignore[arg-type]
            compression=None,
            open_timeout=LIMIT,
            close_timeout=LIMIT,
            ping_interval=None,
            sock=sock,
            **kwargs,
        )
        client = RawClient(ws)
        self.clients.append(client)
        return client

    async def open_stalled(self, tok: str) -> RawClient:
        """An authenticated client that will stop reading: tiny receive buffer, no read-ahead in
        the library, so the server's frames back up into its own outbound queue quickly."""
        sock = stalling_socket()
        sock.connect((self.host, self.port))
        client = await self.open(sock=sock, max_queue=1)
        client.welcome = await client.hello(tok)  # type: ignore[attr-defined]
        return client

    async def connect(self, tok: str | None = None, **kwargs: Any) -> RawClient:
        """A client that sent ``hello`` and received ``welcome``."""
        client = await self.open(**kwargs)
        client.welcome = await client.hello(tok if tok is not None else token())  # type: ignore[attr-defined]
        return client

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        return await http_get(self.host, self.port, path, headers)

    async def metric(self, name: str, **labels: str) -> float:
        _, body = await self.get("/metrics")
        return metric_value(body, name, **labels)


async def http_get(
    host: str, port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """A plain HTTP/1.1 GET (health, metrics, refused handshakes): status and body."""
    status, _, body = await http_exchange(host, port, path, headers)
    return status, body


async def http_exchange(
    host: str, port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    """:func:`http_get` with the response's headers too (names lowercased), for the checks a
    scraper or a load balancer makes before it reads the body."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), LIMIT)
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), LIMIT)
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    head, _, body = data.decode("utf-8", "replace").partition("\r\n\r\n")
    status_line, *header_lines = head.split("\r\n")
    fields = dict(line.split(":", 1) for line in header_lines if ":" in line)
    received = {name.strip().lower(): value.strip() for name, value in fields.items()}
    return int(status_line.split(" ", 2)[1]), received, body


def metric_value(body: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text format (0 when the sample is absent)."""
    want = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", re.MULTILINE)
    for match in pattern.finditer(body):
        got = ",".join(sorted((match.group(1) or "").split(","))) if match.group(1) else ""
        if got == want:
            return float(match.group(2))
    return 0.0


def settings(**server: Any) -> Settings:
    """Defaults plus the typed-event registry of ``schemas/v1/events``, with overrides."""
    base = load_settings(None, secret=SECRET)
    return Settings(dataclasses.replace(base.server, **server), base.auth)


@contextlib.asynccontextmanager
async def running_server(
    *,
    clock: Callable[[], int] | None = None,
    auth: Any = None,
    broker_object: Any = None,
    **server: Any,
) -> AsyncIterator[ServerHarness]:
    """A server on an OS-chosen loopback port, closed (with every client) at the end.

    ``broker=`` is the server setting (a URL); ``broker_object`` hands it a broker instance.
    """
    conf = settings(**server)
    if auth is not None:
        conf = Settings(conf.server, auth)
    srv = UnisockServer(conf, broker_object, clock=clock or now_ms)
    host, port = await srv.start("127.0.0.1", 0)
    harness = ServerHarness(srv, host, port)
    try:
        yield harness
    finally:
        for client in harness.clients:  # no closing handshakes: a stalled peer never answers
            client.ws.transport.abort()
        await asyncio.wait_for(srv.close(), LIMIT)
