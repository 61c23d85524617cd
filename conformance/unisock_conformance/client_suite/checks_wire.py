"""Frames the client must tolerate or refuse (sections 1, 8 and 12)."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
from collections.abc import Callable
from typing import Any, Final

from unisock_conformance.client_suite.framework import Context, backoff_range, check
from unisock_conformance.client_suite.harness import HConn


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


@check("UNI-TR-12")
async def check_client_closes_with_1003_on_a_binary_first_message(ctx: Context) -> None:
    """A binary frame in answer to hello, though it carries a valid welcome, is closed with
    1003 (4000 in browsers): the client sends nothing after its hello (UNI-TR-12 applies in
    every state)."""
    from unisock_conformance.client_suite.checks_reconnect import SHORT, expect_reconnect

    ctx.harness.profile = {"backoff": SHORT}
    conn = await ctx.connect()
    await conn.close(1011, "internal_error")
    low, high = backoff_range(SHORT, 10)
    conn, _delay = await expect_reconnect(ctx, conn, low, high, "after a close with 1011")
    await conn.send_bytes(json.dumps(conn.welcome_message()).encode())
    assert await conn.ended(ctx.timeout), "the client kept the connection open"
    assert conn.client_close is not None and conn.client_close[0] in BINARY_CLOSE_CODES, (
        f"a binary welcome: the client closed with {conn.client_close} (ended by {conn.ended_by})"
    )
    sent = [frame.type for frame in conn.frames]
    assert sent == ["hello"], f"a binary welcome: the client then sent {sent[1:]}"


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


@check("UNI-TR-6")
async def check_client_sends_nothing_when_the_101_selects_no_subprotocol(ctx: Context) -> None:
    """A 101 without unisock.v1 gets no hello and no frame: closed, and retried as failed."""
    ctx.harness.select_protocol = False
    ctx.token = ctx.harness.mint()
    pending = ctx.adapter.send(
        "connect", url=ctx.harness.url, token=ctx.token, timeout_ms=int(ctx.timeout * 2000)
    )
    for index in range(2):
        conn = await ctx.harness.connection(index, ctx.timeout)
        assert conn is not None, f"attempt {index}: the client did not retry the failed attempt"
        assert await conn.ended(ctx.timeout), (
            f"attempt {index}: the client kept a connection whose 101 selected no subprotocol"
        )
        assert conn.frames == [], (
            f"attempt {index}: the client sent {[f.type for f in conn.frames]} on a connection "
            "that did not select unisock.v1"
        )
    ctx.harness.select_protocol = True
    conn = await ctx.harness.hello(2, ctx.timeout)
    assert conn is not None, "the client did not retry once the server selected unisock.v1"
    await conn.send_welcome()
    ctx.adapter.outcome("connect", await asyncio.wait_for(pending, ctx.timeout))


def _with_id(message_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda frame: bool(frame.get("message_id") == message_id)


@check("UNI-ERR-13")
async def check_unknown_error_code_fails_its_request_and_nothing_else(ctx: Context) -> None:
    """An error with an unknown code ends the request with that id; the connection stays."""
    conn = await ctx.connect()
    conn.behaviour.auto_ack = False
    conn.behaviour.auto_subscribe = False
    requests = {
        "publish": ctx.adapter.send(
            "publish", channel="tasks.42", event="task.updated", data={}, message_id="unk-1"
        ),
        "subscribe": ctx.adapter.send("subscribe", channel="tasks.43"),
    }
    for kind, pending in requests.items():
        frame = await conn.frame(kind, ctx.timeout)
        assert frame is not None, f"the {kind} was not sent"
        code = f"x_future_{kind}_refusal"
        await conn.send({"type": "error", "id": frame["id"], "code": code, "message": "new"})
        try:
            reply = await asyncio.wait_for(asyncio.shield(pending), ctx.timeout)
        except TimeoutError:
            raise AssertionError(f"the {kind} refused with {code} never completed") from None
        # Failed by the server's error, not by a local timeout after ignoring it.
        error = reply.get("error") or {}
        assert reply.get("outcome") == "errored" and error.get("kind") == "server", (
            f"the {kind} refused with {code}: {reply}"
        )
        with ctx.part("unknown_codes_are_reported", "UNI-ADP-6"):
            assert error.get("code") == code, f"the {kind}: {reply}"
    with ctx.part("known_codes_are_reported_with_retry_after", "UNI-ADP-6"):
        pending = ctx.adapter.send(
            "publish", channel="tasks.42", event="task.updated", data={}, message_id="unav-1"
        )
        frame = await conn.frame("publish", ctx.timeout, where=_with_id("unav-1"))
        assert frame is not None, "the publish was not sent"
        await conn.send(
            {
                "type": "error",
                "id": frame["id"],
                "code": "unavailable",
                "message": "broker down",
                "retry_after_ms": 300,
            }
        )
        reply = await asyncio.wait_for(pending, ctx.timeout)
        error = reply.get("error") or {}
        assert (error.get("code"), error.get("retry_after_ms")) == ("unavailable", 300), reply
    conn.behaviour.auto_ack = True
    await ctx.call("publish", channel="tasks.42", event="task.updated", data={}, message_id="f-1")
    assert conn.open, f"the client closed the connection: {conn.client_close}"
    assert len(ctx.harness.connections) == 1, "the client reconnected"


# Spellings a careless client rewrites: case, spaces, percent-escapes, doubled dots,
# Unicode compatibility and canonical equivalents, invisible characters.
UNTOUCHED_NAMES: Final = (
    "Tasks.Review",
    " tasks.1",
    "tasks.1 ",
    "tasks%2E1",
    "tasks..1",
    "tasks.1.",
    "\uff54asks.1",
    "tasks.\u212a",
    "tasks.cafe\u0301",
    "tasks.caf\u00e9",
    "tasks.1\u200b",
    "$ME.inbox",
    "TASKS.>",
)
SENT_AS_IS: Final = ("tasks.ok-1_2", "$me.inbox", "tasks.*.x", "tasks.>")


@check("UNI-CH-6")
async def check_channel_names_are_sent_unchanged_or_refused(ctx: Context) -> None:
    """Every name the application gives goes out byte for byte, or is refused locally."""
    ctx.harness.any_channel = True
    conn = await ctx.connect()
    for name in (*UNTOUCHED_NAMES, *SENT_AS_IS):
        await ctx.refused("subscribe", channel=name)
    for index, name in enumerate((*UNTOUCHED_NAMES[:11], "tasks.ok-1_2")):
        await ctx.refused(
            "publish", channel=name, event="note.added", data={}, message_id=f"ch6-{index}"
        )
    # Replies to everything above have arrived, so every frame the client sent has too.
    given = {*UNTOUCHED_NAMES, *SENT_AS_IS}
    sent = [f.message["channel"] for f in conn.frames if f.type in ("subscribe", "publish")]
    changed = [name for name in sent if name not in given]
    assert changed == [], f"the client sent channel names it was not given: {changed!r}"
    subscribed = {f["channel"] for f in conn.of_type("subscribe")}
    missing = [name for name in SENT_AS_IS if name not in subscribed]
    assert missing == [], f"valid patterns were not sent: {missing!r}"


class _Sizer:
    """Publishes texts of chosen sizes: learns the client's framing cost, then aims at sizes.

    A publish of ``unit * k + "a" * r`` costs ``base + cost * k + r`` octets; two
    calibration publishes give ``base`` and ``cost`` (3 octets for "€" sent raw, 6 when the
    client escapes it; both are fine, the limit is on what goes out).
    """

    def __init__(self, ctx: Context, conn: HConn) -> None:
        self.ctx = ctx
        self.conn = conn
        self.ids = itertools.count(10)

    async def publish(self, text: str) -> tuple[int | None, dict[str, Any]]:
        """The octets of the frame sent (None if none was) and the adapter's reply."""
        mid = f"lim-{next(self.ids)}"
        reply = await self.ctx.adapter.request(
            "publish",
            timeout=self.ctx.timeout,
            channel="tasks.42",
            event="note.added",
            data={"t": text},
            message_id=mid,
        )
        sent = [
            f for f in self.conn.frames if f.type == "publish" and f.message["message_id"] == mid
        ]
        return (len(str(sent[-1].raw).encode("utf-8")) if sent else None), reply

    async def aim(self, unit: str, octets: int) -> tuple[str, int | None, dict[str, Any]]:
        """Publish a text the client frames in ``octets`` octets (by its measured costs)."""
        small, _ = await self.publish(unit * 10)
        large, _ = await self.publish(unit * 20)
        assert small is not None and large is not None, "a small publish was not sent"
        cost = (large - small) / 10
        base = small - 10 * cost
        count = int((octets - base - 8) // cost)
        text = unit * count + "a" * round(octets - base - cost * count)
        size, reply = await self.publish(text)
        return text, size, reply


@check("UNI-LIM-3")
async def check_message_size_limit_counts_utf8_octets(ctx: Context) -> None:
    """At max_message_bytes octets a publish goes out; one octet more is refused locally.

    Also with text of 2-, 3- and 4-octet characters, whose character count is far below the
    limit: a client counting characters (or escaped text it does not send) is caught.
    """
    limit = 700
    conn = await ctx.connect(welcome={"limits": {"max_message_bytes": limit}})
    sizer = _Sizer(ctx, conn)
    for unit in ("a", "\u00e9\u20ac\U0001f600"):
        kind = "ASCII" if unit == "a" else "multi-octet"
        for attempt in range(2):  # a request id one digit longer moves the aim by one
            text, size, reply = await sizer.aim(unit, limit)
            if size is not None or attempt:
                break
        assert size is not None, (
            f"{kind}: a publish of {limit} octets ({len(text)} characters of data) was "
            f"refused: {reply}"
        )
        assert size <= limit, f"{kind}: a frame of {size} octets, over {limit}"
        for attempt in range(3):  # aimed past the limit until the client's frame would be
            text, size, reply = await sizer.aim(unit, limit + 1 + attempt)
            assert size is None or size <= limit, (
                f"{kind}: the client sent a frame of {size} octets ({len(text)} characters "
                f"of data), over max_message_bytes {limit}"
            )
            if size is None:
                break
        assert size is None, f"{kind}: could not aim past the limit (frames of {size} octets)"
        assert reply.get("outcome") == "errored", (
            f"{kind}: a publish over the limit was neither sent nor refused: {reply}"
        )
        with ctx.part("oversized_requests_are_local_failures", "UNI-ADP-6"):
            assert reply["error"].get("kind") == "local", f"{kind}: {reply}"
    assert conn.open, f"the client closed the connection: {conn.client_close}"


def _filter(nodes: int) -> dict[str, Any]:
    """A filter of exactly ``nodes`` nodes: an ``or`` over ``nodes - 1`` comparisons."""
    return {"or": [{"eq": ["priority", index]} for index in range(nodes - 1)]}


@check("UNI-LIM-4")
async def check_requests_over_announced_limits_are_refused_locally(ctx: Context) -> None:
    """At max_targets, max_attrs and max_filter_nodes a request goes out; one more stays home."""
    limits = {"max_targets": 3, "max_attrs": 2, "max_filter_nodes": 4}
    conn = await ctx.connect(welcome={"limits": limits})
    users = ["bob", "carol", "dave", "erin"]
    attrs = {"a": 1, "b": 2, "c": 3}
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("max_targets (to)", "publish", {"to": users[:3]}),
        ("max_targets (exclude)", "publish", {"exclude": users[:3]}),
        ("max_attrs", "publish", {"attrs": dict(list(attrs.items())[:2])}),
        ("max_filter_nodes", "subscribe", {"filter": _filter(4)}),
    ]
    over: list[tuple[str, str, dict[str, Any]]] = [
        ("max_targets (to)", "publish", {"to": users}),
        ("max_targets (exclude)", "publish", {"exclude": users}),
        ("max_attrs", "publish", {"attrs": attrs}),
        ("max_filter_nodes", "subscribe", {"filter": _filter(5)}),
    ]
    for index, (what, cmd, extra) in enumerate([*cases, *over]):
        at_limit = index < len(cases)
        before = len(conn.frames)
        if cmd == "publish":
            args: dict[str, Any] = {"channel": "tasks.42", "event": "note.added", "data": {}}
            args["message_id"] = f"lim4-{index}"
        else:
            args = {"channel": f"tasks.{index}"}
        refusal = await ctx.refused(cmd, **args, **extra)
        sent = [f for f in conn.frames[before:] if f.type == cmd]
        if at_limit:
            assert refusal is None and sent, f"{what}: a request at the limit was not sent"
        else:
            assert not sent, f"{what}: a request over the limit was sent"
            assert refusal is not None and refusal.kind == "local", (
                f"{what}: a request over the limit was not refused locally: {refusal}"
            )


@check("UNI-HB-12")
async def check_attempt_without_welcome_is_abandoned_after_auth_timeout(ctx: Context) -> None:
    """No welcome within the announced auth_timeout_ms of hello: the attempt ends, another follows.

    The harness holds the opening handshake for half the deadline, so a client that times
    the welcome from the start of the attempt instead of from hello gives up that much
    early. The wait is measured from the hello's arrival, not its sending, so both bounds
    get the upper tolerance of spec 16.6.
    """
    from unisock_conformance.client_suite.checks_reconnect import SHORT, quiet_ms

    deadline = 1000
    ctx.harness.profile = {"backoff": SHORT, "limits": {"auth_timeout_ms": deadline}}
    conn = await ctx.connect()
    ctx.harness.handshake_hold_s = deadline / 2000
    await conn.close(1011, "internal_error")
    waiting = await ctx.reconnect(conn, quiet_ms(ctx, SHORT) + deadline / 2)
    assert waiting is not None, "no reconnection after 1011"
    hello_at = waiting.frames[0].at
    limit = ctx.tol.high(deadline)
    ended = await waiting.ended(ctx.seconds(limit) + 0.05)
    assert ended and waiting.ended_by == "client", (
        f"an attempt without welcome was kept beyond {limit:.0f} ms (auth_timeout_ms {deadline})"
    )
    assert waiting.ended_at is not None
    waited = (waiting.ended_at - hello_at) * 1000
    earliest = deadline - (limit - deadline)
    assert waited >= earliest, (
        f"the client gave up {waited:.0f} ms after hello, before auth_timeout_ms {deadline}"
    )
    following = await ctx.reconnect(waiting, quiet_ms(ctx, SHORT) + deadline / 2)
    assert following is not None, "the abandoned attempt was not followed by another one"


def _without(message: dict[str, Any], path: str) -> dict[str, Any]:
    """A copy of ``message`` without the member at the dotted ``path``."""
    result = copy.deepcopy(message)
    *parents, last = path.split(".")
    inner = result
    for key in parents:
        inner = inner[key]
    del inner[last]
    return result


EARLY_EVENT: Final = {
    "type": "event",
    "channel": "tasks.42",
    "epoch": "e-1",
    "offset": 1,
    "event": "task.updated",
    "data": {},
    "message_id": "early-1",
    "ts": 0,
}
# What the harness answers hello with instead of a valid welcome: types a careless client
# acts on (a pong to the ping, the event delivered), an unknown type, texts that are no
# JSON object, and welcomes that break their schema at the top, deeper down and in a value.
NOT_WELCOME: Final[tuple[tuple[str, Callable[[HConn], dict[str, Any] | str]], ...]] = (
    ("a ping", lambda conn: {"type": "ping", "nonce": "before-welcome", "id": "p0"}),
    ("an event", lambda conn: EARLY_EVENT),
    ("an unknown type", lambda conn: {"type": "x_future_greeting", "protocol": "unisock.v1"}),
    ("text that is not JSON", lambda conn: "welcome"),
    ("a JSON array", lambda conn: json.dumps([conn.welcome_message()])),
    (
        "a welcome without connection_id",
        lambda conn: _without(conn.welcome_message(), "connection_id"),
    ),
    (
        "a welcome without limits.max_queue",
        lambda conn: _without(conn.welcome_message(), "limits.max_queue"),
    ),
    ("a welcome of spec_version 2.0.0", lambda conn: conn.welcome_message(spec_version="2.0.0")),
)
# 4000 is what a browser can send in place of 1002 (UNI-LC-21); no close frame is an abort.
NOT_WELCOME_CLOSE_CODES: Final = (1002, 4000)


@check("UNI-LC-21", timeout_s=60)
async def check_first_message_other_than_welcome_ends_the_attempt_and_backs_off(
    ctx: Context,
) -> None:
    """hello answered by anything but a valid welcome: closed, nothing sent, retried later.

    Each reconnection is answered by one of NOT_WELCOME. The client ends that connection,
    with 1002 (4000 in browsers) or without a closing handshake, sends nothing after its
    hello, and opens the next one after a backoff delay within [F, cap_ms] of the last
    welcome: not at once, and not never. auth_timeout_ms is far beyond the waits, so a
    client that only abandons the attempt for want of a welcome (UNI-HB-12) fails. A valid
    welcome at the end opens the session again, and the subscription is resumed.
    """
    from unisock_conformance.client_suite.checks_reconnect import SHORT, expect_reconnect, settle

    ctx.harness.profile = {"backoff": SHORT, "limits": {"auth_timeout_ms": 600000}}
    conn = await ctx.connect()
    await ctx.call("subscribe", channel="tasks.42")
    await conn.close(1011, "internal_error")
    low, high = backoff_range(SHORT, 10)
    previous = "a close with 1011"
    for what, answer in NOT_WELCOME:
        conn, _delay = await expect_reconnect(ctx, conn, low, high, f"after {previous}")
        previous = f"hello answered by {what}"
        await conn.send(answer(conn))
        ended = await conn.ended(ctx.timeout)
        assert ended and conn.ended_by == "client", f"{previous}: the connection was kept open"
        sent = [frame.type for frame in conn.frames]
        assert sent == ["hello"], f"{previous}: the client then sent {sent[1:]}"
        assert conn.client_close is None or conn.client_close[0] in NOT_WELCOME_CLOSE_CODES, (
            f"{previous}: the client closed with {conn.client_close}"
        )
    conn, _delay = await expect_reconnect(ctx, conn, low, high, f"after {previous}")
    await settle(ctx, conn)
    resumed = await conn.frame("subscribe", ctx.timeout)
    assert resumed is not None, "after a valid welcome the subscription was not resumed"
