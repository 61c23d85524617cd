"""Attacks on a running server, each bounded in time and count, each cleaning up after itself.

Every attack returns what it observed (counts, close codes) for the test to bound and print.
Attackers use raw sockets where a WebSocket library would refuse to misbehave.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from typing import Any

from fuzz.frames import CONT, PING, TEXT, build
from resources.harness import LIMIT, ServerProcess

__all__ = [
    "connection_churn",
    "deflate_offered",
    "filters_at_limits",
    "fragment_flood",
    "huge_token",
    "never_reading",
    "ping_flood",
    "slowloris",
    "subscribe_churn",
]


async def _raw(
    server: ServerProcess,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(server.host, server.port), LIMIT)


async def _upgraded(
    server: ServerProcess, extra: str = ""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await _raw(server)
    writer.write(
        (
            f"GET / HTTP/1.1\r\nHost: {server.host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: unisock.v1\r\n{extra}\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), LIMIT)
    assert head.startswith(b"HTTP/1.1 101"), head[:80]
    return reader, writer, head


async def _hello(
    server: ServerProcess, sub: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer, _ = await _upgraded(server)
    writer.write(build(TEXT, json.dumps({"type": "hello", "token": server.token(sub)}).encode()))
    await writer.drain()
    return reader, writer


def _close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        with contextlib.suppress(Exception):
            writer.transport.abort()


async def slowloris(server: ServerProcess, count: int, seconds: float) -> dict[str, Any]:
    """``count`` handshakes that dribble one header byte at a time, and ``count`` TCP
    connections that never send anything, held for ``seconds``."""
    writers: list[asyncio.StreamWriter] = []
    for _ in range(count):
        _, writer = await _raw(server)
        writer.write(f"GET / HTTP/1.1\r\nHost: {server.host}\r\n".encode())
        writers.append(writer)
        _, silent = await _raw(server)
        writers.append(silent)
    peak_fds = server.fds()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for writer in writers[::2]:
            with contextlib.suppress(Exception):
                writer.write(b"X")
        await asyncio.sleep(0.2)
    peak_fds = max(peak_fds, server.fds())
    _close_all(writers)
    return {"connections": 2 * count, "peak_fds": peak_fds}


async def never_reading(server: ServerProcess, events: int, size: int) -> dict[str, Any]:
    """A subscriber whose socket is never read while ``events`` of ``size`` octets are sent
    to it: the server must bound what it keeps for it (close 4200 at ``max_queue``)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (server.host, server.port))
    reader, writer, _ = await _upgraded_on(server, sock)
    writer.write(
        build(
            TEXT,
            json.dumps({"type": "hello", "token": server.token("stalled")}).encode(),
        )
    )
    writer.write(build(TEXT, b'{"type":"subscribe","id":"s","channel":"flood.x"}'))
    await writer.drain()
    writer.transport.pause_reading()  # never read from here on
    publisher = await server.client("flooder")
    payload = "x" * size
    sent = 0
    for index in range(events):
        await publisher.send(
            json.dumps(
                {
                    "type": "publish",
                    "id": f"f{index}",
                    "channel": "flood.x",
                    "event": "flood",
                    "data": payload,
                    "message_id": f"flood-{index}-{time.time_ns()}",
                }
            )
        )
        sent += 1
        if index % 100 == 0:
            await asyncio.sleep(0)
    # every ack proves the server handled the publish (and the fan-out to the stalled reader)
    acks = 0
    while acks < sent:
        frame = json.loads(await asyncio.wait_for(publisher.recv(), LIMIT * 4))
        acks += frame.get("type") in ("ack", "error")
    await publisher.close()
    writer.transport.resume_reading()
    code = await _close_code(reader)
    _close_all([writer])
    return {"events": sent, "octets": sent * size, "close": code}


async def _upgraded_on(
    server: ServerProcess, sock: socket.socket
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        (
            f"GET / HTTP/1.1\r\nHost: {server.host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: unisock.v1\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), LIMIT)
    return reader, writer, head


async def _close_code(reader: asyncio.StreamReader) -> int | None:
    """Read server frames until the close frame; its code (None on EOF without one)."""
    try:
        while True:
            first, second = await asyncio.wait_for(reader.readexactly(2), LIMIT * 2)
            size = second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", await reader.readexactly(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", await reader.readexactly(8))
            payload = await reader.readexactly(size)
            if first & 0x0F == 0x8:
                return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
        return None


async def fragment_flood(server: ServerProcess, connections: int) -> dict[str, Any]:
    """Each connection sends one message's fragments up to one octet short of
    ``max_message_bytes`` and never finishes it; one more goes over the limit (1009)."""
    limit = int(server.config.get("max_message_bytes", 65536))
    writers: list[asyncio.StreamWriter] = []
    chunk = b"x" * 1024
    for index in range(connections):
        _, writer = await _hello(server, f"frag{index}")
        writer.write(build(TEXT, chunk, fin=False))
        for _ in range((limit - 1) // len(chunk) - 1):
            writer.write(build(CONT, chunk, fin=False))
        await writer.drain()
        writers.append(writer)
    reader, over = await _hello(server, "frag-over")
    over.write(build(TEXT, chunk, fin=False))
    for _ in range(limit // len(chunk) + 1):
        over.write(build(CONT, chunk, fin=False))
    with contextlib.suppress(ConnectionError):
        await over.drain()
    code = await _close_code(reader)
    peak = server.fds()
    _close_all([*writers, over])
    return {
        "held_octets": connections * (limit - 1),
        "over_limit_close": code,
        "peak_fds": peak,
    }


async def ping_flood(server: ServerProcess, seconds: float) -> dict[str, Any]:
    """One connection sends WebSocket pings and Unisock pings as fast as it can, reading
    its answers, for ``seconds``."""
    reader, writer = await _hello(server, "pinger")
    sent = 0
    deadline = time.monotonic() + seconds

    async def discard() -> None:
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass

    draining = asyncio.create_task(discard())
    ping = build(PING, b"p") + build(TEXT, b'{"type":"ping","nonce":"n"}')
    while time.monotonic() < deadline:
        writer.write(ping * 50)
        sent += 100
        await writer.drain()
        await asyncio.sleep(0)
    draining.cancel()
    _close_all([writer])
    return {"pings": sent}


async def subscribe_churn(server: ServerProcess, pairs: int) -> dict[str, Any]:
    """``pairs`` subscribe/unsubscribe round trips, pipelined 50 at a time, then proof that
    every subscription slot is free again."""
    ws = await server.client("churner")
    done = 0
    while done < pairs:
        batch = min(50, pairs - done)
        for index in range(done, done + batch):
            channel = f"churn.c{index}"
            await ws.send(json.dumps({"type": "subscribe", "id": f"s{index}", "channel": channel}))
            await ws.send(
                json.dumps({"type": "unsubscribe", "id": f"u{index}", "channel": channel})
            )
        replies = 0
        while replies < 2 * batch:
            frame = json.loads(await asyncio.wait_for(ws.recv(), LIMIT))
            replies += frame.get("id", "")[:1] in ("s", "u") and frame["type"] != "ping"
        done += batch
    cap = int(server.config.get("max_subscriptions", 100))
    for index in range(cap):
        await ws.send(
            json.dumps({"type": "subscribe", "id": f"f{index}", "channel": f"free.c{index}"})
        )
    refused = 0
    for _ in range(cap):
        frame = json.loads(await asyncio.wait_for(ws.recv(), LIMIT))
        while frame.get("type") == "ping":
            frame = json.loads(await asyncio.wait_for(ws.recv(), LIMIT))
        refused += frame["type"] == "error"
    await ws.close()
    return {"pairs": pairs, "refused_after": refused}


async def connection_churn(server: ServerProcess, count: int) -> dict[str, Any]:
    """``count`` connections that authenticate, subscribe and go: half close properly,
    half vanish without a closing handshake."""
    for index in range(count):
        ws = await server.client(f"churn{index % 20}")
        await ws.send(json.dumps({"type": "subscribe", "id": "s", "channel": f"cc.c{index}"}))
        await asyncio.wait_for(ws.recv(), LIMIT)
        if index % 2:
            await ws.close()
        else:
            ws.transport.abort()
    return {"connections": count}


async def deflate_offered(server: ServerProcess) -> dict[str, Any]:
    """A client offers permessage-deflate: the server must not accept it, and a frame with
    RSV1 (a compressed message, perhaps a decompression bomb) must close with 1002."""
    offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    reader, writer, head = await _upgraded(server, offer)
    negotiated = b"sec-websocket-extensions" in head.lower()
    bomb = bytes.fromhex("f248cdc9c90700") * 1000
    writer.write(build(TEXT, bomb, rsv=4))
    await writer.drain()
    code = await _close_code(reader)
    _close_all([writer])
    return {"negotiated": negotiated, "rsv1_close": code}


async def huge_token(server: ServerProcess) -> dict[str, Any]:
    """Tokens as large as the 8192-character cap allows: as many grants as fit, and a large
    unknown claim; then one character over the cap."""
    grants: list[str] = []
    while True:
        candidate = [*grants, f"g{len(grants)}.>"]
        token = server.token("granted", subscribe=candidate, publish=[])
        if len(token) > 8192:
            break
        grants = candidate
    token = server.token("granted", subscribe=grants, publish=[])
    started = time.perf_counter()
    ws = await server.client_with_token(token)
    hello_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    for index in range(50):
        await ws.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "id": f"s{index}",
                    "channel": f"g{len(grants) - 1}.x{index}",
                }
            )
        )
    for _ in range(50):
        frame = json.loads(await asyncio.wait_for(ws.recv(), LIMIT))
        assert frame["type"] in ("subscribed", "ping"), frame
    subscribe_ms = (time.perf_counter() - started) * 1000 / 50
    await ws.close()
    over = server.token("granted", extra_claims={"blob": "b" * 8192})
    reader, writer, _ = await _upgraded(server)
    writer.write(build(TEXT, json.dumps({"type": "hello", "token": over}).encode()))
    await writer.drain()
    code = await _close_code(reader)
    _close_all([writer])
    return {
        "grants": len(grants),
        "hello_ms": hello_ms,
        "subscribe_ms": subscribe_ms,
        "over_cap_close": code,
    }


def _limit_filter() -> dict[str, Any]:
    """32 nodes, depth 8, ``in`` lists of 32 scalars: every limit at once. Every node but the
    deepest is true for the probe's attributes, so evaluation walks all 32 nodes, then fails
    (nothing is delivered: the cost is all evaluation)."""
    node: dict[str, Any] = {"and": [{"in": ["a7", list(range(32))]}, {"eq": ["a8", -1]}]}
    for depth in range(5, 0, -1):  # ands at depths 6..2 around it
        items: list[Any] = [{"in": [f"a{depth}", list(range(32))]}, node]
        if depth == 2:
            items += [{"exists": f"a{k}"} for k in range(3)]
        node = {"and": items}
    leaves = [{"gte": [f"a{k}", 0]} for k in range(14)]
    return {"and": [*leaves, {"in": ["a0", list(range(32))]}, node]}


def _patterns(count: int) -> list[str]:
    """``count`` distinct patterns that all match the channel ``l.s1.s2.s3.s4.s5.s6.s7``."""
    segments = ["l", "s1", "s2", "s3", "s4", "s5", "s6", "s7"]
    found = []
    for mask in range(count):
        found.append(".".join("*" if mask >> k & 1 else seg for k, seg in enumerate(segments)))
    return found


async def filters_at_limits(server: ServerProcess, publishes: int) -> dict[str, Any]:
    """A subscriber with ``max_subscriptions`` subscriptions, all matching one channel, each
    with a filter at the node, depth and list limits, while ``publishes`` events with
    ``max_attrs`` attributes are published there."""
    cap = int(server.config.get("max_subscriptions", 100))
    sub = await server.client("filtered")
    flt = _limit_filter()
    for index, pattern in enumerate(_patterns(cap)):
        await sub.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "id": f"s{index}",
                    "channel": pattern,
                    "filter": flt,
                }
            )
        )
    replies = 0
    while replies < cap:
        frame = json.loads(await asyncio.wait_for(sub.recv(), LIMIT))
        replies += frame["type"] != "ping"
        assert frame["type"] in ("subscribed", "ping"), frame
    pub = await server.client("filter-pub")
    attrs = {f"a{i}": i for i in range(16)}
    for index in range(publishes):
        await pub.send(
            json.dumps(
                {
                    "type": "publish",
                    "id": f"p{index}",
                    "channel": "l.s1.s2.s3.s4.s5.s6.s7",
                    "event": "e",
                    "data": index,
                    "attrs": attrs,
                    "message_id": f"lim-{index}-{time.time_ns()}",
                }
            )
        )
    acks = 0
    while acks < publishes:
        frame = json.loads(await asyncio.wait_for(pub.recv(), LIMIT * 2))
        acks += frame["type"] in ("ack", "error")
    delivered = 0
    with contextlib.suppress(TimeoutError):
        while True:
            frame = json.loads(await asyncio.wait_for(sub.recv(), 0.2))
            delivered += frame["type"] == "event"
    await pub.close()
    await sub.close()
    return {"subscriptions": cap, "publishes": publishes, "delivered": delivered}
