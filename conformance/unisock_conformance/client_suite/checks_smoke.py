"""Smoke tier: is the adapter usable, and does the client do the basics?

These run first. When the adapter breaks its protocol here the run stops with "adapter
broken" (exit status 3) instead of reporting client failures that are the adapter's fault.
"""

from __future__ import annotations

import asyncio

from unisock_conformance.client_suite.framework import Context, check


@check("UNI-ADP-3", "UNI-ADP-4", "UNI-ADP-5", "UNI-ADP-13", tier="smoke")
async def check_adapter_speaks_the_protocol(ctx: Context) -> None:
    """The adapter answers hello, skips unknown commands and serves requests concurrently."""
    adapter = ctx.adapter
    hello = adapter.hello_result or {}
    for field in ("adapter", "client", "commands"):
        assert field in hello, f"the hello result lacks {field!r}: {hello}"
    reply = await adapter.request("hello", timeout=ctx.timeout, protocol=99)
    assert reply.get("outcome") == "errored", f"hello for protocol 99 was answered {reply}"
    assert reply["error"].get("kind") == "unsupported_protocol", reply
    reply = await adapter.request("x_future_command", timeout=ctx.timeout, x_extra=True)
    assert reply.get("outcome") == "skipped", f"an unknown command was answered {reply}"
    # A request waiting on the client must not hold up the next one (UNI-ADP-4).
    ctx.token = ctx.harness.mint()
    pending = adapter.send(
        "connect", url=ctx.harness.url, token=ctx.token, timeout_ms=int(ctx.timeout * 1000)
    )
    conn = await ctx.harness.hello(0, ctx.timeout)
    assert conn is not None, "the client did not connect"
    replies = await asyncio.gather(
        *(adapter.request("positions", timeout=ctx.timeout, x_unknown_field=1) for _ in range(3))
    )
    assert all(r.get("outcome") in ("result", "skipped") for r in replies), replies
    assert not pending.done(), "connect completed before the harness sent welcome"
    await conn.send_welcome()
    adapter.outcome("connect", await asyncio.wait_for(pending, ctx.timeout))


@check("UNI-SESS-4", "UNI-ADP-7", tier="smoke")
async def check_client_connects_subscribes_and_receives(ctx: Context) -> None:
    """The client connects, subscribes twice over one connection and reports events."""
    conn = await ctx.connect()
    first = await ctx.call("subscribe", channel="tasks.42")
    assert first.get("channel") == "tasks.42", first
    await ctx.call("subscribe", channel="jobs.>")
    sent = [
        await conn.event("tasks.42", "e-1", 1, event="task.updated", attrs={"priority": 2}),
        await conn.event("jobs.a", "e-7", 3, data={"nested": [1, {"x": None}]}),
    ]
    got = await ctx.adapter.notification(
        "event", ctx.timeout, where=lambda n: n["channel"] == "jobs.a"
    )
    assert got is not None, (
        f"events were not reported; notifications: {ctx.adapter.of_kind('event')}"
    )
    events = ctx.adapter.events()
    assert len(events) == 2, f"expected 2 events, got {events}"
    for frame, note in zip(sent, events, strict=True):
        for key in ("channel", "epoch", "offset", "event", "data", "message_id", "ts"):
            assert note.get(key) == frame[key], (
                f"{key}: sent {frame[key]!r}, reported {note.get(key)!r}"
            )
    assert len(ctx.harness.connections) == 1, "the client opened more than one connection"
    await ctx.call("close")
    assert await conn.ended(ctx.timeout), "close did not end the connection"
