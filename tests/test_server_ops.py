"""Operations over real sockets: health, metrics, drain and token-free logs (UNI-SEC-6)."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from websockets.exceptions import InvalidStatus

from server_harness import LIMIT, OTHER_SECRET, asynctest, running_server, token


@asynctest
async def test_server_reports_healthy_until_it_drains() -> None:
    """/healthz is 200 while serving and 503 once draining; new handshakes get 503 (UNI-LC-20)."""
    async with running_server() as h:
        status, body = await h.get("/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok", "broker": "ok"})
        client = await h.connect()
        drain = asyncio.create_task(h.server.drain(200))
        await client.expect_next("drain", window_ms=200)
        status, body = await h.get("/healthz")
        assert (status, json.loads(body)) == (503, {"status": "draining", "broker": "ok"})
        with pytest.raises(InvalidStatus) as refused:
            await h.open()
        assert refused.value.response.status_code == 503
        assert (await client.expect_close()).code == 4300
        await asyncio.wait_for(drain, LIMIT)
        assert (await h.get("/healthz"))[0] == 503


@asynctest
async def test_server_drain_returns_once_every_connection_is_gone() -> None:
    """drain() waits for the window only while connections remain."""
    async with running_server() as h:
        started = time.monotonic()
        await asyncio.wait_for(h.server.drain(60_000), LIMIT)  # nobody connected: at once
        assert time.monotonic() - started < LIMIT
    async with running_server() as h:
        client = await h.connect()
        drain = asyncio.create_task(h.server.drain(60_000))
        await client.expect_next("drain", window_ms=60_000)
        await client.close()  # the client leaves early, as UNI-CLOSE-22 asks
        await asyncio.wait_for(drain, LIMIT)


@asynctest
async def test_server_exposes_prometheus_metrics_on_the_same_port() -> None:
    """/metrics counts connections per tenant, publishes, deliveries and closes by code."""
    async with running_server() as h:
        alice = await h.connect()
        bob = await h.connect(token("globex", "bob"))
        await alice.subscribe("tasks.1")
        await alice.publish("tasks.1", 1)
        await alice.events(1)
        status, body = await h.get("/metrics")
        assert status == 200
        assert "# TYPE unisock_connections gauge" in body
        assert await h.metric("unisock_connections", tenant="acme") == 1
        assert await h.metric("unisock_connections", tenant="globex") == 1
        assert await h.metric("unisock_events_published_total") == 1
        assert await h.metric("unisock_deliveries_total") == 1
        await bob.send_raw(b"\x00")
        await bob.expect_close()
        assert await h.metric("unisock_closes_total", code="1003") == 1
        assert await h.metric("unisock_connections", tenant="globex") == 0


@asynctest
async def test_server_never_logs_or_exposes_tokens(caplog: pytest.LogCaptureFixture) -> None:
    """UNI-SEC-6: auth failures, refreshes and internal failures log no token or signature.

    Server-side records are checked at DEBUG level, including exception text; the test's own
    client logs are left out.
    """
    caplog.set_level(logging.DEBUG)
    used: list[str] = []

    def tok(**kwargs: object) -> str:
        value = token(**kwargs)  # type: ignore[arg-type]
        used.append(value)
        return value

    async with running_server() as h:
        for bad in (
            tok(secret=OTHER_SECRET),
            tok(now=time.time() - 7200, ttl_s=60),
            tok(tenant="globex", extra_claims={"tenant": "Bad Tenant"}),
        ):
            client = await h.open()
            await client.send({"type": "hello", "token": bad})
            assert (await client.expect_close()).code == 4100
        alice = await h.connect(tok())
        await alice.request({"type": "refresh", "token": tok(ttl_s=7200)})
        await alice.request({"type": "refresh", "token": tok(secret=OTHER_SECRET)})
        await alice.request({"type": "refresh", "token": tok(sub="bob")})

        def explode(event_type: str, data: object) -> None:
            raise ValueError("boom")

        h.server.registry.check = explode  # type: ignore[method-assign]
        reply = await alice.publish_raw("tasks.1", 1)
        assert reply["code"] == "internal_error"
        assert used[-1] not in reply.raw
        _, metrics = await h.get("/metrics")
    server_side = [r for r in caplog.records if r.name.startswith(("unisock", "websockets.server"))]
    assert server_side, "the server logged nothing at all: the check would be vacuous"
    logged = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''} {r.exc_info[1] if r.exc_info else ''}"
        for r in server_side
    )
    for value in used:
        _, payload, signature = value.split(".")
        for part in (payload, signature):
            assert part not in logged
            assert part not in metrics
