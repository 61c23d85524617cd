"""Publish over real sockets: checks, targeting, typed events, idempotency, rate (UNI-PUB)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from redis_support import delete_prefix, fresh_prefix, require_redis
from server_harness import LIMIT, asynctest, running_server, token
from unisock.broker import PublishRecord, PublishResult
from unisock.memory_broker import MemoryBroker
from unisock.messages import encode_event_frame
from unisock.server import PUBLISH_DEPTH

TASK = {
    "task_id": "42",
    "version": 7,
    "changes": {"status": "in_progress", "progress": 40},
    "updated_by": "alice",
    "updated_at": 1764120000456,
}


@asynctest
async def test_server_acks_publish_and_delivers_the_published_values() -> None:
    """UNI-PUB-14, UNI-PUB-15, UNI-PUB-25, UNI-PUB-28: ack echoes id; event mirrors publish."""
    async with running_server() as h:
        alice = await h.connect()
        bob = await h.connect(token(sub="bob"))
        await bob.subscribe("tasks.42")
        data = {"nested": [1, 2.5, None, True, "é"], "empty": {}}
        await alice.send(
            {
                "type": "publish",
                "id": "p1",
                "channel": "tasks.42",
                "event": "note.posted",
                "data": data,
                "message_id": "9f1c",
                "attrs": {"prio": 2, "label": "x", "flag": False, "none": None},
            }
        )
        ack = await alice.expect_next("ack", id="p1")
        assert ack["channel"] == "tasks.42"
        assert ack["message_id"] == "9f1c"
        assert (ack["offset"], ack["duplicate"]) == (1, False)
        [event] = await bob.events(1)
        assert event["data"] == data
        assert event["event"] == "note.posted"
        assert event["message_id"] == "9f1c"
        assert event["attrs"] == {"prio": 2, "label": "x", "flag": False, "none": None}
        assert event["publisher"] == "alice"
        assert (event["epoch"], event["offset"]) == (ack["epoch"], ack["offset"])


@asynctest
async def test_server_acks_duplicate_with_original_position_and_delivers_nothing() -> None:
    """UNI-PUB-21, UNI-PUB-22: same message_id from another connection -> duplicate ack."""
    async with running_server() as h:
        bob = await h.connect(token(sub="bob"))
        await bob.subscribe("tasks.42")
        first = await h.connect()
        original = await first.publish("tasks.42", "v1", message_id="m-1")
        await first.close()
        second = await h.connect(token(sid="other-tab"))
        retry = await second.publish("tasks.42", "v2 differs", message_id="m-1")
        assert retry["duplicate"] is True
        assert (retry["epoch"], retry["offset"]) == (original["epoch"], original["offset"])
        fence = await second.publish("tasks.42", "fence")
        assert fence["offset"] == original["offset"] + 1
        events = await bob.events(2)
        assert [e["data"] for e in events] == ["v1", "fence"]


@asynctest
async def test_server_keeps_no_dedup_record_for_a_refused_publish() -> None:
    """UNI-PUB-23, UNI-PUB-27: a refused publish takes no offset; its corrected retry is new."""
    async with running_server() as h:
        alice = await h.connect()
        bad = dict(TASK, version=0)
        reply = await alice.publish_raw("tasks.42", bad, event="task.updated", message_id="m-9")
        assert reply["code"] == "invalid_event_data"
        ack = await alice.publish("tasks.42", TASK, event="task.updated", message_id="m-9")
        assert (ack["offset"], ack["duplicate"]) == (1, False)


@pytest.mark.parametrize("missing", ["channel", "event", "data", "message_id"])
def test_server_refuses_publish_missing_a_required_field(missing: str) -> None:
    """UNI-PUB-1: id, channel, event, data and message_id are required."""

    @asynctest
    async def run() -> None:
        async with running_server() as h:
            alice = await h.connect()
            msg = {
                "type": "publish",
                "channel": "tasks.1",
                "event": "a",
                "data": 1,
                "message_id": "m",
            }
            del msg[missing]
            await alice.error(msg, "invalid_message")
            assert (await alice.publish("tasks.1", "next"))["offset"] == 1

    run()


@pytest.mark.parametrize(
    "fields",
    [
        {"event": "Task.Updated"},
        {"event": "a" * 65},
        {"message_id": "m" * 129},
        {"message_id": ""},
        {"exclude_self": "yes"},
        {"to": []},
        {"to": "bob"},
        {"key": ""},
        {"attrs": {"Bad": 1}},
        {"attrs": {"a": [1]}},
        {"attrs": {"a": "x" * 257}},
    ],
)
def test_server_refuses_publish_violating_the_schema(fields: dict[str, Any]) -> None:
    """UNI-PUB-1: type name grammar, lengths, types, attrs shape -> invalid_message."""

    @asynctest
    async def run() -> None:
        async with running_server() as h:
            alice = await h.connect()
            msg = {
                "type": "publish",
                "channel": "tasks.1",
                "event": "a",
                "data": 1,
                "message_id": "m",
            }
            await alice.error({**msg, **fields}, "invalid_message")

    run()


@asynctest
async def test_server_refuses_publish_to_a_pattern_with_invalid_channel() -> None:
    """UNI-PUB-2: a publish channel is a name, never a pattern."""
    async with running_server() as h:
        alice = await h.connect()
        for channel in ("tasks.*", "tasks.>", ">"):
            reply = await alice.publish_raw(channel, 1)
            assert reply["code"] == "invalid_channel"


@asynctest
async def test_server_refuses_targets_and_attrs_beyond_the_limits() -> None:
    """UNI-PUB-3: max_targets entries and max_attrs keys pass; one more is invalid_message."""
    async with running_server(max_targets=2, max_attrs=2) as h:
        alice = await h.connect()
        assert (await alice.publish_raw("tasks.1", 1, to=["a", "b"]))["type"] == "ack"
        assert (await alice.publish_raw("tasks.1", 1, exclude=["a", "b"]))["type"] == "ack"
        assert (await alice.publish_raw("tasks.1", 1, attrs={"a": 1, "b": 2}))["type"] == "ack"
        for extra in (
            {"to": ["a", "b", "c"]},
            {"exclude": ["a", "b", "c"]},
            {"attrs": {"a": 1, "b": 2, "c": 3}},
        ):
            reply = await alice.publish_raw("tasks.1", 1, **extra)
            assert reply["code"] == "invalid_message", extra
        assert (await alice.publish("tasks.1", "next"))["offset"] == 4


@asynctest
async def test_server_authorises_publish_by_grants_role_and_namespace() -> None:
    """UNI-PUB-4..7, UNI-PUB-9: grants, $sys role, $sys targeting and user field rules."""
    async with running_server() as h:
        alice = await h.connect(token(publish=("tasks.*", "$sys.>", "$me.>")))

        async def refused(channel: str, code: str, **extra: Any) -> None:
            reply = await alice.publish_raw(channel, 1, **extra)
            assert (reply["type"], reply.get("code")) == ("error", code), (channel, extra)

        await refused("tasks.1.2", "forbidden")
        await refused("docs.1", "forbidden")
        await refused("$sys.maintenance", "forbidden")  # role user, even with a grant
        await refused("$me.inbox", "forbidden", user="bob")
        await refused("tasks.1", "invalid_message", user="alice")
        svc = await h.connect(token(sub="svc", publish=("$sys.>", "tasks.>"), broadcaster=True))
        for extra in ({"to": ["a"]}, {"exclude": ["a"]}, {"user": "a"}):
            reply = await svc.publish_raw("$sys.maintenance", 1, **extra)
            assert reply["code"] == "invalid_message"
        assert (await svc.publish("$sys.maintenance", 1))["offset"] == 1
        own = await alice.publish("$me.inbox", "to self", user="alice")
        assert own["offset"] == 1


@asynctest
async def test_server_sequences_me_publish_in_the_named_users_channel() -> None:
    """UNI-PUB-8: $me with user goes to that user's channel; without user to the publisher's."""
    async with running_server() as h:
        bob = await h.connect(token(sub="bob"))
        await bob.subscribe("$me.inbox")
        svc = await h.connect(token(sub="svc", publish=("$me.>",), broadcaster=True))
        await svc.subscribe("$me.inbox")
        await svc.publish("$me.inbox", "for bob", user="bob")
        await svc.publish("$me.inbox", "for svc")
        [to_bob] = await bob.events(1)
        [to_svc] = await svc.events(1)
        assert (to_bob["data"], to_bob["offset"]) == ("for bob", 1)
        assert (to_svc["data"], to_svc["offset"]) == ("for svc", 1)


@asynctest
async def test_server_applies_to_exclude_and_exclude_self() -> None:
    """UNI-PUB-10..13: targeting narrows delivery; every targeted event takes an offset."""
    async with running_server() as h:
        conns = {}
        for sub in ("alice", "bob", "carol"):
            conns[sub] = await h.connect(token(sub=sub, sid=f"{sub}-1"))
            await conns[sub].subscribe("tasks.1")
        alice2 = await h.connect(token(sub="alice", sid="alice-2"))
        await alice2.subscribe("tasks.1")
        pub = conns["alice"]
        acks = [
            await pub.publish("tasks.1", "to bob", to=["bob", "nobody-online"]),
            await pub.publish("tasks.1", "excl bob", exclude=["bob"]),
            await pub.publish("tasks.1", "to+excl", to=["bob", "carol"], exclude=["bob"]),
            await pub.publish("tasks.1", "no self", exclude_self=True),
            await pub.publish("tasks.1", "to nobody", to=["dave"]),
            await pub.publish("tasks.1", "fence"),
        ]
        assert [a["offset"] for a in acks] == [1, 2, 3, 4, 5, 6]
        expected = {
            "alice": ["excl bob", "fence"],
            "bob": ["to bob", "no self", "fence"],
            "carol": ["excl bob", "to+excl", "no self", "fence"],
        }
        for sub, conn in conns.items():
            got = [e["data"] for e in await conn.events(len(expected[sub]))]
            assert got == expected[sub], sub
            assert await conn.fence() == []
        other_tab = [e["data"] for e in await alice2.events(3)]
        assert other_tab == ["excl bob", "no self", "fence"]


@asynctest
async def test_server_refuses_invalid_typed_event_data_with_a_pointer() -> None:
    """UNI-PUB-16, UNI-PUB-17: the default registry checks task.updated; pointer from /data."""
    async with running_server() as h:
        alice = await h.connect()
        await alice.subscribe("tasks.42")
        bad = dict(TASK, changes={"status": "finished"})
        reply = await alice.publish_raw("tasks.42", bad, event="task.updated")
        assert reply["code"] == "invalid_event_data"
        assert reply["details"]["pointer"] == "/data/changes/status"
        assert set(reply["details"]) == {"pointer"}
        for fragment in ("enum", "$schema", "Traceback", "jsonschema"):
            assert fragment not in reply.raw
        reply = await alice.publish_raw("tasks.42", "not an object", event="task.updated")
        assert reply["code"] == "invalid_event_data"
        assert reply["details"]["pointer"].startswith("/data")
        ack = await alice.publish("tasks.42", TASK, event="task.updated")
        assert ack["offset"] == 1
        [event] = await alice.events(1)
        assert event["data"] == TASK


@asynctest
async def test_server_in_strict_mode_refuses_unregistered_event_types() -> None:
    """UNI-PUB-18: strict registry -> unknown_event_type; registered types still pass."""
    async with running_server(registry_mode="strict") as h:
        alice = await h.connect()
        reply = await alice.publish_raw("tasks.1", {}, event="task.renamed")
        assert reply["code"] == "unknown_event_type"
        assert (await alice.publish("tasks.1", TASK, event="task.updated"))["offset"] == 1


@asynctest
async def test_server_in_open_mode_accepts_unregistered_event_types_unchecked() -> None:
    """UNI-PUB-19: open registry accepts any data for an unregistered type."""
    async with running_server(registry_mode="open") as h:
        alice = await h.connect()
        assert (await alice.publish("tasks.1", [1, "x"], event="task.renamed"))["offset"] == 1


@asynctest
async def test_server_without_typed_events_feature_never_checks_event_data() -> None:
    """UNI-PUB-20, UNI-LC-13: no typed_events in welcome -> no invalid_event_data."""
    async with running_server(features=("coalescing", "system_namespace")) as h:
        alice = await h.open()
        welcome = await alice.hello(token())
        assert "typed_events" not in welcome["features"]
        reply = await alice.publish_raw("tasks.1", {"not": "a task"}, event="task.updated")
        assert reply["type"] == "ack", reply


@asynctest
async def test_server_rate_limits_publishes_beyond_the_bucket() -> None:
    """UNI-PUB-30, UNI-PUB-31: burst publishes pass; the next gets rate_limited, stays open."""
    async with running_server(publish_rate_burst=5, publish_rate_per_second=1) as h:
        alice = await h.connect()
        for n in range(5):
            assert (await alice.publish("tasks.1", n))["offset"] == n + 1
        reply = await alice.publish_raw("tasks.1", "over")
        assert reply["code"] == "rate_limited"
        assert 1 <= reply["retry_after_ms"] <= 1000
        await alice.subscribe("tasks.1")  # other requests are not metered
        bob = await h.connect(token(sub="bob"))
        assert (await bob.publish("tasks.1", "bob has his own bucket"))["offset"] == 6


@asynctest
async def test_server_checks_publish_steps_in_order() -> None:
    """UNI-PUB-24: rate limit, then message, then grants, then dedup, then typed events."""
    async with running_server(publish_rate_burst=6, publish_rate_per_second=1) as h:
        alice = await h.connect(token(publish=("tasks.>",)))
        first = await alice.publish("tasks.1", TASK, event="task.updated", message_id="m1")
        # forbidden wins over invalid typed data
        reply = await alice.publish_raw("docs.1", {}, event="task.updated")
        assert reply["code"] == "forbidden"
        # invalid_channel wins over forbidden
        reply = await alice.publish_raw("Docs.1", 1)
        assert reply["code"] == "invalid_channel"
        # a duplicate is acknowledged before typed-event checks
        dup = await alice.publish("tasks.1", {"bad": 1}, event="task.updated", message_id="m1")
        assert (dup["duplicate"], dup["offset"]) == (True, first["offset"])
        await alice.publish_raw("tasks.1", 1)
        await alice.publish_raw("tasks.1", 1)
        # the bucket is empty: rate_limited comes before every other check
        reply = await alice.publish_raw("Bad Channel", 1, event="Bad Event")
        assert reply["code"] == "rate_limited"


@asynctest
async def test_server_acks_only_after_the_event_is_replayable() -> None:
    """UNI-PUB-26: a subscribe with from just before the acked offset replays the event."""
    async with running_server() as h:
        alice = await h.connect()
        ack = await alice.publish("tasks.9", "stored")
        bob = await h.connect(token(sub="bob"))
        position = {"epoch": ack["epoch"], "offset": ack["offset"] - 1}
        await bob.subscribe("tasks.9", **{"from": {"tasks.9": position}})
        [event] = await bob.events(1)
        assert (event["data"], event["offset"]) == ("stored", ack["offset"])


@pytest.fixture(params=["memory", "redis"])
def broker_setting(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The server's broker: in memory, or a real Redis under a prefix of the test's own."""
    if request.param == "memory":
        yield {}
        return
    url = require_redis()
    prefix = fresh_prefix("pipeline")
    yield {"broker": url, "broker_key_prefix": prefix}
    delete_prefix(url, prefix)


def _publish(rid: str, channel: str, **extra: Any) -> str:
    message = {
        "type": "publish",
        "id": rid,
        "channel": channel,
        "event": "note.posted",
        "data": rid,
        "message_id": f"m-{rid}",
        **extra,
    }
    return json.dumps(message)


@asynctest
async def test_server_answers_a_burst_of_publishes_and_requests_in_the_order_it_received_them(
    broker_setting: dict[str, Any],
) -> None:
    """UNI-TR-27, UNI-PUB-25: publishes sent without waiting (the server hands them to its
    broker together) are sequenced and answered in order; a subscribe or a refusal among them
    is answered after the publishes before it and before those after it, and the subscription
    starts after the earlier publishes' events, so it receives only the later ones."""
    async with running_server(publish_rate_burst=1000, **broker_setting) as h:
        alice = await h.connect()
        sent: list[str] = []
        channels: dict[str, str] = {}
        for i in range(240):
            rid = f"p{i}"
            channels[rid] = "tasks.43" if i % 4 == 0 else "tasks.42"
            await alice.send_raw(_publish(rid, channels[rid]))
            sent.append(rid)
            if i == 99:
                await alice.send({"type": "subscribe", "id": "s", "channel": "tasks.43"})
                sent.append("s")
            if i == 149:
                await alice.send_raw(_publish("bad", "tasks.42", attrs={"x": [1]}))
                sent.append("bad")
        replies: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        while len(replies) < len(sent):
            frame = await alice.recv()
            (events if frame["type"] == "event" else replies).append(frame)
        assert [r["id"] for r in replies] == sent
        by_id = {r["id"]: r for r in replies}
        assert by_id["s"]["type"] == "subscribed"
        assert (by_id["bad"]["type"], by_id["bad"]["code"]) == ("error", "invalid_message")
        for channel in ("tasks.42", "tasks.43"):
            acks = [by_id[rid] for rid in sent if channels.get(rid) == channel]
            assert all(a["type"] == "ack" for a in acks)
            assert [a["offset"] for a in acks] == list(range(1, len(acks) + 1))
        later = [rid for rid in sent[sent.index("s") :] if channels.get(rid) == "tasks.43"]
        while len(events) < len(later):
            frame = await alice.recv()
            assert frame["type"] == "event", frame
            events.append(frame)
        assert [e["data"] for e in events] == later


class GatedBroker(MemoryBroker):
    """The in-memory broker, except that publishes wait at a gate; counts those waiting."""

    def __init__(self, hold: int) -> None:
        super().__init__(encode_frame=encode_event_frame)
        self.gate = asyncio.Event()
        self.held = asyncio.Event()  # set once ``hold`` publishes wait together
        self.hold = hold
        self.waiting = 0
        self.most = 0

    async def publish(self, record: PublishRecord) -> PublishResult:
        self.waiting += 1
        self.most = max(self.most, self.waiting)
        if self.waiting >= self.hold:
            self.held.set()
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        return await super().publish(record)


@asynctest
async def test_server_hands_at_most_publish_depth_publishes_of_a_connection_to_its_broker() -> None:
    """A publisher that never waits for acks meets back-pressure: the server stops reading
    its connection while PUBLISH_DEPTH of its publishes await the broker, and answers every
    one, in order, once the broker does (UNI-PUB-25)."""
    broker = GatedBroker(hold=PUBLISH_DEPTH)
    count = PUBLISH_DEPTH + 40
    async with running_server(publish_rate_burst=1000, broker_object=broker) as h:
        alice = await h.connect()
        for i in range(count):
            await alice.send_raw(_publish(f"p{i}", "tasks.42"))
        await asyncio.wait_for(broker.held.wait(), LIMIT)
        broker.gate.set()
        acks = [await alice.expect_next("ack") for _ in range(count)]
        assert [a["id"] for a in acks] == [f"p{i}" for i in range(count)]
        assert [a["offset"] for a in acks] == list(range(1, count + 1))
        assert broker.most == PUBLISH_DEPTH
