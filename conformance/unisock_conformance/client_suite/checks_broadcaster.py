"""A publishing client, a backend broadcaster (section 6): well-formed publishes, retries
that keep their idempotency key, no blind retries after refusals or rate limits, and no
targeting fields on system-namespace publishes (section 4)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Mapping
from typing import Any

from unisock.schemas import format_errors, schema, validator_for
from unisock_conformance.client_suite.checks_reconnect import SHORT, quiet_ms
from unisock_conformance.client_suite.driver import Skipped
from unisock_conformance.client_suite.framework import Context, check
from unisock_conformance.client_suite.harness import HConn


def _task_updated() -> dict[str, Any]:
    """A valid payload of the registered example type, from its own schema."""
    examples = schema("events/task.updated").get("examples") or [{}]
    return dict(examples[0])


@check("UNI-PUB-34", "UNI-CH-12", "UNI-TR-23", tier="broadcaster")
async def check_broadcaster_publishes_are_well_formed(ctx: Context) -> None:
    """Distinct events get distinct message_ids; a $me publish names its user."""
    conn = await ctx.connect(broadcaster=True)
    data = _task_updated()
    acks = [
        await ctx.call("publish", channel="tasks.42", event="task.updated", data=data),
        await ctx.call("publish", channel="tasks.42", event="task.updated", data={**data}),
        await ctx.call(
            "publish", channel="$me.inbox", event="note.added", data={"t": "hi"}, user="bob"
        ),
    ]
    frames = conn.of_type("publish")
    assert len(frames) == 3, f"expected 3 publish frames, got {frames}"
    ids = [frame["message_id"] for frame in frames]
    assert len(set(ids)) == 3, f"distinct events shared a message_id: {ids}"
    assert [a["ack"]["message_id"] for a in acks] == ids, f"acks do not match: {acks}"
    assert frames[2].get("user") == "bob", f"the $me publish lacks user: {frames[2]}"
    with ctx.part("typed_event_data_is_sent_unchanged", "UNI-TR-10"):
        validator = validator_for("events/task.updated")
        for frame in frames[:2]:
            assert frame["data"] == data, f"data changed on the way: {frame['data']}"
            assert format_errors(validator, frame["data"]) == []


@check("UNI-PUB-33", "UNI-PUB-38", tier="broadcaster")
async def check_publish_retried_after_a_lost_ack_keeps_its_message_id(ctx: Context) -> None:
    """A publish whose ack was lost with the connection is re-sent with the same key."""
    ctx.harness.profile = {"backoff": SHORT}
    conn = await ctx.connect(broadcaster=True)
    conn.behaviour.auto_ack = False
    pending = ctx.adapter.send(
        "publish", channel="tasks.42", event="task.updated", data=_task_updated()
    )
    first = await conn.frame("publish", ctx.timeout)
    assert first is not None, "the publish was not sent"
    conn.drop()
    following = await ctx.reconnect(conn, quiet_ms(ctx, SHORT))
    assert following is not None, "the client did not reconnect"
    await following.send_welcome()
    second = await following.frame("publish", ctx.timeout)
    assert second is not None, "the unacknowledged publish was not retried"
    for key in ("message_id", "channel", "event", "data"):
        assert second.get(key) == first.get(key), f"the retry changed {key}: {second}"
    reply = await asyncio.wait_for(pending, ctx.timeout)
    result = ctx.adapter.outcome("publish", reply)
    assert result["ack"]["message_id"] == first["message_id"], f"ack: {result}"


def _has_message_id(message_id: str, frame: Mapping[str, Any]) -> bool:
    return bool(frame.get("message_id") == message_id)


@check("UNI-PUB-35", tier="broadcaster")
async def check_refused_publish_is_not_retried(ctx: Context) -> None:
    """forbidden, invalid_event_data and invalid_channel refusals are final."""
    ctx.harness.profile = {"backoff": SHORT}
    conn = await ctx.connect(broadcaster=True)
    conn.behaviour.auto_ack = False
    refusals = {
        "forbidden": {},
        "invalid_event_data": {"details": {"pointer": "/status"}},
        "invalid_channel": {},
    }
    for code, extra in refusals.items():
        mid = f"refused-{code}"
        pending = ctx.adapter.send(
            "publish",
            channel="tasks.42",
            event="task.updated",
            data={"status": 3},
            message_id=mid,
        )
        frame = await conn.frame(
            "publish", ctx.timeout, where=functools.partial(_has_message_id, mid)
        )
        if frame is None:
            # Refused locally (for instance by validating typed data): nothing to retry.
            reply = await asyncio.wait_for(pending, ctx.timeout)
            assert reply.get("outcome") != "result", f"{code}: published without a frame"
            continue
        await conn.send(
            {"type": "error", "id": frame["id"], "code": code, "message": "refused", **extra}
        )
        reply = await asyncio.wait_for(pending, ctx.timeout)
        with ctx.part("server_errors_are_reported", "UNI-ADP-6"):
            assert reply.get("outcome") == "errored", f"{code}: reply {reply}"
            assert reply["error"].get("code") == code, f"{code}: reply {reply}"
    await asyncio.sleep(ctx.seconds(quiet_ms(ctx, SHORT)))
    for code in refusals:
        sent = ctx.harness.publishes(f"refused-{code}")
        assert len(sent) <= 1, f"a publish refused with {code} was sent {len(sent)} times"


@check("UNI-PUB-32", "UNI-PUB-36", tier="broadcaster")
async def check_rate_limited_publish_waits_for_retry_after(ctx: Context) -> None:
    """After rate_limited the same publish is not sent again before retry_after_ms."""
    conn = await ctx.connect(broadcaster=True)
    conn.behaviour.auto_ack = False
    retry = 600
    pending = ctx.adapter.send(
        "publish", channel="tasks.42", event="task.updated", data={}, message_id="rl-1"
    )
    frame = await conn.frame("publish", ctx.timeout)
    assert frame is not None, "the publish was not sent"
    await conn.send(
        {
            "type": "error",
            "id": frame["id"],
            "code": "rate_limited",
            "message": "slow down",
            "retry_after_ms": retry,
        }
    )
    refused_at = conn.last_sent_at
    assert refused_at is not None
    await asyncio.wait_for(pending, ctx.timeout)
    conn.behaviour.auto_ack = True
    # The application asks again at once, twice: the client must wait or refuse locally.
    again = [
        ctx.adapter.send(
            "publish", channel="tasks.42", event="task.updated", data={}, message_id="rl-1"
        )
        for _ in range(2)
    ]
    await asyncio.wait_for(asyncio.gather(*again), ctx.timeout + ctx.seconds(retry))
    early = [
        (f.at - refused_at) * 1000
        for _, f in ctx.harness.publishes("rl-1")[1:]
        if (f.at - refused_at) * 1000 < ctx.tol.low(retry)
    ]
    assert early == [], f"re-sent {len(early)} times before retry_after_ms: {early} ms"


@check("UNI-PUB-37", "UNI-SEC-12", tier="broadcaster")
async def check_publish_not_retried_after_the_dedup_window(ctx: Context) -> None:
    """An unacknowledged publish older than dedup_window_ms is reported, not re-sent."""
    window = 300
    ctx.harness.profile = {"backoff": SHORT, "dedup_window_ms": window}
    conn = await ctx.connect(broadcaster=True)
    conn.behaviour.auto_ack = False
    pending = ctx.adapter.send(
        "publish", channel="tasks.42", event="task.updated", data={}, message_id="old-1"
    )
    assert await conn.frame("publish", ctx.timeout) is not None, "the publish was not sent"
    await asyncio.sleep(ctx.seconds(window + 200))
    conn.drop()
    following = await ctx.reconnect(conn, quiet_ms(ctx, SHORT))
    assert following is not None, "the client did not reconnect"
    await following.send_welcome()
    await ctx.call(
        "publish", channel="tasks.42", event="task.updated", data={}, message_id="fence-1"
    )
    await asyncio.sleep(ctx.seconds(window))
    resent = [f for c, f in ctx.harness.publishes("old-1") if c is following]
    assert resent == [], "the publish was re-sent after dedup_window_ms had passed"
    reply = await asyncio.wait_for(pending, ctx.timeout)
    assert reply.get("outcome") == "errored", f"the expired publish was reported as {reply}"


_TARGETING = {"to": ["bob"], "exclude": ["bob"], "user": "bob"}


@check("UNI-CH-15", tier="broadcaster")
async def check_sys_publish_never_carries_to_exclude_or_user(ctx: Context) -> None:
    """A $sys publish asked with to, exclude or user never reaches the wire with them."""
    conn = await ctx.connect(broadcaster=True)
    channel = "$sys.maintenance"
    for name, value in _TARGETING.items():
        with contextlib.suppress(Skipped):  # an interface that cannot express it sends nothing
            await ctx.refused(
                "publish",
                channel=channel,
                event="maintenance.planned",
                data={},
                message_id=f"sys-{name}",
                **{name: value},
            )
    # A plain $sys publish is sent and acknowledged: every earlier frame has arrived.
    await ctx.call(
        "publish", channel=channel, event="maintenance.planned", data={}, message_id="sys-fence"
    )
    sent = [frame for frame in conn.of_type("publish") if frame.get("channel") == channel]
    assert any(frame.get("message_id") == "sys-fence" for frame in sent), sent
    carrying = [frame for frame in sent if set(_TARGETING) & set(frame)]
    assert carrying == [], f"$sys publish sent with targeting fields: {carrying}"


@check("UNI-SEC-12", "UNI-PUB-37", "UNI-PUB-38", tier="broadcaster")
async def check_publish_age_counts_from_its_first_send_across_reconnects(ctx: Context) -> None:
    """The dedup window runs from the first send, not from the latest re-send.

    The harness holds each reconnection's welcome: the re-send on the second connection
    comes at 0.4 window (inside it: re-sent with the same message_id), the third
    connection opens at 1.2 window (past it: not re-sent, reported as unknown), although
    only 0.8 window have passed since the re-send.
    """
    window = round(1500 * ctx.tol.scale)
    ctx.harness.profile = {"backoff": SHORT, "dedup_window_ms": window}
    conn = await ctx.connect(broadcaster=True)
    conn.behaviour.auto_ack = False
    pending = ctx.adapter.send(
        "publish", channel="tasks.42", event="task.updated", data={}, message_id="age-1"
    )
    first = await conn.frame("publish", ctx.timeout)
    assert first is not None, "the publish was not sent"
    sent_at = ctx.harness.publishes("age-1")[0][1].at

    async def welcome_at(following: HConn, fraction: float) -> None:
        await asyncio.sleep(max(0.0, sent_at + fraction * window / 1000 - time.monotonic()))
        await following.send_welcome()

    conn.drop()
    second = await ctx.reconnect(conn, quiet_ms(ctx, SHORT))
    assert second is not None, "the client did not reconnect"
    second.behaviour.auto_ack = False
    await welcome_at(second, 0.4)
    resent = await second.frame("publish", ctx.timeout)
    assert resent is not None, "not re-sent within dedup_window_ms after a lost ack"
    assert resent["message_id"] == "age-1", f"the re-send changed message_id: {resent}"
    age = (ctx.harness.publishes("age-1")[-1][1].at - sent_at) * 1000
    second.drop()
    third = await ctx.reconnect(second, quiet_ms(ctx, SHORT))
    assert third is not None, "the client did not reconnect"
    await welcome_at(third, 1.2)
    await ctx.call(
        "publish", channel="tasks.42", event="task.updated", data={}, message_id="fence-2"
    )
    again = [f for c, f in ctx.harness.publishes("age-1") if c is third]
    assert again == [], (
        f"re-sent {1.2 * window:.0f} ms after the first send (window {window} ms; the "
        f"previous re-send was {age:.0f} ms after the first)"
    )
    reply = await asyncio.wait_for(pending, ctx.timeout)
    assert reply.get("outcome") == "errored", f"the expired publish was reported as {reply}"
