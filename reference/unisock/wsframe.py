"""Pre-built WebSocket frames: encode an event once, write the same bytes to every recipient.

Server-to-client frames are unmasked (RFC 6455 section 5.1) and, with compression off,
identical for every recipient of an event; building the frame once per fan-out and writing it
to each transport is the cheapest correct delivery (brief, section 3: encode once).
"""

from __future__ import annotations

import struct

_FIN_TEXT = 0x81  # FIN bit + opcode 0x1 (text)


def text_frame(payload: bytes) -> bytes:
    """One complete, unfragmented, unmasked text frame carrying ``payload`` (UTF-8)."""
    length = len(payload)
    if length < 126:
        header = bytes((_FIN_TEXT, length))
    elif length < 1 << 16:
        header = struct.pack("!BBH", _FIN_TEXT, 126, length)
    else:
        header = struct.pack("!BBQ", _FIN_TEXT, 127, length)
    return header + payload
