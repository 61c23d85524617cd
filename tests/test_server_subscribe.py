"""Subscribe and unsubscribe over real sockets (spec section 5, UNI-SUB)."""

from __future__ import annotations

from typing import Any

import pytest

from server_harness import asynctest, running_server, token


@asynctest
async def test_server_confirms_exact_subscription_with_current_head() -> None:
    """UNI-SUB-1, UNI-SUB-2: subscribed echoes id and pattern, with ts and the head position."""
    async with running_server() as h:
        client = await h.connect()
        first = await client.subscribe("tasks.42")
        assert first["channel"] == "tasks.42"
        assert isinstance(first["ts"], int)
        assert first["position"]["offset"] == 0
        await client.unsubscribe("tasks.42")
        ack = await client.publish("tasks.42", 1)
        await client.publish("tasks.42", 2)
        again = await client.subscribe("tasks.42")
        assert again["position"] == {"epoch": ack["epoch"], "offset": 2}
        assert again["ts"] >= first["ts"]


@pytest.mark.parametrize("pattern", ["tasks.>", "tasks.*", "*.status", "$me.>", ">"])
def test_server_confirms_wildcard_subscription_without_position(pattern: str) -> None:
    """UNI-SUB-2: a pattern with * or > gets no position."""

    @asynctest
    async def run() -> None:
        async with running_server() as h:
            client = await h.connect(token(subscribe=(">",)))
            reply = await client.subscribe(pattern)
            assert "position" not in reply
            assert reply["channel"] == pattern

    run()


@asynctest
async def test_server_accepts_overlapping_patterns_and_delivers_each_event_once() -> None:
    """UNI-SUB-3, UNI-DEL-13: tasks.> and tasks.42 coexist; an event matching both comes once."""
    async with running_server() as h:
        client = await h.connect()
        await client.subscribe("tasks.>")
        await client.subscribe("tasks.42")
        await client.subscribe("tasks.*")
        await client.publish("tasks.42", "once")
        frames = await client.fence()
        assert [f["data"] for f in frames if f["type"] == "event"] == ["once"]


@asynctest
async def test_server_refuses_same_pattern_twice_and_keeps_the_first_filter() -> None:
    """UNI-SUB-4, UNI-SUB-6: already_subscribed leaves subscription and filter unchanged."""
    async with running_server() as h:
        client = await h.connect()
        await client.subscribe("tasks.>", filter={"eq": ["prio", 1]})
        await client.error({"type": "subscribe", "channel": "tasks.>"}, "already_subscribed")
        await client.publish("tasks.1", "low", attrs={"prio": 2})
        await client.publish("tasks.1", "high", attrs={"prio": 1})
        frames = await client.fence()
        assert [f["data"] for f in frames if f["type"] == "event"] == ["high"]


@asynctest
async def test_server_refuses_subscriptions_beyond_the_cap_counting_me_and_sys() -> None:
    """UNI-SUB-5, UNI-LIM-5: $me and $sys count; a freed slot can be used again."""
    async with running_server(max_subscriptions=3) as h:
        client = await h.connect(token(subscribe=("tasks.>", "$sys.>")))
        await client.subscribe("$me.inbox")
        await client.subscribe("$sys.alerts")
        await client.subscribe("tasks.1")
        await client.error({"type": "subscribe", "channel": "tasks.2"}, "subscription_limit")
        await client.unsubscribe("$sys.alerts")
        await client.subscribe("tasks.2")


@asynctest
async def test_server_refuses_subscription_outside_grants_without_effect() -> None:
    """UNI-CH-17, UNI-SUB-6: forbidden creates nothing and delivers nothing."""
    async with running_server() as h:
        client = await h.connect(token(subscribe=("tasks.*",), publish=(">",)))
        await client.error({"type": "subscribe", "channel": "tasks.>"}, "forbidden")
        await client.error({"type": "subscribe", "channel": "docs.1"}, "forbidden")
        await client.publish("tasks.1.sub", "deep")
        await client.publish("docs.1", "docs")
        assert await client.fence() == []
        await client.error({"type": "unsubscribe", "channel": "tasks.>"}, "not_subscribed")


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        ({"channel": "Docs.1", "filter": {"bad": 1}}, "invalid_channel"),
        (
            {
                "channel": "docs.1",
                "filter": {"bad": 1},
                "from": {"x.y": {"epoch": "e", "offset": 1}},
            },
            "invalid_filter",
        ),
        (
            {"channel": "docs.1", "from": {"docs.2": {"epoch": "e", "offset": 1}}},
            "invalid_position",
        ),
        ({"channel": "docs.1"}, "forbidden"),
        ({"channel": "tasks.1", "filter": {"eq": ["a", 1]}}, "already_subscribed"),
        ({"channel": "tasks.2"}, "subscription_limit"),
    ],
)
def test_server_reports_the_first_failing_subscribe_check(
    request_: dict[str, Any], code: str
) -> None:
    """UNI-SUB-7: schema, grammar, filter, from keys, grants, duplicate, cap - in this order."""

    @asynctest
    async def run() -> None:
        async with running_server(max_subscriptions=1) as h:
            client = await h.connect(token(subscribe=("tasks.>",)))
            await client.subscribe("tasks.1")
            await client.error({"type": "subscribe", **request_}, code)

    run()


@asynctest
async def test_server_refuses_from_key_not_matched_by_the_pattern() -> None:
    """UNI-SUB-11: a from key outside the pattern, or a pattern as key, is invalid_position."""
    async with running_server() as h:
        client = await h.connect()
        pos = {"epoch": "e", "offset": 0}
        await client.error(
            {"type": "subscribe", "channel": "tasks.*", "from": {"tasks.1.2": pos}},
            "invalid_position",
        )
        await client.error(
            {"type": "subscribe", "channel": "tasks.>", "from": {"tasks.*": pos}},
            "invalid_position",
        )
        await client.subscribe("tasks.*", **{"from": {"tasks.1": pos}})


@asynctest
async def test_server_stops_delivery_after_unsubscribed() -> None:
    """UNI-SUB-12, UNI-SUB-14: unsubscribed (requested) ends delivery for that pattern."""
    async with running_server() as h:
        client = await h.connect()
        publisher = await h.connect(token(sub="bob"))
        await client.subscribe("tasks.>")
        await publisher.publish("tasks.1", "before")
        [event] = await client.events(1)
        assert event["data"] == "before"
        reply = await client.unsubscribe("tasks.>")
        assert reply["reason"] == "requested"
        await publisher.publish("tasks.1", "after")
        assert await client.fence() == []


@asynctest
async def test_server_refuses_unsubscribe_of_inactive_pattern_without_effect() -> None:
    """UNI-SUB-13: not_subscribed for unknown strings, even when a pattern overlaps."""
    async with running_server() as h:
        client = await h.connect()
        await client.subscribe("tasks.>")
        await client.error({"type": "unsubscribe", "channel": "tasks.1"}, "not_subscribed")
        await client.error({"type": "unsubscribe", "channel": "tasks.*"}, "not_subscribed")
        await client.publish("tasks.1", "still subscribed")
        [event] = await client.events(1)
        assert event["data"] == "still subscribed"


@pytest.mark.parametrize(
    "flt",
    [
        {"eq": ["a", 1], "ne": ["b", 2]},
        {"eq": ["a"]},
        {"in": ["a", []]},
        {"lt": ["a", "x"]},
        {"and": []},
        {"or": [{"eq": ["a", 1]}] * 17},
        {"nope": ["a", 1]},
        {"eq": ["Bad-Name", 1]},
        {"not": {"not": {"not": {"not": {"not": {"not": {"not": {"not": {"exists": "a"}}}}}}}}},
        [],
    ],
)
def test_server_refuses_malformed_filters_with_invalid_filter(flt: Any) -> None:
    """UNI-SUB-17, UNI-SUB-18: operators, operand shapes, list sizes and depth are checked."""

    @asynctest
    async def run() -> None:
        async with running_server() as h:
            client = await h.connect()
            reply = await client.request({"type": "subscribe", "channel": "tasks.>", "filter": flt})
            assert reply["type"] == "error"
            assert reply["code"] in ("invalid_filter", "invalid_message")
            if isinstance(flt, dict):
                assert reply["code"] == "invalid_filter"
            await client.subscribe("tasks.>")

    run()


@asynctest
async def test_server_accepts_filter_of_exactly_max_nodes_and_refuses_one_more() -> None:
    """UNI-SUB-18: max_filter_nodes nodes pass; one more is invalid_filter."""
    async with running_server(max_filter_nodes=4) as h:
        client = await h.connect()
        three = [{"exists": "a"}, {"exists": "b"}, {"exists": "c"}]
        await client.subscribe("tasks.1", filter={"and": three})
        await client.error(
            {
                "type": "subscribe",
                "channel": "tasks.2",
                "filter": {"and": [*three, {"exists": "d"}]},
            },
            "invalid_filter",
        )


@asynctest
async def test_server_delivers_only_events_the_filter_accepts() -> None:
    """UNI-SUB-20: filters over $event and attrs, with the JSON equality rules of section 5."""
    async with running_server() as h:
        client = await h.connect()
        flt = {
            "and": [
                {"eq": ["$event", "task.moved"]},
                {"or": [{"eq": ["prio", 1]}, {"gte": ["size", 10]}]},
                {"ne": ["hidden", True]},
            ]
        }
        await client.subscribe("tasks.>", filter=flt)
        cases = [
            ("task.moved", {"prio": 1}, True),
            ("task.moved", {"prio": 1.0}, True),
            ("task.moved", {"prio": "1"}, False),
            ("task.moved", {"prio": True}, False),
            ("task.other", {"prio": 1}, False),
            ("task.moved", {"size": 10}, True),
            ("task.moved", {"size": True}, False),
            ("task.moved", {"prio": 1, "hidden": True}, False),
            ("task.moved", {}, False),
        ]
        for n, (event_type, attrs, _) in enumerate(cases):
            await client.publish("tasks.1", n, event=event_type, attrs=attrs)
        frames = await client.fence()
        got = [f["data"] for f in frames if f["type"] == "event"]
        assert got == [n for n, (_, _, want) in enumerate(cases) if want]
