"""The Redis broker: the shared broker contract against a real Redis, plus what only a shared
store has (several brokers on one Redis, key prefixes, generations, the one-round-trip publish).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

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
from redis_support import delete_prefix, fresh_prefix, require_redis
from unisock.broker import Broker, ChannelKey
from unisock.redis_broker import RedisBroker
from unisock.redis_keys import KeyLayout, channel_id, decode_record, encode_record


@pytest.fixture
def redis_url() -> str:
    return require_redis()


@pytest.fixture
def prefixes(redis_url: str) -> Iterator[list[str]]:
    """Key prefixes the test used; their keys are deleted afterwards."""
    used: list[str] = []
    yield used
    for prefix in used:
        delete_prefix(redis_url, prefix)


@pytest.fixture
def broker_factory(redis_url: str, prefixes: list[str]) -> BrokerFactory:
    def build(settings: BrokerSettings) -> Broker:
        prefix = fresh_prefix("contract")
        prefixes.append(prefix)
        return RedisBroker(
            redis_url,
            prefix=prefix,
            history_max_count=settings.history_max_count,
            history_max_age_ms=settings.history_max_age_ms,
            dedup_window_ms=settings.dedup_window_ms,
            clock=settings.clock,
            encode_frame=settings.encode_frame,
        )

    return build


class TestRedisBrokerContract(BrokerContract):
    """Every contract test, run against :class:`RedisBroker` on a real Redis."""


def test_redis_broker_rejects_negative_limits_and_an_empty_prefix() -> None:
    with pytest.raises(ValueError, match="negative"):
        RedisBroker("redis://127.0.0.1:1/0", history_max_count=-1)
    with pytest.raises(ValueError, match="prefix"):
        RedisBroker("redis://127.0.0.1:1/0", prefix="")


def test_two_brokers_on_one_prefix_share_offsets_and_each_hears_every_event(
    redis_url: str, prefixes: list[str]
) -> None:
    prefix = fresh_prefix("pair")
    prefixes.append(prefix)
    clock = ManualClock()

    async def main() -> None:
        a = RedisBroker(redis_url, prefix=prefix, clock=clock, encode_frame=CountingEncoder())
        b = RedisBroker(redis_url, prefix=prefix, clock=clock, encode_frame=CountingEncoder())
        seen_a, seen_b = Collector(), Collector()
        a.add_listener(seen_a)
        b.add_listener(seen_b)
        await a.start()
        await b.start()
        try:
            offsets = []
            for i in range(6):
                node = a if i % 2 else b
                offsets.append((await node.publish(make_record(TASKS, f"m{i}"))).event.offset)
            assert offsets == [1, 2, 3, 4, 5, 6]
            for seen in (seen_a, seen_b):
                got = await seen.wait_for(6)
                assert [(e.offset, e.record.message_id) for e in got] == [
                    (i + 1, f"m{i}") for i in range(6)
                ]
            retry = await a.publish(make_record(TASKS, "m1"))
            assert (retry.duplicate, retry.event.offset) == (True, 2)
        finally:
            await a.close()
            await b.close()

    run(main())


def test_brokers_under_different_prefixes_share_nothing(
    redis_url: str, prefixes: list[str]
) -> None:
    first, second = fresh_prefix("one"), fresh_prefix("two")
    prefixes.extend([first, second])

    async def main() -> None:
        a = RedisBroker(redis_url, prefix=first, encode_frame=CountingEncoder())
        b = RedisBroker(redis_url, prefix=second, encode_frame=CountingEncoder())
        heard = Collector()
        b.add_listener(heard)
        await a.start()
        await b.start()
        try:
            assert (await a.publish(make_record(TASKS, "m1"))).event.offset == 1
            assert (await b.publish(make_record(TASKS, "m1"))).duplicate is False
            assert (await b.head(TASKS)).offset == 1
            assert [e.record.message_id for e in await heard.wait_for(1)] == ["m1"]
            assert await b.register_connection("acme", "alice", "tab", "c1", 1) == []
            assert await a.register_connection("acme", "alice", "tab", "c2", 1) == []
        finally:
            await a.close()
            await b.close()

    run(main())


def test_redis_broker_serves_far_more_concurrent_operations_than_it_has_connections(
    redis_url: str, prefixes: list[str]
) -> None:
    """A thousand clients connecting at once queue for a connection; none is refused."""
    prefix = fresh_prefix("burst")
    prefixes.append(prefix)

    async def main() -> None:
        broker = RedisBroker(redis_url, prefix=prefix, encode_frame=CountingEncoder())
        await broker.start()
        try:
            registered = await asyncio.gather(
                *(broker.register_connection("acme", f"u{i}", None, f"c{i}", 5) for i in range(400))
            )
            assert registered == [[]] * 400
            acks = await asyncio.gather(
                *(broker.publish(make_record(TASKS, f"m{i}")) for i in range(400))
            )
            assert sorted(a.event.offset for a in acks) == list(range(1, 401))
        finally:
            await broker.close()

    run(main())


def test_a_publish_that_waited_for_a_connection_is_not_refused_as_late(
    redis_url: str, prefixes: list[str]
) -> None:
    """The publish deadline starts once the publish has a connection: a burst that queues it
    for longer than its deadline margin delays it, never refuses it (Redis answered)."""
    prefix = fresh_prefix("queued")
    prefixes.append(prefix)

    async def main() -> None:
        # A 400 ms command timeout: Redis refuses a publish 200 ms after its deadline starts.
        broker = RedisBroker(redis_url, prefix=prefix, timeout_ms=400)
        await broker.start()
        slots = broker._slots
        held = 0
        try:
            while not slots.locked():  # every script slot busy, as in a burst
                await slots.acquire()
                held += 1
            queued = asyncio.ensure_future(broker.publish(make_record(TASKS, "m-queued")))
            await asyncio.sleep(0.5)  # queued for longer than the 200 ms margin
            assert not queued.done()
            for _ in range(held):
                slots.release()
            held = 0
            result = await queued
            assert (result.duplicate, result.event.offset) == (False, 1)
        finally:
            for _ in range(held):
                slots.release()
            await broker.close()

    run(main())


def test_the_clock_offset_to_redis_is_measured_within_its_error_bound(
    redis_url: str, prefixes: list[str]
) -> None:
    """This Redis runs on this host: the true offset is 0, within the estimate's bound."""
    prefix = fresh_prefix("skew")
    prefixes.append(prefix)

    async def main() -> None:
        broker = RedisBroker(redis_url, prefix=prefix)
        await broker.start()
        try:
            await broker.renew()
            skew = broker._skew
            assert skew.error_ms is not None
            assert abs(skew.offset_ms) <= skew.error_ms + 1, (skew.offset_ms, skew.error_ms)
        finally:
            await broker.close()

    run(main())


def test_sys_dedup_keys_differ_per_publisher_tenant_and_never_meet_other_keys() -> None:
    """UNI-SEC-19: the $sys dedup record names the tenant; the layout stays injective."""
    keys = KeyLayout("p:")
    sys_cid = channel_id(ChannelKey(None, None, "$sys.maint"))
    made = {
        keys.dedup(sys_cid, "m/1", "acme"),
        keys.dedup(sys_cid, "1", "acme%2Fm"),
        keys.dedup(sys_cid, "m/1", "globex"),
        keys.dedup(sys_cid, "acme/m/1", None),
        keys.dedup(channel_id(ChannelKey("acme", None, "tasks.1")), "m/1", "acme"),
        keys.dedup(channel_id(ChannelKey("acme", None, "tasks.1")), "m/1", None),
    }
    assert len(made) == 5  # only the tenant channel ignores the tenant it is given
    assert keys.dedup(sys_cid, "m1", "acme") == "p:c:s/%24sys.maint:d:acme/m1"


def test_records_keep_their_publisher_tenant_through_redis_and_read_older_ones() -> None:
    record = make_record(ChannelKey(None, None, "$sys.maint"), "m1", tenant="acme")
    assert decode_record(record.key, encode_record(record)) == record
    older = json.dumps(json.loads(encode_record(record))[:10])
    assert decode_record(record.key, older).publisher_tenant is None
