"""Raw WebSocket frames, built byte by byte, for frame-level fuzzing (RFC 6455 section 5).

No WebSocket library sits between these cases and the server: fragments split anywhere,
control frames between fragments, reserved bits and opcodes, lying length headers and
unmasked client frames all reach the server as written.
"""

from __future__ import annotations

import base64
import itertools
import os
import random
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from unisock._version import PROTOCOL_TOKEN

__all__ = ["Case", "RawSocket", "build", "deterministic_cases", "random_case"]

TEXT, CONT, BINARY, CLOSE, PING, PONG = 0x1, 0x0, 0x2, 0x8, 0x9, 0xA


def build(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
) -> bytes:
    """One frame; ``length`` overrides the header's length (a lie the payload does not match)."""
    size = len(payload) if length is None else length
    head = bytearray([(0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0xF)])
    bit = 0x80 if mask else 0
    if size < 126:
        head.append(bit | size)
    elif size < 1 << 16:
        head.append(bit | 126)
        head += struct.pack("!H", size)
    else:
        head.append(bit | 127)
        head += struct.pack("!Q", size)
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    return bytes(head) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawSocket:
    """A client socket after the opening handshake, reading unmasked server frames."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {PROTOCOL_TOKEN}\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            assert chunk, "the server closed during the handshake"
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head[:100]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("eof")
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def frames(self) -> Iterator[tuple[int, bytes]]:
        """(opcode, payload) of each server frame until EOF (unfragmented: the server sends
        whole messages); raises ``TimeoutError`` when nothing comes within the timeout."""
        while True:
            try:
                first, second = self._take(2)
            except ConnectionError:
                return
            size = second & 0x7F
            if size == 126:
                (size,) = struct.unpack("!H", self._take(2))
            elif size == 127:
                (size,) = struct.unpack("!Q", self._take(8))
            assert not second & 0x80, "the server masked a frame (RFC 6455 5.1)"
            assert first & 0x80, "the server fragmented a message"
            yield first & 0x0F, self._take(size)

    def close(self) -> None:
        self.sock.close()


@dataclass(frozen=True)
class Case:
    """Bytes to send after ``welcome`` and what the server must do with them.

    ``closes``: the set of acceptable close codes, or None when the connection must stay
    open and answer the fence (a ping with id ``fence``) that follows.
    """

    name: str
    data: bytes
    closes: frozenset[int] | None
    pong: bytes | None = None  # a WebSocket pong payload expected before the fence


FENCE = b'{"type":"ping","id":"fence","nonce":"caf\xc3\xa9"}'
_1002 = frozenset({1002})


def _fragments(message: bytes, cuts: list[int]) -> bytes:
    bounds = [0, *cuts, len(message)]
    parts = [message[a:b] for a, b in itertools.pairwise(bounds)]
    out = b""
    for index, part in enumerate(parts):
        out += build(TEXT if index == 0 else CONT, part, fin=index == len(parts) - 1)
    return out


def deterministic_cases(max_message_bytes: int) -> Iterator[Case]:
    """Every boundary and every rule of RFC 6455 framing the server must enforce."""
    for cut in range(1, len(FENCE)):
        yield Case(f"split-at-{cut}", _fragments(FENCE, [cut]), None)
    yield Case("byte-per-fragment", _fragments(FENCE, list(range(1, len(FENCE)))), None)
    yield Case("empty-fragments", _fragments(FENCE, [0, 0, 5, 5, len(FENCE)]), None)
    half = len(FENCE) // 2
    for opcode, name in ((PING, "ping"), (PONG, "pong")):
        data = (
            build(TEXT, FENCE[:half], fin=False) + build(opcode, b"hi") + build(CONT, FENCE[half:])
        )
        yield Case(f"{name}-between-fragments", data, None, b"hi" if opcode == PING else None)
    yield Case(
        "close-between-fragments",
        build(TEXT, FENCE[:half], fin=False) + build(CLOSE, struct.pack("!H", 1000)),
        frozenset({1000, 1002}),  # RFC 6455 allows it; the library may refuse the torn message
    )
    accent = FENCE.index(b"\xc3")
    yield Case("utf8-split-inside-a-character", _fragments(FENCE, [accent + 1]), None)
    bad = b'{"type":"ping","nonce":"\xc3'
    yield Case(
        "invalid-utf8-across-fragments",
        build(TEXT, bad, fin=False) + build(CONT, b'("}'),
        frozenset({1007}),
    )
    yield Case(
        "invalid-utf8-whole",
        build(TEXT, b'{"type":"ping","nonce":"\xed\xa0\x80"}'),
        frozenset({1007}),
    )
    for rsv in range(1, 8):
        yield Case(f"rsv-{rsv}", build(TEXT, FENCE, rsv=rsv), _1002)
    for opcode in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF):
        yield Case(f"opcode-{opcode:x}", build(opcode, b"x"), _1002)
    yield Case("unmasked", build(TEXT, FENCE, mask=False), _1002)
    yield Case("continuation-first", build(CONT, FENCE), _1002)
    yield Case(
        "text-inside-fragmented",
        build(TEXT, FENCE[:5], fin=False) + build(TEXT, FENCE),
        _1002,
    )
    yield Case("fragmented-ping", build(PING, b"x", fin=False) + build(CONT, b"y"), _1002)
    yield Case("ping-126-octets", build(PING, b"p" * 126), _1002)
    yield Case("binary", build(BINARY, b"\x00\x01"), frozenset({1003}))
    yield Case("length-over-max", build(TEXT, b"", length=max_message_bytes + 1), frozenset({1009}))
    yield Case("length-2^63-1", build(TEXT, b"", length=2**63 - 1), frozenset({1009}))
    yield Case(
        "fragments-over-max",
        _fragments(b"x" * (max_message_bytes + 1), list(range(4096, max_message_bytes, 4096))),
        frozenset({1009}),
    )
    for code in (0, 999, 1004, 1005, 1006, 1015, 2999, 5000):
        yield Case(f"close-code-{code}", build(CLOSE, struct.pack("!H", code)), _1002)
    yield Case("close-one-octet", build(CLOSE, b"\x03"), _1002)
    yield Case(
        "close-invalid-utf8-reason",
        build(CLOSE, struct.pack("!H", 1000) + b"\xff"),
        frozenset({1007}),
    )


def random_case(rng: random.Random) -> Case:
    """A valid frame sequence with random bytes flipped, dropped or inserted: any outcome but
    a defect is allowed (an answer, a registry close, or a wait for bytes that never come)."""
    cuts = sorted(rng.sample(range(1, len(FENCE)), rng.randint(0, 3)))
    data = bytearray(_fragments(FENCE, cuts))
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(data))
        edit = rng.random()
        if edit < 0.5:
            data[at] ^= 1 << rng.randrange(8)
        elif edit < 0.75:
            del data[at]
        else:
            data.insert(at, rng.randrange(256))
    return Case("random", bytes(data), frozenset(range(1000, 5000)))
