"""Shared machinery of the benchmarks: server processes, cheap clients, results files.

The server under test always runs alone in its own process and is driven through a control
pipe, so its CPU time and memory are read from inside it (``getrusage``, ``/proc/self``) and
nothing else is counted. Clients speak WebSocket over raw asyncio protocols: after the set-up
exchange they only walk frame headers and count, so that they keep up with the server on one
core without decoding anything.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import cProfile
import dataclasses
import gc
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import pstats
import resource
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

SECRET = "unisock-benchmark-secret-0123456789abcdef"
"""HS256 key shared by the benchmark's server and clients (at least 32 bytes, RFC 7518)."""
TENANT = "bench"
CHANNEL = "bench.room"
SECOND_PATTERN = "alerts.>"
EVENT_TYPE = "bench.tick"
PUBLISHER_SUB = "publisher"
EPOCH_SHAPE = "m-000000000000"
"""Same length as a memory-broker epoch, so that pre-built frames match Unisock's in size."""
SERVER_KINDS = ("bare", "floor", "unisock")
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# --- process placement and measurement --------------------------------------------------------


def core_layout() -> tuple[set[int], set[int]]:
    """(server cores, client cores): the server gets one core of its own, clients the rest.

    Call this before pinning anything: children inherit the caller's affinity.
    """
    cores = sorted(os.sched_getaffinity(0))
    server = {cores[-1]}
    return server, set(cores[:-1]) or server


def pin(cores: set[int]) -> None:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, cores)


LOOPS = ("uvloop", "asyncio")


def default_loop() -> str:
    """The load generators' loop: uvloop where installed (the ``bench`` extra has it)."""
    import importlib.util

    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def run_loop(main: Coroutine[Any, Any, None], loop: str) -> None:
    """Run a load-generator process's ``main`` on ``loop``.

    On uvloop a read costs the generator a fraction of what asyncio's selector loop spends on
    it, so the generators saturate later and fewer runs are lost to them; they do the same
    work for every peer, so the ratios compare servers either way.
    """
    if loop == "uvloop":
        import uvloop  # type: ignore[import-not-found]

        uvloop.run(main)
    else:
        asyncio.run(main)


def raise_fd_limit() -> int:
    """Thousands of sockets per process need more than the usual 1024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_times() -> tuple[float, float]:
    """(user, system) CPU seconds of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def rss_kib() -> int:
    """Resident set size of this process (``VmRSS``), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def load_average() -> float:
    """One-minute load average: other work on the machine inflates CPU-time figures."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class OtherWork:
    """The share of the machine that work outside the benchmark used during one run.

    The load average cannot tell: it counts the benchmark's own servers and load generators,
    and a minute of history. Busy time of the whole machine minus the CPU time of this
    process tree (every server and load generator is a waited-for child) is what other
    programs took while the figures were measured.
    """

    def __init__(self) -> None:
        self.wall = time.monotonic()
        self.busy = busy_cpu_s()
        self.own = own_cpu_s()

    def share(self) -> float:
        """Fraction of all cores (0 to 1) busy with other work since construction."""
        wall = time.monotonic() - self.wall
        other = (busy_cpu_s() - self.busy) - (own_cpu_s() - self.own)
        cores = os.cpu_count() or 1
        return max(0.0, other / (wall * cores)) if wall > 0 else 0.0


SPEED_PROBE_STEPS = 1_000_000
"""Multiply-adds of the speed probe: some 50 to 100 ms of one core on this kind of machine."""


def speed_probe_ms(rounds: int = 3) -> float:
    """Milliseconds a fixed pure-Python loop takes here and now (the fastest of ``rounds``).

    Neither the load average nor ``/proc/stat`` sees a host that gives this machine less CPU
    than usual, and absolute figures (scenario 3's latencies) move with it: the probe, taken
    before each run, ties every invocation's figures to how fast the machine ran then.
    """
    best = float("inf")
    for _ in range(rounds):
        began = time.perf_counter()
        total = 0
        for step in range(SPEED_PROBE_STEPS):
            total += step * step
        best = min(best, time.perf_counter() - began)
    return round(best * 1000, 1)


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare figures across machines."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import unisock

    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "websockets": importlib.metadata.version("websockets"),
        "unisock": getattr(unisock, "__version__", "unknown"),
    }


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# --- frames ------------------------------------------------------------------------------------


def event_data(target_bytes: int) -> dict[str, str]:
    """Event ``data`` padded so that the encoded ``event`` frame is ``target_bytes`` long.

    Sized for a four-digit offset and today's timestamp; offsets with fewer digits make the
    frame up to three bytes shorter.
    """
    base = len(event_frame(1000, {"text": ""}).encode())
    return {"text": "x" * max(0, target_bytes - base)}


def event_frame(offset: int, data: Any, ts: int | None = None) -> str:
    """An ``event`` frame exactly as the reference server encodes it for the benchmark."""
    from unisock.messages import encode_event_frame

    stamp = time.time_ns() // 1_000_000 if ts is None else ts
    return encode_event_frame(publish_record(offset, data), EPOCH_SHAPE, offset, stamp)


def publish_record(index: int, data: Any) -> Any:
    """What a publish of event ``index`` asks the broker to sequence."""
    from unisock.broker import ChannelKey, PublishRecord

    return PublishRecord(
        key=ChannelKey(TENANT, None, CHANNEL),
        event_type=EVENT_TYPE,
        data=data,
        message_id=f"m{index}",
        attrs={},
        to=None,
        exclude=None,
        exclude_self=False,
        coalesce_key=None,
        publisher_sub=PUBLISHER_SUB,
        publisher_connection="in-process",
    )


def publish_message(index: int, data: Any) -> str:
    return json.dumps(
        {
            "type": "publish",
            "id": f"p{index}",
            "channel": CHANNEL,
            "event": EVENT_TYPE,
            "data": data,
            "message_id": f"m{index}",
        },
        separators=(",", ":"),
    )


def masked_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A client-to-server frame: clients must mask (RFC 6455 section 5.3)."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    mask = os.urandom(4)
    repeated = (mask * (length // 4 + 1))[:length]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        length, "big"
    )
    return header + mask + body


def split_frames(buffer: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Complete unmasked server frames in ``buffer`` as (opcode, payload), and the rest."""
    frames: list[tuple[int, bytes]] = []
    pos = 0
    size = len(buffer)
    while size - pos >= 2:
        opcode = buffer[pos] & 0x0F
        length = buffer[pos + 1] & 0x7F
        head = 2
        if length == 126:
            if size - pos < 4:
                break
            length = int.from_bytes(buffer[pos + 2 : pos + 4], "big")
            head = 4
        elif length == 127:
            if size - pos < 10:
                break
            length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
            head = 10
        end = pos + head + length
        if end > size:
            break
        frames.append((opcode, buffer[pos + head : end]))
        pos = end
    return frames, buffer[pos:]


def handshake_request(port: int, subprotocol: str | None) -> tuple[bytes, bytes]:
    """The HTTP upgrade request and the ``Sec-WebSocket-Accept`` value it must get back."""
    key = base64.b64encode(os.urandom(16))
    lines = [
        b"GET / HTTP/1.1",
        b"Host: 127.0.0.1:%d" % port,
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + key,
        b"Sec-WebSocket-Version: 13",
    ]
    if subprotocol is not None:
        lines.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode())
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    return b"\r\n".join(lines) + b"\r\n\r\n", accept


def check_handshake(head: bytes, accept: bytes) -> None:
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status + b" " or accept not in head:
        raise RuntimeError(f"handshake refused: {status!r}")


# --- benchmark clients -------------------------------------------------------------------------


class Tally:
    """Frames counted by every connection of one client process."""

    def __init__(self, publish: Callable[[int], None]) -> None:
        self.count = 0
        self._publish = publish

    def add(self, frames: int) -> None:
        self.count += frames
        self._publish(self.count)


class BenchConnection(asyncio.Protocol):
    """One subscriber: a set-up phase of whole messages, then a counting phase.

    In the counting phase only frame headers are read; a frame counts once its last byte has
    arrived. With ``answer_pings`` the connection stays in the message phase and answers the
    server's application-level pings (idle connections in the memory benchmark).
    """

    def __init__(self, request: bytes, accept: bytes, answer_pings: bool = False) -> None:
        self.request = request
        self.accept = accept
        self.answer_pings = answer_pings
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.messages: asyncio.Queue[str] = asyncio.Queue()
        self.handshaken = False
        self.buffer = b""
        self.tally: Tally | None = None
        self.skip = 0
        self.pending = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though uvloop's does not derive from asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def send_text(self, text: str) -> None:
        assert self.transport is not None
        self.transport.write(masked_frame(text.encode()))

    def start_counting(self, tally: Tally) -> None:
        """Switch to header-only counting; bytes already buffered are counted too."""
        self.tally = tally
        rest, self.buffer = self.buffer, b""
        if rest:
            self._count(rest)

    def data_received(self, data: bytes) -> None:
        if self.tally is not None:
            self._count(data)
            return
        self.buffer += data
        if not self.handshaken:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[: end + 4], self.buffer[end + 4 :]
            try:
                check_handshake(head, self.accept)
            except RuntimeError as exc:
                self.opened.set_exception(exc)
                return
            self.handshaken = True
            self.opened.set_result(None)
        frames, self.buffer = split_frames(self.buffer)
        for opcode, payload in frames:
            if opcode != 0x1:
                continue
            text = payload.decode()
            if self.answer_pings and text.startswith('{"type":"ping"'):
                message = json.loads(text)
                pong = {"type": "pong"}
                if "nonce" in message:
                    pong["nonce"] = message["nonce"]
                self.send_text(json.dumps(pong))
                continue
            self.messages.put_nowait(text)

    def _count(self, data: bytes) -> None:
        size = len(data)
        if self.buffer:  # a header split across reads
            data = self.buffer + data
            size = len(data)
            self.buffer = b""
        pos = self.skip
        done = 0
        if self.pending and pos <= size:
            done = 1
            self.pending = False
        while pos < size:
            if size - pos < 4:  # benchmark frames have 2- or 4-byte headers
                length = data[pos + 1] & 0x7F if size - pos >= 2 else 126
                if length >= 126:
                    self.buffer = data[pos:]
                    pos = size
                    break
                end = pos + 2 + length
            else:
                length = data[pos + 1] & 0x7F
                if length < 126:
                    end = pos + 2 + length
                elif length == 126:
                    end = pos + 4 + ((data[pos + 2] << 8) | data[pos + 3])
                else:
                    raise RuntimeError("unexpected 64-bit frame length")
            if end <= size:
                done += 1
            else:
                self.pending = True
            pos = end
        self.skip = max(0, pos - size)
        if done and self.tally is not None:
            self.tally.add(done)


def subscriber_token(index: int) -> str:
    from unisock.auth import mint_token

    return mint_token(
        SECRET,
        TENANT,
        f"u{index}",
        subscribe=["bench.>", SECOND_PATTERN],
        ttl_s=24 * 3600,
    )


async def open_connection(port: int, kind: str, *, answer_pings: bool = False) -> BenchConnection:
    loop = asyncio.get_running_loop()
    request, accept = handshake_request(port, "unisock.v1" if kind == "unisock" else None)
    _, conn = await loop.create_connection(
        lambda: BenchConnection(request, accept, answer_pings), "127.0.0.1", port
    )
    await conn.opened
    return conn


async def set_up_subscriber(
    conn: BenchConnection, kind: str, index: int, patterns: Sequence[str]
) -> None:
    """Authenticate and subscribe (Unisock) or register (bare servers); wait for the replies."""
    if kind != "unisock":
        conn.send_text("sub")
        reply = await conn.messages.get()
        if reply != "ok":
            raise RuntimeError(f"unexpected registration reply {reply!r}")
        return
    conn.send_text(json.dumps({"type": "hello", "token": subscriber_token(index)}))
    welcome = json.loads(await conn.messages.get())
    if welcome.get("type") != "welcome":
        raise RuntimeError(f"not welcomed: {welcome}")
    for number, pattern in enumerate(patterns):
        conn.send_text(json.dumps({"type": "subscribe", "id": f"s{number}", "channel": pattern}))
    for _ in patterns:
        reply = json.loads(await conn.messages.get())
        if reply.get("type") != "subscribed":
            raise RuntimeError(f"subscribe refused: {reply}")


def client_main(
    port: int,
    kind: str,
    first: int,
    count: int,
    patterns: Sequence[str],
    slot: int,
    ready: Any,
    counts: Any,
    answer_pings: bool,
    cores: set[int],
) -> None:
    """A client process: open ``count`` subscribers, report readiness, count frames forever."""
    pin(cores)
    raise_fd_limit()

    def publish(total: int) -> None:
        counts[slot] = total

    async def run() -> None:
        tally = Tally(publish)
        limit = asyncio.Semaphore(64)
        conns: list[BenchConnection] = []

        async def one(index: int) -> None:
            async with limit:
                conn = await open_connection(port, kind, answer_pings=answer_pings)
                await set_up_subscriber(conn, kind, index, patterns)
                conns.append(conn)

        try:
            await asyncio.gather(*(one(i) for i in range(first, first + count)))
        except Exception as exc:
            print(f"client process {slot}: set-up failed: {exc!r}", file=sys.stderr)
            ready[slot] = -1
            return
        if not answer_pings:
            for conn in conns:
                conn.start_counting(tally)
        ready[slot] = 1
        await asyncio.gather(*(conn.closed for conn in conns))

    asyncio.run(run())


# --- the publisher (driver side, blocking) -----------------------------------------------------


class Publisher:
    """A blocking WebSocket connection used by the driver to inject events."""

    def __init__(self, port: int, kind: str) -> None:
        self.kind = kind
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request, accept = handshake_request(port, "unisock.v1" if kind == "unisock" else None)
        self.sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("publisher handshake failed")
            data += chunk
        end = data.index(b"\r\n\r\n") + 4
        check_handshake(data[:end], accept)
        self.buffer = data[end:]
        if kind == "unisock":
            from unisock.auth import mint_token

            token = mint_token(SECRET, TENANT, PUBLISHER_SUB, publish=["bench.>"], ttl_s=86400)
            self.send([json.dumps({"type": "hello", "token": token})])
            welcome = json.loads(self.receive())
            if welcome.get("type") != "welcome":
                raise RuntimeError(f"publisher not welcomed: {welcome}")
        else:
            self.send(["pub"])

    def send(self, messages: Iterable[str]) -> None:
        self.sock.sendall(b"".join(masked_frame(m.encode()) for m in messages))

    def send_frames(self, frames: bytes) -> None:
        self.sock.sendall(frames)

    def receive(self) -> str:
        while True:
            frames, self.buffer = split_frames(self.buffer)
            if frames:
                if len(frames) > 1:
                    raise RuntimeError("unexpected extra frames during set-up")
                return frames[0][1].decode()
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("publisher connection closed")
            self.buffer += chunk

    def discard_incoming(self) -> int:
        """Read and drop whatever arrived (acks), without blocking; returns the bytes read."""
        total = 0
        while True:
            try:
                chunk = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return total
            if not chunk:
                return total
            total += len(chunk)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# --- the server process ------------------------------------------------------------------------


def bench_settings(**server_overrides: Any) -> Any:
    """Default settings with the HS256 benchmark secret and the given ServerConfig changes."""
    from unisock.settings import Settings, load_settings

    settings = load_settings(None, secret=SECRET)
    return Settings(dataclasses.replace(settings.server, **server_overrides), settings.auth)


class _BareServer:
    """A plain ``websockets`` server: the publisher's messages go to every subscriber.

    ``floor`` writes one pre-built frame to every transport instead of calling
    ``websockets.broadcast``: the cheapest correct delivery of an identical unmasked frame.
    """

    def __init__(self, floor: bool) -> None:
        self.floor = floor
        self.subscribers: set[Any] = set()

    async def handler(self, ws: Any) -> None:
        from websockets.asyncio.server import broadcast
        from websockets.exceptions import ConnectionClosed

        from unisock.wsframe import text_frame

        with contextlib.suppress(ConnectionClosed):
            role = await ws.recv()
            if role == "sub":
                self.subscribers.add(ws)
                try:
                    await ws.send("ok")
                    await ws.wait_closed()
                finally:
                    self.subscribers.discard(ws)
                return
            subscribers = self.subscribers
            async for message in ws:
                if self.floor:
                    frame = text_frame(message.encode())
                    for sub in subscribers:
                        sub.transport.write(frame)
                else:
                    broadcast(subscribers, message)

    def connections(self) -> int:
        return len(self.subscribers)


def server_main(
    kind: str, server_overrides: dict[str, Any], ctl: Connection, cores: set[int]
) -> None:
    """The server process: serve ``kind`` on a free port and obey the control pipe.

    Commands: ``("cpu",)`` -> (user, sys) seconds; ``("rss",)`` -> KiB after a GC;
    ``("connections",)``; ``("publish", first, n, data)`` publishes in-process through the
    broker; ``("profile_start",)`` / ``("profile_stop", top)`` -> cProfile text; ``("exit",)``.
    """
    pin(cores)
    raise_fd_limit()
    asyncio.run(_serve(kind, server_overrides, ctl))


async def _serve(kind: str, server_overrides: dict[str, Any], ctl: Connection) -> None:
    from websockets.asyncio.server import serve

    loop = asyncio.get_running_loop()
    done = loop.create_future()
    unisock_server: Any = None
    bare: _BareServer | None = None
    if kind == "unisock":
        from unisock.server import UnisockServer

        unisock_server = UnisockServer(bench_settings(**server_overrides))
        _, port = await unisock_server.start("127.0.0.1", 0)
    else:
        bare = _BareServer(floor=kind == "floor")
        server = await serve(
            bare.handler,
            "127.0.0.1",
            0,
            compression=None,
            ping_interval=None,
            max_queue=4,
            server_header=None,
        )
        port = next(iter(server.sockets)).getsockname()[1]
    profiler: cProfile.Profile | None = None
    tasks: set[asyncio.Task[None]] = set()

    async def publish_in_process(first: int, n: int, data: Any) -> None:
        for index in range(first, first + n):
            await unisock_server.broker.publish(publish_record(index, data))

    def on_command() -> None:
        nonlocal profiler
        command = ctl.recv()
        name = command[0]
        if name == "cpu":
            ctl.send(cpu_times())
        elif name == "rss":
            gc.collect()
            ctl.send(rss_kib())
        elif name == "connections":
            if unisock_server is not None:
                ctl.send(sum(1 for c in unisock_server.conns.values() if c.index))
            else:
                assert bare is not None
                ctl.send(bare.connections())
        elif name == "publish":
            task = loop.create_task(publish_in_process(*command[1:]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif name == "profile_start":
            profiler = cProfile.Profile()
            profiler.enable()
            ctl.send(True)
        elif name == "profile_stop":
            assert profiler is not None
            profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("tottime").print_stats(command[1])
            stats.sort_stats("cumulative").print_stats(command[1])
            ctl.send(out.getvalue())
        elif name == "exit" and not done.done():
            done.set_result(None)

    loop.add_reader(ctl.fileno(), on_command)
    ctl.send(port)
    await done
    loop.remove_reader(ctl.fileno())
    ctl.send("bye")
    os._exit(0)  # no orderly close of thousands of sockets: nothing is measured any more


# --- waiting and results -----------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.0005
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(poll)


def prepare_run(
    parser: Any, args: Any, scenarios: Mapping[str, Any]
) -> tuple[list[str], dict[str, Any]]:
    """Validate ``--scenarios``, raise the fd limit and pin the driver: the shared preamble.

    Returns the scenario names to run and the machine description for the results file.
    """
    names = [n for n in args.scenarios.split(",") if n]
    unknown = set(names) - set(scenarios)
    if unknown:
        parser.error(f"unknown scenarios: {sorted(unknown)}")
    raise_fd_limit()
    machine = machine_info()
    args.server_cores, args.client_cores = core_layout()
    pin(args.client_cores)
    return names, machine


def repeat_scenarios(
    names: Sequence[str],
    repeat: int,
    run: Callable[[str], dict[str, Any]],
    describe: Callable[[dict[str, Any]], str],
) -> dict[str, list[dict[str, Any]]]:
    """Run every scenario ``repeat`` times, interleaved, printing one line per run.

    Interleaving means drifts in machine load hit every scenario alike, which is what makes
    the same-run ratios meaningful.
    """
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    width = max(len(name) for name in names)
    for index in range(repeat):
        for name in names:
            result = run(name)
            runs[name].append(result)
            print(f"run {index + 1}/{repeat} {name:{width}s} {describe(result)}", flush=True)
    return runs


def write_results(out: Path, name: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{name}.json"
    md_path = out / f"{name}.md"
    json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown, encoding="utf-8")
    return json_path, md_path
