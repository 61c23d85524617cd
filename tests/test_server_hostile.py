"""Crafted messages against the live server: each gets its specified answer, nothing else.

The four inputs here once ended a connection with 1000 and no reason, or labelled a failure
that repeats as temporary. Each is sent over a real socket; afterwards the connection (when
the spec keeps it) and a second client must still be served (UNI-ERR-10, UNI-SEC-13).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jwt

from server_harness import (
    SECRET,
    RawClient,
    ServerHarness,
    asynctest,
    running_server,
    token,
)
from unisock.broker import PublishRecord, PublishResult
from unisock.memory_broker import MemoryBroker
from unisock.messages import encode_event_frame


async def _alive(client: RawClient) -> None:
    reply = await client.request({"type": "ping"})
    assert reply["type"] == "pong", reply


def _deep_filter(op: str, depth: int) -> Any:
    node: Any = {"eq": ["n", 1]}
    for _ in range(depth - 1):
        node = {"not": node} if op == "not" else {op: [node]}
    return node


@asynctest
async def test_server_keeps_the_connection_after_deep_filters() -> None:
    async with running_server() as server:
        client = await server.connect()
        for op, depth, code in (
            ("and", 128, "invalid_json"),
            ("not", 256, "invalid_json"),
            ("not", 62, "invalid_filter"),
            ("not", 9, "invalid_filter"),
        ):
            msg = {"type": "subscribe", "id": "s1", "channel": "tasks.>"}
            msg["filter"] = _deep_filter(op, depth)
            await client.send(msg)
            error = await client.expect("error")
            assert error["code"] == code, (op, depth, error)
            await _alive(client)


@asynctest
async def test_server_closes_4100_for_a_signed_token_with_a_lone_surrogate() -> None:
    async with running_server() as server:
        for claims in ({"sub": "\ud800x"}, {"sid": "tab\udfff"}):
            base = jwt.decode(token(), SECRET, algorithms=["HS256"])
            bad = jwt.encode({**base, **claims}, SECRET, algorithm="HS256")
            client = await server.open()
            await client.send({"type": "hello", "token": bad})
            closed = await client.expect_close()
            assert (closed.code, closed.reason, closed.frames) == (4100, "auth_failed", [])
        await _alive(await server.connect())


@asynctest
async def test_server_refuses_data_beyond_the_nesting_limit_as_invalid_json() -> None:
    async with running_server() as server:
        client = await server.connect()
        await client.subscribe("tasks.>")
        for depth in (979, 980, 981):
            text = json.dumps(
                {
                    "type": "publish",
                    "id": "p1",
                    "channel": "tasks.1",
                    "event": "e",
                    "message_id": f"m{depth}",
                    "data": "D",
                }
            ).replace('"D"', "[" * depth + "]" * depth)
            await client.send_raw(text)
            error = await client.expect("error")
            assert error["code"] == "invalid_json", error
            assert "retry_after_ms" not in error, error
        frames = await client.fence()
        assert [f for f in frames if f.get("type") == "event"] == []  # nothing sequenced


@asynctest
async def test_server_compares_filter_numbers_as_binary64() -> None:
    async with running_server() as server:
        reader = await server.connect()
        await reader.subscribe("tasks.eq", filter={"eq": ["n", 2**53]})
        await reader.subscribe("tasks.gt", filter={"gt": ["n", 2**53]})
        writer = await server.connect(token(sub="bob"))
        for channel in ("tasks.gt", "tasks.eq"):
            await writer.publish(channel, attrs={"n": 2**53 + 1})
        event = await reader.expect("event")
        assert event["channel"] == "tasks.eq", event  # the gt event was not delivered
        assert [f for f in await reader.fence() if f.get("type") == "event"] == []


class BrokenBroker(MemoryBroker):
    """Publishing fails with ``failure`` (a defect, or an outage)."""

    failure: Exception | None = None

    async def publish(self, record: PublishRecord) -> PublishResult:
        if self.failure is not None:
            raise self.failure
        return await super().publish(record)


@asynccontextmanager
async def _broken_server() -> AsyncIterator[tuple[ServerHarness, BrokenBroker]]:
    broker = BrokenBroker(encode_frame=encode_event_frame)
    async with running_server(broker_object=broker) as harness:
        yield harness, broker


@asynctest
async def test_server_answers_a_repeating_failure_with_internal_error_not_unavailable() -> None:
    async with _broken_server() as (server, broker):
        client = await server.connect()
        broker.failure = RecursionError("maximum recursion depth exceeded while encoding")
        reply = await client.request(
            {"type": "publish", "channel": "tasks.1", "event": "e", "data": 1, "message_id": "m1"}
        )
        assert (reply["type"], reply["code"]) == ("error", "internal_error"), reply
        assert "retry_after_ms" not in reply and "recursion" not in reply.raw, reply
        broker.failure = ConnectionResetError("broker went away")
        reply = await client.request(
            {"type": "publish", "channel": "tasks.1", "event": "e", "data": 1, "message_id": "m2"}
        )
        assert (reply["type"], reply["code"]) == ("error", "unavailable"), reply
        assert reply["retry_after_ms"] >= 1, reply
        await _alive(client)


@asynctest
async def test_a_defect_escaping_the_core_closes_that_connection_1011_only() -> None:
    async with running_server() as server:
        victim = await server.connect()
        other = await server.connect(token(sub="bob"))

        def explode(text: str, decoded: Any) -> Any:
            raise RecursionError("deep")

        for each in server.server.conns.values():
            if each.core.identity is not None and each.core.identity.sub == "alice":
                each.core._receive_text = explode  # type: ignore[method-assign]
        await victim.send({"type": "ping"})
        closed = await victim.expect_close()
        assert (closed.code, closed.reason) == (1011, "internal_error")
        await _alive(other)
