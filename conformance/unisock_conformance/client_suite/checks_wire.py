"""Frames the client must tolerate or refuse (sections 1, 8 and 12)."""

from __future__ import annotations

import asyncio

from unisock_conformance.client_suite.framework import Context, check


@check("UNI-TR-8", "UNI-LC-14", "UNI-TR-22", "UNI-HB-15")
async def check_client_tolerates_unknown_and_unsolicited_messages(ctx: Context) -> None:
    """A newer minor version's welcome, unknown types and stray pongs change nothing."""
    conn = await ctx.connect(
        welcome={
            "spec_version": "1.9.4",
            "features": ["coalescing", "x_future_feature"],
            "x_extension": {"a": 1},
        }
    )
    await ctx.call("subscribe", channel="tasks.42")
    conn.behaviour.auto_ack = False
    publish = ctx.adapter.send("publish", channel="tasks.42", event="task.updated", data={})
    frame = await conn.frame("publish", ctx.timeout)
    assert frame is not None, "the publish was not sent"
    await conn.send({"type": "presence", "id": "x1", "who": ["bob"]})
    await conn.send({"type": "pong", "nonce": "never-sent"})
    await conn.send({"type": "error", "code": "internal_error", "message": "no id"})
    await conn.send(
        {"type": "error", "id": "zz-no-such-request", "code": "x_future_code", "message": "unknown"}
    )
    await conn.event("tasks.42", "e-1", 1, x_future_field={"k": [1]})
    with ctx.part("unknown_fields_are_ignored", "UNI-TR-21"):
        note = await ctx.adapter.notification("event", ctx.timeout)
        assert note is not None, "an event with an unknown member was not reported"
    await conn.send(ctx.harness.ack_for(frame))
    with ctx.part("error_without_id_resolves_nothing", "UNI-ERR-12"):
        reply = await asyncio.wait_for(asyncio.shield(publish), ctx.timeout)
        assert reply.get("outcome") == "result", (
            f"an error without this publish's id ended it: {reply}"
        )
    assert conn.open, f"the client closed the connection: {conn.client_close}"
    assert len(ctx.harness.connections) == 1, "the client reconnected"


# The second code of each pair is what a browser can produce (spec 1.4, UNI-TR-12/14).
BINARY_CLOSE_CODES = (1003, 4000)
INVALID_UTF8_CLOSE_CODES = (1007, 1002)


@check("UNI-TR-12")
async def check_client_closes_with_1003_on_a_binary_frame(ctx: Context) -> None:
    """A binary frame from the server makes the client close with 1003 (4000 in browsers)."""
    conn = await ctx.connect()
    await conn.send_bytes(b"\x00\x01binary")
    assert await conn.ended(ctx.timeout), "the client kept the connection open"
    assert conn.client_close is not None and conn.client_close[0] in BINARY_CLOSE_CODES, (
        f"the client closed with {conn.client_close} (ended by {conn.ended_by})"
    )


@check("UNI-TR-14")
async def check_client_closes_with_1007_on_invalid_utf8(ctx: Context) -> None:
    """A text frame that is not UTF-8 makes the client close with 1007 (1002 in browsers)."""
    conn = await ctx.connect()
    await conn.send_bytes(b'{"type":"\xff\xfe"}', text=True)
    assert await conn.ended(ctx.timeout), "the client kept the connection open"
    assert conn.client_close is not None and conn.client_close[0] in INVALID_UTF8_CLOSE_CODES, (
        f"the client closed with {conn.client_close} (ended by {conn.ended_by})"
    )


@check("UNI-HB-8")
async def check_client_answers_every_ping(ctx: Context) -> None:
    """Each ping is answered by a pong echoing its nonce and id within timeout_ms."""
    conn = await ctx.connect(welcome={"heartbeat": {"interval_ms": 5000, "timeout_ms": 1000}})
    pings = [
        {"type": "ping", "nonce": "n-1", "id": "hp1"},
        {"type": "ping", "nonce": "n-2"},
        {"type": "ping", "id": "hp3"},
        {"type": "ping"},
    ]
    for index, ping in enumerate(pings):
        start = len(conn.frames)
        await conn.send(ping)
        pong = await conn.frame("pong", ctx.seconds(1000) + 0.1, start=start)
        assert pong is not None, f"no pong within timeout_ms for {ping}"
        for key in ("nonce", "id"):
            assert pong.get(key) == ping.get(key), f"ping {index}: {key} {pong.get(key)!r}"
