"""Dead-server detection (section 8): a stalled server is noticed within the silence bound,
a live one never is, and each connection uses its own welcome's values."""

from __future__ import annotations

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
