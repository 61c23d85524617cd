"""The reference client against a scripted fake server (spec sections 2, 3, 7, 8, 9).

Each test drives both ends: the fake server hands every accepted connection to the test,
which reads what the client sent and answers with exactly the frames the scenario needs.
Reconnect waits go through an injected sleep and clock, so backoff delays are observed,
not measured; the few real waits are scaled by ``UNISOCK_TIME_SCALE``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed as ConnectionClosedByPeer

from unisock import errors
from unisock._version import PROTOCOL_TOKEN
from unisock.backoff import DEFAULTS, BackoffParams, backoff_bounds, backoff_delay, drain_delay
from unisock.client import (
    Ack,
    Client,
    ClientState,
    CloseInfo,
    ConnectionClosed,
    Event,
    Gap,
    Item,
    LimitExceeded,
    MessageTooLarge,
    NotConnected,
    Position,
    PublishExpired,
    SubscriptionEnded,
    Superseded,
    UnknownServerError,
)
from unisock.closecodes import ReconnectClass
from unisock.filters import FilterError
from unisock.schemas import validate_client_message, validate_server_message
from unisock.sync_client import SyncClient

SCALE = float(os.environ.get("UNISOCK_TIME_SCALE", "1.0"))
LIMIT = 5.0 * SCALE
"""Upper bound for any single wait in these tests; reached only when a test fails."""

FLOOR_S = DEFAULTS.floor / 1000


def welcome(**overrides: Any) -> dict[str, Any]:
    """A valid welcome; heartbeats are long unless a test shortens them."""
    msg: dict[str, Any] = {
        "type": "welcome",
        "protocol": PROTOCOL_TOKEN,
        "spec_version": "1.0.0",
        "connection_id": "c-1",
        "session": {"tenant": "acme", "sub": "alice", "role": "user", "expires_at": 1795000000},
        "heartbeat": {"interval_ms": 60000, "timeout_ms": 60000},
        "backoff": {"base_ms": 500, "cap_ms": 30000, "floor_ms": 250, "reset_after_ms": 10000},
        "limits": {
            "max_message_bytes": 65536,
            "max_subscriptions": 100,
            "publish_rate": {"per_second": 50, "burst": 100},
            "max_queue": 1024,
            "max_connections_per_user": 5,
            "auth_timeout_ms": 10000,
            "max_filter_nodes": 32,
            "max_targets": 100,
            "max_attrs": 16,
        },
        "history": {"max_count": 1000, "max_age_ms": 300000},
        "dedup_window_ms": 120000,
        "refresh_warning_ms": 60000,
        "features": ["coalescing", "system_namespace", "typed_events"],
    }
    msg.update(overrides)
    return msg


def event(channel: str, epoch: str, offset: int, ts: int = 1000, **extra: Any) -> dict[str, Any]:
    return {
        "type": "event",
        "channel": channel,
        "epoch": epoch,
        "offset": offset,
        "event": "task.updated",
        "data": {"n": offset},
        "message_id": f"m-{channel}-{epoch}-{offset}",
        "ts": ts,
        **extra,
    }


class FakeConn:
    """One accepted connection, driven by the test."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws

    async def recv(self) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), LIMIT)
        assert isinstance(raw, str)
        msg = json.loads(raw)
        assert validate_client_message(msg) == [], msg
        assert isinstance(msg, dict)
        return msg

    async def send(self, msg: dict[str, Any]) -> None:
        assert validate_server_message(msg) == [], msg
        await self.ws.send(json.dumps(msg))

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def handshake(self, **overrides: Any) -> dict[str, Any]:
        hello = await self.recv()
        assert hello["type"] == "hello"
        await self.send(welcome(**overrides))
        return hello

    async def reply_subscribed(self, ts: int = 500, **extra: Any) -> dict[str, Any]:
        request = await self.recv()
        assert request["type"] == "subscribe"
        reply = {"type": "subscribed", "id": request["id"], "channel": request["channel"]}
        await self.send({**reply, "ts": ts, **extra})
        return request

    async def fence(self, nonce: str = "fence") -> None:
        """Ping and wait for the pong: everything sent before it has been handled."""
        await self.send({"type": "ping", "nonce": nonce})
        assert await self.recv() == {"type": "pong", "nonce": nonce}

    def drop(self) -> None:
        """Lose the connection without a close frame (the client sees 1006)."""
        self.ws.transport.abort()

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code, reason)

    async def wait_closed(self) -> None:
        await asyncio.wait_for(self.ws.wait_closed(), LIMIT)


class FakeServer:
    """Accepts connections offering ``unisock.v1`` and queues them for the test."""

    def __init__(self, *, select_protocol: bool = True) -> None:
        self.select_protocol = select_protocol
        self.accepted: asyncio.Queue[FakeConn] = asyncio.Queue()
        self.count = 0
        self._server: Server | None = None

    async def __aenter__(self) -> FakeServer:
        self._server = await serve(
            self._handler,
            "127.0.0.1",
            0,
            subprotocols=[PROTOCOL_TOKEN] if self.select_protocol else None,  # type: ignore[list-item]
            compression=None,
            ping_interval=None,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = next(iter(self._server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/"

    async def _handler(self, ws: ServerConnection) -> None:
        self.count += 1
        await self.accepted.put(FakeConn(ws))
        await ws.wait_closed()

    async def accept(self) -> FakeConn:
        return await asyncio.wait_for(self.accepted.get(), LIMIT)


class Timeline:
    """Injected clock and sleep: reconnect waits are recorded and take no real time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.attempts: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)

    def on_state(self, state: ClientState) -> None:
        if state is ClientState.CONNECTING:
            self.attempts.append(self.now)

    def sleeps_ms(self) -> list[int]:
        return [round(s * 1000) for s in self.sleeps]


def make_client(
    server: FakeServer,
    token: Any = "h.tok-1.s",
    timeline: Timeline | None = None,
    seed: int = 1,
    **options: Any,
) -> Client:
    line = timeline or Timeline()
    return Client(
        server.url,
        token,
        rng=random.Random(seed),
        sleep=line.sleep,
        clock=line.clock,
        on_state_change=line.on_state,
        request_timeout=LIMIT,
        **options,
    )


def asynctest(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    @functools.wraps(fn)
    def run() -> None:
        asyncio.run(asyncio.wait_for(fn(), 6 * LIMIT))

    return run


async def started(
    client: Client, server: FakeServer, **overrides: Any
) -> tuple[FakeConn, dict[str, Any]]:
    """Connect ``client`` and return the server side of the connection and the hello."""
    task = asyncio.create_task(client.connect())
    conn = await server.accept()
    hello = await conn.handshake(**overrides)
    await asyncio.wait_for(task, LIMIT)
    return conn, hello


async def collect(client: Client, count: int) -> list[Item]:
    items: list[Item] = []
    iterator = client.events()
    while len(items) < count:
        items.append(await asyncio.wait_for(anext(iterator), LIMIT))
    return items


async def subscribe(client: Client, conn: FakeConn, channel: str, **extra: Any) -> dict[str, Any]:
    task = asyncio.create_task(client.subscribe(channel))
    request = await conn.reply_subscribed(**extra)
    await asyncio.wait_for(task, LIMIT)
    return request


# --- connection and hello (sections 1, 2, 3) ------------------------------------------------


@asynctest
async def test_client_sends_hello_first_with_token_over_unisock_v1() -> None:
    async with FakeServer() as server:
        client = make_client(server, token="h.tok-secret.s")
        task = asyncio.create_task(client.connect())
        conn = await server.accept()
        assert conn.ws.subprotocol == PROTOCOL_TOKEN
        assert "h.tok-secret.s" not in (conn.ws.request.path if conn.ws.request else "")
        hello = await conn.recv()
        assert hello["type"] == "hello"
        assert hello["token"] == "h.tok-secret.s"
        assert hello["client"]["name"] == "unisock-python"
        await conn.send(welcome())
        info = await asyncio.wait_for(task, LIMIT)
        assert info.session.sub == "alice"
        assert info.heartbeat.silence_ms == 120000
        assert client.state is ClientState.OPEN
        await client.close()
        assert client.last_close == CloseInfo(1000, "normal", local=True)
        assert conn.ws.close_code == 1000


def test_client_refuses_token_in_url() -> None:
    with pytest.raises(ValueError, match="URL"):
        Client("ws://127.0.0.1:1/?access_token=h.tok-1.s", "h.tok-1.s")


def test_client_refuses_plain_ws_to_remote_host() -> None:
    with pytest.raises(ValueError, match="wss"):
        Client("ws://rt.example.com/", "h.tok-1.s")
    Client("ws://rt.example.com/", "h.tok-1.s", allow_insecure=True)
    Client("wss://rt.example.com/", "h.tok-1.s")


def test_client_refuses_non_websocket_url() -> None:
    with pytest.raises(ValueError, match="WebSocket"):
        Client("http://127.0.0.1:1/", "h.tok-1.s")


@asynctest
async def test_client_requires_connect_before_requests() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        with pytest.raises(NotConnected):
            await client.subscribe("tasks.>")
        with pytest.raises(NotConnected):
            await client.publish("tasks.1", "task.updated", {})


@asynctest
async def test_client_checks_patterns_and_filters_locally() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        conn, _ = await started(client, server)
        with pytest.raises(ValueError):
            await client.subscribe("Tasks.>")
        with pytest.raises(FilterError):
            await client.subscribe("tasks.>", filter={"eq": ["priority"]})
        with pytest.raises(ValueError):
            await client.publish("tasks.*", "task.updated", {})
        await conn.fence()  # nothing was sent: the pong is the next frame
        await client.close()


@asynctest
async def test_client_ignores_unknown_types_and_members() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        conn, _ = await started(client, server)
        await subscribe(client, conn, "tasks.>")
        await conn.send_raw(json.dumps({"type": "shiny_new_type", "x": 1}))
        await conn.send_raw("not json")
        await conn.send(event("tasks.1", "e1", 1, future_field={"a": 1}))
        [item] = await collect(client, 1)
        assert isinstance(item, Event)
        assert item.offset == 1
        assert client.state is ClientState.OPEN
        await client.close()


@asynctest
async def test_client_closes_with_1003_on_binary_frame() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        conn, _ = await started(client, server)
        await conn.send_raw(b"\x00\x01")
        await conn.wait_closed()
        assert conn.ws.close_code == 1003
        close = await asyncio.wait_for(client.wait_closed(), LIMIT)
        assert close is not None and close.code == 1003


# --- subscribe, resume, dedup, gaps (sections 5, 7) ----------------------------------------


@asynctest
async def test_client_resubscribes_with_from_and_since_after_drop() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        conn, _ = await started(client, server)
        first = await subscribe(client, conn, "tasks.>", ts=1000)
        assert "from" not in first and "since" not in first
        head = {"epoch": "e9", "offset": 4}
        exact = await subscribe(client, conn, "orders.9", ts=1500, position=head)
        assert "from" not in exact
        await conn.send(event("tasks.1", "e1", 3, ts=2000))
        await conn.send(event("tasks.2", "e1", 7, ts=3000))
        await collect(client, 2)
        assert client.positions() == {
            "orders.9": Position("e9", 4),
            "tasks.1": Position("e1", 3),
            "tasks.2": Position("e1", 7),
        }
        conn.drop()

        conn2 = await server.accept()
        await conn2.handshake()
        again = {m["channel"]: m for m in [await conn2.recv(), await conn2.recv()]}
        assert again["tasks.>"]["from"] == {
            "tasks.1": {"epoch": "e1", "offset": 3},
            "tasks.2": {"epoch": "e1", "offset": 7},
        }
        assert again["tasks.>"]["since"] == 3000
        assert again["orders.9"]["from"] == {"orders.9": head}
        assert again["orders.9"]["since"] == 1500
        assert again["tasks.>"]["id"] not in (first["id"], exact["id"])
        await client.close()


@asynctest
async def test_client_drops_duplicate_and_stale_events_and_resyncs_on_epoch_change() -> None:
    async with FakeServer() as server:
        gaps: list[Gap] = []
        client = make_client(server, on_gap=gaps.append)
        conn, _ = await started(client, server)
        await subscribe(client, conn, "tasks.>")
        for offset in (1, 2, 2, 1, 4):
            await conn.send(event("tasks.1", "e1", offset))
        await conn.send(event("tasks.1", "e2", 1))
        await conn.send(event("tasks.1", "e2", 1))
        await conn.send(event("tasks.2", "e1", 1))
        items = await collect(client, 6)
        got = [
            (i.channel, i.epoch, i.offset, type(i).__name__)
            for i in items
            if isinstance(i, Event | Gap)
        ]
        assert got == [
            ("tasks.1", "e1", 1, "Event"),
            ("tasks.1", "e1", 2, "Event"),
            ("tasks.1", "e1", 4, "Event"),  # 3 skipped: not a loss (UNI-DEL-33)
            ("tasks.1", "e2", 0, "Gap"),
            ("tasks.1", "e2", 1, "Event"),
            ("tasks.2", "e1", 1, "Event"),
        ]
        assert gaps == [Gap("tasks.1", "e2", 0, "epoch_changed")]
        await client.close()


@asynctest
async def test_client_hands_over_events_only_for_active_subscriptions() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        conn, _ = await started(client, server)
        await subscribe(client, conn, "tasks.>")
        await conn.send(event("orders.1", "e1", 1))  # matches no subscription
        await conn.send({"type": "unsubscribed", "channel": "tasks.>", "reason": "revoked"})
        await conn.send(event("tasks.1", "e1", 1))  # after unsubscribed
        await subscribe(client, conn, "orders.>")
        await conn.send(event("orders.1", "e1", 2))
        items = await collect(client, 2)
        assert items[0] == SubscriptionEnded("tasks.>", "revoked")
        assert isinstance(items[1], Event) and items[1].offset == 2
        assert client.positions() == {"orders.1": Position("e1", 2)}
        await client.close()


@asynctest
async def test_client_surfaces_gap_and_resumes_from_its_position() -> None:
    async with FakeServer() as server:
        gaps: list[Gap] = []
        client = make_client(server, on_gap=gaps.append)
        conn, _ = await started(client, server)
        await subscribe(client, conn, "tasks.42", position={"epoch": "e1", "offset": 0})
        await conn.send(event("tasks.42", "e1", 5))
        gap = {"type": "gap", "channel": "tasks.42", "epoch": "e1", "offset": 42}
        await conn.send({**gap, "reason": "window_exceeded"})
        await conn.send(event("tasks.42", "e1", 40))  # at or below the gap: dropped
        await conn.send(event("tasks.42", "e1", 43))
        items = await collect(client, 3)
        assert items[1] == Gap("tasks.42", "e1", 42, "window_exceeded")
        assert isinstance(items[2], Event) and items[2].offset == 43
        assert gaps == [items[1]]
        assert client.positions()["tasks.42"] == Position("e1", 43)
        await client.close()


@asynctest
async def test_client_treats_coalesced_offsets_as_seen() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        conn, _ = await started(client, server)
        await subscribe(client, conn, "tasks.>")
        await conn.send(event("tasks.42", "e1", 44, key="k", coalesced=[40, 41]))
        await conn.send(event("tasks.42", "e1", 41))
        await conn.send(event("tasks.42", "e1", 45))
        items = await collect(client, 2)
        assert [type(i) for i in items] == [Event, Event]
        first, second = items
        assert isinstance(first, Event) and first.coalesced == (40, 41)
        assert isinstance(second, Event) and second.offset == 45 and second.coalesced == ()
        await client.close()


@asynctest
async def test_client_raises_typed_errors_for_refused_subscribe() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        conn, _ = await started(client, server)
        task = asyncio.create_task(client.subscribe("billing.>"))
        request = await conn.recv()
        denied = {"type": "error", "id": request["id"], "code": "forbidden", "message": "no"}
        await conn.send(denied)
        with pytest.raises(errors.Forbidden):
            await asyncio.wait_for(task, LIMIT)
        assert client.subscriptions() == []
        task = asyncio.create_task(client.subscribe("billing.>"))
        request = await conn.recv()
        await conn.send({**denied, "id": request["id"], "code": "brand_new_code"})
        with pytest.raises(UnknownServerError) as caught:
            await asyncio.wait_for(task, LIMIT)
        assert caught.value.code == "brand_new_code"
        assert client.state is ClientState.OPEN
        await client.close()


@asynctest
async def test_client_reports_revoked_subscription() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        conn, _ = await started(client, server)
        await subscribe(client, conn, "tasks.>")
        await conn.send({"type": "unsubscribed", "channel": "tasks.>", "reason": "revoked"})
        [item] = await collect(client, 1)
        assert item == SubscriptionEnded("tasks.>", "revoked")
        assert client.subscriptions() == []
        await client.close()


@asynctest
async def test_client_unsubscribe_stops_resubscription() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        conn, _ = await started(client, server)
        await subscribe(client, conn, "tasks.>")
        await subscribe(client, conn, "orders.>")
        task = asyncio.create_task(client.unsubscribe("tasks.>"))
        request = await conn.recv()
        assert request["type"] == "unsubscribe" and request["channel"] == "tasks.>"
        reply = {"type": "unsubscribed", "id": request["id"], "channel": "tasks.>"}
        await conn.send({**reply, "reason": "requested"})
        await asyncio.wait_for(task, LIMIT)
        conn.drop()
        conn2 = await server.accept()
        await conn2.handshake()
        again = await conn2.recv()
        assert again["channel"] == "orders.>"
        await conn2.fence()  # no second subscribe
        with pytest.raises(errors.NotSubscribed):
            await client.unsubscribe("tasks.>")
        await client.close()


@asynctest
async def test_client_sends_nothing_when_server_selects_no_subprotocol() -> None:
    async with FakeServer(select_protocol=False) as server:
        line = Timeline()
        client = make_client(server, timeline=line)
        task = asyncio.create_task(client.connect())
        conn = await server.accept()
        assert conn.ws.subprotocol is None
        with pytest.raises(ConnectionClosedByPeer):
            await conn.ws.recv()  # closed by the client without a hello
        conn2 = await server.accept()  # a failed attempt: retried with backoff
        assert client.last_close == CloseInfo(1006, "no_subprotocol", local=True)
        assert len(line.sleeps) == 1
        task.cancel()
        await client.close()
        await conn2.wait_closed()


@asynctest
async def test_client_counts_first_message_other_than_welcome_as_failed_attempt() -> None:
    async with FakeServer() as server:
        line = Timeline()
        client = make_client(server, timeline=line)
        task = asyncio.create_task(client.connect())
        conn = await server.accept()
        await conn.recv()
        await conn.send({"type": "ping"})
        await conn.wait_closed()
        assert conn.ws.close_code == 1002
        conn2 = await server.accept()
        await conn2.handshake()
        await asyncio.wait_for(task, LIMIT)
        assert client.last_close == CloseInfo(1006, "bad_welcome", local=True)
        await client.close()


@asynctest
async def test_client_abandons_attempt_without_welcome_within_auth_timeout() -> None:
    async with FakeServer() as server:
        line = Timeline()
        # 10000 ms default auth timeout, scaled down to 100 ms.
        client = make_client(server, timeline=line, time_scale=0.01 * SCALE)
        task = asyncio.create_task(client.connect())
        conn = await server.accept()
        await conn.recv()
        await conn.wait_closed()  # no welcome sent: the client gives up
        assert conn.ws.close_code == 1006
        conn2 = await server.accept()
        await conn2.handshake()
        await asyncio.wait_for(task, LIMIT)
        assert client.last_close == CloseInfo(1006, "welcome_timeout", local=True)
        await client.close()


@asynctest
async def test_client_sends_subscription_made_while_disconnected_after_welcome() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        conn, _ = await started(client, server)
        conn.drop()
        conn2 = await server.accept()
        task = asyncio.create_task(client.subscribe("tasks.>"))
        await asyncio.sleep(0)
        await conn2.handshake()
        request = await conn2.reply_subscribed()
        assert request["channel"] == "tasks.>" and "from" not in request
        sub = await asyncio.wait_for(task, LIMIT)
        assert sub.channel == "tasks.>" and sub.ts == 500
        await client.close()


@asynctest
async def test_client_subscribe_times_out_and_forgets_subscription() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        conn, _ = await started(client, server)
        with pytest.raises(TimeoutError):
            await client.subscribe("tasks.>", timeout=0.05 * SCALE)
        assert client.subscriptions() == []
        assert (await conn.recv())["type"] == "subscribe"
        await client.close()


@asynctest
async def test_client_ignores_error_without_id_and_unsolicited_pong() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        conn, _ = await started(client, server)
        task = asyncio.create_task(client.subscribe("tasks.>"))
        request = await conn.recv()
        await conn.send({"type": "error", "code": "invalid_json", "message": "bad"})
        await conn.send({"type": "pong", "nonce": "nobody-asked"})
        await conn.send({"type": "error", "id": "zz", "code": "forbidden", "message": "no"})
        await conn.fence()
        assert not task.done()  # only a reply with its id resolves it (UNI-ERR-16)
        reply = {"type": "subscribed", "id": request["id"], "channel": "tasks.>", "ts": 9}
        await conn.send(reply)
        assert (await asyncio.wait_for(task, LIMIT)).ts == 9
        await client.close()


# --- heartbeats (section 8) ------------------------------------------------------------------


@asynctest
async def test_client_answers_ping_with_pong_echoing_nonce_and_id() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        conn, _ = await started(client, server)
        await conn.send({"type": "ping", "nonce": "hb-1", "id": "x1"})
        assert await conn.recv() == {"type": "pong", "nonce": "hb-1", "id": "x1"}
        await conn.send({"type": "ping"})
        assert await conn.recv() == {"type": "pong"}
        await client.close()


@asynctest
async def test_client_detects_silent_server_and_reconnects_with_backoff() -> None:
    async with FakeServer() as server:
        line = Timeline()
        client = make_client(server, timeline=line)
        interval, timeout = int(100 * SCALE), int(100 * SCALE)
        loop = asyncio.get_running_loop()
        conn, _ = await started(
            client, server, heartbeat={"interval_ms": interval, "timeout_ms": timeout}
        )
        sent = loop.time()
        await conn.wait_closed()  # the client gives up without a closing handshake
        elapsed = loop.time() - sent
        assert elapsed >= (interval + timeout) / 1000 * 0.9
        assert conn.ws.close_code == 1006
        conn2 = await server.accept()
        await conn2.handshake()
        assert client.last_close == CloseInfo(1006, "heartbeat_timeout", local=True)
        params = BackoffParams(500, 30000, 250, 10000)
        low, high = backoff_bounds(params, 0)
        assert len(line.sleeps) == 1 and low <= line.sleeps_ms()[0] <= high
        await client.close()


@asynctest
async def test_client_keeps_connection_while_pings_arrive() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        interval = int(50 * SCALE)
        conn, _ = await started(
            client, server, heartbeat={"interval_ms": interval, "timeout_ms": interval}
        )
        for n in range(6):  # three silence bounds in total
            await asyncio.sleep(interval / 1000)
            await conn.fence(f"n{n}")
        assert server.count == 1
        assert client.state is ClientState.OPEN
        await client.close()


# --- close codes, backoff, drain (section 9) ------------------------------------------------


@asynctest
async def test_client_never_reconnects_after_superseded() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        conn, _ = await started(client, server)
        await subscribe(client, conn, "tasks.>")
        await conn.send(event("tasks.1", "e1", 3))
        await collect(client, 1)
        await conn.close(4001, "superseded")
        close = await asyncio.wait_for(client.wait_closed(), LIMIT)
        assert close is not None and close.superseded
        assert close.reconnect_class is ReconnectClass.NEVER
        assert client.state is ClientState.CLOSED
        assert server.count == 1
        assert server.accepted.empty()
        assert client.positions() == {"tasks.1": Position("e1", 3)}  # kept for later

        # An explicit connect resumes with the kept positions.
        task = asyncio.create_task(client.connect())
        conn2 = await server.accept()
        await conn2.handshake()
        await asyncio.wait_for(task, LIMIT)
        resumed = await conn2.recv()
        assert resumed["from"] == {"tasks.1": {"epoch": "e1", "offset": 3}}
        await client.close()


@asynctest
async def test_client_connect_raises_superseded_for_4001_before_welcome() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        task = asyncio.create_task(client.connect())
        conn = await server.accept()
        await conn.recv()
        await conn.close(4001, "superseded")
        with pytest.raises(Superseded):
            await asyncio.wait_for(task, LIMIT)
        assert server.count == 1


@asynctest
async def test_client_never_reconnects_after_protocol_violation() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        task = asyncio.create_task(client.connect())
        conn = await server.accept()
        await conn.recv()
        await conn.close(4000, "protocol_violation")
        with pytest.raises(ConnectionClosed) as caught:
            await asyncio.wait_for(task, LIMIT)
        assert not isinstance(caught.value, Superseded)
        assert caught.value.close.code == 4000
        assert caught.value.close.name == "protocol_violation"
        assert server.count == 1 and server.accepted.empty()


@pytest.mark.parametrize(("code", "reason"), [(4100, "auth_failed"), (4101, "token_expired")])
def test_client_fetches_new_token_after_auth_close(code: int, reason: str) -> None:
    async def scenario() -> None:
        async with FakeServer() as server:
            tokens = iter(["h.tok-1.s", "h.tok-2.s", "h.tok-3.s"])
            calls: list[str] = []

            async def provider() -> str:
                calls.append("call")
                return next(tokens)

            line = Timeline()
            client = make_client(server, token=provider, timeline=line)
            conn, hello = await started(client, server)
            assert hello["token"] == "h.tok-1.s"
            await conn.close(code, reason)
            conn2 = await server.accept()
            hello2 = await conn2.handshake()
            assert hello2["token"] == "h.tok-2.s"
            assert len(calls) == 2
            low, high = backoff_bounds(DEFAULTS, 0)
            assert len(line.sleeps) == 1 and low <= line.sleeps_ms()[0] <= high
            await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 6 * LIMIT))


@asynctest
async def test_client_stops_after_auth_failure_with_plain_token() -> None:
    async with FakeServer() as server:
        client = make_client(server, token="h.tok-1.s")
        task = asyncio.create_task(client.connect())
        conn = await server.accept()
        await conn.recv()
        await conn.close(4100, "auth_failed")
        with pytest.raises(ConnectionClosed) as caught:
            await asyncio.wait_for(task, LIMIT)
        assert caught.value.close.code == 4100
        assert server.count == 1


@asynctest
async def test_client_stops_when_token_provider_fails_after_auth_close() -> None:
    async with FakeServer() as server:
        calls: list[int] = []

        def provider() -> str:
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("identity provider down")
            return "h.tok-1.s"

        client = make_client(server, token=provider)
        conn, _ = await started(client, server)
        await conn.close(4101, "token_expired")
        close = await asyncio.wait_for(client.wait_closed(), LIMIT)
        assert close is not None and close.code == 4101
        assert len(calls) == 2 and server.count == 1


@asynctest
async def test_client_stops_when_provider_returns_the_rejected_token() -> None:
    async with FakeServer() as server:
        client = make_client(server, token=lambda: "h.same.s")
        conn, _ = await started(client, server)
        await conn.close(4101, "token_expired")
        close = await asyncio.wait_for(client.wait_closed(), LIMIT)
        assert close is not None and close.code == 4101
        assert server.count == 1 and server.accepted.empty()


@asynctest
async def test_client_counts_now_class_attempts_in_backoff_counter() -> None:
    async with FakeServer() as server:
        line = Timeline()
        client = make_client(server, timeline=line, seed=8)
        conn, _ = await started(client, server)
        await conn.close(1012, "service_restart;window_ms=0")
        conn = await server.accept()
        await conn.handshake()
        await conn.close(1011, "internal_error")
        conn = await server.accept()
        await conn.handshake()
        rng = random.Random(8)
        assert line.sleeps_ms() == [
            drain_delay(0, DEFAULTS, rng),  # the floor: a window of 0 is no tight loop
            backoff_delay(DEFAULTS, 1, rng),  # n = 1 after one reconnection attempt
        ]
        assert line.sleeps_ms()[0] == DEFAULTS.floor
        await client.close()


@asynctest
async def test_client_backoff_delays_follow_formula_and_floor() -> None:
    async with FakeServer() as server:
        line = Timeline()
        client = make_client(server, timeline=line, seed=42)
        task = asyncio.create_task(client.connect())
        rounds = 7
        for _ in range(rounds):
            conn = await server.accept()
            await conn.recv()
            await conn.close(1011, "internal_error")
        conn = await server.accept()
        await conn.handshake()
        await asyncio.wait_for(task, LIMIT)
        expected_rng = random.Random(42)
        expected = [backoff_delay(DEFAULTS, n, expected_rng) for n in range(rounds)]
        assert line.sleeps_ms() == expected
        for n, delay in enumerate(line.sleeps_ms()):
            low, high = backoff_bounds(DEFAULTS, n)
            assert low <= delay <= high
            assert delay >= DEFAULTS.floor
        gaps = [b - a for a, b in zip(line.attempts, line.attempts[1:], strict=False)]
        assert len(gaps) == rounds and min(gaps) >= FLOOR_S - 1e-9
        await client.close()


@asynctest
async def test_client_resets_attempt_counter_after_stable_connection() -> None:
    async with FakeServer() as server:
        line = Timeline()
        client = make_client(server, timeline=line, seed=3)
        task = asyncio.create_task(client.connect())
        for _ in range(4):
            conn = await server.accept()
            await conn.recv()
            await conn.close(1011, "internal_error")
        conn = await server.accept()
        await conn.handshake(
            backoff={"base_ms": 1000, "cap_ms": 64000, "floor_ms": 250, "reset_after_ms": 10000}
        )
        await asyncio.wait_for(task, LIMIT)
        line.now += 10.0  # the connection stays open for reset_after_ms
        await conn.close(1011, "internal_error")
        conn = await server.accept()
        params = BackoffParams(1000, 64000, 250, 10000)
        low, high = backoff_bounds(params, 0)
        assert low <= line.sleeps_ms()[-1] <= high
        rng = random.Random(3)
        for n in range(4):
            backoff_delay(DEFAULTS, n, rng)
        assert line.sleeps_ms()[-1] == backoff_delay(params, 0, rng)
        await client.close()


@asynctest
async def test_client_never_attempts_closer_than_floor() -> None:
    async with FakeServer() as server:
        line = Timeline()
        client = make_client(server, timeline=line)
        conn, _ = await started(client, server)
        await client.close()
        await conn.wait_closed()
        task = asyncio.create_task(client.connect())  # explicit, immediate reconnect
        conn2 = await server.accept()
        await conn2.handshake()
        await asyncio.wait_for(task, LIMIT)
        assert line.sleeps == [pytest.approx(FLOOR_S)]
        assert line.attempts[1] - line.attempts[0] >= FLOOR_S
        await client.close()


@asynctest
async def test_client_honours_retry_after() -> None:
    async with FakeServer() as server:
        line = Timeline()
        client = make_client(server, timeline=line, seed=5)
        conn, _ = await started(client, server)
        await conn.close(1013, "try_again_later;retry_after_ms=45000")
        conn2 = await server.accept()
        await conn2.handshake()
        assert line.sleeps_ms() == [45000]  # above the cap: retry_after wins
        assert client.last_close is not None and client.last_close.retry_after_ms == 45000
        await client.close()


@asynctest
async def test_client_reconnects_within_drain_window_after_closing_old_connection() -> None:
    async with FakeServer() as server:
        line = Timeline()
        states: list[ClientState] = []

        def on_state(state: ClientState) -> None:
            states.append(state)
            line.on_state(state)

        client = make_client(server, timeline=line, seed=9)
        client._state_callback = on_state  # record DRAINING too
        conn, _ = await started(client, server)
        await conn.send({"type": "drain", "window_ms": 2000, "reason": "deploy"})
        await conn.wait_closed()
        assert conn.ws.close_code == 1000  # the client left first (UNI-SESS-5)
        conn2 = await server.accept()
        await conn2.handshake()
        assert len(line.sleeps_ms()) == 1
        assert DEFAULTS.floor <= line.sleeps_ms()[0] <= 2000
        assert ClientState.DRAINING in states
        await client.close()


@asynctest
async def test_client_reconnects_within_window_of_drain_close() -> None:
    async with FakeServer() as server:
        line = Timeline()
        client = make_client(server, timeline=line, seed=11)
        conn, _ = await started(client, server)
        await conn.close(4300, "drain;window_ms=3000")
        conn2 = await server.accept()
        await conn2.handshake()
        [delay] = line.sleeps_ms()
        assert DEFAULTS.floor <= delay <= 3000
        await client.close()


@asynctest
async def test_client_counts_refused_connection_as_1006() -> None:
    async with FakeServer() as server:
        url = server.url  # closed below: connections to it are refused
    line = Timeline()
    parked = asyncio.Event()

    async def sleep(seconds: float) -> None:
        await line.sleep(seconds)
        if len(line.sleeps) == 4:
            parked.set()
            await asyncio.Event().wait()  # stay here until connect() gives up

    client = Client(url, "h.tok-1.s", sleep=sleep, clock=line.clock, rng=random.Random(1))
    connecting = asyncio.create_task(client.connect(timeout=LIMIT))
    await asyncio.wait_for(parked.wait(), LIMIT)
    assert client.last_close == CloseInfo(1006, "connect_failed", local=True)
    assert client.last_close.reconnect_class is ReconnectClass.BACKOFF
    expected_rng = random.Random(1)
    assert line.sleeps_ms() == [backoff_delay(DEFAULTS, n, expected_rng) for n in range(4)]
    await client.close()
    with pytest.raises(ConnectionClosed):
        await connecting
    assert client.state is ClientState.CLOSED


@asynctest
async def test_client_stops_after_close_without_reconnect_option() -> None:
    async with FakeServer() as server:
        client = make_client(server, reconnect=False)
        conn, _ = await started(client, server)
        await conn.close(1011, "internal_error")
        close = await asyncio.wait_for(client.wait_closed(), LIMIT)
        assert close is not None and close.code == 1011
        assert server.count == 1


# --- publish (section 6) ---------------------------------------------------------------------


@asynctest
async def test_client_publish_returns_ack() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        conn, _ = await started(client, server)
        task = asyncio.create_task(
            client.publish(
                "tasks.1",
                "task.updated",
                {"s": 1},
                attrs={"p": 2},
                to=["bob"],
                exclude_self=True,
                key="t1",
            )
        )
        request = await conn.recv()
        assert request["attrs"] == {"p": 2} and request["to"] == ["bob"]
        assert request["exclude_self"] is True and request["key"] == "t1"
        ack = {
            "type": "ack",
            "id": request["id"],
            "channel": "tasks.1",
            "message_id": request["message_id"],
            "epoch": "e1",
            "offset": 1,
        }
        await conn.send({**ack, "duplicate": False})
        result = await asyncio.wait_for(task, LIMIT)
        assert result == Ack("tasks.1", request["message_id"], "e1", 1, False, request["id"])
        await client.close()


@asynctest
async def test_client_retries_publish_after_lost_ack_with_same_message_id() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        conn, _ = await started(client, server)
        task = asyncio.create_task(client.publish("tasks.1", "task.updated", {"s": 1}))
        first = await conn.recv()
        conn.drop()  # the ack is lost with the connection
        conn2 = await server.accept()
        await conn2.handshake()
        again = await conn2.recv()
        assert again["type"] == "publish"
        assert again["message_id"] == first["message_id"]
        assert again["id"] != first["id"]
        ack = {
            "type": "ack",
            "id": again["id"],
            "channel": "tasks.1",
            "message_id": again["message_id"],
            "epoch": "e1",
            "offset": 1,
        }
        await conn2.send({**ack, "duplicate": True})
        result = await asyncio.wait_for(task, LIMIT)
        assert result.duplicate and result.message_id == first["message_id"]
        await client.close()


@asynctest
async def test_client_raises_rate_limited_and_does_not_resend_early() -> None:
    async with FakeServer() as server:
        line = Timeline()
        client = make_client(server, timeline=line)
        conn, _ = await started(client, server)
        task = asyncio.create_task(client.publish("tasks.1", "task.updated", {}, message_id="m-1"))
        request = await conn.recv()
        await conn.send(
            {
                "type": "error",
                "id": request["id"],
                "code": "rate_limited",
                "message": "slow down",
                "retry_after_ms": 2000,
            }
        )
        with pytest.raises(errors.RateLimited) as caught:
            await asyncio.wait_for(task, LIMIT)
        assert caught.value.retry_after_ms == 2000
        with pytest.raises(errors.RateLimited):
            await client.publish("tasks.1", "task.updated", {}, message_id="m-1")
        await conn.fence()  # the refused publish was not sent again
        line.now += 2.0
        task = asyncio.create_task(client.publish("tasks.1", "task.updated", {}, message_id="m-1"))
        again = await conn.recv()
        assert again["message_id"] == "m-1"
        task.cancel()
        await client.close()


@asynctest
async def test_client_refuses_publish_over_announced_limits() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        limits = dict(welcome()["limits"], max_message_bytes=256)
        conn, _ = await started(client, server, limits=limits)
        with pytest.raises(MessageTooLarge):
            await client.publish("tasks.1", "task.updated", {"blob": "x" * 300})
        with pytest.raises(LimitExceeded):
            await client.publish("tasks.1", "task.updated", {}, to=["u"] * 101)
        with pytest.raises(LimitExceeded):
            attrs = {f"a{n}": n for n in range(17)}
            await client.publish("tasks.1", "task.updated", {}, attrs=attrs)
        await conn.fence()
        await client.close()


@asynctest
async def test_client_refuses_sys_publish_with_to_exclude_or_user_before_sending() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        conn, _ = await started(client, server)
        for targeting in ({"to": ["u"]}, {"exclude": ["u"]}, {"user": "u"}):
            with pytest.raises(ValueError, match="UNI-CH-15"):
                await client.publish("$sys.maintenance", "maintenance.planned", {}, **targeting)
        await conn.fence()
        task = asyncio.create_task(client.publish("$sys.maintenance", "maintenance.planned", {}))
        sent = await conn.recv()
        assert sent["channel"] == "$sys.maintenance" and not {"to", "exclude", "user"} & set(sent)
        task.cancel()
        await client.close()


@asynctest
async def test_client_sends_one_publish_for_concurrent_calls_with_same_message_id() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        conn, _ = await started(client, server)
        calls = [
            asyncio.create_task(client.publish("tasks.1", "task.updated", {}, message_id="m-7"))
            for _ in range(2)
        ]
        request = await conn.recv()
        ack = {"type": "ack", "id": request["id"], "channel": "tasks.1", "message_id": "m-7"}
        await conn.send({**ack, "epoch": "e1", "offset": 5, "duplicate": False})
        results = await asyncio.wait_for(asyncio.gather(*calls), LIMIT)
        assert [r.offset for r in results] == [5, 5]
        await conn.fence()  # the second call sent nothing
        await client.close()


@asynctest
async def test_client_gives_up_publish_unconfirmed_past_dedup_window() -> None:
    async with FakeServer() as server:
        line = Timeline()
        client = make_client(server, timeline=line)
        conn, _ = await started(client, server, dedup_window_ms=1000)
        task = asyncio.create_task(client.publish("tasks.1", "task.updated", {}))
        await conn.recv()
        line.now += 2.0  # the dedup window has passed
        conn.drop()
        conn2 = await server.accept()
        await conn2.handshake(dedup_window_ms=1000)
        with pytest.raises(PublishExpired):
            await asyncio.wait_for(task, LIMIT)
        await conn2.fence()  # not re-sent (UNI-SEC-17)
        await client.close()


@asynctest
async def test_client_fails_pending_publish_when_stopped() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        conn, _ = await started(client, server)
        task = asyncio.create_task(client.publish("tasks.1", "task.updated", {}))
        await conn.recv()
        await conn.close(4000, "protocol_violation")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(task, LIMIT)


# --- tokens (section 3) ----------------------------------------------------------------------


@asynctest
async def test_client_refreshes_on_token_expiring_without_reconnecting() -> None:
    async with FakeServer() as server:
        tokens = iter(["h.tok-1.s", "h.tok-2.s"])
        client = make_client(server, token=lambda: next(tokens))
        conn, _ = await started(client, server)
        await conn.send({"type": "token_expiring", "expires_at": 1795000000})
        request = await conn.recv()
        assert request["type"] == "refresh" and request["token"] == "h.tok-2.s"
        await conn.send({"type": "refreshed", "id": request["id"], "expires_at": 1795003600})
        await conn.fence()
        assert server.count == 1 and server.accepted.empty()
        assert client.state is ClientState.OPEN
        await client.close()


@asynctest
async def test_client_lets_connection_expire_when_provider_fails() -> None:
    async with FakeServer() as server:
        calls: list[int] = []

        async def provider() -> str:
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("down")
            return "h.tok-1.s"

        client = make_client(server, token=provider)
        conn, _ = await started(client, server)
        await conn.send({"type": "token_expiring", "expires_at": 1795000000})
        await conn.fence()  # no refresh was sent
        assert len(calls) == 2 and client.state is ClientState.OPEN
        await client.close()


@asynctest
async def test_client_refresh_raises_token_mismatch_and_stays_open() -> None:
    async with FakeServer() as server:
        client = make_client(server)
        conn, _ = await started(client, server)
        task = asyncio.create_task(client.refresh("h.other-user.s"))
        request = await conn.recv()
        assert request == {"type": "refresh", "id": request["id"], "token": "h.other-user.s"}
        await conn.send(
            {"type": "error", "id": request["id"], "code": "token_mismatch", "message": "no"}
        )
        with pytest.raises(errors.TokenMismatch):
            await asyncio.wait_for(task, LIMIT)
        task = asyncio.create_task(client.refresh())
        request = await conn.recv()
        assert request["token"] == "h.tok-1.s"
        await conn.send({"type": "refreshed", "id": request["id"], "expires_at": 1795009999})
        assert await asyncio.wait_for(task, LIMIT) == 1795009999
        assert client.state is ClientState.OPEN
        await client.close()


# --- the blocking wrapper --------------------------------------------------------------------


@asynctest
async def test_sync_client_subscribes_publishes_and_iterates_events() -> None:
    async with FakeServer() as server:
        sync = SyncClient(server.url, "h.tok-1.s", timeout=LIMIT)
        connecting = asyncio.create_task(asyncio.to_thread(sync.connect))
        conn = await server.accept()
        await conn.handshake()
        info = await asyncio.wait_for(connecting, LIMIT)
        assert info.session.tenant == "acme"
        assert threading.current_thread() is not sync._thread

        subscribing = asyncio.create_task(asyncio.to_thread(sync.subscribe, "tasks.>"))
        await conn.reply_subscribed()
        sub = await asyncio.wait_for(subscribing, LIMIT)
        assert sub.channel == "tasks.>"

        await conn.send(event("tasks.1", "e1", 1))
        await conn.send(event("tasks.1", "e1", 1))
        await conn.send(event("tasks.1", "e1", 2))

        def two() -> list[Item]:
            out: list[Item] = []
            for item in sync.events(timeout=LIMIT):
                out.append(item)
                if len(out) == 2:
                    break
            return out

        items = await asyncio.wait_for(asyncio.to_thread(two), LIMIT)
        assert [i.offset for i in items if isinstance(i, Event)] == [1, 2]
        assert await asyncio.to_thread(sync.positions) == {"tasks.1": Position("e1", 2)}

        publishing = asyncio.create_task(
            asyncio.to_thread(sync.publish, "tasks.1", "task.updated", {}, message_id="m-9")
        )
        request = await conn.recv()
        ack = {
            "type": "ack",
            "id": request["id"],
            "channel": "tasks.1",
            "message_id": "m-9",
            "epoch": "e1",
            "offset": 3,
            "duplicate": False,
        }
        await conn.send(ack)
        assert (await asyncio.wait_for(publishing, LIMIT)).offset == 3

        await asyncio.to_thread(sync.close)
        assert sync.state is ClientState.CLOSED
        assert list(sync.events(timeout=0.01)) == []
        await conn.wait_closed()
        assert conn.ws.close_code == 1000


def test_sync_client_times_out_without_server() -> None:
    sync = SyncClient("ws://127.0.0.1:9/", "h.tok-1.s", timeout=0.2 * SCALE)
    with pytest.raises(TimeoutError):
        sync.connect()
    sync.close()
    assert sync.state is ClientState.CLOSED
