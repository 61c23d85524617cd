"""The in-memory broker: the shared broker contract plus what is specific to one process."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

import pytest

from broker_contract import (
    TASKS,
    BrokerContract,
    BrokerFactory,
    BrokerSettings,
    Collector,
    CountingEncoder,
    ManualClock,
    make_record,
    run,
)
from unisock.broker import Broker, ChannelKey, Position, StoredEvent
from unisock.memory_broker import MemoryBroker, default_clock, random_epoch


def build(settings: BrokerSettings) -> Broker:
    return MemoryBroker(
        history_max_count=settings.history_max_count,
        history_max_age_ms=settings.history_max_age_ms,
        dedup_window_ms=settings.dedup_window_ms,
        clock=settings.clock,
        encode_frame=settings.encode_frame,
    )


@pytest.fixture
def broker_factory() -> BrokerFactory:
    return build


class TestMemoryBrokerContract(BrokerContract):
    """Every contract test, run against :class:`MemoryBroker`."""


def memory(
    *,
    clock: ManualClock | None = None,
    epoch_factory: Callable[[], str] = random_epoch,
    **limits: int,
) -> MemoryBroker:
    return MemoryBroker(
        clock=clock or ManualClock(),
        encode_frame=CountingEncoder(),
        epoch_factory=epoch_factory,
        **limits,
    )


# -- shared types --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tenant", "owner", "name"),
    [
        (None, None, "tasks.42"),  # only $sys channels are tenant-less
        ("acme", None, "$sys.maint"),  # $sys channels belong to no tenant
        ("acme", None, "$me.inbox"),  # a private channel needs its owner
        ("acme", None, "$me"),
        ("acme", "alice", "tasks.42"),  # an owner only scopes $me channels
        (None, "alice", "$sys.maint"),
    ],
)
def test_channel_key_rejects_mixed_scopes(tenant: str | None, owner: str | None, name: str) -> None:
    with pytest.raises(ValueError, match="must be"):
        ChannelKey(tenant, owner, name)


@pytest.mark.parametrize(
    ("tenant", "owner", "name"),
    [("acme", None, "tasks.42"), ("acme", "alice", "$me"), (None, None, "$sys.maint")],
)
def test_channel_key_accepts_each_scope(tenant: str | None, owner: str | None, name: str) -> None:
    assert ChannelKey(tenant, owner, name).name == name


# -- construction --------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "age", "dedup"), [(-1, 0, 0), (0, -1, 0), (0, 0, -1)])
def test_memory_broker_rejects_negative_limits(count: int, age: int, dedup: int) -> None:
    with pytest.raises(ValueError, match="negative"):
        MemoryBroker(
            history_max_count=count,
            history_max_age_ms=age,
            dedup_window_ms=dedup,
            encode_frame=CountingEncoder(),
        )


def test_default_clock_reads_wall_clock_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    now = default_clock()
    assert before <= now <= time.time_ns() // 1_000_000


def test_memory_broker_picks_a_fresh_random_epoch_per_instance() -> None:
    epochs = {memory().epoch for _ in range(20)}
    assert len(epochs) == 20
    assert all(re.fullmatch(r"m-[0-9a-f]{12}", e) for e in epochs)
    assert re.fullmatch(r"m-[0-9a-f]{12}", random_epoch())


def test_memory_broker_uses_the_injected_epoch_factory() -> None:
    broker = memory(epoch_factory=lambda: "e-fixed")

    async def main() -> Position:
        return (await broker.publish(make_record(TASKS, "m1"))).event.position

    assert run(main()) == Position("e-fixed", 1)


def test_restarted_memory_broker_reports_epoch_changed_to_old_positions() -> None:
    async def main() -> str | None:
        first = memory()
        old = (await first.publish(make_record(TASKS, "m1"))).event.position
        await first.close()
        return (await memory().replay(TASKS, old)).gap

    assert run(main()) == "epoch_changed"


def test_memory_broker_reset_switches_to_a_new_epoch_and_restarts_offsets() -> None:
    broker = memory()

    async def main() -> tuple[Position, Position, Position]:
        old = (await broker.publish(make_record(TASKS, "m1"))).event.position
        await broker.publish(make_record(TASKS, "m2"))
        epoch = broker.reset()
        assert epoch == broker.epoch
        head = await broker.head(TASKS)
        new = (await broker.publish(make_record(TASKS, "m3"))).event.position
        return old, head, new

    old, head, new = run(main())
    assert head == Position(new.epoch, 0)
    assert new.offset == 1
    assert new.epoch != old.epoch


def test_memory_broker_reset_discards_history_and_dedup_records() -> None:
    broker = memory()

    async def main() -> tuple[str | None, list[ChannelKey], bool, StoredEvent | None]:
        old = (await broker.publish(make_record(TASKS, "m1"))).event.position
        broker.reset()
        gap = (await broker.replay(TASKS, old)).gap
        keys = await broker.channels(TASKS.tenant, None, "tenant")
        again = await broker.publish(make_record(TASKS, "m1"))
        return gap, keys, again.duplicate, await broker.find_duplicate(TASKS, "m1")

    gap, keys, duplicate, found = run(main())
    assert gap == "epoch_changed"
    assert keys == []
    assert duplicate is False  # the dedup record went with the history
    assert found is not None and found.offset == 1


def test_memory_broker_reset_never_reuses_an_epoch() -> None:
    values = iter(["e-1", "e-1", "e-2", "e-1", "e-2", "e-3"])
    broker = memory(epoch_factory=lambda: next(values))
    assert broker.epoch == "e-1"
    assert broker.reset() == "e-2"
    assert broker.reset() == "e-3"


def test_memory_broker_encodes_with_the_protocol_encoder_by_default() -> None:
    messages = pytest.importorskip("unisock.messages")
    broker = MemoryBroker(clock=ManualClock())

    async def main() -> StoredEvent:
        return (await broker.publish(make_record(TASKS, "m1"))).event

    event = run(main())
    assert event.frame == messages.encode_event_frame(
        event.record, event.epoch, event.offset, event.ts
    )


# -- behaviour specific to one process ------------------------------------------------------


def test_memory_broker_refuses_publish_after_close() -> None:
    broker = memory()
    seen = Collector()
    broker.add_listener(seen)

    async def main() -> None:
        await broker.start()
        await broker.close()
        await broker.publish(make_record(TASKS, "m1"))

    with pytest.raises(RuntimeError, match="closed"):
        run(main())
    assert seen.items == []


def test_memory_broker_calls_listeners_before_publish_returns() -> None:
    broker = memory()
    seen = Collector()
    broker.add_listener(seen)

    async def main() -> list[int]:
        await broker.publish(make_record(TASKS, "m1"))
        return [e.offset for e in seen.items]

    assert run(main()) == [1]


def test_memory_broker_logs_a_failing_listener_without_the_event_data(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = memory()

    def broken(event: StoredEvent) -> None:
        raise RuntimeError("listener bug")

    broker.add_listener(broken)
    with caplog.at_level(logging.ERROR, logger="unisock.memory_broker"):
        run(broker.publish(make_record(TASKS, "m1", data={"secret": "s3cr3t"})))
    assert "event listener failed for tasks.42 offset 1" in caplog.text
    assert "s3cr3t" not in caplog.text


def test_memory_broker_logs_a_failing_supersede_listener(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = memory()
    later = Collector()

    def broken(connection_id: str) -> None:
        raise RuntimeError("listener bug")

    broker.add_supersede_listener(broken)
    broker.add_supersede_listener(later)

    async def main() -> list[str]:
        await broker.register_connection("acme", "alice", "tab", "c1", 5)
        return await broker.register_connection("acme", "alice", "tab", "c2", 5)

    with caplog.at_level(logging.ERROR, logger="unisock.memory_broker"):
        assert run(main()) == ["c1"]
    assert "supersede listener failed for c1" in caplog.text
    assert later.items == ["c1"]


def test_memory_broker_without_dedup_window_sequences_every_retry() -> None:
    broker = memory(dedup_window_ms=0)

    async def main() -> list[tuple[bool, int]]:
        results = [await broker.publish(make_record(TASKS, "same")) for _ in range(3)]
        return [(r.duplicate, r.event.offset) for r in results]

    assert run(main()) == [(False, 1), (False, 2), (False, 3)]


def test_memory_broker_expires_dedup_entries_in_bulk() -> None:
    clock = ManualClock()
    broker = memory(clock=clock, dedup_window_ms=100)

    async def main() -> int:
        for i in range(50):
            await broker.publish(make_record(TASKS, f"m{i}"))
        clock.advance(100)
        await broker.publish(make_record(TASKS, "next"))
        return len(broker._dedup)

    assert run(main()) == 1


def test_memory_broker_keeps_a_reused_id_deduplicated_until_its_new_window_ends() -> None:
    clock = ManualClock()
    broker = memory(clock=clock, dedup_window_ms=100)
    start = clock.now

    async def main() -> list[tuple[bool, int]]:
        out = [await broker.publish(make_record(TASKS, "x"))]  # expires at start + 100
        clock.advance(-50)  # the clock steps back: expiries are no longer in queue order
        out.append(await broker.publish(make_record(TASKS, "a")))  # expires at start + 50
        clock.now = start + 50  # "a" expired, though its queue entry sits behind "x"
        out.append(await broker.publish(make_record(TASKS, "a")))  # expires at start + 150
        clock.now = start + 100  # pops "x" and the first, stale entry of "a"
        out.append(await broker.publish(make_record(TASKS, "a")))
        return [(r.duplicate, r.event.offset) for r in out]

    assert run(main()) == [(False, 1), (False, 2), (False, 3), (True, 3)]


def test_memory_broker_without_history_reports_every_replay_as_a_gap() -> None:
    broker = memory(history_max_count=0)

    async def main() -> tuple[str | None, str | None, int]:
        event = (await broker.publish(make_record(TASKS, "m1"))).event
        behind = await broker.replay(TASKS, Position(event.epoch, 0))
        since = await broker.replay_since(TASKS, 0)
        at_head = await broker.replay(TASKS, event.position)
        return behind.gap, since.gap, len(at_head.events) + (at_head.gap is not None)

    assert run(main()) == ("window_exceeded", "window_exceeded", 0)


def test_memory_broker_rejects_a_negative_replay_offset() -> None:
    broker = memory()

    async def main() -> str | None:
        await broker.publish(make_record(TASKS, "m1"))
        return (await broker.replay(TASKS, Position(broker.epoch, -1))).gap

    assert run(main()) == "position_invalid"


def test_memory_broker_rejects_an_unknown_namespace() -> None:
    with pytest.raises(ValueError, match="unknown namespace"):
        run(memory().channels("acme", None, "$other"))


def test_memory_broker_treats_a_repeated_registration_as_one_connection() -> None:
    broker = memory()

    async def main() -> list[list[str]]:
        reg = broker.register_connection
        return [
            await reg("acme", "alice", "tab", "c1", 2),
            await reg("acme", "alice", "tab", "c1", 2),
            await reg("acme", "alice", None, "c2", 2),
            await reg("acme", "alice", None, "c3", 2),
        ]

    assert run(main()) == [[], [], [], ["c1"]]


def test_memory_broker_never_supersedes_the_new_connection_under_a_zero_cap() -> None:
    broker = memory()

    async def main() -> list[list[str]]:
        reg = broker.register_connection
        return [
            await reg("acme", "alice", None, "c1", 0),
            await reg("acme", "alice", None, "c2", 0),
        ]

    assert run(main()) == [[], ["c1"]]


# -- idle channel state (UNI-SEC-14) -----------------------------------------------------------


def _idle_broker() -> tuple[MemoryBroker, ManualClock]:
    clock = ManualClock()
    return memory(clock=clock, history_max_age_ms=1_000), clock


def test_memory_broker_discards_idle_unused_channels_and_starts_a_new_epoch() -> None:
    broker, clock = _idle_broker()
    key = ChannelKey("acme", None, "tasks.42")

    async def main() -> None:
        first = (await broker.publish(make_record(key, "m1"))).event
        clock.advance(1_001)
        assert broker.discard_idle(lambda _key: False) == 1
        head = await broker.head(key)
        assert head.offset == 0 and head.epoch != first.epoch  # UNI-DEL-8: never reused
        again = (await broker.publish(make_record(key, "m2"))).event
        assert (again.epoch, again.offset) == (head.epoch, 1)
        old = await broker.replay(key, Position(first.epoch, 1))
        assert old.gap == "epoch_changed"

    run(main())


def test_memory_broker_keeps_channels_in_use_or_younger_than_the_age_bound() -> None:
    broker, clock = _idle_broker()
    used, young = ChannelKey("acme", None, "used"), ChannelKey("acme", None, "young")

    async def main() -> None:
        await broker.publish(make_record(used, "m1"))
        clock.advance(900)
        await broker.publish(make_record(young, "m2"))
        clock.advance(200)
        assert broker.discard_idle(lambda key: key == used) == 0
        assert (await broker.head(used)).offset == 1
        assert (await broker.head(young)).offset == 1

    run(main())


def test_memory_broker_reports_discarded_history_to_a_resume_by_time() -> None:
    broker, clock = _idle_broker()
    key = ChannelKey("acme", None, "tasks.7")

    async def main() -> None:
        event = (await broker.publish(make_record(key, "m1"))).event
        clock.advance(1_001)
        broker.discard_idle(lambda _key: False)
        assert key in await broker.channels("acme", None, "tenant")
        lost = await broker.replay_since(key, event.ts)
        assert lost.gap == "epoch_changed" and lost.events == ()
        assert (await broker.replay_since(key, event.ts + 1)).gap is None
        await broker.publish(make_record(key, "m2"))
        assert (await broker.replay_since(key, event.ts)).gap == "epoch_changed"

    run(main())


def test_memory_broker_discards_a_subscribed_but_unpublished_channel_without_a_tombstone() -> None:
    broker, clock = _idle_broker()
    key = ChannelKey("acme", None, "quiet")

    async def main() -> None:
        head = await broker.head(key)
        clock.advance(1_001)
        assert broker.discard_idle(lambda _key: False) == 1
        assert key not in await broker.channels("acme", None, "tenant")
        assert (await broker.replay_since(key, 0)).gap is None
        assert (await broker.head(key)).epoch != head.epoch

    run(main())


def test_memory_broker_keeps_the_epoch_a_subscribe_announced_until_the_channel_is_idle() -> None:
    broker, clock = _idle_broker()
    quiet, other = ChannelKey("acme", None, "quiet"), ChannelKey("acme", None, "other")

    async def main() -> None:
        await broker.publish(make_record(other, "m1"))
        head = await broker.head(quiet)  # announced in `subscribed`
        clock.advance(1_001)
        broker.discard_idle(lambda key: key == quiet)  # discards `other` only
        event = (await broker.publish(make_record(quiet, "m2"))).event
        assert (event.epoch, event.offset) == (head.epoch, 1)

    run(main())
