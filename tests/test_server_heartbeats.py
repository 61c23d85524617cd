"""Application-level heartbeats over real sockets (spec section 8, UNI-HB)."""

from __future__ import annotations

import time

from server_harness import LIMIT, asynctest, running_server, token

TOLERANCE = 0.02
"""Timer and clock granularity allowed below a lower bound, in seconds."""


@asynctest
async def test_server_pings_every_interval_from_welcome_regardless_of_traffic() -> None:
    """UNI-HB-1: ping k arrives no earlier than k * interval_ms after welcome."""
    async with running_server(heartbeat_interval_ms=120, heartbeat_timeout_ms=2_000) as h:
        client = await h.open()
        started = time.monotonic()
        welcome = await client.hello(token())
        assert welcome["heartbeat"] == {"interval_ms": 120, "timeout_ms": 2_000}
        await client.subscribe("tasks.1")
        arrivals = await client.pong_pings(4)
        for k, arrived in enumerate(arrivals, start=1):
            assert arrived - started >= k * 0.120 - TOLERANCE
            assert arrived - started < k * 0.120 + LIMIT


@asynctest
async def test_server_answers_client_ping_with_pong_echoing_nonce_and_id() -> None:
    """UNI-HB-2: pong echoes nonce and id; a ping without either gets a bare pong."""
    async with running_server() as h:
        client = await h.connect()
        await client.send({"type": "ping", "id": "rtt-3", "nonce": "1764120000456"})
        pong = await client.expect_next("pong")
        assert dict(pong) == {"type": "pong", "id": "rtt-3", "nonce": "1764120000456"}
        await client.send({"type": "ping"})
        assert dict(await client.expect_next("pong")) == {"type": "pong"}


@asynctest
async def test_server_closes_silent_connection_with_4201_after_interval_plus_timeout() -> None:
    """UNI-HB-3, UNI-HB-5: no message for interval + timeout -> 4201 heartbeat_timeout."""
    async with running_server(heartbeat_interval_ms=100, heartbeat_timeout_ms=100) as h:
        client = await h.open()
        await client.hello(token())
        silent_since = time.monotonic()
        closed = await client.expect_close()
        assert (closed.code, closed.reason) == (4201, "heartbeat_timeout")
        assert time.monotonic() - silent_since >= 0.2 - TOLERANCE
        assert {f["type"] for f in closed.frames} <= {"ping"}


@asynctest
async def test_server_keeps_a_connection_that_answers_pings() -> None:
    """UNI-HB-4: a client answering every ping outlives many silence bounds."""
    async with running_server(heartbeat_interval_ms=80, heartbeat_timeout_ms=80) as h:
        client = await h.connect()
        arrivals = await client.pong_pings(8)
        assert arrivals[-1] - arrivals[0] >= 7 * 0.080 - TOLERANCE  # > 3 silence bounds
        assert await client.fence() == []


@asynctest
async def test_server_counts_any_message_even_invalid_as_liveness() -> None:
    """UNI-HB-4: invalid or unsolicited messages also reset the silence timer."""
    async with running_server(heartbeat_interval_ms=80, heartbeat_timeout_ms=80) as h:
        client = await h.connect()
        for _ in range(6):
            await client.expect("ping")
            await client.send_raw("not json")
            await client.expect_next("error", code="invalid_json")
        assert await client.fence() == []


@asynctest
async def test_server_ignores_unsolicited_pong_without_error() -> None:
    """UNI-HB-6: a pong answering no ping gets no reply."""
    async with running_server() as h:
        client = await h.connect()
        await client.send({"type": "pong", "nonce": "never-sent", "id": "x1"})
        await client.send({"type": "pong"})
        assert await client.fence() == []
