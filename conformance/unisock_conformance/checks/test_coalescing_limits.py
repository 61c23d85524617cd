"""Coalescing and the outbound queue (spec 11.5, UNI-LIM-7): a replaced event leaves the queue.

A stalled reader on a coalescing channel is sent far more events than its socket buffers and
``max_queue`` together can hold, all with a few keys. Without coalescing the queue would
overflow and the server would close with 4200 (UNI-LIM-6); with coalescing counted as one
queued message, the queue holds at most one event per key and the reader is never cut.
The suite cannot know which channels coalesce: the operator names one
(``--coalescing-channel``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import pytest

from unisock_conformance.checks.conftest import User
from unisock_conformance.checks.test_limits import stalled_subscriber
from unisock_conformance.deployment import NOT_RUN_PREFIX, Deployment, Names
from unisock_conformance.wire import Conn

Frame = dict[str, Any]
# Few keys: the coalesced queue stays far below any max_queue.
KEYS = 4
# Bound for autotuned socket buffers on both ends (as the UNI-LIM-6 check assumes).
SOCKET_BUFFERS = 9 * 512 * 1024
MAX_PUBLISHES = 5000


@dataclass
class KeyedFlood:
    """What a stalled reader received after a flood of keyed events."""

    acks: list[Frame]
    frames: list[Frame]
    code: int | None

    @property
    def events(self) -> list[Frame]:
        return [frame for frame in self.frames if frame.get("type") == "event"]

    @property
    def coalesced(self) -> list[Frame]:
        return [frame for frame in self.events if frame.get("coalesced")]

    def unaccounted(self) -> list[int]:
        """Acknowledged offsets neither received nor listed in a ``coalesced`` field."""
        seen = {int(frame["offset"]) for frame in self.events}
        for frame in self.coalesced:
            seen.update(int(offset) for offset in frame["coalesced"])
        return sorted(int(ack["offset"]) for ack in self.acks if int(ack["offset"]) not in seen)


def flood_stalled_reader(
    user: User, deployment: Deployment, names: Names, channel: str, *, keys: int = KEYS
) -> KeyedFlood:
    """Publish enough keyed events to overflow a stalled reader's queue many times over."""
    tenant = names.tenant()
    raw, keepalive, welcome = stalled_subscriber(deployment, tenant, names.user(0), channel)
    try:
        limits = welcome["limits"]
        size = max(16, min(int(limits["max_message_bytes"]), 65536) - 512)
        count = int(limits["max_queue"]) + math.ceil(SOCKET_BUFFERS / size) + 16
        if count > MAX_PUBLISHES:
            pytest.skip(f"{NOT_RUN_PREFIX} overflowing max_queue needs {count} publishes")
        acks = _publish_keyed(user, names, tenant, channel, count, size, keys)
        last = {ack["offset"] for ack in acks[-keys:]}
        raw.unstall()
        frames: list[Frame] = []
        code = None
        deadline = time.monotonic() + deployment.timeout()
        while code is None and time.monotonic() < deadline:
            batch, code = raw.read(0.2)
            frames += batch
            if last <= {frame.get("offset") for frame in frames if frame.get("type") == "event"}:
                break
        return KeyedFlood(acks, frames, code)
    finally:
        keepalive.close()
        raw.close()


def _publish_keyed(
    user: User, names: Names, tenant: str, channel: str, count: int, size: int, keys: int
) -> list[Frame]:
    """Publishes rotated over broadcaster connections so no rate limit is ever waited for."""
    acks: list[Frame] = []
    publishers = 0
    while len(acks) < count:
        conn = user(tenant, names.user(100 + publishers), subscribe=(), broadcaster=True)
        publishers += 1
        conn.pace = False  # exactly one burst per fresh connection
        assert conn.welcome is not None
        burst = int(conn.welcome["limits"]["publish_rate"]["burst"])
        batch = [
            conn.publish_message(
                channel,
                "state.changed",
                {"i": index, "pad": "x" * size},
                key=f"k{index % keys}",
                id=f"q{index}",
            )
            for index in range(len(acks), min(count, len(acks) + burst))
        ]
        for message in batch:
            conn.send(message)
        for message in batch:
            reply = _reply(conn, str(message["id"]))
            assert reply["type"] == "ack", reply
            acks.append(reply)
        conn.close()
    return acks


def _reply(conn: Conn, ident: str) -> Frame:
    return conn.expect(None, where=lambda frame: frame.get("id") == ident)


@pytest.mark.requirement("UNI-LIM-7")
@pytest.mark.feature("coalescing")
def test_server_keeps_a_stalled_reader_whose_queued_events_coalesce_by_key(
    user: User, deployment: Deployment, names: Names, coalescing_channel: str
) -> None:
    flood = flood_stalled_reader(user, deployment, names, coalescing_channel)
    assert flood.code is None, (
        f"the stalled reader was closed with {flood.code} after {len(flood.events)} frames, "
        f"although only {KEYS} distinct keys were queued on coalescing channel "
        f"{coalescing_channel!r}: replaced events must leave the queue"
    )
    missing = flood.unaccounted()
    assert missing == [], f"offsets neither delivered nor listed as coalesced: {missing[:20]}"
    if not flood.coalesced:
        pytest.skip(
            f"{NOT_RUN_PREFIX} every event reached the reader uncoalesced: its queue never "
            "held two events of one key"
        )
