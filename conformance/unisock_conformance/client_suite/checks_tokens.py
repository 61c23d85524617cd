"""Tokens on the client side: in-band refresh (section 3.6), and no token in its output (13)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, Final

from unisock_conformance.client_suite.checks_reconnect import SHORT, settle
from unisock_conformance.client_suite.driver import Errored, Skipped
from unisock_conformance.client_suite.framework import Context, check
from unisock_conformance.client_suite.harness import HConn

SIGNATURE_OF: Final = "the signature of "


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


@check("UNI-SEC-7", timeout_s=60)
async def check_client_writes_no_token_to_its_output(ctx: Context) -> None:
    """No token the client is given, nor its signature, appears in anything the adapter writes.

    The client goes through the moments where a careless client logs its token: the first
    hello, a refresh on token_expiring, a refresh the application asks for, a token refused
    with 4100 and with 4101, and a reconnection after a lost connection. Each moment has a
    token of its own, watched for on standard error and standard output (which carries no
    token by design, spec 16) from before the client has it, and the adapter is ended so
    that what the client writes while closing counts too. A reconnection that does not come
    ends the sequence early: other checks grade that.
    """
    watch = ctx.adapter.watch

    def hand_out(label: str, **claims: Any) -> str:
        token = ctx.harness.mint(**claims)
        watch.add(token, label)
        watch.add(token.rsplit(".", 1)[-1], SIGNATURE_OF + label)
        return token

    ctx.harness.profile = {"backoff": SHORT}
    exp = int(time.time() + 3 * ctx.tol.scale)
    first = hand_out("token 1, of connect", exp=exp)
    conn = await ctx.connect(token=first, welcome={"refresh_warning_ms": 2000})
    await _token_moments(ctx, conn, hand_out, exp)
    with contextlib.suppress(Skipped, Errored, TimeoutError):
        await ctx.call("close")
    await ctx.adapter.stop()
    streams = {"stderr": "standard error", "stdout": "standard output"}
    tokens = {label for label in watch.found if not label.startswith(SIGNATURE_OF)}
    leaks = [
        f"{label} on {streams.get(stream, stream)}: {line!r}"
        for label, (stream, line) in sorted(watch.found.items())
        # A signature counts on its own only where its whole token was not found.
        if label in tokens or label.removeprefix(SIGNATURE_OF) not in tokens
    ]
    assert not leaks, "the adapter wrote tokens the client was given:\n" + "\n".join(leaks)


async def _token_moments(ctx: Context, conn: HConn, hand_out: Callable[..., str], exp: int) -> None:
    ctx.token = hand_out("token 2, for the refresh on token_expiring")
    await conn.send({"type": "token_expiring", "expires_at": exp})
    await conn.frame("refresh", max(0.0, exp - time.time()))
    with contextlib.suppress(Skipped, Errored):
        await ctx.call("refresh", token=hand_out("token 3, of the refresh command"))
    for number, code, reason in ((4, 4100, "auth_failed"), (5, 4101, "token_expired")):
        ctx.token = hand_out(f"token {number}, asked for after close {code}")
        await conn.close(code, reason)
        following = await ctx.harness.hello(conn.index + 1, ctx.timeout)
        if following is None:
            return
        conn = following
        await settle(ctx, conn)
    ctx.token = hand_out("token 6, asked for after a lost connection")
    conn.drop()
    following = await ctx.harness.hello(conn.index + 1, ctx.timeout)
    if following is not None:
        await settle(ctx, following)
