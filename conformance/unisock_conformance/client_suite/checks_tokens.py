"""In-band refresh (section 3.6): the client refreshes before expiry, on the same connection."""

from __future__ import annotations

import time

from unisock_conformance.client_suite.framework import Context, check


@check("UNI-AUTH-24")
async def check_client_refreshes_before_expiry_without_reconnecting(ctx: Context) -> None:
    """On token_expiring the client gets a new token and sends refresh before exp."""
    # Three seconds of token life, scaled like the suite's other waits on slow machines.
    exp = int(time.time() + 3 * ctx.tol.scale)
    first = ctx.harness.mint(exp=exp)
    conn = await ctx.connect(token=first, welcome={"refresh_warning_ms": 2000})
    ctx.token = ctx.harness.mint()
    await conn.send({"type": "token_expiring", "expires_at": exp})
    remaining = max(0.0, exp - time.time())
    refresh = await conn.frame("refresh", remaining)
    if refresh is None:
        await conn.close(4101, "token_expired")  # what a server does at exp
        raise AssertionError("no refresh before the token expired")
    assert time.time() < exp, "the refresh arrived after exp"
    assert refresh.get("token") == ctx.token, "refresh did not carry the application's new token"
    assert len(ctx.harness.connections) == 1 and conn.open, "the client reconnected to refresh"
