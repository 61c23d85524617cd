"""Close codes and drain over real sockets (spec section 9, UNI-CLOSE)."""

from __future__ import annotations

import asyncio
import re
import time

from server_harness import LIMIT, asynctest, running_server, token

REASON = re.compile(
    r"^[a-z][a-z0-9_]*(;(retry_after_ms|window_ms)=(0|[1-9][0-9]{0,15}))*$"
)  # the ABNF of section 9.3 (each parameter at most once is checked separately)


def reason_ok(reason: str, name: str) -> bool:
    """UNI-CLOSE-9: grammar, at most 123 octets, starts with the registry name."""
    return (
        bool(REASON.match(reason))
        and len(reason.encode()) <= 123
        and reason.split(";", 1)[0] == name
    )


@asynctest
async def test_server_closes_oversize_message_with_registry_reason() -> None:
    """UNI-CLOSE-9, UNI-LIM-1: 1009 carries the reason message_too_big."""
    async with running_server(max_message_bytes=1024) as h:
        client = await h.connect()
        await client.send_raw("x" * 1025)
        closed = await client.expect_close()
        assert closed.code == 1009
        assert reason_ok(closed.reason, "message_too_big"), closed.reason


@asynctest
async def test_server_closes_invalid_utf8_with_registry_reason() -> None:
    """UNI-CLOSE-9, UNI-TR-13: 1007 carries the reason invalid_payload."""
    async with running_server() as h:
        client = await h.connect()
        await client.send_raw(b"\xc3\x28", text=True)
        closed = await client.expect_close()
        assert closed.code == 1007
        assert reason_ok(closed.reason, "invalid_payload"), closed.reason


@asynctest
async def test_server_close_reasons_follow_the_grammar() -> None:
    """UNI-CLOSE-9: protocol, auth and timeout closes carry registry names."""
    async with running_server(auth_timeout_ms=100) as h:
        cases = []
        a = await h.open()
        await a.send_raw("nope")
        cases.append((await a.expect_close(), 4000, "protocol_violation"))
        b = await h.open()
        await b.send({"type": "hello", "token": token(ttl_s=1, now=time.time() - 10)})
        cases.append((await b.expect_close(), 4100, "auth_failed"))
        c = await h.open()
        cases.append((await c.expect_close(), 4102, "auth_timeout"))
        d = await h.connect()
        await d.send_raw(b"\x01")
        cases.append((await d.expect_close(), 1003, "unsupported_data"))
        for closed, code, name in cases:
            assert closed.code == code
            assert reason_ok(closed.reason, name), closed.reason


@asynctest
async def test_server_drain_announces_window_keeps_serving_and_closes_with_4300() -> None:
    """UNI-LC-17, UNI-LC-18, UNI-CLOSE-19..21: drain once, serve during the window, then 4300."""
    async with running_server() as h:
        alice = await h.connect()
        await alice.subscribe("tasks.1")
        bob = await h.connect(token(sub="bob"))
        started = time.monotonic()
        drain = asyncio.create_task(h.server.drain(400))
        message = await alice.expect_next("drain", window_ms=400)
        assert "id" not in message
        await bob.expect_next("drain", window_ms=400)
        second = asyncio.create_task(h.server.drain(400))  # at most one drain per connection
        ack = await bob.publish("tasks.1", "during drain")
        [event] = await alice.events(1)
        assert (event["data"], event["offset"]) == ("during drain", ack["offset"])
        await alice.subscribe("tasks.2")
        closed = await alice.expect_close()
        assert closed.code == 4300
        assert reason_ok(closed.reason, "drain"), closed.reason
        assert time.monotonic() - started >= 0.4 - 0.02
        assert [f["type"] for f in closed.frames if f["type"] == "drain"] == []
        assert (await bob.expect_close()).code == 4300
        await asyncio.wait_for(asyncio.gather(drain, second), LIMIT)


@asynctest
async def test_server_drain_closes_unauthenticated_connection_with_4300() -> None:
    """Section 2.1: a drain in awaiting_hello closes with 4300; nothing but a close is sent."""
    async with running_server() as h:
        waiting = await h.open()
        await h.connect()  # keeps the server busy so drain does not return at once
        drain = asyncio.create_task(h.server.drain(100))
        closed = await waiting.expect_close()
        assert closed.code == 4300
        assert closed.frames == []
        await asyncio.wait_for(drain, LIMIT)
