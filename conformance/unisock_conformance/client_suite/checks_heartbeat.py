"""Dead-server detection (section 8): a stalled server is noticed within the silence bound,
a live one never is, and each connection uses its own welcome's values."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from unisock_conformance.client_suite.checks_reconnect import SHORT, quiet_ms, settle
from unisock_conformance.client_suite.framework import Context, check


@check("UNI-HB-9", "UNI-HB-11")
async def check_client_detects_a_silent_server_within_the_bound(ctx: Context) -> None:
    """A half-open connection is dropped within interval_ms + timeout_ms, then resumed."""
    ctx.harness.profile = {"backoff": SHORT}
    conn = await ctx.connect(welcome={"heartbeat": {"interval_ms": 2000, "timeout_ms": 2000}})
    await ctx.call("subscribe", channel="tasks.42")
    await conn.close(1011, "internal_error")
    conn_2 = await ctx.reconnect(conn, quiet_ms(ctx, SHORT))
    assert conn_2 is not None, "no reconnection after 1011"
    interval, timeout = 300, 200
    bound = interval + timeout
    await settle(ctx, conn_2, heartbeat={"interval_ms": interval, "timeout_ms": timeout})
    conn_2.stall()
    last = conn_2.last_sent_at
    assert last is not None
    limit = ctx.tol.high(bound)
    assert await conn_2.ended(ctx.seconds(limit) + 0.05) and conn_2.ended_by == "client", (
        f"the client did not drop a silent connection within {limit:.0f} ms "
        f"(bound {bound} ms of this connection's welcome)"
    )
    assert conn_2.ended_at is not None
    silent_for = (conn_2.ended_at - last) * 1000
    assert silent_for >= ctx.tol.low(bound), (
        f"the client gave up after {silent_for:.0f} ms of silence, before {bound} ms"
    )
    assert silent_for <= limit, f"the client needed {silent_for:.0f} ms (bound {bound} ms)"
    conn_3 = await ctx.reconnect(conn_2, quiet_ms(ctx, SHORT))
    assert conn_3 is not None, "the client did not reconnect after detecting a dead server"


@check("UNI-HB-10", "UNI-HB-11")
async def check_client_keeps_a_connection_that_pings(ctx: Context) -> None:
    """Pings every interval_ms keep the connection, also after a welcome with longer values."""
    ctx.harness.profile = {"backoff": SHORT}
    conn = await ctx.connect(welcome={"heartbeat": {"interval_ms": 100, "timeout_ms": 100}})
    await ctx.call("subscribe", channel="tasks.42")
    await conn.close(1011, "internal_error")
    conn_2 = await ctx.reconnect(conn, quiet_ms(ctx, SHORT))
    assert conn_2 is not None, "no reconnection after 1011"
    await settle(ctx, conn_2, heartbeat={"interval_ms": 400, "timeout_ms": 400})
    # Three silence bounds of the first welcome and more than one of this one's interval.
    dropped = await conn_2.ended(ctx.seconds(1300))
    assert not dropped, (
        f"the client dropped a connection that pinged every 400 ms (ended by "
        f"{conn_2.ended_by}, close {conn_2.client_close})"
    )


@check("UNI-HB-10", "UNI-HB-9")
async def check_any_message_renews_the_silence_deadline(ctx: Context) -> None:
    """Without pings, every kind of message renews the deadline; silence then ends it.

    A message comes every 0.6 silence bounds (longer than interval_ms): a client counting
    only pings, counting from welcome, using interval_ms alone or leaving out any one kind
    of message reaches the bound before the next one, or drops too early at the end.
    """
    ctx.harness.profile = {"backoff": SHORT}
    ctx.harness.behaviour.pings = False
    interval, timeout = round(400 * ctx.tol.scale), round(600 * ctx.tol.scale)
    bound = interval + timeout
    heartbeat = {"interval_ms": interval, "timeout_ms": timeout}
    conn = await ctx.connect(welcome={"heartbeat": heartbeat})
    await ctx.call("subscribe", channel="tasks.42")
    offsets = itertools.count(2)
    kinds: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("an event", lambda: conn.event("tasks.42", "e-1", next(offsets))),
        ("a duplicate event", lambda: conn.event("tasks.42", "e-1", 1)),
        ("an event of no subscription", lambda: conn.event("other.7", "e-1", 1)),
        ("a message of an unknown type", lambda: conn.send({"type": "x_future_notice"})),
        ("an unsolicited pong", lambda: conn.send({"type": "pong", "nonce": "never-sent"})),
        (
            "an error without id",
            lambda: conn.send({"type": "error", "code": "x_future_code", "message": "m"}),
        ),
    ]
    loop = asyncio.get_running_loop()
    start = loop.time()
    step = 0.6 * bound / 1000
    previous = "welcome"
    for index, (name, send) in enumerate(kinds):
        await asyncio.sleep(max(0.0, start + index * step - loop.time()))
        assert conn.open, (
            f"the client dropped the connection {0.6 * bound:.0f} ms after {previous}, "
            f"within the silence bound of {bound} ms"
        )
        await send()
        previous = name
    last = conn.last_sent_at
    assert last is not None
    limit = ctx.tol.high(bound)
    ended = await conn.ended(ctx.seconds(limit) + 0.05)
    assert ended and conn.ended_by == "client", (
        f"the client did not drop the connection within {limit:.0f} ms of silence"
    )
    assert conn.ended_at is not None
    silent_for = (conn.ended_at - last) * 1000
    assert silent_for >= ctx.tol.low(bound), (
        f"the client gave up {silent_for:.0f} ms after {previous}, before {bound} ms"
    )
