"""Two nodes on a private ``redis-server`` that the tests freeze, restart and flush.

- Redis unreachable: publishes and subscribes are refused with ``unavailable`` and a
  ``retry_after_ms``, never acknowledged and never applied later; connections stay open and
  are served; the nodes recover by themselves (UNI-ERR-6, -11, -16, -17).
- History lost (restart without persistence, restart from a snapshot, FLUSHALL): a new epoch,
  an ``epoch_changed`` gap before its first event and on resume, never an offset reused under
  an old epoch (UNI-DEL-8, UNI-DEL-19).
- Sessions survive the loss: the nodes register their connections again, and the newer
  connection of a session keeps it whichever node registers first (UNI-SESS-6, -14).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from broker_contract import TASKS, make_record
from redis_support import PrivateRedis, private_redis
from server_harness import (
    LIMIT,
    Frame,
    RawClient,
    ServerHarness,
    asynctest,
    running_server,
    settings,
    token,
)
from unisock.redis_broker import RedisBroker
from unisock.server import UnisockServer


@contextlib.asynccontextmanager
async def two_nodes(redis_server: PrivateRedis) -> AsyncIterator[tuple[ServerHarness, ...]]:
    async with contextlib.AsyncExitStack() as stack:
        yield tuple(
            [
                await stack.enter_async_context(running_server(broker=redis_server.url))
                for _ in range(2)
            ]
        )


async def eventually(attempt: Callable[[], Any], what: str) -> Any:
    """``await attempt()`` until it returns something truthy (nodes recover by themselves)."""

    async def loop() -> Any:
        while True:
            result = await attempt()
            if result:
                return result
            await asyncio.sleep(0.05)

    try:
        return await asyncio.wait_for(loop(), 3 * LIMIT)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {3 * LIMIT:.0f} s") from None


async def acked(client: RawClient, channel: str, message_id: str) -> Frame:
    """Publish ``message_id`` until acknowledged; refusals meanwhile must be ``unavailable``."""

    async def attempt() -> Frame | None:
        reply = await client.publish_raw(channel, message_id, message_id=message_id)
        if reply["type"] == "ack":
            return reply
        assert reply["code"] == "unavailable", reply
        return None

    result: Frame = await eventually(attempt, f"an ack for {message_id}")
    return result


async def alive(client: RawClient) -> None:
    reply = await client.request({"type": "ping"})
    assert reply["type"] == "pong", reply


@asynctest
async def test_publish_to_an_unreachable_redis_is_refused_and_never_applied_later() -> None:
    with private_redis() as redis_server:
        async with two_nodes(redis_server) as (a, b):
            subscriber = await b.connect(token(sub="bob"))
            await subscriber.subscribe("tasks.1")
            publisher = await a.connect(token(sub="alice"))
            before = await publisher.publish("tasks.1", "before")
            redis_server.freeze()  # connections stay up, nothing answers
            try:
                refused = await publisher.publish_raw("tasks.1", "during", message_id="m-x")
                assert (refused["type"], refused["code"]) == ("error", "unavailable"), refused
                assert isinstance(refused["retry_after_ms"], int), refused
                assert refused["retry_after_ms"] >= 1
                await alive(publisher)
                await alive(subscriber)
                await subscriber.error({"type": "subscribe", "channel": "tasks.2"}, "unavailable")
            finally:
                redis_server.resume()
            # The refused publish reached Redis before it froze and waited there; it was
            # refused after its deadline, so its retry is new and takes the next offset.
            after = await acked(publisher, "tasks.1", "m-x")
            assert (after["duplicate"], after["offset"]) == (False, before["offset"] + 1)
            assert after["epoch"] == before["epoch"]  # Redis kept its data: same history
            events = await subscriber.events(2)
            assert [e["message_id"] for e in events[1:]] == ["m-x"]
            assert [e["offset"] for e in events] == [1, 2]
            assert [f for f in await subscriber.fence() if f["type"] in ("event", "gap")] == []


async def _history_loss(redis_server: PrivateRedis, lose: Callable[[], None]) -> None:
    """Events, a loss of Redis's data, then the checks every kind of loss must pass."""
    async with two_nodes(redis_server) as (a, b):
        subscriber = await b.connect(token(sub="bob"))
        await subscriber.subscribe("tasks.1")
        publisher = await a.connect(token(sub="alice"))
        old = [await publisher.publish("tasks.1", i) for i in range(3)]
        await subscriber.events(3)
        lose()
        first = await acked(publisher, "tasks.1", "after-loss")
        assert first["epoch"] != old[0]["epoch"], "the epoch survived the loss of history"
        assert first["offset"] == 1
        # UNI-DEL-19: the live subscriber is told before the first event of the new epoch.
        gap = await subscriber.expect_next("gap")
        assert (gap["reason"], gap["epoch"], gap["offset"]) == ("epoch_changed", first["epoch"], 0)
        event = await subscriber.expect_next("event")
        assert (event["epoch"], event["offset"]) == (first["epoch"], 1)
        # A client that resumes from before the loss, on either node, gets an explicit gap.
        for node in (a, b):
            resumer = await node.connect(token(sub="carol"))
            position = {"epoch": old[-1]["epoch"], "offset": old[-1]["offset"]}
            await resumer.subscribe("tasks.1", **{"from": {"tasks.1": position}})
            gap = await resumer.expect("gap")
            assert (gap["reason"], gap["epoch"], gap["offset"]) == (
                "epoch_changed",
                first["epoch"],
                1,
            )
        # Never an offset under the old epoch again.
        later = [await publisher.publish("tasks.1", i) for i in range(2)]
        assert {ack["epoch"] for ack in later} == {first["epoch"]}
        assert [ack["offset"] for ack in later] == [2, 3]


@asynctest
async def test_redis_restarted_without_its_data_starts_a_new_epoch() -> None:
    with private_redis() as redis_server:
        await _history_loss(redis_server, redis_server.restart)


@asynctest
async def test_flushed_redis_starts_a_new_epoch() -> None:
    with private_redis() as redis_server:
        await _history_loss(redis_server, redis_server.flush)


@asynctest
async def test_redis_restarted_from_a_snapshot_still_starts_a_new_epoch() -> None:
    """A snapshot may be older than the last acknowledged event: its offsets could be handed
    out again, so a restarted Redis always means a new epoch, data or not."""
    with private_redis(persist=True) as redis_server:
        await _history_loss(redis_server, redis_server.restart)


@contextlib.asynccontextmanager
async def two_nodes_beating(
    redis_server: PrivateRedis, node_ttl_ms: int, **server: Any
) -> AsyncIterator[tuple[ServerHarness, ServerHarness]]:
    """Two nodes whose liveness beats every ``node_ttl_ms / 3``: a long one leaves the restore
    to the test (``renew``), so that the order of events is the test's, not the timers'."""
    conf = settings(**server)
    nodes = []
    try:
        for _ in range(2):
            broker = RedisBroker(redis_server.url, node_ttl_ms=node_ttl_ms)
            server = UnisockServer(conf, broker)
            host, port = await server.start("127.0.0.1", 0)
            nodes.append(ServerHarness(server, host, port))
        yield nodes[0], nodes[1]
    finally:
        for node in nodes:
            for client in node.clients:
                client.ws.transport.abort()
            await asyncio.wait_for(node.server.close(), LIMIT)


def broker_of(node: ServerHarness) -> RedisBroker:
    broker = node.server.broker
    assert isinstance(broker, RedisBroker)
    return broker


async def registered(redis_server: PrivateRedis, node: ServerHarness, sub: str, count: int) -> None:
    """Until ``count`` connections of ``sub`` are in Redis (a welcome precedes registration)."""
    key = broker_of(node).keys.user("acme", sub)

    async def attempt() -> bool:
        with redis_server.client() as client:
            return int(client.llen(key)) == count

    await eventually(attempt, f"{count} registered connection(s) of {sub}")


@asynctest
async def test_sessions_still_supersede_across_nodes_after_redis_lost_them() -> None:
    with private_redis() as redis_server:
        async with two_nodes_beating(redis_server, 600) as (a, b):
            first = await a.connect(token(sub="alice", sid="tab-1"))
            await registered(redis_server, a, "alice", 1)
            redis_server.restart()  # the session list is gone with everything else
            # Node a's own beat registers its connection again.
            await registered(redis_server, a, "alice", 1)
            second = await b.connect(token(sub="alice", sid="tab-1"))
            closed = await first.expect_close()
            assert (closed.code, closed.reason) == (4001, "superseded")
            await alive(second)


@asynctest
async def test_a_restored_connection_yields_to_a_newer_one_of_its_session() -> None:
    """Redis lost the sessions; a newer connection of the session registered on node b before
    node a restored its older one: the newer keeps the session, whichever registers first
    (UNI-SESS-6, UNI-SESS-14). Node b had not beaten since the loss either: its registering
    is what tells the others it is alive."""
    with private_redis() as redis_server:
        async with two_nodes_beating(redis_server, 120_000) as (a, b):
            first = await a.connect(token(sub="alice", sid="tab-1"))
            await registered(redis_server, a, "alice", 1)
            redis_server.restart()
            second = await b.connect(token(sub="alice", sid="tab-1"))
            await registered(redis_server, b, "alice", 1)
            await broker_of(a).renew()  # node a finds its key gone and restores `first`
            closed = await first.expect_close()
            assert (closed.code, closed.reason) == (4001, "superseded")
            await alive(second)
            await registered(redis_server, b, "alice", 1)  # only `second` counts


@asynctest
async def test_a_restore_counts_against_the_per_user_cap() -> None:
    """Redis lost the user's list; two newer connections registered on node b fill the cap of
    2 before node a restores its older one: the restore is counted, and the oldest connection
    in authentication order, the restored one, is closed (UNI-SESS-11, UNI-SESS-14)."""
    with private_redis() as redis_server:
        async with two_nodes_beating(redis_server, 120_000, max_connections_per_user=2) as (
            a,
            b,
        ):
            oldest = await a.connect(token(sub="dave"))
            await registered(redis_server, a, "dave", 1)
            redis_server.restart()
            newer = [await b.connect(token(sub="dave")) for _ in range(2)]
            await registered(redis_server, b, "dave", 2)
            await broker_of(a).renew()  # node a finds its key gone and restores `oldest`
            closed = await oldest.expect_close()
            assert (closed.code, closed.reason) == (4001, "superseded")
            for client in newer:
                await alive(client)
            await registered(redis_server, b, "dave", 2)


@asynctest
async def test_a_registration_after_the_loss_restores_the_nodes_other_connections() -> None:
    """The first registration on a node after Redis lost its data finds the node's key gone:
    the node registers its other connections again at once, not at its next beat."""
    with private_redis() as redis_server:
        async with two_nodes_beating(redis_server, 120_000) as (a, b):
            older = await b.connect(token(sub="bob", sid="tab-1"))
            await registered(redis_server, b, "bob", 1)
            redis_server.restart()
            await b.connect(token(sub="carol"))
            await registered(redis_server, b, "carol", 1)
            await registered(redis_server, b, "bob", 1)
            # It counts again across nodes: a newer connection of its session on a replaces it.
            await a.connect(token(sub="bob", sid="tab-1"))
            closed = await older.expect_close()
            assert (closed.code, closed.reason) == (4001, "superseded")


@asynctest
async def test_a_connection_authenticated_during_an_outage_counts_once_redis_answers() -> None:
    """Its registration failed; the node registers it at its first beat that reaches Redis,
    so that a newer connection of its session still supersedes it (UNI-SESS-14, UNI-ERR-16)."""
    with private_redis() as redis_server:
        async with two_nodes_beating(redis_server, 3_000) as (a, b):
            redis_server.freeze()
            try:
                first = await a.connect(token(sub="alice", sid="tab-1"))

                async def refused() -> bool:
                    return bool(broker_of(a)._unregistered)

                await eventually(refused, "the registration refused")
                await alive(first)  # served all the same
            finally:
                redis_server.resume()
            await registered(redis_server, a, "alice", 1)
            second = await b.connect(token(sub="alice", sid="tab-1"))
            closed = await first.expect_close()
            assert (closed.code, closed.reason) == (4001, "superseded")
            await alive(second)


@asynctest
async def test_a_burst_sent_after_redis_forgot_the_script_is_applied_whole_and_in_order() -> None:
    """A restarted or flushed script cache refuses a whole pipelined batch with NOSCRIPT; the
    broker loads the script and sends the batch again, so nothing is lost or reordered."""
    with private_redis() as redis_server:
        broker = RedisBroker(redis_server.url)
        await broker.start()
        try:
            first = await broker.publish(make_record(TASKS, "first"))
            assert first.event.offset == 1
            redis_server.client().script_flush()
            burst = await asyncio.gather(
                *(broker.publish(make_record(TASKS, f"m{i}")) for i in range(50))
            )
            assert [(r.duplicate, r.event.offset) for r in burst] == [
                (False, offset) for offset in range(2, 52)
            ]
            assert [r.event.record.message_id for r in burst] == [f"m{i}" for i in range(50)]
            assert (await broker.head(TASKS)).offset == 51
        finally:
            await broker.close()
