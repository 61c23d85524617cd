"""Close codes, backoff and drain (section 9), measured by the harness's own clock.

The harness announces small backoff values, ends connections in scripted ways and times
each reconnection from the moment the previous connection ended to the moment the next
handshake request arrived. Bounds come from the formula of spec 9.4 with the tolerances of
spec 16.6; distribution properties (jitter, growth) are judged over many reconnections with
thresholds a conforming client misses with a probability below one in ten thousand.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from typing import Any, Final

from unisock_conformance.client_suite.framework import Context, backoff_range, check
from unisock_conformance.client_suite.harness import HConn

# Many reconnections fit in seconds; floor_ms above 100 shows the client uses the announced
# floor, not only the absolute one.
BACKOFF: Final = {"base_ms": 100, "cap_ms": 800, "floor_ms": 150, "reset_after_ms": 60000}
RESET: Final = {"base_ms": 50, "cap_ms": 800, "floor_ms": 150, "reset_after_ms": 400}
SHORT: Final = {"base_ms": 100, "cap_ms": 400, "floor_ms": 150, "reset_after_ms": 60000}
FLOOR_MS: Final = 150
ATTEMPTS: Final = 28
AT_CAP_FROM: Final = 3  # base * 2^3 = cap


def _delay_ms(previous: HConn, following: HConn) -> float:
    assert previous.ended_at is not None
    return (following.requested_at - previous.ended_at) * 1000


async def settle(ctx: Context, conn: HConn, **welcome: Any) -> None:
    """Send welcome and wait until the client has acted on it (state open or a resubscribe)."""
    await conn.send_welcome(**welcome)
    assert conn.welcome_at is not None
    since = conn.welcome_at

    def acted() -> bool | None:
        if conn.of_type("subscribe"):
            return True
        opened = any(
            n.kind == "state" and n.message.get("state") == "open" and n.at >= since
            for n in ctx.adapter.notifications
        )
        return True if opened else None

    await ctx.harness.signal.wait_for(acted, ctx.timeout)


async def end(conn: HConn, how: int | None, reason: str = "") -> None:
    if how is None:
        conn.drop()
    else:
        await conn.close(how, reason)


async def expect_reconnect(
    ctx: Context, conn: HConn, low: int, high: int, what: str
) -> tuple[HConn, float]:
    """The next connection, asserting its delay is within [low, high] plus tolerances."""
    limit = ctx.tol.high(high)
    following = await ctx.reconnect(conn, limit)
    assert following is not None, (
        f"{what}: no reconnection within {limit:.0f} ms (allowed range [{low}, {high}] ms)"
    )
    delay = _delay_ms(conn, following)
    assert delay >= ctx.tol.low(low), f"{what}: reconnected after {delay:.0f} ms, below {low} ms"
    assert delay <= limit, f"{what}: reconnected after {delay:.0f} ms, above {high} ms"
    return following, delay


async def expect_no_reconnect(ctx: Context, conn: HConn, what: str, window_ms: float) -> None:
    following = await ctx.harness.connection(conn.index + 1, ctx.seconds(window_ms))
    assert following is None, f"{what}: the client reconnected automatically"


def quiet_ms(ctx: Context, backoff: Mapping[str, int]) -> float:
    """Longer than any delay a formula-following client could choose: the largest range."""
    return ctx.tol.high(max(FLOOR_MS, backoff["cap_ms"]))


@check("UNI-CLOSE-5", "UNI-CLOSE-13", "UNI-CLOSE-16", "UNI-CLOSE-17", timeout_s=60)
async def check_backoff_delays_have_full_jitter_growth_and_cap(ctx: Context) -> None:
    """28 reconnections: each delay within [F, min(cap, base*2^n)], jittered and growing."""
    ctx.harness.profile = {"backoff": BACKOFF}
    conn = await ctx.connect()
    await ctx.call("subscribe", channel="tasks.42")
    delays: list[float] = []
    for attempt in range(ATTEMPTS):
        low, high = backoff_range(BACKOFF, attempt)
        await end(conn, None if attempt % 2 == 0 else 1011, "internal_error")
        conn, delay = await expect_reconnect(ctx, conn, low, high, f"attempt n={attempt}")
        delays.append(delay)
        sample = delays[AT_CAP_FROM:]
        if len(sample) == 12:
            # Twelve delays at the cap within 5 % of each other: no jitter, no need to go on.
            assert max(sample) - min(sample) > 0.05 * BACKOFF["cap_ms"], (
                f"delays at the cap do not vary: {', '.join(f'{d:.0f}' for d in delays)}"
            )
        await settle(ctx, conn)
    at_cap = delays[AT_CAP_FROM:]
    middle = BACKOFF["cap_ms"] / 2
    lower = sum(1 for d in at_cap if d < middle)
    upper = len(at_cap) - lower
    shown = ", ".join(f"{d:.0f}" for d in delays)
    # Full jitter over [0, cap]: about half of the delays fall on each side of cap/2.
    assert lower >= 3 and upper >= 3, (
        f"delays at the cap are not spread over [F, cap]: {lower} below and {upper} above "
        f"{middle:.0f} ms; delays: {shown}"
    )
    spread = max(at_cap) - min(at_cap)
    assert spread > 0.05 * BACKOFF["cap_ms"], f"delays at the cap do not vary: {shown}"
    # Growth: delays at the cap exceed what attempt 1 allows, which a client without
    # exponential growth never does.
    early = ctx.tol.high(backoff_range(BACKOFF, 1)[1])
    grown = sum(1 for d in at_cap if d > early)
    assert grown >= 3, f"delays do not grow with the attempt counter: {shown}"


@check("UNI-CLOSE-14", timeout_s=30)
async def check_jitter_differs_between_client_instances(ctx: Context) -> None:
    """Two client instances reconnecting at the same moments draw different delays."""
    from unisock_conformance.client_suite.driver import AdapterProcess
    from unisock_conformance.client_suite.harness import Harness

    profile = {"backoff": {"base_ms": 800, "cap_ms": 800, "floor_ms": 100, "reset_after_ms": 60000}}
    other_harness = Harness(profile=dict(profile))
    await other_harness.start()
    other = AdapterProcess(ctx.adapter.command, other_harness.signal, env=ctx.adapter.env)
    try:
        await other.start()
        await other.hello(ctx.tol.scale, ctx.timeout)
        ctx.harness.profile = dict(profile)
        other_ctx = Context(other_harness, other, ctx.tol, ctx.reply_timeout_s)
        first, second = await asyncio.gather(ctx.connect(), other_ctx.connect())
        series: list[list[float]] = [[], []]

        async def churn(c: Context, conn: HConn, out: list[float]) -> None:
            for attempt in range(10):
                low, high = backoff_range(profile["backoff"], attempt)
                conn.drop()
                conn, delay = await expect_reconnect(c, conn, low, high, f"attempt {attempt}")
                out.append(delay)
                await settle(c, conn)

        await asyncio.gather(churn(ctx, first, series[0]), churn(other_ctx, second, series[1]))
        # Independent draws over [100, 800] differ by more than 150 ms in some of ten pairs
        # (a conforming pair misses that with probability about 2e-5); shared seeds differ
        # only by scheduling noise.
        differences = [abs(a - b) for a, b in zip(*series, strict=True)]
        assert max(differences) > 150, (
            f"two instances drew the same delays: {[round(d) for d in series[0]]} and "
            f"{[round(d) for d in series[1]]} ms"
        )
    finally:
        await other.stop()
        await other_harness.stop()


@check("UNI-CLOSE-15", timeout_s=40)
async def check_attempt_counter_resets_after_a_stable_connection(ctx: Context) -> None:
    """After a connection stayed open reset_after_ms, delays restart from attempt 0."""
    ctx.harness.profile = {"backoff": RESET}
    conn = await ctx.connect()
    await ctx.call("subscribe", channel="tasks.42")
    for cycle in range(3):
        # Stable: open well beyond reset_after_ms (measured by the client from welcome).
        await asyncio.sleep(ctx.seconds(RESET["reset_after_ms"] + 300))
        for attempt in range(4):
            low, high = backoff_range(RESET, attempt)
            await end(conn, 1011, "internal_error")
            what = f"cycle {cycle}, attempt n={attempt} after a stable connection"
            conn, _delay = await expect_reconnect(ctx, conn, low, high, what)
            await settle(ctx, conn)


HOLD_CYCLES: Final = 9
HOLD_FROM: Final = 3  # attempts from n = 3 on have ranges of 1600 ms and more


@check("UNI-CLOSE-15", timeout_s=90)
async def check_attempt_counter_holds_until_reset_after_ms_from_welcome(ctx: Context) -> None:
    """Connections open just over half of reset_after_ms do not reset n; delays keep growing.

    Each connection's welcome is held for half of reset_after_ms, and the connection is
    closed 0.55 reset_after_ms after its welcome: stable counted from the handshake, but not
    from welcome. A client that resets n (by that mistake or any other) keeps every delay
    within the range of n = 0, which a conforming client, drawing from ranges of 1600 and
    3200 ms for n >= 3, does in all 6 of those attempts with probability below 1e-4.
    """
    reset = round(800 * ctx.tol.scale)
    backoff = {"base_ms": 200, "cap_ms": 3200, "floor_ms": 150, "reset_after_ms": reset}
    ctx.harness.profile = {"backoff": backoff}
    conn = await ctx.connect()
    await ctx.call("subscribe", channel="tasks.42")
    first_range = ctx.tol.high(backoff_range(backoff, 0)[1])
    grown: list[float] = []
    for attempt in range(HOLD_CYCLES):
        await asyncio.sleep(0.55 * reset / 1000)
        await end(conn, 1011, "internal_error")
        low, high = backoff_range(backoff, attempt)
        what = f"attempt n={attempt} after a connection open 0.55 reset_after_ms"
        conn, delay = await expect_reconnect(ctx, conn, low, high, what)
        if attempt >= HOLD_FROM:
            grown.append(delay)
        await asyncio.sleep(0.5 * reset / 1000)
        await settle(ctx, conn)
    shown = ", ".join(f"{d:.0f}" for d in grown)
    assert any(d > first_range for d in grown), (
        f"delays from n={HOLD_FROM} on never exceeded the range of n=0 ({first_range:.0f} ms): "
        f"{shown}; the attempt counter was reset before reset_after_ms after welcome"
    )


def _closed_with(code: int, note: Mapping[str, Any]) -> bool:
    return note.get("state") == "closed" and (note.get("close") or {}).get("code") == code


NEVER: Final = (
    (1000, "drain;window_ms=0"),  # the class comes from the code, never from the reason
    (1002, "protocol_error"),
    (1003, "unsupported_data"),
    (1007, "invalid_payload"),
    (1008, "policy_violation"),
    (4000, "protocol_violation"),
    (4042, "x_future_never"),
)


@check("UNI-CLOSE-1", "UNI-CLOSE-2", "UNI-CLOSE-12")
async def check_never_class_closes_are_not_followed_by_a_reconnect(ctx: Context) -> None:
    """1000, 1002, 1003, 1007, 1008, 4000 and unlisted 4000-4099 codes end the client."""
    ctx.harness.profile = {"backoff": SHORT}
    for code, reason in NEVER:
        mark = len(ctx.adapter.notifications)
        conn = await ctx.connect()
        await conn.close(code, reason)
        await expect_no_reconnect(ctx, conn, f"close {code}", quiet_ms(ctx, SHORT))
        with ctx.part("closes_are_reported", "UNI-ADP-9"):
            closed = await ctx.adapter.notification(
                "state",
                ctx.timeout,
                where=functools.partial(_closed_with, code),
                start=mark,
            )
            assert closed is not None, f"the close {code} was not reported as state closed"
            assert closed["close"].get("superseded") is False, f"{code} reported as superseded"


@check("UNI-CLOSE-2", "UNI-CLOSE-24")
async def check_superseded_client_does_not_reconnect(ctx: Context) -> None:
    """4001 is reported as superseded and never answered by a reconnect (no two-tab loop)."""
    ctx.harness.profile = {"backoff": SHORT}
    ctx.harness.heads["tasks.42"] = ("e-s", 2)
    mark = len(ctx.adapter.notifications)
    conn = await ctx.connect()
    await ctx.call("subscribe", channel="tasks.42")
    await conn.event("tasks.42", "e-s", 3)
    assert await ctx.adapter.notification("event", ctx.timeout), "the event was not reported"
    await conn.close(4001, "superseded")
    await expect_no_reconnect(ctx, conn, "close 4001", 2 * quiet_ms(ctx, SHORT))
    closed = await ctx.adapter.notification(
        "state", ctx.timeout, where=lambda n: n.get("state") == "closed", start=mark
    )
    assert closed is not None, "the 4001 close was not reported to the application"
    assert (closed.get("close") or {}).get("superseded") is True, (
        f"the 4001 close was not reported as superseded: {closed}"
    )
    with ctx.part("positions_kept_after_superseded", "UNI-SESS-17"):
        again = await ctx.connect()
        subscribe = await again.frame("subscribe", ctx.timeout)
        assert subscribe is not None, "the explicit reconnection did not resubscribe"
        start = (subscribe.get("from") or {}).get("tasks.42")
        assert start == {"epoch": "e-s", "offset": 3}, (
            f"resubscribe after 4001 carried from {subscribe.get('from')}, not offset 3"
        )
        await again.event("tasks.42", "e-s", 4)
        resumed = await ctx.adapter.notification(
            "event", ctx.timeout, where=lambda n: n.get("offset") == 4
        )
        assert resumed is not None, "an event after the explicit reconnection was not reported"


@check("UNI-CLOSE-1", "UNI-CLOSE-3", "UNI-CLOSE-4")
async def check_new_token_class_reconnects_only_with_a_new_token(ctx: Context) -> None:
    """4100, 4101, 4102 and unlisted 4100-4199 codes: ask for a token, reconnect with it."""
    ctx.harness.profile = {"backoff": SHORT}
    conn = await ctx.connect()
    for code, reason in (
        (4100, "auth_failed"),
        (4101, "token_expired"),
        (4102, "auth_timeout"),
        (4150, "x_future_auth"),
    ):
        old = ctx.token
        ctx.token = ctx.harness.mint()
        asked = len(ctx.adapter.token_requests)
        await conn.close(code, reason)
        low, high = backoff_range(SHORT, 10)
        conn, _delay = await expect_reconnect(ctx, conn, low, high, f"close {code}")
        with ctx.part("token_requests_are_forwarded", "UNI-ADP-10"):
            assert len(ctx.adapter.token_requests) > asked, (
                f"after {code} the application was not asked for a token"
            )
        assert conn.token != old, f"after {code} the client reconnected with the old token"
        assert conn.token == ctx.token, f"after {code} the client used a token it was not given"
        await settle(ctx, conn)


@check("UNI-CLOSE-3", "UNI-CLOSE-4")
async def check_new_token_class_stops_without_a_new_token(ctx: Context) -> None:
    """Without a token, or with the rejected one again, the client stops."""
    ctx.harness.profile = {"backoff": SHORT}
    conn = await ctx.connect()
    ctx.adapter.token_supplier = lambda request: None
    await conn.close(4100, "auth_failed")
    await expect_no_reconnect(ctx, conn, "4100 and no token", quiet_ms(ctx, SHORT))
    same = ctx.harness.mint()
    ctx.adapter.token_supplier = lambda request: same
    conn = await ctx.connect(token=same)
    await conn.close(4101, "token_expired")
    await expect_no_reconnect(ctx, conn, "4101 and the same token again", quiet_ms(ctx, SHORT))


BACKOFF_CLASS: Final = (
    (None, ""),  # connection lost without a close frame: 1006
    (1001, "going_away"),
    (1009, "message_too_big"),
    (1011, "internal_error"),
    (4200, "slow_consumer;window_ms=1"),
    (4201, "heartbeat_timeout"),
    (4242, "x_future_backoff"),
    (3000, "x_registered_elsewhere"),
    (4500, "x_outside_the_ranges"),
)


@check("UNI-CLOSE-1", "UNI-CLOSE-5", "UNI-CLOSE-12")
async def check_backoff_class_closes_reconnect_after_the_backoff_delay(ctx: Context) -> None:
    """1006, 1001, 1009, 1011, 42xx and unlisted codes reconnect within [F, cap]."""
    ctx.harness.profile = {"backoff": SHORT}
    conn = await ctx.connect()
    for code, reason in BACKOFF_CLASS:
        await end(conn, code, reason)
        low, high = backoff_range(SHORT, 10)
        conn, _delay = await expect_reconnect(ctx, conn, low, high, f"close {code or 1006}")
        await settle(ctx, conn)


@check("UNI-CLOSE-12", "UNI-CLOSE-13")
async def check_retry_after_in_the_close_reason_is_honoured(ctx: Context) -> None:
    """retry_after_ms in a close reason is the least delay, whatever else the reason holds."""
    ctx.harness.profile = {"backoff": SHORT}
    conn = await ctx.connect()
    for code, reason, retry in (
        (4202, "overloaded;retry_after_ms=700", 700),
        (1013, "try_again_later;retry_after_ms=500", 500),
        (1001, "going_away;x_hint=1;retry_after_ms=600", 600),
    ):
        await conn.close(code, reason)
        low, high = backoff_range(SHORT, 10, retry)
        conn, _delay = await expect_reconnect(ctx, conn, low, high, f"close {code} {reason!r}")
        await settle(ctx, conn)


@check("UNI-CLOSE-6", "UNI-CLOSE-16", "UNI-CLOSE-23")
async def check_now_class_closes_reconnect_within_the_window(ctx: Context) -> None:
    """4300 and 1012 reconnect within [F, window]; a window of 0 still waits F."""
    ctx.harness.profile = {"backoff": SHORT}
    conn = await ctx.connect()
    for code, reason, window in (
        (4300, "drain;window_ms=300", 300),
        (1012, "service_restart;window_ms=0", 0),
        (1012, "service_restart;window_ms=0", 0),
        (4300, "drain", SHORT["cap_ms"]),
        (4350, "x_future_now;window_ms=200", 200),
    ):
        await conn.close(code, reason)
        low = max(FLOOR_MS, 0)
        conn, _delay = await expect_reconnect(
            ctx, conn, low, max(low, window), f"close {code} {reason!r}"
        )
        await settle(ctx, conn)


@check("UNI-CLOSE-22", "UNI-SESS-5")
async def check_drain_closes_with_1000_within_the_window_before_reconnecting(
    ctx: Context,
) -> None:
    """On drain the client closes with 1000 in [F, window_ms], then opens the next one."""
    ctx.harness.profile = {"backoff": SHORT}
    conn = await ctx.connect()
    window = 400
    for round_ in range(2):
        await conn.send({"type": "drain", "window_ms": window, "reason": "deploy"})
        sent = conn.last_sent_at
        assert sent is not None
        ended = await conn.ended(ctx.seconds(ctx.tol.high(window)))
        assert ended and conn.ended_by == "client", (
            f"round {round_}: the client did not leave the draining connection within {window} ms"
        )
        assert conn.ended_at is not None
        left = (conn.ended_at - sent) * 1000
        assert conn.client_close is not None and conn.client_close[0] == 1000, (
            f"round {round_}: the client left with {conn.client_close}, not a 1000 close"
        )
        assert ctx.tol.low(FLOOR_MS) <= left <= ctx.tol.high(window), (
            f"round {round_}: the client left {left:.0f} ms after drain, outside "
            f"[{FLOOR_MS}, {window}]"
        )
        following = await ctx.reconnect(conn, quiet_ms(ctx, SHORT))
        assert following is not None, f"round {round_}: no replacement connection"
        hello = following.frames[0]
        assert hello.at >= conn.ended_at, "hello on the new connection before the old closed"
        await settle(ctx, following)
        conn = following


@check("UNI-SESS-5", "UNI-SESS-4")
async def check_connect_while_open_keeps_the_one_connection(ctx: Context) -> None:
    """The application asking to connect again while open gets the open connection."""
    ctx.harness.profile = {"backoff": SHORT}
    conn = await ctx.connect()
    await ctx.call("subscribe", channel="tasks.42")
    again = await ctx.call(
        "connect", url=ctx.harness.url, token=ctx.token, timeout_ms=int(ctx.timeout * 1000)
    )
    with ctx.part("connect_reports_the_open_connection", "UNI-ADP-2"):
        assert again.get("connection_id") in (None, conn.welcome and conn.welcome["connection_id"])
    await ctx.call("subscribe", channel="fence.1")
    assert conn.open, f"the connection was closed: {conn.client_close}"
    assert len(ctx.harness.connections) == 1, "a second connection was opened while open"
    assert [f["channel"] for f in conn.of_type("subscribe")] == ["tasks.42", "fence.1"]


@check("UNI-CLOSE-7")
async def check_application_close_while_waiting_cancels_the_reconnection(ctx: Context) -> None:
    """Closed by the application while it waits to reconnect, the client stays closed."""
    delay = 1200
    backoff = {"base_ms": delay, "cap_ms": delay, "floor_ms": delay, "reset_after_ms": 60000}
    ctx.harness.profile = {"backoff": backoff}
    conn = await ctx.connect()
    mark = len(ctx.adapter.notifications)
    await conn.close(1011, "internal_error")
    waiting = await ctx.adapter.notification(
        "state", ctx.timeout, where=lambda n: n.get("state") == "waiting", start=mark
    )
    assert waiting is not None, "the client did not report that it waits to reconnect"
    await ctx.call("close")
    await expect_no_reconnect(ctx, conn, "application close while waiting", ctx.tol.high(delay))


@check("UNI-CLOSE-7")
async def check_application_close_is_not_followed_by_a_reconnect(ctx: Context) -> None:
    """After the application closes the client, nothing reconnects."""
    ctx.harness.profile = {"backoff": SHORT}
    conn = await ctx.connect()
    await ctx.call("close")
    assert await conn.ended(ctx.timeout), "close did not end the connection"
    await expect_no_reconnect(ctx, conn, "application close", quiet_ms(ctx, SHORT))


DRAIN_BACKOFF: Final = {"base_ms": 100, "cap_ms": 1500, "floor_ms": 150, "reset_after_ms": 60000}
DRAIN_ROUNDS: Final = 20


@check("UNI-CLOSE-22", "UNI-CLOSE-16", timeout_s=60)
async def check_drain_departures_are_spread_over_the_window(ctx: Context) -> None:
    """20 drains: each departure in [F, window_ms] and spread over it; then no second delay.

    With the window below cap_ms, a client drawing from [0, cap_ms] leaves too late; one
    that leaves at a fixed moment (at F, at the end, in the middle) puts fewer than 2 of 20
    departures on one side of window_ms / 2, which a uniform draw does with probability
    about 2e-5 per side.
    """
    ctx.harness.profile = {"backoff": DRAIN_BACKOFF}
    conn = await ctx.connect()
    await ctx.call("subscribe", channel="tasks.42")
    window = 600
    departures: list[float] = []
    for round_ in range(DRAIN_ROUNDS):
        await conn.send({"type": "drain", "window_ms": window, "reason": "deploy"})
        sent = conn.last_sent_at
        assert sent is not None
        limit = ctx.tol.high(window)
        ended = await conn.ended(ctx.seconds(limit) + 0.05)
        assert ended and conn.ended_by == "client", (
            f"drain {round_}: the client did not leave within {limit:.0f} ms"
        )
        assert conn.ended_at is not None
        left = (conn.ended_at - sent) * 1000
        assert ctx.tol.low(FLOOR_MS) <= left <= limit, (
            f"drain {round_}: the client left {left:.0f} ms after drain, outside "
            f"[{FLOOR_MS}, {window}] ms"
        )
        departures.append(left)
        # At that moment it closes, then opens the replacement: no second delay.
        conn, _delay = await expect_reconnect(
            ctx, conn, 0, FLOOR_MS, f"drain {round_}: the replacement after leaving"
        )
        await settle(ctx, conn)
    shown = ", ".join(f"{d:.0f}" for d in departures)
    middle = window / 2
    early = sum(1 for d in departures if d < middle)
    late = len(departures) - early
    assert early >= 2 and late >= 2, (
        f"departures are not spread over [{FLOOR_MS}, {window}] ms: {early} before and "
        f"{late} after {middle:.0f} ms; departures: {shown}"
    )


NOW_BACKOFF: Final = {"base_ms": 100, "cap_ms": 3000, "floor_ms": 150, "reset_after_ms": 60000}
# (window of a drain sent just before the close, or None; close code; reason; W)
AFTER_DRAIN: Final = (
    (0, 4300, "drain", 0),  # the drain message's window, not cap_ms
    (3000, 4300, "drain;window_ms=0", 0),  # the reason's window wins over the drain's
    (None, 4300, "drain", 3000),  # no drain on this connection: cap_ms, not an earlier window
    (0, 1012, "service_restart", 0),
    (3000, 1012, "service_restart;window_ms=0", 0),
    (None, 1012, "service_restart", 3000),
)
AFTER_DRAIN_ROUNDS: Final = 3


@check("UNI-CLOSE-23", "UNI-CLOSE-6", timeout_s=90)
async def check_now_class_window_comes_from_reason_then_drain_then_cap(ctx: Context) -> None:
    """A now-class close right after drain: W from the reason, else that drain, else cap_ms.

    W is 0 (the delay is F) or cap_ms 3000. Over 3 rounds, a client taking W from the wrong
    place waits beyond F in all 6 cases that allow only F, or (keeping an earlier
    connection's window) never beyond F in the 6 cases where W is cap_ms, with probability
    below 1e-4 at time scales up to 3.
    """
    ctx.harness.profile = {"backoff": NOW_BACKOFF}
    conn = await ctx.connect()
    await ctx.call("subscribe", channel="tasks.42")
    beyond_floor = 0
    for round_ in range(AFTER_DRAIN_ROUNDS):
        for drain, code, reason, window in AFTER_DRAIN:
            if drain is not None:
                await conn.send({"type": "drain", "window_ms": drain, "reason": "deploy"})
            await conn.close(code, reason)
            what = f"round {round_}: close {code} {reason!r} after a drain of {drain} ms"
            conn, delay = await expect_reconnect(ctx, conn, FLOOR_MS, max(FLOOR_MS, window), what)
            if drain is None and delay > ctx.tol.high(FLOOR_MS):
                beyond_floor += 1
            await settle(ctx, conn)
    assert beyond_floor >= 1, (
        "every now-class close without window_ms on a connection without drain waited "
        "only F: W came from an earlier connection's drain, not cap_ms"
    )


def _exact(ms: int) -> dict[str, int]:
    """Backoff values under which every delay is exactly ``ms``: max(F, U(0, ms)) = ms."""
    return {"base_ms": ms, "cap_ms": ms, "floor_ms": ms, "reset_after_ms": 60000}


@check("UNI-LC-15", "UNI-CLOSE-17", timeout_s=60)
async def check_each_welcome_replaces_the_backoff_values(ctx: Context) -> None:
    """Defaults before any welcome; then every delay follows the latest welcome's backoff.

    Before a welcome, the first two reconnections fall in [250, 500] and [250, 1000] (the
    defaults, n = 0 and 1). Then each welcome announces values under which the delay is
    exactly 300, 1500, 200 or 900 ms; a connection that ends before its welcome keeps the
    last announced values. The values are far apart, so these delays get 400 ms more
    (scaled) on top of the tolerance for a reconnection slowed by a loaded machine, and a
    client keeping the first welcome's values or the previous one's still misses a range.
    """
    ctx.token = ctx.harness.mint()
    pending = ctx.adapter.send(
        "connect", url=ctx.harness.url, token=ctx.token, timeout_ms=int(ctx.timeout * 3000)
    )
    conn = await ctx.harness.hello(0, ctx.timeout)
    assert conn is not None, "the client did not connect"
    for attempt, high in enumerate((500, 1000)):
        await conn.close(1011, "internal_error")
        what = f"reconnection n={attempt} before any welcome (default backoff)"
        conn, _delay = await expect_reconnect(ctx, conn, 250, high, what)
    slack = 400 * ctx.tol.scale
    for index, ms in enumerate((300, 1500, 200, 900)):
        await settle(ctx, conn, backoff=_exact(ms))
        if index == 0:
            ctx.adapter.outcome("connect", await asyncio.wait_for(pending, ctx.timeout))
        for ended in ("after its welcome", "before a welcome"):
            await conn.close(1011, "internal_error")
            following = await ctx.reconnect(conn, ctx.tol.high(ms) + slack)
            assert following is not None, (
                f"a connection ended {ended}; the last welcome announced {ms} ms: no "
                f"reconnection within {ctx.tol.high(ms) + slack:.0f} ms"
            )
            delay = _delay_ms(conn, following)
            assert ctx.tol.low(ms) <= delay <= ctx.tol.high(ms) + slack, (
                f"a connection ended {ended}; the last welcome announced {ms} ms: "
                f"reconnected after {delay:.0f} ms"
            )
            conn = following
    with ctx.part("heartbeat_of_the_latest_welcome", "UNI-HB-11"):
        interval, timeout = 200, 200
        await settle(ctx, conn, heartbeat={"interval_ms": interval, "timeout_ms": timeout})
        conn.stall()
        bound = interval + timeout
        limit = ctx.tol.high(bound)
        assert await conn.ended(ctx.seconds(limit) + 0.05), (
            f"a silent connection was kept beyond {limit:.0f} ms (bound {bound} ms)"
        )
