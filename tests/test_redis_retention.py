"""Idle channel state on Redis (UNI-SEC-14), against a real Redis, with a clock the test moves.

The sweep is called directly. With ``history_max_age_ms`` 1,000 the sweep interval is 500 ms,
so a channel goes once it stayed idle for 1,000 + 2 x 500 ms: the grace in which every node
marks the idle channels its own subscriptions match.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest

from broker_contract import Collector, CountingEncoder, ManualClock, make_record, run
from redis_support import delete_prefix, fresh_prefix, require_redis
from server_harness import asynctest, running_server, token
from unisock.broker import ChannelKey, Position
from unisock.redis_broker import RedisBroker
from unisock.redis_keys import channel_id

AGE_MS = 1_000
GONE_MS = 2_001  # idle for longer than the age and the grace
TASKS = ChannelKey("acme", None, "tasks.42")


@pytest.fixture
def prefix() -> Iterator[str]:
    url = require_redis()
    used = fresh_prefix("idle")
    yield used
    delete_prefix(url, used)


@contextlib.asynccontextmanager
async def nodes(prefix: str, clock: ManualClock, count: int) -> AsyncIterator[list[RedisBroker]]:
    brokers = [
        RedisBroker(
            require_redis(),
            prefix=prefix,
            clock=clock,
            history_max_age_ms=AGE_MS,
            encode_frame=CountingEncoder(),
        )
        for _ in range(count)
    ]
    try:
        for broker in brokers:
            await broker.start()
        yield brokers
    finally:
        for broker in brokers:
            await broker.close()


def never(_key: ChannelKey) -> bool:
    return False


def test_an_idle_unused_channel_is_discarded_and_starts_again_in_a_new_epoch(prefix: str) -> None:
    clock = ManualClock()

    async def main() -> None:
        async with nodes(prefix, clock, 2) as (a, b):
            seen = Collector()
            b.add_listener(seen)
            first = (await a.publish(make_record(TASKS, "m1"))).event
            clock.advance(GONE_MS)
            assert await a.discard_idle(never) == 1
            head = await a.head(TASKS)
            assert head.offset == 0 and head.epoch != first.epoch  # UNI-DEL-8: never reused
            again = (await a.publish(make_record(TASKS, "m2"))).event
            assert (again.epoch, again.offset) == (head.epoch, 1)
            # The other node hears the event with its channel's epoch, not the generation.
            got = await seen.wait_for(2)
            assert [(e.epoch, e.offset) for e in got] == [(first.epoch, 1), (head.epoch, 1)]
            assert (await b.replay(TASKS, Position(first.epoch, 1))).gap == "epoch_changed"
            # A retry of the first publish is no duplicate of an event of a discarded state.
            retry = await b.publish(make_record(TASKS, "m1"))
            assert (retry.duplicate, retry.event.epoch, retry.event.offset) == (
                False,
                head.epoch,
                2,
            )

    run(main())


def test_channels_in_use_or_not_idle_long_enough_are_kept(prefix: str) -> None:
    clock = ManualClock()
    used, young = ChannelKey("acme", None, "used"), ChannelKey("acme", None, "young")

    async def main() -> None:
        async with nodes(prefix, clock, 1) as (a,):
            await a.publish(make_record(used, "m1"))
            clock.advance(1_900)
            await a.publish(make_record(young, "m2"))
            clock.advance(200)
            assert await a.discard_idle(lambda key: key == used) == 0
            assert (await a.head(used)).offset == 1
            assert (await a.head(young)).offset == 1

    run(main())


def test_a_channel_subscribed_on_another_node_is_kept(prefix: str) -> None:
    """Node b's sweep marks the channel its subscription matches before node a could
    discard it; once b no longer uses it, a's sweep discards it."""
    clock = ManualClock()

    async def main() -> None:
        async with nodes(prefix, clock, 2) as (a, b):
            first = (await a.publish(make_record(TASKS, "m1"))).event
            clock.advance(AGE_MS + 1)  # idle: a candidate on every node
            assert await b.discard_idle(lambda key: key == TASKS) == 0
            clock.advance(AGE_MS + 1)  # idle past the age and the grace since the event
            assert await a.discard_idle(never) == 0
            assert (await a.head(TASKS)) == Position(first.epoch, 1)
            clock.advance(GONE_MS)
            assert await b.discard_idle(never) == 1
            assert (await a.head(TASKS)).epoch != first.epoch

    run(main())


def test_a_resume_by_time_over_discarded_state_gets_a_gap(prefix: str) -> None:
    """UNI-DEL-35: the tombstone lists the channel and reports the loss."""
    clock = ManualClock()

    async def main() -> None:
        async with nodes(prefix, clock, 1) as (a,):
            event = (await a.publish(make_record(TASKS, "m1"))).event
            clock.advance(GONE_MS)
            assert await a.discard_idle(never) == 1
            assert TASKS in await a.channels("acme", None, "tenant")
            lost = await a.replay_since(TASKS, event.ts)
            assert lost.gap == "epoch_changed" and lost.events == ()
            assert (await a.replay_since(TASKS, event.ts + 1)).gap is None
            await a.publish(make_record(TASKS, "m2"))
            assert (await a.replay_since(TASKS, event.ts)).gap == "epoch_changed"

    run(main())


def test_a_subscribed_but_unpublished_channel_goes_without_a_tombstone(prefix: str) -> None:
    clock = ManualClock()
    quiet, other = ChannelKey("acme", None, "quiet"), ChannelKey("acme", None, "other")

    async def main() -> None:
        async with nodes(prefix, clock, 1) as (a,):
            head = await a.head(quiet)  # announced in `subscribed`: held from now on
            await a.publish(make_record(other, "m1"))
            clock.advance(GONE_MS)
            assert await a.discard_idle(lambda key: key == other) == 1
            assert quiet not in await a.channels("acme", None, "tenant")
            assert (await a.replay_since(quiet, 0)).gap is None
            assert (await a.head(quiet)).epoch != head.epoch
            # `other` was in use: its state and the epoch it announced stay.
            event = (await a.publish(make_record(other, "m2"))).event
            assert event.offset == 2

    run(main())


@asynctest
async def test_a_node_on_redis_sweeps_idle_channel_state(prefix: str) -> None:
    """The server's periodic sweep runs on the Redis broker too (``discard_idle_channels``)."""
    async with running_server(
        broker=require_redis(), broker_key_prefix=prefix, history_max_age_ms=AGE_MS
    ) as node:
        assert isinstance(node.server.broker, RedisBroker)
        assert node.server.sweeper.running
        alice = await node.connect()
        ack = await alice.publish("tasks.1", {"n": 1})
        broker = node.server.broker
        # Age the channel in Redis instead of waiting: its last activity long ago. (The
        # periodic sweep may discard it first; either way it goes.)
        assert broker._cmd is not None
        cid = channel_id(ChannelKey("acme", None, "tasks.1"))
        assert await broker._cmd.zadd(broker.keys.idle, {cid: 0}, xx=True, ch=True) == 1
        await node.server.sweeper.sweep_async()
        bob = await node.connect(token(sub="bob"))
        position = (await bob.subscribe("tasks.1"))["position"]
        assert position["offset"] == 0 and position["epoch"] != ack["epoch"]
