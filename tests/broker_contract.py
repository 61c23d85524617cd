"""Contract tests every :class:`~unisock.broker.Broker` passes, whatever stores its data.

Use it by subclassing :class:`BrokerContract` in a test module and providing a ``broker_factory``
fixture (it may be parametrized) returning a :data:`BrokerFactory`. The factory builds an unstarted
broker from :class:`BrokerSettings`; the broker must take event ``ts``, age eviction and dedup
expiry from ``settings.clock`` and encode frames with ``settings.encode_frame``, and each call must
give an isolated broker (a fresh key prefix for a shared store).

Listener callbacks may arrive after ``publish`` returns (another node's events arrive that way),
so the tests wait for them with :class:`Collector` and prove absence with a later event on the same
channel as a fence: per-channel order means anything missing before the fence never comes.
Tests are synchronous functions that drive one event loop each; no pytest plugin is needed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from unisock.broker import (
    Broker,
    ChannelKey,
    Position,
    PublishRecord,
    PublishResult,
    StoredEvent,
)

__all__ = [
    "BrokerContract",
    "BrokerFactory",
    "BrokerSettings",
    "Collector",
    "CountingEncoder",
    "ManualClock",
    "make_record",
    "run",
]

T = TypeVar("T")
TIMEOUT_S = 5.0 * float(os.environ.get("UNISOCK_TIME_SCALE", "1"))
START_MS = 1_764_120_000_000


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one test scenario on a fresh event loop (no pytest-asyncio needed)."""
    return asyncio.run(coro)


class ManualClock:
    """Milliseconds that only move when a test says so: dedup and age windows without sleeping."""

    def __init__(self, now: int = START_MS) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


class CountingEncoder:
    """A frame encoder that records every call, to prove each event is encoded exactly once."""

    def __init__(self) -> None:
        self.calls: list[tuple[PublishRecord, str, int, int]] = []

    def __call__(self, record: PublishRecord, epoch: str, offset: int, ts: int) -> str:
        self.calls.append((record, epoch, offset, ts))
        return f"{record.key.name}|{epoch}|{offset}|{ts}|{record.message_id}"


@dataclass
class BrokerSettings:
    """What a factory must honour to build a broker under test."""

    clock: ManualClock = field(default_factory=ManualClock)
    encode_frame: CountingEncoder = field(default_factory=CountingEncoder)
    history_max_count: int = 1000
    history_max_age_ms: int = 300_000
    dedup_window_ms: int = 120_000


BrokerFactory = Callable[[BrokerSettings], Broker]


class Collector:
    """Gathers listener callbacks and lets a test wait until a given number arrived."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = asyncio.Event()

    def __call__(self, item: Any) -> None:
        self.items.append(item)
        self._changed.set()

    async def wait_for(self, count: int) -> list[Any]:
        async def reached() -> None:
            while len(self.items) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(reached(), TIMEOUT_S)
        return self.items


def make_record(
    key: ChannelKey,
    message_id: str,
    *,
    sub: str = "alice",
    connection: str = "c-alice",
    event_type: str = "task.updated",
    data: Any = None,
    tenant: str | None = None,
) -> PublishRecord:
    """A publish with only the fields these tests vary; the rest at their defaults."""
    return PublishRecord(
        key=key,
        event_type=event_type,
        data={"n": message_id} if data is None else data,
        message_id=message_id,
        attrs={},
        to=None,
        exclude=None,
        exclude_self=False,
        coalesce_key=None,
        publisher_sub=sub,
        publisher_connection=connection,
        publisher_tenant=key.tenant if tenant is None else tenant,
    )


def tenant_key(tenant: str, name: str) -> ChannelKey:
    return ChannelKey(tenant, None, name)


def me_key(tenant: str, owner: str, name: str = "$me.inbox") -> ChannelKey:
    return ChannelKey(tenant, owner, name)


def sys_key(name: str = "$sys.maint") -> ChannelKey:
    return ChannelKey(None, None, name)


TASKS = tenant_key("acme", "tasks.42")


@dataclass
class Harness:
    broker: Broker
    settings: BrokerSettings
    events: Collector
    superseded: Collector
    fences: int = 0

    @property
    def clock(self) -> ManualClock:
        return self.settings.clock

    async def publish(self, key: ChannelKey, message_id: str, **kw: Any) -> PublishResult:
        return await self.broker.publish(make_record(key, message_id, **kw))

    async def publish_many(self, key: ChannelKey, count: int, prefix: str = "m") -> list[int]:
        return [(await self.publish(key, f"{prefix}{i}")).event.offset for i in range(count)]

    async def fenced(self, key: ChannelKey) -> list[StoredEvent]:
        """Publish a fence on ``key``; return the events of ``key`` the listener got before it."""
        self.fences += 1
        fence = (await self.publish(key, f"fence-{self.fences}")).event
        while fence not in self.events.items:
            await self.events.wait_for(len(self.events.items) + 1)
        before = self.events.items[: self.events.items.index(fence)]
        return [e for e in before if e.record.key == key]

    async def replayed_offsets(self, key: ChannelKey, after: int) -> list[int]:
        head = await self.broker.head(key)
        replay = await self.broker.replay(key, Position(head.epoch, after))
        assert replay.gap is None, replay
        return [e.offset for e in replay.events]


@asynccontextmanager
async def opened(factory: BrokerFactory, **overrides: Any) -> AsyncIterator[Harness]:
    settings = BrokerSettings(**overrides)
    broker = factory(settings)
    events, superseded = Collector(), Collector()
    broker.add_listener(events)
    broker.add_supersede_listener(superseded)
    await broker.start()
    try:
        yield Harness(broker, settings, events, superseded)
    finally:
        await broker.close()


Scenario = Callable[[Harness], Awaitable[None]]


def scenario(factory: BrokerFactory, body: Scenario, **overrides: Any) -> None:
    """Open a broker with ``overrides`` applied to the settings and run ``body`` against it."""

    async def main() -> None:
        async with opened(factory, **overrides) as h:
            await body(h)

    run(main())


class BrokerContract:
    """The broker contract: UNI-PUB-21/22 dedup, UNI-DEL offsets and resume, UNI-SESS-6..14."""

    # -- offsets --------------------------------------------------------------------------

    def test_broker_assigns_contiguous_offsets_from_one_per_channel(
        self, broker_factory: BrokerFactory
    ) -> None:
        keys = [tenant_key("acme", f"tasks.{i}") for i in range(4)]
        counts = [37, 1, 64, 12]

        async def body(h: Harness) -> None:
            assigned: dict[ChannelKey, list[int]] = {k: [] for k in keys}
            # Interleave publishes across channels so one sequence cannot borrow another's.
            for round_ in range(max(counts)):
                for key, count in zip(keys, counts, strict=True):
                    if round_ < count:
                        result = await h.publish(key, f"m{round_}")
                        assert result.duplicate is False
                        assigned[key].append(result.event.offset)
            for key, count in zip(keys, counts, strict=True):
                assert assigned[key] == list(range(1, count + 1))
                assert (await h.broker.head(key)).offset == count

        scenario(broker_factory, body)

    def test_broker_applies_publishes_started_together_in_the_order_they_started(
        self, broker_factory: BrokerFactory
    ) -> None:
        """The server pipelines one connection's publishes (UNI-TR-27): a burst started
        without waiting is sequenced, deduplicated and heard in the order it started."""
        other = tenant_key("acme", "tasks.43")

        async def body(h: Harness) -> None:
            started = []
            for i in range(300):
                key = TASKS if i % 3 else other
                message_id = "m7" if i == 200 else f"m{i}"  # a repeat of publish 7 ...
                started.append(asyncio.ensure_future(h.publish(key, message_id)))
            results = await asyncio.gather(*started)
            # ... is a duplicate of it, since it started after it.
            assert results[200].duplicate is True
            assert results[200].event.offset == results[7].event.offset
            for key in (TASKS, other):
                offsets = [
                    r.event.offset
                    for i, r in enumerate(results)
                    if (TASKS if i % 3 else other) == key and i != 200
                ]
                assert offsets == list(range(1, len(offsets) + 1))
            heard = await h.events.wait_for(299)
            assert [e.record.message_id for e in heard] == [f"m{i}" for i in range(300) if i != 200]

        scenario(broker_factory, body)

    def test_broker_keeps_separate_offset_spaces_per_tenant(
        self, broker_factory: BrokerFactory
    ) -> None:
        async def body(h: Harness) -> None:
            a, b = tenant_key("acme", "tasks.42"), tenant_key("globex", "tasks.42")
            assert await h.publish_many(a, 3) == [1, 2, 3]
            assert await h.publish_many(b, 2) == [1, 2]
            assert (await h.broker.head(a)).offset == 3
            assert (await h.broker.head(b)).offset == 2
            assert await h.replayed_offsets(b, 0) == [1, 2]

        scenario(broker_factory, body)

    def test_broker_keeps_separate_offset_spaces_per_owner_of_me_channels(
        self, broker_factory: BrokerFactory
    ) -> None:
        async def body(h: Harness) -> None:
            alice, bob = me_key("acme", "alice"), me_key("acme", "bob")
            other_tenant = me_key("globex", "alice")
            assert await h.publish_many(alice, 2) == [1, 2]
            assert await h.publish_many(bob, 1) == [1]
            assert await h.publish_many(other_tenant, 1) == [1]
            assert (await h.broker.head(alice)).offset == 2
            replay = await h.broker.replay(bob, Position((await h.broker.head(bob)).epoch, 0))
            assert [e.record.key for e in replay.events] == [bob]

        scenario(broker_factory, body)

    def test_broker_sequences_sys_channels_globally_across_tenants(
        self, broker_factory: BrokerFactory
    ) -> None:
        async def body(h: Harness) -> None:
            key = sys_key()
            first = await h.publish(key, "a", sub="ops-acme")
            second = await h.publish(key, "b", sub="ops-globex")
            assert (first.event.offset, second.event.offset) == (1, 2)
            assert (await h.broker.head(key)).offset == 2

        scenario(broker_factory, body)

    def test_broker_reports_offset_zero_for_an_unseen_channel_in_the_epoch_it_will_use(
        self, broker_factory: BrokerFactory
    ) -> None:
        async def body(h: Harness) -> None:
            key = tenant_key("acme", "fresh")
            head = await h.broker.head(key)
            assert head.offset == 0
            assert 1 <= len(head.epoch) <= 64
            # A client told (E, 0) at subscribe must resume without a spurious epoch gap.
            empty = await h.broker.replay(key, head)
            assert (empty.gap, empty.events, empty.head) == (None, (), head)
            event = (await h.publish(key, "m1")).event
            assert event.position == Position(head.epoch, 1)
            assert await h.replayed_offsets(key, 0) == [1]

        scenario(broker_factory, body)

    def test_broker_keeps_ts_non_decreasing_when_the_clock_goes_back(
        self, broker_factory: BrokerFactory
    ) -> None:
        async def body(h: Harness) -> None:
            first = (await h.publish(TASKS, "m1")).event
            assert first.ts == h.clock()
            h.clock.advance(-5_000)
            second = (await h.publish(TASKS, "m2")).event
            h.clock.advance(10_000)
            third = (await h.publish(TASKS, "m3")).event
            assert second.ts == first.ts
            assert third.ts == h.clock()

        scenario(broker_factory, body)

    # -- dedup ----------------------------------------------------------------------------

    def test_broker_returns_the_original_event_for_a_duplicate_within_the_window(
        self, broker_factory: BrokerFactory
    ) -> None:
        async def body(h: Harness) -> None:
            original = await h.publish(TASKS, "dup")
            h.clock.advance(h.settings.dedup_window_ms - 1)
            retry = await h.publish(TASKS, "dup", data={"changed": True})
            assert retry.duplicate is True
            assert retry.event == original.event
            assert (await h.broker.head(TASKS)).offset == 1
            delivered = await h.fenced(TASKS)
            assert [e.offset for e in delivered] == [1]
            assert len(h.settings.encode_frame.calls) == 2  # the original and the fence

        scenario(broker_factory, body)

    def test_broker_dedups_per_channel_and_tenant(self, broker_factory: BrokerFactory) -> None:
        async def body(h: Harness) -> None:
            await h.publish(TASKS, "same")
            other_channel = await h.publish(tenant_key("acme", "tasks.43"), "same")
            other_tenant = await h.publish(tenant_key("globex", "tasks.42"), "same")
            other_owner = await h.publish(me_key("acme", "bob"), "same")
            own = await h.publish(me_key("acme", "alice"), "same")
            for result in (other_channel, other_tenant, other_owner, own):
                assert (result.duplicate, result.event.offset) == (False, 1)

        scenario(broker_factory, body)

    def test_broker_dedups_sys_channels_per_publisher_tenant(
        self, broker_factory: BrokerFactory
    ) -> None:
        """UNI-SEC-19: one $sys offset sequence, but no duplicate across tenants."""

        async def body(h: Harness) -> None:
            key = sys_key()
            first = await h.publish(key, "maint-1", tenant="acme")
            other = await h.publish(key, "maint-1", tenant="globex")
            assert (other.duplicate, other.event.offset) == (False, 2)
            assert other.event.record.publisher_tenant == "globex"
            retry = await h.publish(key, "maint-1", tenant="acme")
            assert (retry.duplicate, retry.event.offset) == (True, first.event.offset)
            found = await h.broker.find_duplicate(key, "maint-1", "globex")
            assert found is not None and found.offset == 2
            assert await h.broker.find_duplicate(key, "maint-1", "initech") is None
            assert (await h.broker.find_duplicate(TASKS, "maint-1", "acme")) is None

        scenario(broker_factory, body)

    def test_broker_treats_a_reused_message_id_after_the_window_as_a_new_event(
        self, broker_factory: BrokerFactory
    ) -> None:
        async def body(h: Harness) -> None:
            await h.publish(TASKS, "dup")
            h.clock.advance(h.settings.dedup_window_ms)
            again = await h.publish(TASKS, "dup")
            assert (again.duplicate, again.event.offset) == (False, 2)
            retry = await h.publish(TASKS, "dup")
            assert (retry.duplicate, retry.event) == (True, again.event)
            got = await h.events.wait_for(2)
            assert [e.offset for e in got[:2]] == [1, 2]

        scenario(broker_factory, body, dedup_window_ms=1_000)

    # -- replay ---------------------------------------------------------------------------

    def test_broker_replays_events_after_a_position_in_ascending_order(
        self, broker_factory: BrokerFactory
    ) -> None:
        async def body(h: Harness) -> None:
            await h.publish_many(TASKS, 5)
            head = await h.broker.head(TASKS)
            replay = await h.broker.replay(TASKS, Position(head.epoch, 2))
            assert replay.gap is None
            assert replay.head == head == Position(head.epoch, 5)
            assert [e.offset for e in replay.events] == [3, 4, 5]
            assert [e.record.message_id for e in replay.events] == ["m2", "m3", "m4"]
            assert await h.replayed_offsets(TASKS, 0) == [1, 2, 3, 4, 5]
            assert await h.replayed_offsets(TASKS, 5) == []

        scenario(broker_factory, body)

    def test_broker_replays_the_same_frames_it_fanned_out(
        self, broker_factory: BrokerFactory
    ) -> None:
        async def body(h: Harness) -> None:
            published = [(await h.publish(TASKS, f"m{i}")).event for i in range(3)]
            head = await h.broker.head(TASKS)
            replay = await h.broker.replay(TASKS, Position(head.epoch, 0))
            assert [e.frame for e in replay.events] == [e.frame for e in published]
            assert [e.frame for e in await h.events.wait_for(3)] == [e.frame for e in published]

        scenario(broker_factory, body)

    def test_broker_reports_epoch_changed_for_a_foreign_epoch(
        self, broker_factory: BrokerFactory
    ) -> None:
        async def body(h: Harness) -> None:
            await h.publish_many(TASKS, 3)
            head = await h.broker.head(TASKS)
            replay = await h.broker.replay(TASKS, Position(head.epoch + "-old", 1))
            assert (replay.gap, replay.events, replay.head) == ("epoch_changed", (), head)
            unseen = tenant_key("acme", "never")
            replay = await h.broker.replay(unseen, Position(head.epoch + "-old", 0))
            assert replay.gap == "epoch_changed"
            assert replay.head.offset == 0

        scenario(broker_factory, body)

    def test_broker_reports_position_invalid_beyond_the_head(
        self, broker_factory: BrokerFactory
    ) -> None:
        async def body(h: Harness) -> None:
            await h.publish_many(TASKS, 3)
            head = await h.broker.head(TASKS)
            replay = await h.broker.replay(TASKS, Position(head.epoch, 4))
            assert (replay.gap, replay.events, replay.head) == ("position_invalid", (), head)
            unseen = tenant_key("acme", "never")
            replay = await h.broker.replay(unseen, Position(head.epoch, 1))
            assert replay.gap == "position_invalid"

        scenario(broker_factory, body)

    def test_broker_reports_window_exceeded_when_history_was_trimmed_by_count(
        self, broker_factory: BrokerFactory
    ) -> None:
        async def body(h: Harness) -> None:
            await h.publish_many(TASKS, 5)
            head = await h.broker.head(TASKS)
            for after in (0, 1):
                replay = await h.broker.replay(TASKS, Position(head.epoch, after))
                assert (replay.gap, replay.events, replay.head) == ("window_exceeded", (), head)
            assert await h.replayed_offsets(TASKS, 2) == [3, 4, 5]
            assert await h.replayed_offsets(TASKS, 5) == []

        scenario(broker_factory, body, history_max_count=3)

    def test_broker_reports_window_exceeded_when_history_aged_out(
        self, broker_factory: BrokerFactory
    ) -> None:
        async def body(h: Harness) -> None:
            await h.publish(TASKS, "old")
            h.clock.advance(600)
            young = (await h.publish(TASKS, "young")).event
            assert await h.replayed_offsets(TASKS, 0) == [1, 2]
            h.clock.advance(400)  # "old" is now 1000 ms old: out of the window
            head = await h.broker.head(TASKS)
            replay = await h.broker.replay(TASKS, Position(head.epoch, 0))
            assert (replay.gap, replay.events) == ("window_exceeded", ())
            assert await h.replayed_offsets(TASKS, 1) == [2]
            since = await h.broker.replay_since(TASKS, 0)
            assert (since.gap, since.events) == ("window_exceeded", ())
            h.clock.advance(600)  # everything aged out; a client at the head still resumes
            since = await h.broker.replay_since(TASKS, young.ts)
            assert (since.gap, since.events) == ("window_exceeded", ())
            assert await h.replayed_offsets(TASKS, 2) == []
            replay = await h.broker.replay(TASKS, Position(head.epoch, 1))
            assert replay.gap == "window_exceeded"

        scenario(broker_factory, body, history_max_age_ms=1_000)

    def test_broker_replays_retained_events_since_a_timestamp(
        self, broker_factory: BrokerFactory
    ) -> None:
        async def body(h: Harness) -> None:
            stamps = []
            for i in range(4):
                stamps.append((await h.publish(TASKS, f"m{i}")).event.ts)
                h.clock.advance(1_000)
            replay = await h.broker.replay_since(TASKS, stamps[2])
            assert replay.gap is None
            assert [e.offset for e in replay.events] == [3, 4]
            assert replay.head.offset == 4
            assert (await h.broker.replay_since(TASKS, stamps[3] + 1)).events == ()
            assert len((await h.broker.replay_since(TASKS, 0)).events) == 4
            unseen = await h.broker.replay_since(tenant_key("acme", "never"), 0)
            assert (unseen.gap, unseen.events, unseen.head.offset) == (None, (), 0)

        scenario(broker_factory, body)

    def test_broker_reports_window_exceeded_since_a_timestamp_older_than_history(
        self, broker_factory: BrokerFactory
    ) -> None:
        async def body(h: Harness) -> None:
            stamps = []
            for i in range(4):
                stamps.append((await h.publish(TASKS, f"m{i}")).event.ts)
                h.clock.advance(1_000)
            # offsets 1 and 2 were trimmed; offset 2 still qualifies for "since stamps[1]".
            for since in (stamps[0], stamps[1]):
                replay = await h.broker.replay_since(TASKS, since)
                assert (replay.gap, replay.events, replay.head.offset) == (
                    "window_exceeded",
                    (),
                    4,
                )
            replay = await h.broker.replay_since(TASKS, stamps[1] + 1)
            assert (replay.gap, [e.offset for e in replay.events]) == (None, [3, 4])

        scenario(broker_factory, body, history_max_count=2)

    def test_broker_lists_channels_with_retained_history_per_scope(
        self, broker_factory: BrokerFactory
    ) -> None:
        async def body(h: Harness) -> None:
            b42, b7 = tenant_key("acme", "tasks.42"), tenant_key("acme", "board.7")
            await h.publish(b42, "m")
            await h.publish(b7, "m")
            await h.publish(tenant_key("globex", "tasks.1"), "m")
            await h.publish(me_key("acme", "alice"), "m")
            await h.publish(me_key("acme", "bob", "$me.other"), "m")
            await h.publish(sys_key(), "m")
            assert await h.broker.channels("acme", None, "tenant") == [b7, b42]
            assert await h.broker.channels("acme", "alice", "$me") == [me_key("acme", "alice")]
            assert await h.broker.channels("globex", "alice", "$me") == []
            assert await h.broker.channels(None, None, "$sys") == [sys_key()]
            assert await h.broker.channels("nobody", None, "tenant") == []
            h.clock.advance(500)
            await h.publish(b42, "fresh")
            h.clock.advance(500)  # everything but "fresh" aged out
            assert await h.broker.channels("acme", None, "tenant") == [b42]
            assert await h.broker.channels(None, None, "$sys") == []

        scenario(broker_factory, body, history_max_age_ms=1_000)

    # -- fan-out --------------------------------------------------------------------------

    def test_broker_hands_every_event_to_every_listener_in_offset_order(
        self, broker_factory: BrokerFactory
    ) -> None:
        async def body(h: Harness) -> None:
            second = Collector()
            h.broker.add_listener(second)
            a, b = TASKS, me_key("acme", "alice")
            for i in range(10):
                await h.publish(a if i % 3 else b, f"m{i}")
            for collector in (h.events, second):
                got = await collector.wait_for(10)
                for key, count in ((a, 6), (b, 4)):
                    offsets = [e.offset for e in got if e.record.key == key]
                    assert offsets == list(range(1, count + 1))

        scenario(broker_factory, body)

    def test_broker_keeps_publishing_when_a_listener_raises(
        self, broker_factory: BrokerFactory
    ) -> None:
        async def body(h: Harness) -> None:
            def broken(event: StoredEvent) -> None:
                raise RuntimeError("listener bug")

            after = Collector()
            h.broker.add_listener(broken)
            h.broker.add_listener(after)
            first = await h.publish(TASKS, "m1")
            second = await h.publish(TASKS, "m2")
            assert (first.event.offset, second.event.offset) == (1, 2)
            assert [e.offset for e in await after.wait_for(2)] == [1, 2]

        scenario(broker_factory, body)

    def test_broker_encodes_each_event_frame_exactly_once(
        self, broker_factory: BrokerFactory
    ) -> None:
        async def body(h: Harness) -> None:
            extra = Collector()
            h.broker.add_listener(extra)
            events = [(await h.publish(TASKS, f"m{i}")).event for i in range(5)]
            await h.publish(TASKS, "m0")  # a duplicate is never re-encoded
            await h.events.wait_for(5)
            await extra.wait_for(5)
            await h.broker.replay(TASKS, Position(events[0].epoch, 0))
            calls = list(h.settings.encode_frame.calls)
            assert calls == [(e.record, e.epoch, e.offset, e.ts) for e in events]
            for event in events:
                expected = f"tasks.42|{event.epoch}|{event.offset}|{event.ts}|"
                assert event.frame == expected + event.record.message_id

        scenario(broker_factory, body)

    # -- sessions -------------------------------------------------------------------------

    def test_broker_supersedes_an_older_connection_with_the_same_sid(
        self, broker_factory: BrokerFactory
    ) -> None:
        async def body(h: Harness) -> None:
            reg = h.broker.register_connection
            assert await reg("acme", "alice", "tab-1", "c1", 5) == []
            assert await reg("acme", "alice", None, "c2", 5) == []
            assert await reg("acme", "bob", "tab-1", "c3", 5) == []
            assert await reg("globex", "alice", "tab-1", "c4", 5) == []
            assert await reg("acme", "alice", "tab-2", "c5", 5) == []
            assert await reg("acme", "alice", "tab-1", "c6", 5) == ["c1"]
            assert await h.superseded.wait_for(1) == ["c1"]
            assert await reg("acme", "alice", None, "c7", 5) == []

        scenario(broker_factory, body)

    def test_broker_supersedes_the_oldest_connections_over_the_cap(
        self, broker_factory: BrokerFactory
    ) -> None:
        async def body(h: Harness) -> None:
            reg = h.broker.register_connection
            assert await reg("acme", "alice", None, "c1", 2) == []
            assert await reg("acme", "alice", None, "c2", 2) == []
            assert await reg("acme", "bob", None, "b1", 2) == []
            assert await reg("acme", "alice", None, "c3", 2) == ["c1"]
            await h.broker.unregister_connection("acme", "alice", "c2")
            assert await reg("acme", "alice", None, "c4", 2) == []
            # A lowered cap closes as many of the oldest as needed, never the newcomer.
            assert await reg("acme", "alice", None, "c5", 1) == ["c3", "c4"]
            assert await h.superseded.wait_for(3) == ["c1", "c3", "c4"]

        scenario(broker_factory, body)

    def test_broker_applies_the_session_rule_before_counting_against_the_cap(
        self, broker_factory: BrokerFactory
    ) -> None:
        async def body(h: Harness) -> None:
            reg = h.broker.register_connection
            assert await reg("acme", "alice", None, "a", 2) == []
            assert await reg("acme", "alice", "tab-1", "b", 2) == []
            # UNI-SESS-13: C replaces B by session; the count is then 2, so A stays open.
            assert await reg("acme", "alice", "tab-1", "c", 2) == ["b"]
            assert await reg("acme", "alice", None, "d", 2) == ["a"]
            assert await h.superseded.wait_for(2) == ["b", "a"]

        scenario(broker_factory, body)

    def test_broker_forgets_unregistered_connections(self, broker_factory: BrokerFactory) -> None:
        async def body(h: Harness) -> None:
            reg = h.broker.register_connection
            assert await reg("acme", "alice", "tab-1", "c1", 1) == []
            await h.broker.unregister_connection("acme", "alice", "c1")
            await h.broker.unregister_connection("acme", "alice", "c1")
            await h.broker.unregister_connection("acme", "nobody", "c9")
            assert await reg("acme", "alice", "tab-1", "c2", 1) == []
            assert await reg("acme", "alice", None, "c3", 1) == ["c2"]

        scenario(broker_factory, body)
