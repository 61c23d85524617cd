"""A broker outage is refused with ``unavailable``, never accepted without effect (UNI-ERR-11).

The conformance suite observes this rule only when the operator gives it outage hooks
(``--outage-command``); the reference server also proves it here, with a broker whose
operations fail while it is down, and against a real Redis in ``test_redis_faults.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from server_harness import RawClient, ServerHarness, asynctest, running_server, token
from unisock.broker import ChannelKey, Position, PublishRecord, PublishResult
from unisock.memory_broker import MemoryBroker
from unisock.messages import encode_event_frame


class FlakyBroker(MemoryBroker):
    """The in-memory broker, except that ``publish`` and ``head`` fail while ``down``."""

    down = False

    async def publish(self, record: PublishRecord) -> PublishResult:
        if self.down:
            raise ConnectionError("broker down at 10.0.0.7:6379")
        return await super().publish(record)

    async def head(self, key: ChannelKey) -> Position:
        if self.down:
            raise ConnectionError("broker down at 10.0.0.7:6379")
        return await super().head(key)


@asynccontextmanager
async def flaky_server() -> AsyncIterator[tuple[ServerHarness, FlakyBroker]]:
    broker = FlakyBroker(encode_frame=encode_event_frame)
    async with running_server(broker_object=broker) as harness:
        yield harness, broker


def _assert_unavailable(reply: Any) -> None:
    assert (reply["type"], reply["code"]) == ("error", "unavailable"), reply
    assert isinstance(reply["retry_after_ms"], int) and reply["retry_after_ms"] >= 1, reply
    assert "10.0.0.7" not in reply.raw  # no internals on the wire (UNI-ERR-6)


async def _still_open(client: RawClient) -> None:
    reply = await client.request({"type": "ping"})
    assert reply["type"] == "pong", reply


@asynctest
async def test_server_refuses_publish_with_unavailable_while_the_broker_is_down() -> None:
    async with flaky_server() as (h, broker):
        publisher = await h.connect()
        subscriber = await h.connect(token(sub="bob"))
        await subscriber.subscribe("tasks.1")
        broker.down = True
        _assert_unavailable(await publisher.publish_raw("tasks.1", 1, message_id="m-1"))
        await _still_open(publisher)
        assert await subscriber.fence() == []  # nothing was sequenced or delivered
        broker.down = False
        # The refused publish had no effect: retried with its key, it is new, not a duplicate.
        ack = await publisher.publish("tasks.1", 1, message_id="m-1")
        assert (ack["offset"], ack["duplicate"]) == (1, False)
        event = await subscriber.expect("event")
        assert event["message_id"] == "m-1"


@asynctest
async def test_server_refuses_subscribe_with_unavailable_while_the_broker_is_down() -> None:
    async with flaky_server() as (h, broker):
        client = await h.connect()
        broker.down = True
        _assert_unavailable(await client.request({"type": "subscribe", "channel": "tasks.1"}))
        await _still_open(client)
        broker.down = False
        # The refused subscribe left no subscription behind.
        reply = await client.request({"type": "unsubscribe", "channel": "tasks.1"})
        assert reply["code"] == "not_subscribed", reply
        subscribed = await client.subscribe("tasks.1")
        assert subscribed["position"]["offset"] == 0
