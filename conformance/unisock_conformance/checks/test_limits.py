"""Limits (spec section 11): every limit is tested at the announced value and one step past it.

The slow-consumer checks use a raw TCP WebSocket with a small receive buffer that stops
reading after it has subscribed, so the server's outbound queue really fills up; a thread
keeps sending ``pong`` on it so that the heartbeat timeout never ends it first.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import socket
import ssl
import struct
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from websockets.exceptions import ConnectionClosed

from unisock_conformance.checks.conftest import Connect, User
from unisock_conformance.deployment import NOT_RUN_PREFIX, Deployment, Names, ServerInfo
from unisock_conformance.wire import (
    PROTOCOL,
    Conn,
    Periodic,
    stalling_socket,
    widen_receive_buffer,
)

Frame = dict[str, Any]


def _serves(user: User, names: Names) -> None:
    fresh = user(names.tenant(90), names.user(90))
    assert fresh.request({"type": "ping", "id": "alive"})["type"] == "pong"


def _padded(size: int, *, wide: bool = False, hello_token: str | None = None) -> str:
    """A message of exactly ``size`` UTF-8 octets (a ping, or a hello with ``client.name``)."""
    if hello_token is None:
        head, tail = '{"type":"ping","id":"big","pad":"', '"}'
    else:
        head, tail = '{"type":"hello","token":"' + hello_token + '","client":{"name":"', '"}}'
    room = size - len((head + tail).encode())
    if room < 2:
        raise ValueError("max_message_bytes is too small to build the message")
    text = "é" * (room // 2) + "a" * (room % 2) if wide else "a" * room
    message = head + text + tail
    assert len(message.encode()) == size
    return message


def _reply(conn: Conn, ident: str, type_: str | None = None) -> Frame:
    """The reply to the request ``ident`` (``type_`` None: any type)."""
    return conn.expect(type_, where=lambda frame: frame.get("id") == ident)


def _arrived(conn: Conn, channel: str, offset: int) -> list[Frame]:
    """Wait until the event at ``offset`` on ``channel`` has reached ``conn``."""
    return conn.wait_events(lambda e: e["channel"] == channel and e["offset"] == offset)


# -- 11.2 message size -----------------------------------------------------------------------------


@pytest.mark.requirement("UNI-LIM-1", "UNI-LC-12", "UNI-SEC-13", "UNI-CLOSE-9")
@pytest.mark.parametrize("shape", ["ascii", "two-octet-chars", "fragmented"])
def test_server_processes_max_message_bytes_and_closes_1009_one_octet_over(
    user: User, names: Names, shape: str
) -> None:
    conn = user(names.tenant(), names.user(0))
    assert conn.welcome is not None
    limit = int(conn.welcome["limits"]["max_message_bytes"])
    wide = shape == "two-octet-chars"
    at, over = _padded(limit, wide=wide), _padded(limit + 1, wide=wide)
    if wide:
        assert len(over) <= limit, "the over-limit message has fewer characters than octets"
    if shape == "fragmented":
        conn.ws.send([at[i : i + 1000] for i in range(0, len(at), 1000)])
    else:
        conn.send(at)
    assert conn.expect("pong", where=lambda f: f.get("id") == "big")["type"] == "pong"
    # The server may close before the last fragment is out: that is the expected outcome.
    with contextlib.suppress(ConnectionClosed):
        if shape == "fragmented":
            conn.ws.send([over[i : i + 1000] for i in range(0, len(over), 1000)])
        else:
            conn.send(over)
    code, reason = conn.expect_close()
    assert code == 1009, f"closed with {code} {reason!r}, expected 1009"
    assert not [f for f in conn.unmatched if f.get("type") == "pong"], "oversized ping answered"
    _serves(user, names)


@pytest.mark.requirement("UNI-LIM-2", "UNI-LIM-1")
def test_server_applies_max_message_bytes_to_hello(
    connect: Connect, deployment: Deployment, server_info: ServerInfo, names: Names
) -> None:
    limit = int(server_info.limits["max_message_bytes"])
    token = deployment.mint(names.tenant(), names.user())
    conn = connect(hello=False)
    conn.send(_padded(limit, hello_token=token))
    assert conn.expect(None, skip=())["type"] == "welcome"
    conn = connect(hello=False)
    conn.send(_padded(limit + 1, hello_token=token))
    code, reason = conn.expect_close()
    assert code == 1009, f"oversized hello closed with {code} {reason!r}, expected 1009"
    assert conn.frames == [], f"oversized hello answered: {conn.frames}"


# -- 11.3 subscriptions ----------------------------------------------------------------------------


@pytest.mark.requirement("UNI-LIM-5", "UNI-SUB-5", "UNI-LC-12")
def test_server_frees_a_subscription_slot_once_unsubscribed_is_sent(
    user: User, deployment: Deployment, names: Names
) -> None:
    tenant, sub = names.tenant(), names.user()
    keep, drop = names.channel("keep"), names.channel("drop")
    conn = user(tenant, sub, subscribe=(f"{keep}.>", f"{drop}.>"))
    assert conn.welcome is not None
    cap = int(conn.welcome["limits"]["max_subscriptions"])
    held = [f"{drop}.x"] + [f"{keep}.{i}" for i in range(cap - 1)]
    for pattern in held:
        conn.subscribe(pattern)
    spare = f"{keep}.spare"
    refused = conn.request({"type": "subscribe", "id": "full", "channel": spare})
    assert refused.get("code") == "subscription_limit", refused
    conn.unsubscribe(held[-1])
    conn.subscribe(spare)
    # A revoked subscription frees its slot as well.
    token = deployment.mint(tenant, sub, subscribe=(f"{keep}.>",))
    conn.send({"type": "refresh", "id": "rv", "token": token})
    conn.expect("refreshed", where=lambda f: f.get("id") == "rv")
    conn.subscribe(f"{keep}.after-revoke")


# -- 11.4 publish rate -----------------------------------------------------------------------------


@pytest.mark.requirement("UNI-PUB-30", "UNI-PUB-31", "UNI-LC-12", "UNI-ERR-3", "UNI-SEC-13")
def test_server_rate_limits_publish_flood_beyond_burst(user: User, names: Names) -> None:
    tenant, channel = names.tenant(), names.channel()
    conn = user(tenant, names.user())
    assert conn.welcome is not None
    rate = conn.welcome["limits"]["publish_rate"]
    burst = int(rate["burst"])
    conn.pace = False  # the flood must outrun the bucket
    count = min(2 * burst + 5, burst + 400)
    messages = [conn.publish_message(channel, id=f"f{i}") for i in range(count)]
    start = time.monotonic()
    for message in messages:
        conn.send(message)
    replies = [_reply(conn, m["id"]) for m in messages]
    elapsed = time.monotonic() - start
    kinds = [r["type"] if r["type"] != "error" else r["code"] for r in replies]
    assert kinds[:burst] == ["ack"] * burst, f"refused within the burst: {kinds[:burst]}"
    assert set(kinds) <= {"ack", "rate_limited"}, set(kinds)
    refill = float(rate["per_second"]) * elapsed
    if count - burst > refill + 1:
        assert "rate_limited" in kinds, f"{count} publishes in {elapsed:.2f} s never limited"
    for reply in replies:
        if reply["type"] == "error":
            assert isinstance(reply.get("retry_after_ms"), int) and reply["retry_after_ms"] >= 1
    assert conn.request({"type": "ping", "id": "after"})["type"] == "pong"
    _serves(user, names)


# -- 11.7 targets and attributes -------------------------------------------------------------------


@pytest.mark.requirement("UNI-PUB-3", "UNI-LC-12")
@pytest.mark.parametrize("field", ["to", "exclude", "attrs"])
def test_server_accepts_targets_and_attrs_at_the_limit_and_refuses_one_more(
    user: User, names: Names, field: str
) -> None:
    conn = user(names.tenant(), names.user())
    assert conn.welcome is not None
    limits = conn.welcome["limits"]
    channel = names.channel()

    def publish(n: int) -> Frame:
        if field == "attrs":
            extra: dict[str, Any] = {"attrs": {f"a{i}": i for i in range(n)}}
        else:
            extra = {field: [f"user-{i}" for i in range(n)]}
        return conn.request(conn.publish_message(channel, **extra))

    limit = int(limits["max_attrs" if field == "attrs" else "max_targets"])
    assert publish(limit)["type"] == "ack"
    reply = publish(limit + 1)
    assert reply.get("code") == "invalid_message", reply


# -- 11.5 outbound queue ---------------------------------------------------------------------------


class RawSocket:
    """A minimal client WebSocket over a socket with a small receive buffer.

    The standard client reads the socket on a thread of its own; this one reads only when
    asked, so that a stalled reader fills the operating system's buffers and then the
    server's outbound queue.
    """

    def __init__(self, deployment: Deployment) -> None:
        parts = urlsplit(deployment.url)
        secure = parts.scheme == "wss"
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if secure else 80)
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = stalling_socket(family)
        sock.settimeout(deployment.timeout())
        sock.connect(address)
        if secure:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        self.sock = sock
        self.buffer = b""
        self.lock = threading.Lock()
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {parts.netloc}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            f"Sec-WebSocket-Protocol: {PROTOCOL}",
        ]
        if deployment.origin:
            lines.append(f"Origin: {deployment.origin}")
        lines += [f"{name}: {value}" for name, value in deployment.headers]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buffer:
            chunk = sock.recv(4096)
            if not chunk:
                raise AssertionError("connection closed during the handshake")
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        assert b" 101 " in status + b" ", f"handshake refused: {status!r}"

    def send(self, message: Frame) -> None:
        payload = json.dumps(message, separators=(",", ":")).encode()
        mask = os.urandom(4)
        header = bytes([0x81])
        length = len(payload)
        if length < 126:
            header += bytes([0x80 | length])
        elif length < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", length)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", length)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        with self.lock:
            self.sock.sendall(header + mask + body)

    def _frame(self) -> tuple[int, bytes] | None:
        data = self.buffer
        if len(data) < 2:
            return None
        opcode, length, start = data[0] & 0x0F, data[1] & 0x7F, 2
        if length == 126:
            if len(data) < 4:
                return None
            length, start = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            if len(data) < 10:
                return None
            length, start = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < start + length:
            return None
        self.buffer = data[start + length :]
        return opcode, data[start : start + length]

    def read(self, timeout: float, until: str | None = None) -> tuple[list[Frame], int | None]:
        """Messages until a close frame (returns its code), EOF, timeout or a frame of type
        ``until``."""
        messages: list[Frame] = []
        deadline = time.monotonic() + timeout
        while True:
            frame = self._frame()
            if frame is not None:
                opcode, payload = frame
                if opcode == 0x8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    return messages, code
                if opcode == 0x1:
                    messages.append(json.loads(payload))
                    if until is not None and messages[-1].get("type") == until:
                        return messages, None
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return messages, None
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return messages, None
            except OSError:
                return messages, 1006
            if not chunk:
                return messages, 1006
            self.buffer += chunk

    def unstall(self) -> None:
        """Read back at full speed from now on (see :func:`widen_receive_buffer`)."""
        widen_receive_buffer(self.sock)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def stalled_subscriber(
    deployment: Deployment, tenant: str, sub: str, channel: str
) -> tuple[RawSocket, Periodic, Frame]:
    """A subscriber of ``channel`` that reads nothing more until ``unstall``, kept alive by
    pongs; returns it with its keep-alive (both for the caller to close) and its welcome.

    A stalled reader still sends: without the pongs, the server's pings wait unread behind
    the queued events and the reader looks dead (UNI-HB), which is not what a stall tests."""
    raw = RawSocket(deployment)
    try:
        token = deployment.mint(tenant, sub, subscribe=(">",))
        raw.send({"type": "hello", "token": token})
        messages, code = raw.read(deployment.timeout(), until="welcome")
        assert code is None and messages and messages[-1]["type"] == "welcome", (messages, code)
        welcome = messages[-1]
        raw.send({"type": "subscribe", "id": "s", "channel": channel})
        messages, code = raw.read(deployment.timeout(), until="subscribed")
        assert messages and messages[-1]["type"] == "subscribed", (messages, code)
    except BaseException:
        raw.close()
        raise
    every = welcome["heartbeat"]["interval_ms"] / 3000
    return raw, Periodic(lambda: raw.send({"type": "pong"}), every), welcome


class Flood:
    """Publishers rotated across broadcaster connections, never waiting on a dry bucket."""

    def __init__(self, user: User, names: Names, tenant: str) -> None:
        self.user, self.names, self.tenant = user, names, tenant
        self.conns: list[Conn] = []

    def publish(self, channel: str, count: int, size: int) -> list[Frame]:
        acks: list[Frame] = []
        sent = 0
        while sent < count:
            conn = self.user(
                self.tenant, self.names.user(60 + len(self.conns)), subscribe=(), broadcaster=True
            )
            self.conns.append(conn)
            conn.pace = False  # exactly one burst per fresh connection
            assert conn.welcome is not None
            burst = int(conn.welcome["limits"]["publish_rate"]["burst"])
            batch = [
                conn.publish_message(channel, data="x" * size, id=f"q{sent + i}")
                for i in range(min(burst, count - sent))
            ]
            for message in batch:
                conn.send(message)
            for message in batch:
                reply = _reply(conn, message["id"])
                assert reply["type"] == "ack", reply
                acks.append(reply)
            sent += len(batch)
        return acks


@pytest.mark.requirement("UNI-LIM-6", "UNI-LIM-8", "UNI-CLOSE-9", "UNI-DEL-24")
def test_server_closes_slow_consumer_4200_without_delaying_others(
    user: User, deployment: Deployment, names: Names
) -> None:
    tenant, channel = names.tenant(), names.channel()
    raw, keepalive, welcome = stalled_subscriber(deployment, tenant, names.user(0), channel)
    try:
        healthy = user(tenant, names.user(1))
        healthy.subscribe(channel)
        limits = welcome["limits"]
        queue = int(limits["max_queue"])
        size = max(16, min(int(limits["max_message_bytes"]), 65536) - 512)
        buffers = 9 * 512 * 1024  # bound for autotuned socket buffers on both ends
        count = queue + math.ceil(buffers / size) + 16
        if count > 5000:
            pytest.skip(f"{NOT_RUN_PREFIX} filling max_queue {queue} needs {count} publishes")
        acks = Flood(user, names, tenant).publish(channel, count, size)
        last = acks[-1]
        healthy.wait_events(
            lambda e: e["channel"] == channel and e["offset"] == last["offset"],
            timeout=deployment.timeout(5.0),
        )
        assert len(healthy.events(channel)) == count, "the healthy subscriber missed events"
        messages, code = raw.read(deployment.timeout(5.0))
        received = [m for m in messages if m.get("type") == "event"]
        # 1006: the transport ended without a readable close frame. UNI-LIM-9 lets the server
        # abort after its 4200, which discards the close frame behind the unread data.
        assert code in (4200, 1006), (
            f"stalled consumer ended with {code} after {len(received)} of {count} events; "
            f"expected close 4200 once more than max_queue={queue} messages were queued"
        )
        assert len(received) < count
        # UNI-DEL-24: on a channel that does not coalesce, nothing leaves the queue early:
        # what the stalled reader got before the close is an unbroken run of offsets.
        offsets = [m["offset"] for m in received if m.get("channel") == channel]
        if offsets:
            expected = list(range(offsets[0], offsets[0] + len(offsets)))
            assert offsets == expected, f"events removed from the queue: got {offsets[:20]}..."
    finally:
        keepalive.close()
        raw.close()


def _pings_during(stall_s: float, interval_s: float) -> int:
    """The most pings a server may queue during a stall of ``stall_s``: one per heartbeat
    interval, and two for the intervals the stall starts and ends inside."""
    return math.ceil(stall_s / interval_s) + 2


def events_within_queue(queue: int, published: int, elapsed_s: float, interval_s: float) -> int:
    """How many more events fit in ``queue`` after ``published`` took ``elapsed_s``: those
    events and the pings of the whole stall, the rest of it predicted at the pace so far with
    half as much again to spare (a publish slowed by the machine, not by the server)."""
    per_event = elapsed_s / max(1, published)
    more = queue - published
    while more > 0:
        stall = elapsed_s + 1.5 * more * per_event
        if published + more + _pings_during(stall, interval_s) <= queue:
            return more
        more -= 1
    return 0


def _drain_seconds(count: int, size: int) -> float:
    """Time to read back ``count`` queued events of ``size`` octets: it grows with what the
    announced ``max_queue`` lets queue, so a large queue is not judged by a small one's wait."""
    return 5.0 + count / 100 + count * size / 4_000_000


@pytest.mark.requirement("UNI-LIM-6", "UNI-DEL-24", "UNI-DEL-23")
def test_server_keeps_a_stalled_consumer_while_its_queue_is_within_max_queue(
    user: User, deployment: Deployment, names: Names
) -> None:
    tenant, channel = names.tenant(), names.channel()
    raw, keepalive, welcome = stalled_subscriber(deployment, tenant, names.user(0), channel)
    try:
        queue = int(welcome["limits"]["max_queue"])
        count = queue // 2
        if count < 8:
            pytest.skip(f"{NOT_RUN_PREFIX} max_queue {queue} leaves no room beside heartbeats")
        Flood(user, names, tenant).publish(channel, count, 64)
        raw.unstall()
        messages: list[Frame] = []
        code: int | None = None
        deadline = time.monotonic() + deployment.timeout(_drain_seconds(count, 64))
        events: list[Frame] = []
        while len(events) < count and code is None and time.monotonic() < deadline:
            batch, code = raw.read(0.2)
            messages += batch
            events = [m for m in messages if m.get("type") == "event"]
        assert code is None, f"closed with {code} while at most {count} events were queued"
        last = events[-1]["offset"] if events else None
        others = sorted({str(m.get("type")) for m in messages if m.get("type") != "event"})
        assert len(events) == count, (
            f"received {len(events)} of {count} events (the last at offset {last}) and "
            f"{len(messages) - len(events)} other messages {others} before the read-back ended"
        )
        offsets = [e["offset"] for e in events]
        assert offsets == list(range(1, count + 1)), f"UNI-DEL-24: events dropped: {offsets}"
    finally:
        keepalive.close()
        raw.close()


@pytest.mark.requirement("UNI-LIM-6")
def test_server_keeps_a_stalled_consumer_with_max_queue_messages_outstanding(
    user: User, deployment: Deployment, names: Names
) -> None:
    """Large events up to ``max_queue`` messages in all (pings included) while the reader is
    stalled: whatever part of them the transport took, the queue never held more than
    ``max_queue``, so the connection stays open and loses nothing.

    Pings queue beside the events, one per heartbeat interval of the stall, so the events
    are published in two halves: the first half's pace sizes the second."""
    tenant, channel = names.tenant(), names.channel()
    raw, keepalive, welcome = stalled_subscriber(deployment, tenant, names.user(0), channel)
    try:
        limits = welcome["limits"]
        queue = int(limits["max_queue"])
        interval_s = welcome["heartbeat"]["interval_ms"] / 1000
        size = max(16, min(int(limits["max_message_bytes"]), 65536) - 512)
        started = time.monotonic()
        # Room for the pings the server may send while the events are published and read.
        pings = _pings_during(deployment.timeout(2.0), interval_s)
        planned = queue - pings
        if planned < 8 or planned > 5000:
            pytest.skip(f"{NOT_RUN_PREFIX} max_queue {queue} with pings every {interval_s} s")
        flood = Flood(user, names, tenant)
        first = planned // 2
        flood.publish(channel, first, size)
        elapsed = time.monotonic() - started
        second = min(planned - first, events_within_queue(queue, first, elapsed, interval_s))
        flood.publish(channel, second, size)
        count = first + second
        stalled_for = time.monotonic() - started
        raw.unstall()
        messages: list[Frame] = []
        code: int | None = None
        deadline = time.monotonic() + deployment.timeout(_drain_seconds(count, size))
        events: list[Frame] = []
        while len(events) < count and code is None and time.monotonic() < deadline:
            batch, code = raw.read(0.2)
            messages += batch
            events = [m for m in messages if m.get("type") == "event"]
        if code is not None and len(messages) > queue:
            pytest.skip(
                f"{NOT_RUN_PREFIX} {len(messages)} messages were outstanding (more than "
                f"max_queue {queue}) after a {stalled_for:.1f} s stall: the check cannot tell"
            )
        # A slow flood leaves time for more pings than planned, queued behind the events; a
        # server that cleared its queue for them shows none of them, so count them by time.
        pings_meanwhile = _pings_during(stalled_for, interval_s)
        if code == 4200 and count + pings_meanwhile > queue:
            pytest.skip(
                f"{NOT_RUN_PREFIX} publishing took {stalled_for:.1f} s, room for "
                f"{pings_meanwhile} pings besides {count} events: more than max_queue {queue} "
                "may have been outstanding, so the check cannot tell"
            )
        assert code is None, (
            f"UNI-LIM-6: closed with {code} while at most {len(messages)} messages were "
            f"outstanding (max_queue {queue}); {len(events)} of {count} events arrived, "
            f"published in {stalled_for:.1f} s"
        )
        assert [e["offset"] for e in events] == list(range(1, count + 1))
    finally:
        keepalive.close()
        raw.close()
