"""Session lifecycle over real sockets (spec section 2, UNI-LC)."""

from __future__ import annotations

import asyncio
import time

import pytest

from server_harness import LIMIT, asynctest, running_server, token
from unisock.schemas import validate_server_message


@asynctest
async def test_server_welcome_carries_every_announced_field() -> None:
    """UNI-LC-9, UNI-LC-12, UNI-TR-7, UNI-CLOSE-18: welcome is complete and states the config."""
    async with running_server(
        heartbeat_interval_ms=20_000, max_subscriptions=7, auth_timeout_ms=4_000
    ) as h:
        client = await h.open()
        welcome = await client.hello(token(sid="tab-1"))
        assert validate_server_message(dict(welcome)) == []
        assert welcome["protocol"] == "unisock.v1"
        assert welcome["spec_version"] == "1.0.0"
        assert welcome["heartbeat"] == {"interval_ms": 20_000, "timeout_ms": 10_000}
        assert welcome["limits"]["max_subscriptions"] == 7
        assert welcome["limits"]["auth_timeout_ms"] == 4_000
        backoff = welcome["backoff"]
        assert backoff["base_ms"] <= backoff["cap_ms"]
        assert backoff["floor_ms"] <= backoff["cap_ms"]
        expected = {
            "type",
            "protocol",
            "spec_version",
            "connection_id",
            "session",
            "heartbeat",
            "backoff",
            "limits",
            "history",
            "dedup_window_ms",
            "refresh_warning_ms",
            "features",
        }
        assert expected <= set(welcome)
        assert sorted(welcome["features"]) == ["coalescing", "system_namespace", "typed_events"]


@asynctest
async def test_server_welcome_session_mirrors_the_token() -> None:
    """UNI-LC-10: tenant, sub, role, exp from the token; sid exactly when the token has one."""
    async with running_server() as h:
        now = int(time.time())
        client = await h.open()
        welcome = await client.hello(
            token("globex", "svc-1", sid="s-9", broadcaster=True, now=now, ttl_s=900)
        )
        assert welcome["session"] == {
            "tenant": "globex",
            "sub": "svc-1",
            "sid": "s-9",
            "role": "broadcaster",
            "expires_at": now + 900,
        }
        plain = await h.open()
        welcome = await plain.hello(token("acme", "alice", now=now, ttl_s=600))
        assert welcome["session"] == {
            "tenant": "acme",
            "sub": "alice",
            "role": "user",
            "expires_at": now + 600,
        }


@asynctest
async def test_server_gives_each_open_connection_a_distinct_connection_id() -> None:
    """UNI-LC-11: connection ids differ between concurrently open connections."""
    async with running_server() as h:
        clients = [await h.connect(token(sub=f"u{i}")) for i in range(6)]
        ids = {c.welcome["connection_id"] for c in clients}  # type: ignore[attr-defined]
        assert len(ids) == 6


@pytest.mark.parametrize(
    "first",
    [
        "not json at all",
        "[]",
        '{"token": "a.b.c"}',
        '{"type": "subscribe", "id": "s1", "channel": "tasks.1"}',
        '{"type": "ping"}',
        '{"type": "hello"}',
        '{"type": "hello", "token": 42}',
        '{"type": "hello", "token": "not-a-jws"}',
        '{"type": "presence"}',
    ],
)
def test_server_closes_with_4000_when_first_message_is_not_a_valid_hello(first: str) -> None:
    """UNI-LC-6, UNI-LC-1: close 4000 protocol_violation, no error message, nothing else."""

    @asynctest
    async def run() -> None:
        async with running_server() as h:
            client = await h.open()
            await client.send_raw(first)
            closed = await client.expect_close()
            assert (closed.code, closed.reason) == (4000, "protocol_violation")
            assert closed.frames == []

    run()


@asynctest
async def test_server_closes_with_4102_when_no_hello_arrives_in_time() -> None:
    """UNI-LC-4, UNI-LC-5, UNI-LC-1: no hello within auth_timeout_ms -> 4102, nothing before."""
    async with running_server(auth_timeout_ms=150) as h:
        started = time.monotonic()
        client = await h.open()
        closed = await client.expect_close()
        elapsed = time.monotonic() - started
        assert (closed.code, closed.reason) == (4102, "auth_timeout")
        assert closed.frames == []
        assert 0.15 <= elapsed < 0.15 + LIMIT


@asynctest
async def test_server_accepts_hello_arriving_before_the_deadline() -> None:
    """UNI-LC-5: the announced deadline is the one applied: a hello in time gets welcome."""
    async with running_server(auth_timeout_ms=2_000) as h:
        client = await h.open()
        welcome = await client.hello(token())
        assert welcome["limits"]["auth_timeout_ms"] == 2_000
        assert await client.fence() == []


@asynctest
async def test_server_answers_second_hello_with_already_authenticated() -> None:
    """UNI-LC-16: a second hello changes neither identity, grants nor subscriptions."""
    async with running_server() as h:
        alice = await h.connect(token(sub="alice"))
        await alice.subscribe("tasks.1")
        other = token(sub="mallory", subscribe=("secret.>",), publish=("secret.>",))
        await alice.send({"type": "hello", "id": "h2", "token": other})
        await alice.expect_next("error", code="already_authenticated", id="h2")
        await alice.error({"type": "subscribe", "channel": "secret.1"}, "forbidden")
        await alice.publish("tasks.1", "still alice")
        [event] = await alice.events(1)
        assert event["publisher"] == "alice"


@asynctest
async def test_server_discards_subscriptions_when_a_connection_closes() -> None:
    """UNI-LC-19: a later connection of the same session starts with no subscriptions."""
    async with running_server() as h:
        first = await h.connect(token(sid="tab-1"))
        await first.subscribe("tasks.>")
        await first.close()
        second = await h.connect(token(sid="tab-1"))
        await second.error({"type": "unsubscribe", "channel": "tasks.>"}, "not_subscribed")
        await second.publish("tasks.1", "nobody listens")
        assert await second.fence() == []


@asynctest
async def test_closing_the_server_closes_each_connection_with_going_away() -> None:
    """The library's shutdown (``UnisockServer.close``, after a drain or on SIGINT) ends
    every open connection with 1001 ``going_away`` (backoff class) and then returns; it does
    not wait for clients to leave on their own."""
    async with running_server() as h:
        clients = [await h.connect(), await h.open()]
        await asyncio.wait_for(h.server.close(), LIMIT)
        for client in clients:
            closed = await client.expect_close()
            assert (closed.code, closed.reason) == (1001, "going_away")
