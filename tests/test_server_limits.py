"""Limits over real sockets: size, queue, slow consumers (spec section 11, UNI-LIM)."""

from __future__ import annotations

import json
import logging

import pytest

from server_harness import asynctest, running_server, token

FAST = {"publish_rate_burst": 100_000, "publish_rate_per_second": 100_000}


def padded_ping(size: int) -> str:
    """A ping of exactly ``size`` UTF-8 octets (padding in an ignored member)."""
    base = json.dumps({"type": "ping", "nonce": "n", "pad": ""})
    return base[:-2] + "x" * (size - len(base)) + '"}'


@asynctest
async def test_server_processes_message_of_exactly_max_bytes_and_closes_one_more() -> None:
    """UNI-LIM-1: exactly max_message_bytes is processed; one octet more closes with 1009."""
    async with running_server(max_message_bytes=2048) as h:
        client = await h.connect()
        exact = padded_ping(2048)
        assert len(exact.encode()) == 2048
        await client.send_raw(exact)
        await client.expect_next("pong", nonce="n")
        await client.send_raw(padded_ping(2049))
        assert (await client.expect_close()).code == 1009


@asynctest
async def test_server_counts_octets_not_characters() -> None:
    """UNI-LIM-1: the size is the UTF-8 length: 700 three-octet characters exceed 2048."""
    async with running_server(max_message_bytes=2048) as h:
        client = await h.connect()
        await client.send({"type": "ping", "nonce": "n", "pad": "€" * 700})
        assert (await client.expect_close()).code == 1009


@asynctest
async def test_server_applies_max_message_bytes_to_hello() -> None:
    """UNI-LIM-2: an oversize hello closes with 1009 before authentication."""
    async with running_server(max_message_bytes=1024) as h:
        client = await h.open()
        await client.send({"type": "hello", "token": token(), "client": {"name": "x" * 2000}})
        closed = await client.expect_close()
        assert closed.code == 1009
        assert closed.frames == []


@asynctest
async def test_server_cuts_slow_consumer_with_4200_without_stalling_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """UNI-LIM-6, UNI-LIM-8, UNI-DEL-24, UNI-SEC-13: a reader that stops reading is cut.

    The healthy subscribers receive every event, in order, while the stalled reader's queue
    overflows max_queue; the server reports the cut in its metrics, keeps running without
    errors, and the stalled reader finds the 4200 close once it reads again.
    """
    caplog.set_level(logging.WARNING)
    async with running_server(max_queue=8, **FAST) as h:
        pub = await h.connect(token(sub="pub"))
        healthy = []
        for sub in ("bob", "carol", "dave"):
            conn = await h.connect(token(sub=sub))
            await conn.subscribe("tasks.>")
            healthy.append(conn)
        stalled = await h.open_stalled(token(sub="erin"))
        await stalled.subscribe("tasks.>")
        blob = "x" * 16_000
        published = 0
        while await h.metric("unisock_slow_consumer_closes_total") < 1:
            published += 1
            await pub.publish("tasks.1", {"n": published, "blob": blob})
            assert published < 2_000, "the stalled reader was never cut"
        for _ in range(5):
            published += 1
            await pub.publish("tasks.1", {"n": published, "blob": blob})
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == [], [r.getMessage() for r in errors]
        for conn in healthy:
            events = await conn.events(published)
            assert [e["offset"] for e in events] == list(range(1, published + 1))
        assert await h.metric("unisock_closes_total", code="4200") == 1
        closed = await stalled.expect_close()
        assert (closed.code, closed.reason) == (4200, "slow_consumer")
        offsets = [f["offset"] for f in closed.frames if f.get("type") == "event"]
        assert offsets == sorted(offsets)
        assert len(offsets) < published
        assert await healthy[0].fence() == []


@asynctest
async def test_server_announces_and_enforces_limits_from_one_configuration() -> None:
    """UNI-LC-12: the limits in welcome are the ones enforced (subscriptions, targets)."""
    async with running_server(max_subscriptions=2, max_targets=1) as h:
        client = await h.connect()
        limits = client.welcome["limits"]  # type: ignore[attr-defined]
        assert (limits["max_subscriptions"], limits["max_targets"]) == (2, 1)
        await client.subscribe("tasks.1")
        await client.subscribe("tasks.2")
        await client.error({"type": "subscribe", "channel": "tasks.3"}, "subscription_limit")
        reply = await client.publish_raw("tasks.1", 1, to=["a", "b"])
        assert reply["code"] == "invalid_message"
