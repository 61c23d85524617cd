"""Errors over real sockets: codes, fields, survival, no internals (spec section 12, UNI-ERR)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from server_harness import Frame, asynctest, running_server, token
from unisock.schemas import validate_server_message

REGISTRY = (
    Path(__file__).resolve().parents[1] / "schemas" / "v1" / "registries" / "error-codes.json"
)
CODES = {entry["code"]: entry for entry in json.loads(REGISTRY.read_text())["codes"]}

BAD_REQUESTS: list[Any] = [
    "{not json",
    "[1]",
    {"type": "presence"},
    {"type": "hello", "token": "a.b.c"},
    {"type": "subscribe", "id": "e1", "channel": "Tasks"},
    {"type": "subscribe", "id": "e2", "channel": "tasks.1", "filter": {"eq": 1}},
    {"type": "subscribe", "id": "e3", "channel": "docs.1"},
    {
        "type": "subscribe",
        "id": "e4",
        "channel": "tasks.1",
        "from": {"tasks.2": {"epoch": "e", "offset": 1}},
    },
    {"type": "unsubscribe", "id": "e5", "channel": "tasks.9"},
    {
        "type": "publish",
        "id": "e6",
        "channel": "tasks.1",
        "event": "task.updated",
        "data": {},
        "message_id": "m",
    },
    {
        "type": "publish",
        "id": "e7",
        "channel": "docs.1",
        "event": "a",
        "data": 1,
        "message_id": "m",
    },
    {"type": "refresh", "id": "e8", "token": token(tenant="globex")},
    {
        "type": "publish",
        "id": "e9",
        "channel": "tasks.1",
        "event": "a",
        "data": 1,
        "message_id": "m",
    },
    {
        "type": "publish",
        "id": "e10",
        "channel": "tasks.1",
        "event": "a",
        "data": 1,
        "message_id": "m2",
    },
]


@asynctest
async def test_server_errors_carry_registry_codes_messages_and_keep_the_connection() -> None:
    """UNI-ERR-1..3, UNI-ERR-5: one bad request after another, each answered, never closed."""
    async with running_server(publish_rate_burst=2, publish_rate_per_second=1) as h:
        client = await h.connect()
        await client.subscribe("tasks.1")
        errors: list[Frame] = []
        for bad in BAD_REQUESTS:
            await client.send_raw(bad if isinstance(bad, str) else json.dumps(bad))
            frame = await client.recv()
            while frame["type"] == "event":
                frame = await client.recv()
            assert frame["type"] == "error", (bad, frame)
            errors.append(frame)
        seen = set()
        for error in errors:
            assert validate_server_message(dict(error)) == []
            assert error["code"] in CODES
            assert isinstance(error["message"], str) and error["message"]
            if "retry_after_ms" in error:
                assert CODES[error["code"]]["retry_after"], error
            seen.add(error["code"])
        assert {
            "invalid_json",
            "invalid_message",
            "unknown_type",
            "already_authenticated",
            "invalid_channel",
            "invalid_filter",
            "forbidden",
            "invalid_position",
            "not_subscribed",
            "invalid_event_data",
            "token_mismatch",
            "rate_limited",
        } <= seen
        assert await client.fence() == []


@asynctest
async def test_server_turns_an_unexpected_failure_into_generic_internal_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """UNI-ERR-10, UNI-ERR-7, UNI-ERR-6: internal_error with no detail; service continues."""
    caplog.set_level(logging.DEBUG)
    async with running_server() as h:
        client = await h.connect()
        await client.subscribe("tasks.1")

        def explode(event_type: str, data: Any) -> None:
            raise RuntimeError("secret internal state /etc/unisock")

        h.server.registry.check = explode  # type: ignore[method-assign]
        reply = await client.publish_raw("tasks.1", 1)
        assert (reply["type"], reply["code"]) == ("error", "internal_error")
        assert "secret" not in reply.raw and "RuntimeError" not in reply.raw
        assert "details" not in reply
        assert await client.fence() == []  # nothing was sequenced or delivered
        del h.server.registry.check
        assert (await client.publish("tasks.1", 2))["offset"] == 1
        other = await h.connect(token(sub="bob"))
        assert await other.fence() == []


@asynctest
async def test_server_refuses_requests_with_unavailable_when_the_broker_fails() -> None:
    """UNI-ERR-11, UNI-ERR-4: a failing broker yields unavailable with retry_after_ms."""
    async with running_server() as h:
        client = await h.connect()

        async def down(*args: Any) -> Any:
            raise ConnectionError("broker down at 10.0.0.7:6379")

        original_publish, original_head = h.server.broker.publish, h.server.broker.head
        h.server.broker.publish = down  # type: ignore[method-assign]
        h.server.broker.head = down  # type: ignore[method-assign]
        for reply in (
            await client.publish_raw("tasks.1", 1),
            await client.request({"type": "subscribe", "channel": "tasks.1"}),
        ):
            assert reply["code"] == "unavailable"
            assert reply["retry_after_ms"] >= 1
            assert "10.0.0.7" not in reply.raw
        h.server.broker.publish = original_publish  # type: ignore[method-assign]
        h.server.broker.head = original_head  # type: ignore[method-assign]
        await client.subscribe("tasks.1")  # the failed subscribe left nothing behind
        assert (await client.publish("tasks.1", 1))["offset"] == 1


@asynctest
async def test_server_errors_never_contain_tokens() -> None:
    """UNI-ERR-8: errors about tokens name no token or part of one."""
    async with running_server() as h:
        client = await h.connect()
        for tok in (token(tenant="globex"), token(secret="z" * 40), token(sub="bob")):
            await client.send({"type": "refresh", "id": "r", "token": tok})
            error = await client.expect_next("error")
            for part in tok.split("."):
                assert part not in error.raw
        await client.send({"type": "hello", "id": "h", "token": token()})
        error = await client.expect_next("error", code="already_authenticated")
        assert token().split(".")[0] not in error.raw
