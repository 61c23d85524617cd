"""Delivery over real sockets: frames, offsets, order, resume, gaps, coalescing (UNI-DEL)."""

from __future__ import annotations

from typing import Any

import pytest

from server_harness import Frame, RawClient, ServerHarness, asynctest, running_server, token
from unisock.memory_broker import MemoryBroker
from unisock.schemas import validate_server_message

FAST = {"publish_rate_burst": 100_000, "publish_rate_per_second": 100_000}
BLOB = "x" * 16_000


async def publish_until(h: ServerHarness, pub: RawClient, metric: str, publish: Any) -> int:
    """Publish (``publish(n)``) until the server's ``metric`` counter moves; returns the count."""
    n = 0
    while True:
        n += 1
        await publish(n)
        if n % 10 == 0 and await h.metric(metric) >= 3:
            return n


@asynctest
async def test_server_event_frame_has_required_fields_and_nothing_per_recipient() -> None:
    """UNI-DEL-1, UNI-DEL-2, UNI-TR-28: the frame lists the spec's fields, no targeting."""
    async with running_server() as h:
        bob = await h.connect(token(sub="bob"))
        await bob.subscribe("tasks.1")
        alice = await h.connect()
        ack = await alice.publish(
            "tasks.1",
            {"a": 1},
            to=["bob"],
            exclude=["carol"],
            exclude_self=True,
            key="k",
            attrs={"p": 1},
        )
        [event] = await bob.events(1)
        assert validate_server_message(dict(event)) == []
        assert set(event) == {
            "type",
            "channel",
            "epoch",
            "offset",
            "event",
            "data",
            "message_id",
            "ts",
            "attrs",
            "publisher",
        }
        assert (event["epoch"], event["offset"]) == (ack["epoch"], ack["offset"])
        assert "acme" not in event.raw


@asynctest
async def test_server_writes_identical_frame_text_to_every_recipient() -> None:
    """UNI-DEL-4: encode once: live recipients in several roles get byte-identical frames."""
    async with running_server() as h:
        receivers = []
        for sub, pattern in (("bob", "tasks.>"), ("carol", "tasks.1"), ("dave", "*.1")):
            conn = await h.connect(token(sub=sub, subscribe=(">",)))
            await conn.subscribe(pattern)
            receivers.append(conn)
        alice = await h.connect()
        await alice.publish("tasks.1", {"text": "ünïcode ✓", "n": 1.5}, attrs={"x": None})
        frames = [(await conn.events(1))[0] for conn in receivers]
        assert frames[0].raw == frames[1].raw == frames[2].raw


@asynctest
async def test_server_sequences_contiguous_offsets_and_delivers_them_in_order() -> None:
    """UNI-DEL-7, UNI-DEL-14: offsets 1, 2, 3... per channel, received strictly increasing."""
    async with running_server(**FAST) as h:
        bob = await h.connect(token(sub="bob"))
        await bob.subscribe("tasks.>")
        alice = await h.connect()
        for n in range(30):
            await alice.publish(f"tasks.{n % 3}", n)
        events = await bob.events(30)
        for channel in ("tasks.0", "tasks.1", "tasks.2"):
            offsets = [e["offset"] for e in events if e["channel"] == channel]
            assert offsets == list(range(1, 11))
        assert len({e["epoch"] for e in events}) == 1


@pytest.mark.parametrize("pattern", ["tasks.>", "tasks.7"])
def test_server_resumes_from_position_with_full_replay_then_live(pattern: str) -> None:
    """UNI-DEL-15, UNI-DEL-18, UNI-SUB-9, UNI-SUB-10: replay (O, H] after subscribed, then live."""

    @asynctest
    async def run() -> None:
        async with running_server() as h:
            alice = await h.connect()
            acks = [await alice.publish("tasks.7", n) for n in range(5)]
            bob = await h.connect(token(sub="bob"))
            position = {"epoch": acks[0]["epoch"], "offset": 2}
            await bob.send(
                {"type": "subscribe", "id": "s1", "channel": pattern, "from": {"tasks.7": position}}
            )
            await bob.expect_next("subscribed", id="s1")
            await alice.publish("tasks.7", "live")
            events = await bob.events(4)
            assert [e["offset"] for e in events] == [3, 4, 5, 6]
            assert events[-1]["data"] == "live"
            assert await bob.fence() == []

    run()


@pytest.mark.parametrize("pattern", ["tasks.>", "tasks.7"])
@pytest.mark.parametrize(
    ("position", "reason"),
    [({"epoch": "e-gone", "offset": 1}, "epoch_changed"), (None, "position_invalid")],
)
def test_server_answers_unusable_position_with_gap_then_continues_live(
    pattern: str, position: dict[str, Any] | None, reason: str
) -> None:
    """UNI-DEL-15, UNI-DEL-16: a gap carries the current epoch and head; live from head + 1."""

    @asynctest
    async def run() -> None:
        async with running_server() as h:
            alice = await h.connect()
            acks = [await alice.publish("tasks.7", n) for n in range(3)]
            epoch = acks[0]["epoch"]
            bob = await h.connect(token(sub="bob"))
            pos = position or {"epoch": epoch, "offset": 99}
            await bob.subscribe(pattern, **{"from": {"tasks.7": pos}})
            gap = await bob.expect_next("gap", channel="tasks.7", reason=reason)
            assert (gap["epoch"], gap["offset"]) == (epoch, 3)
            assert "id" not in gap
            await alice.publish("tasks.7", "live")
            [event] = await bob.events(1)
            assert event["offset"] == 4
            assert await bob.fence() == []

    run()


@pytest.mark.parametrize("pattern", ["tasks.>", "tasks.7"])
def test_server_sends_epoch_changed_gap_before_the_first_event_after_a_reset(pattern: str) -> None:
    """UNI-DEL-8, UNI-DEL-19: a reset broker starts a new epoch; subscribers learn it first."""

    @asynctest
    async def run() -> None:
        async with running_server() as h:
            bob = await h.connect(token(sub="bob"))
            await bob.subscribe(pattern)
            alice = await h.connect()
            before = await alice.publish("tasks.7", "old")
            assert [e["offset"] for e in await bob.events(1)] == [before["offset"]]
            broker = h.server.broker
            assert isinstance(broker, MemoryBroker)
            broker.reset()
            after = await alice.publish("tasks.7", "new")
            assert after["epoch"] != before["epoch"]
            assert after["offset"] == 1
            gap = await bob.expect_next("gap", channel="tasks.7", reason="epoch_changed")
            assert (gap["epoch"], gap["offset"]) == (after["epoch"], 0)
            event = await bob.expect_next("event", channel="tasks.7")
            assert (event["epoch"], event["offset"]) == (after["epoch"], 1)
            await alice.publish("tasks.7", "next")
            assert [e["offset"] for e in await bob.events(1)] == [2]
            assert await bob.fence() == []

    run()


@pytest.mark.parametrize("pattern", ["tasks.>", "tasks.7"])
def test_server_answers_position_beyond_history_with_window_exceeded_gap(pattern: str) -> None:
    """UNI-DEL-15, UNI-DEL-22: never a partial replay: history of 3 cannot cover (1, 6]."""

    @asynctest
    async def run() -> None:
        async with running_server(history_max_count=3) as h:
            alice = await h.connect()
            acks = [await alice.publish("tasks.7", n) for n in range(6)]
            bob = await h.connect(token(sub="bob"))
            epoch = acks[0]["epoch"]
            await bob.subscribe(pattern, **{"from": {"tasks.7": {"epoch": epoch, "offset": 1}}})
            gap = await bob.expect_next("gap", reason="window_exceeded")
            assert (gap["channel"], gap["epoch"], gap["offset"]) == ("tasks.7", epoch, 6)
            assert await bob.fence() == []
            carol = await h.connect(token(sub="carol"))
            await carol.subscribe(pattern, **{"from": {"tasks.7": {"epoch": epoch, "offset": 3}}})
            events = await carol.events(3)
            assert [e["offset"] for e in events] == [4, 5, 6]

    run()


@pytest.mark.parametrize("pattern", ["tasks.>", "tasks.7"])
def test_server_replays_retained_events_since_a_time(pattern: str) -> None:
    """UNI-DEL-17: since replays retained events with ts >= since, in offset order."""

    @asynctest
    async def run() -> None:
        async with running_server() as h:
            alice = await h.connect()
            await alice.subscribe("tasks.7")
            for n in range(4):
                await alice.publish("tasks.7", n)
            events = await alice.events(4)
            bob = await h.connect(token(sub="bob"))
            await bob.subscribe(pattern, since=events[2]["ts"])
            replayed = await bob.fence()
            offsets = [e["offset"] for e in replayed if e["type"] == "event"]
            expected = [e["offset"] for e in events if e["ts"] >= events[2]["ts"]]
            assert offsets == expected

    run()


@asynctest
async def test_server_sends_gap_when_history_no_longer_reaches_since() -> None:
    """UNI-DEL-17, UNI-DEL-23: since before the retained history -> gap, not silent loss."""
    async with running_server(history_max_count=2) as h:
        alice = await h.connect()
        acks = [await alice.publish("tasks.7", n) for n in range(5)]
        bob = await h.connect(token(sub="bob"))
        await bob.subscribe("tasks.>", since=0)
        gap = await bob.expect_next("gap", channel="tasks.7", reason="window_exceeded")
        assert (gap["epoch"], gap["offset"]) == (acks[0]["epoch"], 5)


@asynctest
async def test_server_replay_applies_the_delivery_predicate() -> None:
    """UNI-DEL-11: replay honours filters and targeting exactly like live delivery."""
    async with running_server() as h:
        alice = await h.connect()
        ack = await alice.publish("tasks.7", "for carol", to=["carol"])
        await alice.publish("tasks.7", "not bob", exclude=["bob"])
        await alice.publish("tasks.7", "low", attrs={"prio": 9})
        await alice.publish("tasks.7", "ok", attrs={"prio": 1})
        bob = await h.connect(token(sub="bob"))
        start = {"tasks.7": {"epoch": ack["epoch"], "offset": 0}}
        await bob.subscribe("tasks.>", filter={"lt": ["prio", 5]}, **{"from": start})
        replayed = await bob.fence()
        assert [e["data"] for e in replayed] == ["ok"]


@asynctest
async def test_server_coalesces_queued_events_of_a_stalled_reader_and_reports_offsets() -> None:
    """UNI-DEL-23, UNI-DEL-25..27, UNI-LIM-7: same-key events collapse, listing what they replaced.

    A reader stops reading while events with one key pile up on a coalescing channel and on
    a plain channel. After it reads again: every offset of the coalescing channel was
    delivered or listed in a later frame's ``coalesced`` (ascending, cumulative); the plain
    channel lost nothing and never carries ``coalesced``.
    """
    async with running_server(coalescing_channels=("co.>",), max_queue=4096, **FAST) as h:
        pub = await h.connect(token(publish=("co.>", "tasks.>")))
        reader = await h.open_stalled(token(sub="bob", subscribe=("co.>", "tasks.>")))
        await reader.subscribe("co.1")
        await reader.subscribe("tasks.1")

        async def publish(n: int) -> None:
            await pub.publish("co.1", {"n": n, "blob": BLOB}, key="task-1")
            if n % 4 == 0:
                await pub.publish("tasks.1", {"n": n}, key="task-1")

        count = await publish_until(h, pub, "unisock_coalesced_events_total", publish)
        last_plain = count // 4
        await pub.publish("co.1", {"n": "last"}, key="task-1")
        seen: dict[str, list[Frame]] = {"co.1": [], "tasks.1": []}
        while not seen["co.1"] or seen["co.1"][-1]["data"]["n"] != "last":
            frame = await reader.expect("event")
            seen[frame["channel"]].append(frame)
        co = seen["co.1"]
        covered: list[int] = []
        for frame in co:
            listed = frame.get("coalesced", [])
            assert listed == sorted(listed)
            assert all(offset < frame["offset"] for offset in listed)
            covered.extend([*listed, frame["offset"]])
        assert sorted(covered) == list(range(1, count + 2))
        assert any("coalesced" in frame for frame in co)
        for frame in co:  # a coalesced frame is the newest event, otherwise unchanged
            assert frame["data"]["n"] == (frame["offset"] if frame["offset"] <= count else "last")
        plain = seen["tasks.1"] + [f for f in await reader.fence() if f["type"] == "event"]
        assert [f["offset"] for f in plain] == list(range(1, last_plain + 1))
        assert not any("coalesced" in f for f in plain)


@asynctest
async def test_server_without_coalescing_feature_never_coalesces() -> None:
    """UNI-DEL-25, UNI-LC-13: a channel configured coalescing, feature off -> every event."""
    async with running_server(
        features=("system_namespace", "typed_events"),
        coalescing_channels=("co.>",),
        max_queue=4096,
        **FAST,
    ) as h:
        pub = await h.connect(token(publish=("co.>",)))
        reader = await h.open_stalled(token(sub="bob", subscribe=("co.>",)))
        assert "coalescing" not in reader.welcome["features"]  # type: ignore[attr-defined]
        await reader.subscribe("co.1")
        total = 400  # far more than the socket buffers hold: the server queue must engage
        for n in range(1, total + 1):
            await pub.publish("co.1", {"n": n, "blob": BLOB}, key="task-1")
        events: list[Frame] = []
        while not events or events[-1]["data"]["n"] != total:
            events.append(await reader.expect("event"))
        assert [e["offset"] for e in events] == list(range(1, total + 1))
        assert not any("coalesced" in e for e in events)
