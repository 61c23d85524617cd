"""Load generators: client processes holding subscribers, and publishers.

Every peer is driven through one of three wires: ``raw`` (the bare servers and Node ``ws``:
``sub ROOM`` to join, ``R<room>\\n<frame>`` to publish), ``sio`` (Engine.IO 4 / Socket.IO 5
over a WebSocket, ``sub`` with an acknowledgement, ``pub``) and ``unisock`` (the protocol).

Subscribers count frames by walking WebSocket headers only; probes, a sample of them, also
decode the publisher's timestamp ``t`` and check the channel's tenant. A probe's latency ends
at the kernel's receive time of the data (``SO_TIMESTAMPNS``), not when the probe's process
got round to reading it: with hundreds of subscribers per load-generator process, that
process's own queue would otherwise be measured instead of the server.
The driver reads progress from shared counters, and every process reports its own CPU time
so that the driver can tell when the load generator, not the server, was the bottleneck.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import re
import socket
import struct
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from bench import _harness as h

SIO_PATH = "/socket.io/?EIO=4&transport=websocket"
T_WIDTH = 19
"""Digits of the publisher's timestamp in every payload, so every frame has the same size."""
_T = re.compile(rb'"t":(\d+)')
_CHANNEL = re.compile(rb'"channel":"([^"]*)"')
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
"""Linux: each read carries the receive time of its newest data, in CLOCK_REALTIME."""
_TIMESTAMP_SPACE = socket.CMSG_SPACE(16)

Spec = tuple[str, str, list[tuple[str, Any]]]
"""One subscriber: (tenant, sub, [(channel or pattern, filter or None), ...])."""


# --- frames ------------------------------------------------------------------------------------


def stamp() -> int:
    """The publisher's send time, in the clock of the kernel's receive timestamps."""
    return time.time_ns()


def payload(t: int, pad: int, **extra: Any) -> dict[str, Any]:
    return {"t": t, **extra, "text": "x" * pad}


def delivered_size(wire: str, room: str, data: dict[str, Any]) -> int:
    """Bytes of the frame a subscriber receives for ``data`` on ``room``."""
    if wire == "raw":
        return len(_raw_event(room, data))
    if wire == "sio":
        return len("42" + _dumps(["ev", data]))
    from unisock.broker import ChannelKey, PublishRecord
    from unisock.messages import encode_event_frame

    record = PublishRecord(
        key=ChannelKey(h.TENANT, None, room),
        event_type=h.EVENT_TYPE,
        data=data,
        message_id="m1000",
        attrs=None,
        to=None,
        exclude=None,
        exclude_self=False,
        coalesce_key=None,
        publisher_sub=h.PUBLISHER_SUB,
        publisher_connection="c",
    )
    return len(encode_event_frame(record, h.EPOCH_SHAPE, 1000, time.time_ns() // 1_000_000))


def pad_for(wire: str, room: str, size: int) -> int:
    """Padding that makes the delivered frame ``size`` bytes long."""
    base = delivered_size(wire, room, payload(10 ** (T_WIDTH - 1), 0))
    return max(0, size - base)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _raw_event(room: str, data: dict[str, Any]) -> str:
    return _dumps({"type": "event", "channel": room, "data": data})


def publish_text(
    wire: str,
    room: str,
    data: dict[str, Any],
    index: int,
    event_type: str = h.EVENT_TYPE,
    attrs: dict[str, Any] | None = None,
) -> str:
    """What a publisher sends so that ``data`` reaches the members of ``room``."""
    if wire == "raw":
        return f"R{room}\n{_raw_event(room, data)}"
    if wire == "sio":
        return "42" + _dumps(["pub", room, data])
    message: dict[str, Any] = {
        "type": "publish",
        "id": f"p{index}",
        "channel": room,
        "event": event_type,
        "data": data,
        "message_id": f"m{index}",
    }
    if attrs is not None:
        message["attrs"] = attrs
    return _dumps(message)


# --- connections -------------------------------------------------------------------------------


def _request(port: int, wire: str) -> tuple[bytes, bytes]:
    key = base64.b64encode(os.urandom(16))
    path = SIO_PATH if wire == "sio" else "/"
    lines = [
        f"GET {path} HTTP/1.1".encode(),
        b"Host: 127.0.0.1:%d" % port,
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + key,
        b"Sec-WebSocket-Version: 13",
    ]
    if wire == "unisock":
        lines.append(b"Sec-WebSocket-Protocol: unisock.v1")
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    return b"\r\n".join(lines) + b"\r\n\r\n", accept


class Conn(h.BenchConnection):
    """A benchmark connection; ``on_payload`` (probes, storm) decodes every text frame."""

    def __init__(self, request: bytes, accept: bytes) -> None:
        super().__init__(request, accept, answer_pings=True)
        self.on_payload: Callable[[bytes], None] | None = None
        self.on_lost: Callable[[], None] | None = None

    def decode(self, on_payload: Callable[[bytes], None]) -> None:
        """Switch to decoding; frames already buffered as messages are handed over too."""
        self.on_payload = on_payload
        while not self.messages.empty():
            on_payload(self.messages.get_nowait().encode())

    def decode_with_arrival(self, on_payload: Callable[[bytes, int], None]) -> None:
        """Switch to decoding straight from the socket, each frame with the kernel's receive
        time of the read that completed it (a later read's time when a frame spans two: the
        latency is then over-, never under-stated). The transport stops reading; a duplicate
        of its socket is read with ``recvmsg``, which is how the timestamps arrive."""
        assert self.transport is not None
        self.transport.pause_reading()
        loop = asyncio.get_running_loop()
        while not self.messages.empty():  # set-up replies: no event, no timestamp needed
            on_payload(self.messages.get_nowait().encode(), time.time_ns())
        sock = self.transport.get_extra_info("socket")
        raw = socket.socket(fileno=os.dup(sock.fileno()))
        raw.setblocking(False)
        raw.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

        def readable() -> None:
            try:
                data, ancillary, _flags, _address = raw.recvmsg(65536, _TIMESTAMP_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, ancillary = b"", []
            if not data:  # the server closed it: counted as lost like any other
                loop.remove_reader(raw.fileno())
                raw.close()
                self.connection_lost(None)
                return
            arrived = 0
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                    seconds, nanoseconds = struct.unpack("qq", value[:16])
                    arrived = seconds * 1_000_000_000 + nanoseconds
            arrived = arrived or time.time_ns()  # data that came before stamping was on
            self.buffer += data
            frames, self.buffer = h.split_frames(self.buffer)
            for opcode, body in frames:
                if opcode == 0x1:
                    on_payload(body, arrived)

        loop.add_reader(raw.fileno(), readable)

    def data_received(self, data: bytes) -> None:
        if self.on_payload is None:
            super().data_received(data)
            return
        self.buffer += data
        frames, self.buffer = h.split_frames(self.buffer)
        for opcode, body in frames:
            if opcode == 0x1:
                self.on_payload(body)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.on_lost is not None:
            self.on_lost()


async def connect(port: int, wire: str) -> Conn:
    loop = asyncio.get_running_loop()
    request, accept = _request(port, wire)
    _, conn = await loop.create_connection(lambda: Conn(request, accept), "127.0.0.1", port)
    await conn.opened
    return conn


_tokens: dict[tuple[str, str, tuple[str, ...], tuple[str, ...]], str] = {}


def token(tenant: str, sub: str, subscribe: Sequence[str] = (), publish: Sequence[str] = ()) -> str:
    """A day-long HS256 token; minted once per identity (tokens are minted before a ramp)."""
    key = (tenant, sub, tuple(subscribe), tuple(publish))
    found = _tokens.get(key)
    if found is None:
        from unisock.auth import mint_token

        found = mint_token(h.SECRET, tenant, sub, subscribe=subscribe, publish=publish, ttl_s=86400)
        _tokens[key] = found
    return found


async def set_up(
    conn: Conn, wire: str, spec: Spec, positions: dict[str, Any] | None = None
) -> list[str]:
    """Join every room of ``spec``; returns messages that arrived during set-up (replays)."""
    tenant, sub, subs = spec
    extra: list[str] = []
    if wire == "raw":
        for channel, _ in subs:
            conn.send_text("sub " + channel)
            if await conn.messages.get() != "ok":
                raise RuntimeError("room not joined")
        return extra
    if wire == "sio":
        if not (await conn.messages.get()).startswith("0"):
            raise RuntimeError("no Engine.IO open packet")
        conn.send_text("40")
        if not (await conn.messages.get()).startswith("40"):
            raise RuntimeError("Socket.IO namespace not joined")
        for number, (channel, _) in enumerate(subs):
            conn.send_text(f"42{number}" + _dumps(["sub", channel]))
            if await conn.messages.get() != f'43{number}["ok"]':
                raise RuntimeError("room not joined")
        return extra
    grants = [channel for channel, _ in subs]
    conn.send_text(_dumps({"type": "hello", "token": token(tenant, sub, subscribe=grants)}))
    welcome = json.loads(await conn.messages.get())
    if welcome.get("type") != "welcome":
        raise RuntimeError(f"not welcomed: {welcome}")
    for number, (channel, flt) in enumerate(subs):
        message: dict[str, Any] = {"type": "subscribe", "id": f"s{number}", "channel": channel}
        if flt is not None:
            message["filter"] = flt
        if positions and channel in positions:
            message["from"] = {channel: positions[channel]}
        conn.send_text(_dumps(message))
    replies = 0
    while replies < len(subs):
        text = await conn.messages.get()
        kind = json.loads(text).get("type")
        if kind == "subscribed":
            replies += 1
        elif kind in ("event", "gap"):
            extra.append(text)
        else:
            raise RuntimeError(f"subscribe refused: {text}")
    return extra


# --- the subscriber processes ------------------------------------------------------------------


class Shared:
    """Counters shared between the driver and the client processes (one slot each)."""

    def __init__(self, ctx: Any, procs: int) -> None:
        self.ready = ctx.RawArray("i", procs)
        self.counts = ctx.RawArray("q", procs)
        self.connected = ctx.RawArray("i", procs)
        self.control = ctx.RawArray("i", 2)
        """[stop, drop]: the driver sets them, every client process watches them."""
        self.ramp = ctx.RawArray("d", 2 * procs)
        """Per process: monotonic time set-up began and ended."""


class _Probe:
    """Latency samples and the tenant check, for the connections that decode."""

    def __init__(self, tally: h.Tally) -> None:
        self.tally = tally
        self.samples: list[int] = []
        self.cross_tenant = 0

    def handler(self, tenant_prefix: bytes | None) -> Callable[[bytes, int], None]:
        samples = self.samples

        def on_payload(body: bytes, arrived_ns: int) -> None:
            found = _T.search(body)
            if found is None:
                return
            samples.append(arrived_ns - int(found.group(1)))
            if tenant_prefix is not None:
                channel = _CHANNEL.search(body)
                if channel is None or not channel.group(1).startswith(tenant_prefix):
                    self.cross_tenant += 1
            self.tally.add(1)

        return on_payload


class _Storm:
    """One subscriber of the reconnect storm: resumes after a drop, dedups by offset."""

    def __init__(self, port: int, spec: Spec, owner: _StormGroup) -> None:
        self.port = port
        self.spec = spec
        self.owner = owner
        self.channel = spec[2][0][0]
        self.position: dict[str, Any] | None = None
        self.seen: set[str] = set()
        self.raw_duplicates = 0
        self.duplicates = 0
        self.gaps = 0
        self.conn: Conn | None = None

    def on_payload(self, body: bytes) -> None:
        message = json.loads(body)
        kind = message.get("type")
        if kind == "gap":
            self.gaps += 1
            return
        if kind != "event":
            return
        epoch, offset = message["epoch"], message["offset"]
        last = self.position
        if last is not None and last["epoch"] == epoch and offset <= last["offset"]:
            self.raw_duplicates += 1  # dropped by offset dedup
            return
        self.position = {"epoch": epoch, "offset": offset}
        if message["message_id"] in self.seen:
            self.duplicates += 1  # the same message at another offset: dedup cannot help
            return
        self.seen.add(message["message_id"])
        self.owner.tally.add(1)

    async def run(self, limit: asyncio.Semaphore) -> None:
        attempt = 0
        while True:
            try:
                async with limit:
                    conn = await connect(self.port, "unisock")
                    extra = await set_up(
                        conn,
                        "unisock",
                        self.spec,
                        {self.channel: self.position} if self.position else None,
                    )
            except (OSError, RuntimeError, ConnectionError):
                delay = self.owner.delay(attempt)
                attempt += 1
                await asyncio.sleep(delay)
                continue
            for text in extra:
                self.on_payload(text.encode())
            conn.decode(self.on_payload)
            self.conn = conn
            self.owner.up(1)
            await conn.closed
            self.conn = None
            self.owner.up(-1)
            if self.owner.stopping:
                return
            attempt = 0
            await asyncio.sleep(self.owner.delay(attempt))


class _StormGroup:
    def __init__(self, tally: h.Tally, shared: Shared, slot: int) -> None:
        from unisock.backoff import DEFAULTS

        self.tally = tally
        self.shared = shared
        self.slot = slot
        self.params = DEFAULTS
        self.rng = random.Random(slot)
        self.count = 0
        self.stopping = False

    def delay(self, attempt: int) -> float:
        """The protocol's reconnect delay: full jitter over the backoff ceiling (UNI-CLOSE)."""
        from unisock.backoff import backoff_delay

        return backoff_delay(self.params, attempt, self.rng) / 1000

    def up(self, change: int) -> None:
        self.count += change
        self.shared.connected[self.slot] = self.count


def _orphaned(parent: int) -> bool:
    """The driver went away without stopping us (killed): stop too."""
    return os.getppid() != parent


def client_main(
    port: int,
    wire: str,
    mode: str,
    specs: list[Spec],
    probe_every: int,
    slot: int,
    shared: Shared,
    results: Connection,
    cores: set[int],
    loop: str = "asyncio",
) -> None:
    """A subscriber process. ``mode``: ``count``, ``probe`` (count, and decode a sample),
    ``idle`` (set up only) or ``storm`` (decode, drop on request, resume)."""
    h.pin(cores)
    h.raise_fd_limit()
    h.run_loop(_clients(port, wire, mode, specs, probe_every, slot, shared, results), loop)


async def _clients(
    port: int,
    wire: str,
    mode: str,
    specs: list[Spec],
    probe_every: int,
    slot: int,
    shared: Shared,
    results: Connection,
) -> None:
    def publish(total: int) -> None:
        shared.counts[slot] = total

    tally = h.Tally(publish)
    probe = _Probe(tally)
    limit = asyncio.Semaphore(64)
    control = shared.control
    report: dict[str, Any] = {}
    parent = os.getppid()
    if wire == "unisock":  # signing is the client's work: not inside the measured ramp
        for tenant, sub, subs in specs:
            token(tenant, sub, subscribe=[channel for channel, _ in subs])
    shared.ramp[2 * slot] = time.monotonic()
    if mode == "storm":
        group = _StormGroup(tally, shared, slot)
        storms = [_Storm(port, spec, group) for spec in specs]
        tasks = [asyncio.create_task(s.run(limit)) for s in storms]
        while group.count < len(storms):
            await asyncio.sleep(0.01)
        shared.ramp[2 * slot + 1] = time.monotonic()
        shared.ready[slot] = 1
        dropped = 0
        while not control[0] and not _orphaned(parent):
            if control[1] != dropped:
                dropped = control[1]
                for storm in storms:  # every connection at once, as a network failure would
                    if storm.conn is not None and storm.conn.transport is not None:
                        storm.conn.transport.abort()
            await asyncio.sleep(0.005)
        group.stopping = True
        for task in tasks:
            task.cancel()
        report = {
            "raw_duplicates": sum(s.raw_duplicates for s in storms),
            "duplicates": sum(s.duplicates for s in storms),
            "gaps": sum(s.gaps for s in storms),
            "unique_per_channel": _per_channel(storms),
        }
    else:
        conns: list[Conn] = []

        async def one(index: int, spec: Spec) -> None:
            async with limit:
                conn = await connect(port, wire)
                await set_up(conn, wire, spec)
                conns.append(conn)
                if mode == "probe" and index % probe_every == 0:
                    # Unisock and raw events name their channel; Socket.IO's do not.
                    prefix = (spec[0] + ".").encode() if wire != "sio" else None
                    conn.decode_with_arrival(probe.handler(prefix))
                elif mode != "idle":
                    conn.start_counting(tally)

        try:
            await asyncio.gather(*(one(i, spec) for i, spec in enumerate(specs)))
        except Exception as exc:
            print(f"client process {slot}: set-up failed: {exc!r}", flush=True)
            shared.ready[slot] = -1
            return
        shared.ramp[2 * slot + 1] = time.monotonic()
        shared.connected[slot] = len(conns)
        shared.ready[slot] = 1
        while not control[0] and not _orphaned(parent):
            await asyncio.sleep(0.02)
        report = {
            "samples": probe.samples,
            "cross_tenant": probe.cross_tenant,
            "lost": sum(1 for conn in conns if conn.closed.done()),
        }
    results.send(report)


def _per_channel(storms: list[_Storm]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for storm in storms:
        out.setdefault(storm.channel, []).append(len(storm.seen))
    return out


# --- publishers --------------------------------------------------------------------------------


class BlockingPublisher:
    """The driver's own publisher connection (windowed injection, scenario 1)."""

    def __init__(self, port: int, wire: str, grants: Sequence[str]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request, accept = _request(port, wire)
        self.sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("publisher handshake failed")
            data += chunk
        end = data.index(b"\r\n\r\n") + 4
        h.check_handshake(data[:end], accept)
        self.buffer = data[end:]
        self.pending: list[str] = []
        if wire == "unisock":
            hello = {"type": "hello", "token": token(h.TENANT, h.PUBLISHER_SUB, publish=grants)}
            self.sock.sendall(h.masked_frame(_dumps(hello).encode()))
            if json.loads(self.receive()).get("type") != "welcome":
                raise RuntimeError("publisher not welcomed")
        elif wire == "sio":
            if not self.receive().startswith("0"):
                raise RuntimeError("no Engine.IO open packet")
            self.sock.sendall(h.masked_frame(b"40"))
            if not self.receive().startswith("40"):
                raise RuntimeError("Socket.IO namespace not joined")

    def receive(self) -> str:
        while True:
            frames, self.buffer = h.split_frames(self.buffer)
            self.pending.extend(body.decode() for _, body in frames)
            if self.pending:
                return self.pending.pop(0)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("publisher connection closed")
            self.buffer += chunk

    def send_frames(self, frames: bytes) -> None:
        self.sock.sendall(frames)

    def discard_incoming(self) -> None:
        while True:
            try:
                chunk = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            if not chunk:
                return

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class _Answers:
    """The server's answers to a publisher: acks counted per (channel, prio), refusals by code."""

    def __init__(self) -> None:
        self.pending: dict[str, str] = {}
        self.acked: dict[str, int] = {}
        self.refused: dict[str, int] = {}

    def wait(self, request_id: str, key: str) -> None:
        self.pending[request_id] = key

    def read(self, conn: Conn) -> None:
        while not conn.messages.empty():
            message = json.loads(conn.messages.get_nowait())
            key = self.pending.pop(message.get("id"), None)
            if key is None:
                continue
            if message.get("type") == "ack":
                self.acked[key] = self.acked.get(key, 0) + 1
            else:
                code = str(message.get("code"))
                self.refused[code] = self.refused.get(code, 0) + 1


def publisher_main(
    port: int,
    wire: str,
    plan: dict[str, Any],
    stop: Any,
    results: Connection,
    cores: set[int],
    loop: str = "asyncio",
) -> None:
    """A paced publisher process: ``plan['rate']`` publishes per second until ``stop[0]``.

    ``plan``: ``channels`` [(tenant, channel)], ``size`` of the delivered frame, optional
    ``count`` (stop after that many), ``typed`` (S2's typed event with a ``prio`` attribute).
    Reports what was published per (channel, prio), so the driver knows what must arrive: on
    the Unisock wire only what the server acknowledged, since a publish it refused (say
    ``unavailable`` while Redis is busy) is the publisher's to retry, never the subscribers'
    to miss; the refusals are reported by error code.
    """
    h.pin(cores)
    h.raise_fd_limit()
    h.run_loop(_publish(port, wire, plan, stop, results), loop)


async def _publish(
    port: int, wire: str, plan: dict[str, Any], stop: Any, results: Connection
) -> None:
    channels: list[tuple[str, str]] = [tuple(c) for c in plan["channels"]]  # type: ignore[misc]
    tenants = sorted({tenant for tenant, _ in channels})
    conns: dict[str, Conn] = {}
    for tenant in tenants:
        conn = await connect(port, wire)
        if wire == "unisock":
            grants = [c for t, c in channels if t == tenant]
            conn.send_text(
                _dumps({"type": "hello", "token": token(tenant, "pub-" + tenant, publish=grants)})
            )
            if json.loads(await conn.messages.get()).get("type") != "welcome":
                raise RuntimeError("publisher not welcomed")
        elif wire == "sio":
            await set_up(conn, wire, (tenant, "pub", []))
        conns[tenant] = conn
    pads = {c: pad_for(wire, c, plan["size"]) for _, c in channels}
    typed = bool(plan.get("typed"))
    rng = random.Random(7)
    published: dict[str, int] = {}
    answers = _Answers()
    rate = float(plan["rate"])
    count = plan.get("count")
    sent = 0
    start = time.monotonic()
    stop[1] = 0
    parent = os.getppid()
    while not stop[0] and (count is None or sent < count) and not _orphaned(parent):
        due = int((time.monotonic() - start) * rate) - sent
        if count is not None:
            due = min(due, count - sent)
        for _ in range(max(0, due)):
            tenant, channel = (
                channels[rng.randrange(len(channels))] if typed else channels[sent % len(channels)]
            )
            attrs = None
            event_type = h.EVENT_TYPE
            extra: dict[str, Any] = {}
            key = channel
            if typed:
                prio = "high" if rng.random() < 0.5 else "low"
                attrs = {"prio": prio}
                event_type = "bench.order"
                extra = {"qty": rng.randrange(1, 100), "sku": f"sku-{rng.randrange(1000)}"}
                key = f"{channel}|{prio}"
            data = payload(stamp(), pads[channel], **extra)
            conn = conns[tenant]
            conn.send_text(publish_text(wire, channel, data, sent + 1, event_type, attrs))
            if wire == "unisock":
                answers.wait(f"p{sent + 1}", key)
            else:
                published[key] = published.get(key, 0) + 1
            sent += 1
        stop[1] = sent
        for conn in conns.values():
            answers.read(conn)
        await asyncio.sleep(0.002)
    stop[1] = sent
    elapsed = time.monotonic() - start
    await asyncio.sleep(0.2)
    deadline = time.monotonic() + 10
    while answers.pending and time.monotonic() < deadline and not _orphaned(parent):
        for conn in conns.values():
            answers.read(conn)
        await asyncio.sleep(0.01)
    if wire == "unisock":
        published = answers.acked
    results.send(
        {
            "published": published,
            "sent": sent,
            "refused": answers.refused,
            "unanswered": len(answers.pending),
            "elapsed_s": elapsed,
        }
    )
    while not stop[0] and not _orphaned(parent):
        await asyncio.sleep(0.02)
