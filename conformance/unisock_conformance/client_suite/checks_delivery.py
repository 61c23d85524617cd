"""Resume, gaps, epochs and client deduplication (sections 5, 7 and 9.2).

Every negative check ends with a fence: a later event the client must report; since the
adapter reports events in the order the client passes them on, anything the client wrongly
passed on before the fence has been reported by then.
"""

from __future__ import annotations

import asyncio
from typing import Any

from unisock_conformance.client_suite.checks_reconnect import SHORT, quiet_ms
from unisock_conformance.client_suite.framework import Context, check
from unisock_conformance.client_suite.harness import HConn


async def reported(ctx: Context, channel: str, offset: int, epoch: str | None = None) -> None:
    note = await ctx.adapter.notification(
        "event",
        ctx.timeout,
        where=lambda n: (
            n["channel"] == channel
            and n["offset"] == offset
            and (epoch is None or n["epoch"] == epoch)
        ),
    )
    assert note is not None, f"event {channel}@{offset} was not reported"


async def resubscribes(ctx: Context, conn: HConn, count: int) -> dict[str, dict[str, Any]]:
    """The subscribe frames of a reconnection, by channel, once ``count`` have arrived."""
    found = await ctx.harness.signal.wait_for(
        lambda: conn.of_type("subscribe") if len(conn.of_type("subscribe")) >= count else None,
        ctx.timeout,
    )
    assert found is not None, f"expected {count} resubscriptions, got {conn.of_type('subscribe')}"
    return {str(frame["channel"]): frame for frame in found}


async def drop_and_resume(ctx: Context, conn: HConn) -> HConn:
    conn.drop()
    following = await ctx.reconnect(conn, quiet_ms(ctx, ctx.harness.profile["backoff"]))
    assert following is not None, "the client did not reconnect after the connection was lost"
    await following.send_welcome()
    return following


def _position(epoch: str, offset: int) -> dict[str, Any]:
    return {"epoch": epoch, "offset": offset}


@check("UNI-CLOSE-8", "UNI-DEL-20", "UNI-DEL-29")
async def check_resume_presents_the_last_position_of_every_channel(ctx: Context) -> None:
    """After a reconnect every subscription is re-sent with its filter and last positions."""
    ctx.harness.profile = {"backoff": SHORT}
    ctx.harness.heads.update({"tasks.42": ("e-a", 5), "notes.1": ("e-n", 12)})
    conn = await ctx.connect()
    task_filter = {"and": [{"eq": ["$event", "task.updated"]}, {"gte": ["priority", 2]}]}
    await ctx.call("subscribe", channel="tasks.42", filter=task_filter)
    await ctx.call("subscribe", channel="jobs.>")
    await ctx.call("subscribe", channel="notes.1")
    for channel, epoch, offset in (
        ("tasks.42", "e-a", 6),
        ("tasks.42", "e-a", 7),
        ("jobs.a", "e-j", 3),
        ("jobs.b", "e-k", 10),
        ("jobs.a", "e-j", 4),
    ):
        last = await conn.event(channel, epoch, offset, event="task.updated")
    await reported(ctx, "jobs.a", 4)
    conn = await drop_and_resume(ctx, conn)
    frames = await resubscribes(ctx, conn, 3)
    assert set(frames) == {"tasks.42", "jobs.>", "notes.1"}, f"resubscribed {sorted(frames)}"
    tasks, jobs, notes = frames["tasks.42"], frames["jobs.>"], frames["notes.1"]
    assert tasks.get("filter") == task_filter, f"filter changed: {tasks.get('filter')}"
    assert tasks.get("from") == {"tasks.42": _position("e-a", 7)}, f"tasks.42: {tasks}"
    assert jobs.get("from") == {
        "jobs.a": _position("e-j", 4),
        "jobs.b": _position("e-k", 10),
    }, f"jobs.>: {jobs}"
    assert notes.get("from") == {"notes.1": _position("e-n", 12)}, (
        f"notes.1 (position from subscribed): {notes}"
    )
    with ctx.part("wildcard_resume_carries_since", "UNI-DEL-21"):
        since = jobs.get("since")
        assert isinstance(since, int), f"the jobs.> resubscription has no since: {jobs}"
        assert since <= last["ts"], f"since {since} is later than the last ts {last['ts']}"


@check("UNI-DEL-31", "UNI-DEL-32", "UNI-DEL-10")
async def check_gaps_and_epoch_changes_are_surfaced_and_recorded(ctx: Context) -> None:
    """A gap and a new epoch each signal a resync and move the resume position."""
    ctx.harness.profile = {"backoff": SHORT}
    ctx.harness.heads["tasks.42"] = ("e-1", 5)
    conn = await ctx.connect()
    await ctx.call("subscribe", channel="tasks.42")
    await conn.send(
        {
            "type": "gap",
            "channel": "tasks.42",
            "epoch": "e-1",
            "offset": 20,
            "reason": "window_exceeded",
        }
    )
    with ctx.part("resyncs_are_reported", "UNI-ADP-8"):
        resync = await ctx.adapter.notification("resync", ctx.timeout)
        assert resync is not None, "the gap was not reported as a resync"
        assert resync.get("reason") == "window_exceeded", f"resync reason: {resync}"
    conn = await drop_and_resume(ctx, conn)
    frames = await resubscribes(ctx, conn, 1)
    assert frames["tasks.42"].get("from") == {"tasks.42": _position("e-1", 20)}, (
        f"after the gap the client resumed with {frames['tasks.42'].get('from')}"
    )
    await conn.event("tasks.42", "e-1", 21)
    await reported(ctx, "tasks.42", 21)
    before = len(ctx.adapter.notifications)
    # Epochs are opaque: "E-1" is not "e-1" (UNI-DEL-10).
    await conn.event("tasks.42", "E-1", 1)
    await conn.event("tasks.42", "E-1", 2)
    await reported(ctx, "tasks.42", 2, "E-1")
    later = [n.message for n in ctx.adapter.notifications[before:]]
    kinds = [(m["notify"], m.get("offset")) for m in later if m["notify"] in ("event", "resync")]
    assert kinds and kinds[0][0] == "resync", (
        f"no resync before the first event of the new epoch: {kinds}"
    )
    events = [m["offset"] for m in later if m["notify"] == "event"]
    assert events == [1, 2], f"events of the new epoch reported: {events}"
    conn = await drop_and_resume(ctx, conn)
    frames = await resubscribes(ctx, conn, 1)
    assert frames["tasks.42"].get("from") == {"tasks.42": _position("E-1", 2)}, (
        f"after the epoch change the client resumed with {frames['tasks.42'].get('from')}"
    )


@check("UNI-DEL-30")
async def check_duplicate_and_stale_events_are_dropped(ctx: Context) -> None:
    """Events at or below the last offset of the epoch never reach the application."""
    ctx.harness.profile = {"backoff": SHORT}
    ctx.harness.heads["tasks.42"] = ("e-1", 0)
    conn = await ctx.connect()
    await ctx.call("subscribe", channel="tasks.42")
    for offset in (1, 2, 2, 4, 3, 4):
        await conn.event("tasks.42", "e-1", offset)
    await conn.event("tasks.42", "e-1", 7, coalesced=[5, 6])
    for offset in (6, 8):
        await conn.event("tasks.42", "e-1", offset)
    await reported(ctx, "tasks.42", 8)
    delivered = [e["offset"] for e in ctx.adapter.events("tasks.42")]
    assert delivered == [1, 2, 4, 7, 8], f"the application got offsets {delivered}"
    with ctx.part("skipped_offsets_are_not_loss", "UNI-DEL-33"):
        assert ctx.adapter.of_kind("resync") == [], "non-contiguous offsets signalled a resync"
    with ctx.part("coalesced_offsets_are_not_loss", "UNI-DEL-28"):
        seven = [e for e in ctx.adapter.events("tasks.42") if e["offset"] == 7]
        assert seven, "the coalesced event was not reported"
        assert ctx.adapter.of_kind("resync") == [], "coalesced offsets signalled a resync"

    async def replay(conn: HConn, subscribe: dict[str, Any]) -> None:
        for offset in (7, 8, 9):
            await conn.event("tasks.42", "e-1", offset)

    ctx.harness.on_subscribe = replay
    conn = await drop_and_resume(ctx, conn)
    await reported(ctx, "tasks.42", 9)
    delivered = [e["offset"] for e in ctx.adapter.events("tasks.42")]
    assert delivered == [1, 2, 4, 7, 8, 9], f"a replay overlapping the past: {delivered}"


@check("UNI-SUB-15")
async def check_events_reach_the_application_only_while_subscribed(ctx: Context) -> None:
    """No event before subscribed, after unsubscribed, or for a channel never subscribed."""
    conn = await ctx.connect()
    conn.behaviour.auto_subscribe = False
    pending = ctx.adapter.send("subscribe", channel="tasks.42")
    frame = await conn.frame("subscribe", ctx.timeout)
    assert frame is not None, "the subscribe was not sent"
    await conn.event("tasks.42", "e-1", 1)  # before subscribed
    await conn.event("other.1", "e-1", 1)  # never subscribed
    await conn.send(ctx.harness.subscribed_reply(frame))
    ctx.adapter.outcome("subscribe", await asyncio.wait_for(pending, ctx.timeout))
    await conn.event("tasks.42", "e-1", 2)
    await reported(ctx, "tasks.42", 2)
    await ctx.call("unsubscribe", channel="tasks.42")
    await conn.event("tasks.42", "e-1", 3)  # after unsubscribed
    conn.behaviour.auto_subscribe = True
    await ctx.call("subscribe", channel="fence.1")
    await conn.event("fence.1", "e-1", 1)
    await reported(ctx, "fence.1", 1)
    got = [(e["channel"], e["offset"]) for e in ctx.adapter.events()]
    assert got == [("tasks.42", 2), ("fence.1", 1)], f"the application got {got}"


async def _subscribed_to(ctx: Context, conn: HConn, channel: str) -> set[str]:
    """Every pattern subscribed on ``conn`` once the application's ``channel`` is confirmed.

    The application subscribes ``channel`` after the client's own resubscriptions: its
    reply marks the point by which every earlier subscribe frame has arrived.
    """
    await ctx.call("subscribe", channel=channel)
    return {str(frame["channel"]) for frame in conn.of_type("subscribe")}


@check("UNI-SUB-16", "UNI-SUB-15")
async def check_revoked_subscription_never_comes_back(ctx: Context) -> None:
    """A pattern the server revoked is not re-sent, on this connection or any later one."""
    ctx.harness.profile = {"backoff": SHORT}
    conn = await ctx.connect()
    for channel in ("tasks.>", "tasks.42", "notes.1"):
        await ctx.call("subscribe", channel=channel)
    for channel in ("tasks.42", "notes.1"):
        await conn.send({"type": "unsubscribed", "channel": channel, "reason": "revoked"})
    with ctx.part("no_events_after_revocation", "UNI-SUB-15"):
        await conn.event("notes.1", "e-1", 1)
        await conn.event("tasks.42", "e-1", 1)  # still matched by tasks.>
        await reported(ctx, "tasks.42", 1)
        got = [e["channel"] for e in ctx.adapter.events()]
        assert got == ["tasks.42"], f"events after the revocation: {got}"
    after = len(conn.of_type("subscribe"))
    await ctx.call("subscribe", channel="fence.1")
    again = [f["channel"] for f in conn.of_type("subscribe")[after:] if f["channel"] != "fence.1"]
    assert again == [], f"re-subscribed on the same connection: {again}"
    for round_ in range(2):
        conn = await drop_and_resume(ctx, conn)
        channels = await _subscribed_to(ctx, conn, f"fence.{round_ + 2}")
        assert {"tasks.>", "fence.1"} <= channels, f"after a reconnect: {sorted(channels)}"
        revoked = sorted(channels & {"tasks.42", "notes.1"})
        assert revoked == [], f"reconnection {round_ + 1} re-subscribed revoked {revoked}"


@check("UNI-DEL-29", "UNI-DEL-30", "UNI-DEL-20")
async def check_resumed_position_is_not_replaced_by_the_subscribed_head(ctx: Context) -> None:
    """A resume's subscribed.position (the head) never overwrites the position resumed.

    The server is ahead (head 9) when the client resumes from 5: the next resume still
    starts at 5, and the replay of 6..9 after subscribed reaches the application.
    """
    ctx.harness.profile = {"backoff": SHORT}
    ctx.harness.heads["tasks.42"] = ("e-1", 2)
    conn = await ctx.connect()
    await ctx.call("subscribe", channel="tasks.42")
    for offset in (3, 4, 5):
        await conn.event("tasks.42", "e-1", offset)
    await reported(ctx, "tasks.42", 5)
    ctx.harness.heads["tasks.42"] = ("e-1", 9)
    for round_ in range(2):
        conn = await drop_and_resume(ctx, conn)
        frames = await resubscribes(ctx, conn, 1 + round_)
        assert frames["tasks.42"].get("from") == {"tasks.42": _position("e-1", 5)}, (
            f"resume {round_ + 1}: {frames['tasks.42'].get('from')} (events up to 5 were "
            "received; an earlier resume's subscribed said the head was 9)"
        )
        # The reply to this subscribe is processed before the fence's.
        await ctx.call("subscribe", channel=f"fence.{round_}")

    async def replay(conn: HConn, subscribe: dict[str, Any]) -> None:
        if subscribe["channel"] == "tasks.42":
            for offset in (6, 7, 8, 9):
                await conn.event("tasks.42", "e-1", offset)

    ctx.harness.on_subscribe = replay
    conn = await drop_and_resume(ctx, conn)
    await resubscribes(ctx, conn, 3)
    await conn.event("tasks.42", "e-1", 10)
    await reported(ctx, "tasks.42", 10)
    delivered = [e["offset"] for e in ctx.adapter.events("tasks.42")]
    assert delivered == [3, 4, 5, 6, 7, 8, 9, 10], f"the application got offsets {delivered}"


@check("UNI-PUB-29")
async def check_own_event_is_accepted_before_or_after_the_ack(ctx: Context) -> None:
    """The event of the client's own publish reaches the application whichever comes first."""
    conn = await ctx.connect()
    await ctx.call("subscribe", channel="tasks.42")
    conn.behaviour.auto_ack = False
    for offset, event_first in ((1, True), (2, False)):
        mid = f"own-{offset}"
        pending = ctx.adapter.send(
            "publish", channel="tasks.42", event="task.updated", data={}, message_id=mid
        )
        before = len(conn.frames)
        frame = await conn.frame("publish", ctx.timeout, start=before)
        assert frame is not None, "the publish was not sent"
        ack = {**ctx.harness.ack_for(frame), "epoch": "e-1", "offset": offset}
        if not event_first:
            await conn.send(ack)
        await conn.event(
            "tasks.42",
            "e-1",
            offset,
            event="task.updated",
            data={},
            message_id=mid,
            publisher="alice",
        )
        if event_first:
            await conn.send(ack)
        reply = ctx.adapter.outcome("publish", await asyncio.wait_for(pending, ctx.timeout))
        assert reply["ack"]["offset"] == offset, f"publish {mid}: {reply}"
        await reported(ctx, "tasks.42", offset)
    delivered = [(e["offset"], e["message_id"]) for e in ctx.adapter.events("tasks.42")]
    assert delivered == [(1, "own-1"), (2, "own-2")], f"the application got {delivered}"
