"""Two server nodes on one Redis: delivery, sessions and resume across nodes, and health.

Each node is a real :class:`~unisock.server.UnisockServer` configured with ``broker`` =
a Redis URL, as ``unisock serve --broker`` builds it; the shared Redis is used under a key
prefix of the test's own, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from websockets.asyncio.client import connect

from redis_support import NodeProcess, delete_prefix, fresh_prefix, private_redis, require_redis
from server_harness import (
    LIMIT,
    SECRET,
    RawClient,
    ServerHarness,
    asynctest,
    http_get,
    running_server,
    token,
)
from unisock._version import PROTOCOL_TOKEN
from unisock.config import ServerConfig
from unisock.redis_broker import RedisBroker


@pytest.fixture
def shared() -> Iterator[tuple[str, str]]:
    """(Redis URL, key prefix) of this test on the shared Redis."""
    url = require_redis()
    prefix = fresh_prefix("cluster")
    yield url, prefix
    delete_prefix(url, prefix)


@contextlib.asynccontextmanager
async def cluster(
    url: str, prefix: str, count: int = 2, **server: object
) -> AsyncIterator[list[ServerHarness]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                running_server(broker=url, broker_key_prefix=prefix, **server)
            )
            for _ in range(count)
        ]


def test_config_accepts_memory_or_a_redis_url_and_nothing_else() -> None:
    assert ServerConfig().broker == "memory"
    assert ServerConfig(broker="redis://10.0.0.2:6379/3").broker.startswith("redis://")
    for bad in ("redis", "http://10.0.0.2/", "memcached://x"):
        with pytest.raises(ValueError, match="broker"):
            ServerConfig(broker=bad)
    with pytest.raises(ValueError, match="prefix"):
        ServerConfig(broker_key_prefix="")


@asynctest
async def test_node_configured_with_a_redis_url_runs_on_redis(shared: tuple[str, str]) -> None:
    url, prefix = shared
    async with cluster(url, prefix, count=1) as (node,):
        assert isinstance(node.server.broker, RedisBroker)
        assert node.server.broker.keys.prefix == prefix
        status, body = await node.get("/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok", "broker": "ok"})


@asynctest
async def test_an_event_published_on_one_node_reaches_subscribers_on_every_node(
    shared: tuple[str, str],
) -> None:
    url, prefix = shared
    async with cluster(url, prefix) as (a, b):
        on_a = await a.connect(token(sub="alice"))
        on_b = await b.connect(token(sub="bob"))
        await on_a.subscribe("tasks.1")
        await on_b.subscribe("tasks.1")
        publisher = await b.connect(token(sub="carol"))
        acks = [await publisher.publish("tasks.1", i) for i in range(3)]
        assert [ack["offset"] for ack in acks] == [1, 2, 3]
        got = [await client.events(3) for client in (on_a, on_b)]
        for events in got:
            assert [(e["offset"], e["data"]) for e in events] == [(1, 0), (2, 1), (3, 2)]
        # Each node framed the event itself, and both wrote the same bytes (UNI-DEL-4).
        assert [e.raw for e in got[0]] == [e.raw for e in got[1]]


@asynctest
async def test_a_session_opened_again_on_another_node_supersedes_the_first(
    shared: tuple[str, str],
) -> None:
    url, prefix = shared
    async with cluster(url, prefix) as (a, b):
        first = await a.connect(token(sub="alice", sid="tab-1"))
        await b.connect(token(sub="alice", sid="tab-1"))
        closed = await first.expect_close()
        assert (closed.code, closed.reason) == (4001, "superseded")


@asynctest
async def test_the_connection_authenticated_last_keeps_the_session_whatever_the_order(
    shared: tuple[str, str],
) -> None:
    """Node a's registration reaches Redis after node b's, though its connection
    authenticated first: b's connection is the newer and keeps the session (UNI-SESS-6, -14)."""
    url, prefix = shared
    async with cluster(url, prefix) as (a, b):
        broker, other = a.server.broker, b.server.broker
        assert isinstance(broker, RedisBroker) and isinstance(other, RedisBroker)
        slots, held = broker._slots, 0
        try:
            while not slots.locked():  # node a's registrations wait for Redis
                await slots.acquire()
                held += 1
            first = await a.connect(token(sub="alice", sid="tab-1"))
            second = await b.connect(token(sub="alice", sid="tab-1"))
            key = broker.keys.user("acme", "alice")

            async def registered_second() -> None:
                while True:
                    with redis.Redis.from_url(url, decode_responses=True) as client:
                        entries = client.lrange(key, 0, -1)
                    if len(entries) == 1 and other.node_id in entries[0]:
                        return
                    await asyncio.sleep(0.02)

            await asyncio.wait_for(registered_second(), LIMIT)
        finally:
            for _ in range(held):
                slots.release()
        closed = await first.expect_close()
        assert (closed.code, closed.reason) == (4001, "superseded")
        assert (await second.request({"type": "ping"}))["type"] == "pong"


@asynctest
async def test_a_client_resumes_on_another_node_with_exactly_the_events_it_missed(
    shared: tuple[str, str],
) -> None:
    url, prefix = shared
    async with cluster(url, prefix) as (a, b):
        reader = await a.connect(token(sub="alice"))
        await reader.subscribe("tasks.1")
        publisher = await a.connect(token(sub="carol"))
        await publisher.publish("tasks.1", "seen")
        seen = (await reader.events(1))[0]
        await reader.close()
        for data in ("missed-1", "missed-2"):
            await publisher.publish("tasks.1", data)
        resumed = await b.connect(token(sub="alice"))
        position = {"epoch": seen["epoch"], "offset": seen["offset"]}
        await resumed.subscribe("tasks.1", **{"from": {"tasks.1": position}})
        replayed = await resumed.events(2)
        assert [(e["offset"], e["data"]) for e in replayed] == [(2, "missed-1"), (3, "missed-2")]
        await publisher.publish("tasks.1", "live")
        assert (await resumed.events(1))[0]["offset"] == 4


@asynctest
async def test_health_reports_an_unreachable_redis_and_its_return() -> None:
    with private_redis() as redis_server:
        async with cluster(redis_server.url, "unisock:", count=1) as (node,):
            assert (await node.get("/healthz"))[0] == 200
            redis_server.freeze()
            try:
                _, body = await _wait_health(node, 503)
                assert json.loads(body) == {"status": "unavailable", "broker": "unreachable"}
            finally:
                redis_server.resume()
            _, body = await _wait_health(node, 200)
            assert json.loads(body) == {"status": "ok", "broker": "ok"}


async def _wait_health(node: ServerHarness, status: int) -> tuple[int, str]:
    """Poll /healthz until it answers ``status``; reachability is re-checked every second."""

    async def poll() -> tuple[int, str]:
        while True:
            got = await node.get("/healthz")
            if got[0] == status:
                return got
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(poll(), 2 * LIMIT)


@asynctest
async def test_a_node_that_missed_fanout_entries_closes_its_connections_with_1012(
    shared: tuple[str, str],
) -> None:
    """Entries Redis trimmed before this node read them: its subscribers may lack events, so
    they are sent away to resume (and get the events or a gap) instead of silently missing."""
    url, prefix = shared
    async with cluster(url, prefix, drain_window_ms=3000) as (a, b):
        subscriber = await a.connect(token(sub="alice"))
        await subscriber.subscribe("tasks.1")
        publisher = await b.connect(token(sub="carol"))
        await publisher.publish("tasks.1", "first")
        await subscriber.events(1)
        broker = a.server.broker
        assert isinstance(broker, RedisBroker) and broker._position is not None
        generation, sequence = broker._position
        broker._position = (generation, sequence - 3)  # as if three entries had been trimmed
        await publisher.publish("tasks.1", "second")
        closed = await subscriber.expect_close()
        assert (closed.code, closed.reason) == (1012, "service_restart;window_ms=3000")
        # The other node read every entry: its connections stay.
        assert (await publisher.request({"type": "ping"}))["type"] == "pong"


def test_serve_with_broker_options_runs_a_node_on_redis_under_the_prefix(
    shared: tuple[str, str], tmp_path: Path
) -> None:
    """``unisock serve --broker URL --broker-prefix P`` as an operator types it."""
    url, prefix = shared
    node = NodeProcess(
        "--broker", url, "--broker-prefix", prefix, secret=SECRET, log=tmp_path / "node.log"
    )
    try:
        host, port = node.url.removeprefix("ws://").rstrip("/").rsplit(":", 1)

        async def main() -> tuple[int, str]:
            return await http_get(host, int(port), "/healthz")

        status, body = asyncio.run(main())
        assert (status, json.loads(body)) == (200, {"status": "ok", "broker": "ok"})
        with redis.Redis.from_url(url) as client:
            # The node announced itself under the prefix (its liveness key).
            assert len(list(client.scan_iter(match=f"{prefix}node:*"))) == 1
    finally:
        node.stop()


def test_serve_with_a_config_file_naming_redis_runs_a_node_on_redis(
    shared: tuple[str, str], tmp_path: Path
) -> None:
    """The same node from the config file's ``broker`` and ``broker_key_prefix`` keys."""
    url, prefix = shared
    config = tmp_path / "node.toml"
    config.write_text(
        f"[server]\nbroker = {json.dumps(url)}\nbroker_key_prefix = {json.dumps(prefix)}\n",
        encoding="utf-8",
    )
    node = NodeProcess("--config", str(config), secret=SECRET, log=tmp_path / "node.log")
    try:
        host, port = node.url.removeprefix("ws://").rstrip("/").rsplit(":", 1)
        status, body = asyncio.run(http_get(host, int(port), "/healthz"))
        assert (status, json.loads(body)) == (200, {"status": "ok", "broker": "ok"})
        with redis.Redis.from_url(url) as client:
            assert len(list(client.scan_iter(match=f"{prefix}node:*"))) == 1
    finally:
        node.stop()


def test_sighup_on_a_redis_node_starts_every_channel_over_in_a_new_epoch(
    shared: tuple[str, str], tmp_path: Path
) -> None:
    """The operator's reset of a Redis deployment (UNI-DEL-8): ``SIGHUP`` to a node discards
    the retained history and offsets under a new epoch, as on a single in-memory node."""
    url, prefix = shared
    node = NodeProcess(
        "--broker", url, "--broker-prefix", prefix, secret=SECRET, log=tmp_path / "node.log"
    )
    try:

        async def main() -> None:
            async with connect(
                node.url, subprotocols=[PROTOCOL_TOKEN], compression=None, ping_interval=None
            ) as ws:
                client = RawClient(ws)
                await client.hello(token())
                before = await client.publish("tasks.a", {"n": 1})
                await client.publish("tasks.a", {"n": 2})
                node.process.send_signal(signal.SIGHUP)
                after = before
                deadline = asyncio.get_running_loop().time() + LIMIT
                while after["epoch"] == before["epoch"]:  # the reset runs beside the loop
                    assert asyncio.get_running_loop().time() < deadline, "no new epoch"
                    after = await client.publish("tasks.a", {"n": 3})
                assert after["offset"] == 1, after
                assert node.running()

        asyncio.run(main())
    finally:
        node.stop()
