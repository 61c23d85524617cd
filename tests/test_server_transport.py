"""Transport and versioning over real sockets (spec section 1, UNI-TR)."""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus

from server_harness import LIMIT, PROTOCOL_TOKEN, asynctest, running_server, token
from unisock.server import UnisockServer


@asynctest
async def test_server_selects_unisock_v1_among_offered_subprotocols() -> None:
    """UNI-TR-3, UNI-TR-7: the 101 selects exactly unisock.v1, and welcome names it."""
    async with running_server() as h:
        client = await h.open(subprotocols=["unisock.v2", PROTOCOL_TOKEN, "chat.v3"])
        assert client.ws.subprotocol == PROTOCOL_TOKEN
        welcome = await client.hello(token())
        assert welcome["protocol"] == PROTOCOL_TOKEN
        assert welcome["spec_version"].split(".")[0] == "1"


@pytest.mark.parametrize("offer", [[], ["chat.v3"], ["unisock.v2", "unisock"]])
def test_server_refuses_handshake_without_a_unisock_version_with_400(offer: list[str]) -> None:
    """UNI-TR-4: no Unisock version offered (or no header at all) -> HTTP 400, no upgrade."""

    @asynctest
    async def run() -> None:
        async with running_server() as h:
            with pytest.raises(InvalidStatus) as refused:
                await h.open(subprotocols=offer)
            assert refused.value.response.status_code == 400

    run()


@asynctest
async def test_server_refuses_plain_handshake_without_protocol_header_with_400() -> None:
    """UNI-TR-4: a handshake request with no Sec-WebSocket-Protocol header is not upgraded."""
    async with running_server() as h:
        status, _ = await h.get(
            "/",
            {
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
            },
        )
        assert status == 400


@asynctest
async def test_server_closes_with_1003_on_binary_message_before_hello() -> None:
    """UNI-TR-11: a binary message closes the connection with 1003 in awaiting_hello."""
    async with running_server() as h:
        client = await h.open()
        await client.send_raw(json.dumps({"type": "hello", "token": token()}).encode())
        closed = await client.expect_close()
        assert closed.code == 1003
        assert closed.frames == []


@asynctest
async def test_server_closes_with_1003_on_binary_message_when_open() -> None:
    """UNI-TR-11: a binary message closes an authenticated connection with 1003 too."""
    async with running_server() as h:
        client = await h.connect()
        await client.send_raw(b"\x00\x01binary")
        closed = await client.expect_close()
        assert closed.code == 1003


@asynctest
async def test_server_closes_with_1007_on_text_message_that_is_not_utf8() -> None:
    """UNI-TR-13: invalid UTF-8 in a text message closes with 1007."""
    async with running_server() as h:
        client = await h.connect()
        await client.send_raw(b'{"type":"ping","nonce":"\xff\xfe"}', text=True)
        closed = await client.expect_close()
        assert closed.code == 1007


@asynctest
async def test_server_answers_text_that_is_not_json_with_invalid_json_and_stays_open() -> None:
    """UNI-TR-16: invalid_json without an id (none is readable); the connection survives."""
    async with running_server() as h:
        client = await h.connect()
        await client.send_raw('{"type":"subscribe",')
        error = await client.expect_next("error", code="invalid_json")
        assert "id" not in error
        await client.subscribe("tasks.1")


@pytest.mark.parametrize(
    "payload",
    ["[]", '"hello"', "42", "null", '{"id":"x1"}', '{"type":5,"id":"x1"}', '{"type":null}'],
)
def test_server_answers_non_object_or_typeless_message_with_invalid_message(payload: str) -> None:
    """UNI-TR-17: not an object, no type, or a non-string type -> invalid_message, stays open."""

    @asynctest
    async def run() -> None:
        async with running_server() as h:
            client = await h.connect()
            await client.send_raw(payload)
            await client.expect_next("error", code="invalid_message")
            assert await client.fence() == []

    run()


@asynctest
async def test_server_answers_unknown_type_with_unknown_type_echoing_id() -> None:
    """UNI-TR-18, UNI-TR-25: unknown type -> unknown_type with the readable id; stays open."""
    async with running_server() as h:
        client = await h.connect()
        await client.send({"type": "presence_query", "id": "q7", "channel": "tasks.42"})
        await client.expect_next("error", code="unknown_type", id="q7")
        await client.subscribe("tasks.42")


@pytest.mark.parametrize("kind", ["welcome", "event", "ack", "subscribed", "gap"])
def test_server_answers_server_message_type_from_client_with_invalid_message(kind: str) -> None:
    """UNI-TR-19 (classification step 3): a server-to-client type is known but invalid here."""

    @asynctest
    async def run() -> None:
        async with running_server() as h:
            client = await h.connect()
            await client.error({"type": kind}, "invalid_message")

    run()


@asynctest
async def test_server_applies_no_part_of_a_schema_invalid_request() -> None:
    """UNI-TR-19: schema-invalid subscribe and publish get invalid_message and change nothing."""
    async with running_server() as h:
        alice = await h.connect()
        await alice.error({"type": "subscribe", "channel": 42}, "invalid_message")
        await alice.error(
            {"type": "subscribe", "channel": "tasks.1", "since": "yesterday"}, "invalid_message"
        )
        await alice.error({"type": "unsubscribe", "channel": "tasks.1"}, "not_subscribed")
        bob = await h.connect(token(sub="bob"))
        await bob.subscribe("tasks.1")
        bad = {"type": "publish", "channel": "tasks.1", "event": "Bad Type", "data": 1}
        await alice.error({**bad, "message_id": "m1"}, "invalid_message")
        await alice.error({**bad, "event": "note.posted"}, "invalid_message")  # no message_id
        ack = await alice.publish("tasks.1", "fence")
        assert ack["offset"] == 1
        [event] = await bob.events(1)
        assert event["data"] == "fence"


@asynctest
async def test_server_ignores_unknown_members_of_client_messages() -> None:
    """UNI-TR-20: unknown members are ignored; data and attrs are delivered as published."""
    async with running_server() as h:
        alice = await h.connect()
        sub = await alice.subscribe("tasks.42", priority="high", extension={"x": 1})
        assert sub["channel"] == "tasks.42"
        ack = await alice.publish("tasks.42", {"k": "v"}, future_field=[1, 2], attrs={"prio": 1})
        assert ack["duplicate"] is False
        [event] = await alice.events(1)
        assert "future_field" not in event
        assert event["data"] == {"k": "v"}
        assert event["attrs"] == {"prio": 1}
        await alice.send({"type": "ping", "id": "k1", "nonce": "n", "extra": True})
        await alice.expect_next("pong", id="k1", nonce="n")


@pytest.mark.parametrize(
    ("message", "has_id"),
    [
        ({"type": "publish", "channel": "tasks.1", "event": "a", "data": 1}, False),
        ({"type": "publish", "id": 7, "channel": "tasks.1"}, False),
        ({"type": "publish", "id": "", "channel": "tasks.1"}, False),
        ({"type": "publish", "id": "x" * 65, "channel": "tasks.1"}, False),
        ({"type": "publish", "id": "x" * 64, "channel": "tasks.1"}, True),
        ({"type": "nonsense", "id": "n-1"}, True),
    ],
)
def test_server_echoes_only_a_readable_id_in_errors(
    message: dict[str, object], has_id: bool
) -> None:
    """UNI-TR-25: an error carries the offending message's id exactly when it is readable."""

    @asynctest
    async def run() -> None:
        async with running_server() as h:
            client = await h.connect()
            await client.send(message)
            error = await client.expect_next("error")
            if has_id:
                assert error["id"] == message["id"]
            else:
                assert "id" not in error

    run()


@asynctest
async def test_server_processes_pipelined_requests_in_arrival_order() -> None:
    """UNI-TR-26, UNI-TR-27: each request gets one reply, in the order the requests arrived."""
    async with running_server() as h:
        client = await h.connect()
        msgs: list[dict[str, object]] = [
            {"type": "subscribe", "id": "a1", "channel": "tasks.1"},
            {
                "type": "publish",
                "id": "a2",
                "channel": "tasks.1",
                "event": "x",
                "data": 1,
                "message_id": "m1",
            },
            {"type": "subscribe", "id": "a3", "channel": "tasks.1"},
            {"type": "unsubscribe", "id": "a4", "channel": "tasks.1"},
            {
                "type": "publish",
                "id": "a5",
                "channel": "tasks.1",
                "event": "x",
                "data": 2,
                "message_id": "m2",
            },
            {"type": "unsubscribe", "id": "a6", "channel": "tasks.1"},
            {"type": "ping", "id": "a7"},
        ]
        for msg in msgs:
            await client.send(msg)
        frames = [await client.recv() for _ in range(8)]
        # The event of a2 may precede or follow its ack (UNI-PUB-29); replies keep their order.
        [event] = [f for f in frames if f["type"] == "event"]
        assert event["offset"] == 1
        replies = [f for f in frames if f["type"] != "event"]
        assert [(f["type"], f.get("id")) for f in replies] == [
            ("subscribed", "a1"),
            ("ack", "a2"),
            ("error", "a3"),
            ("unsubscribed", "a4"),
            ("ack", "a5"),
            ("error", "a6"),
            ("pong", "a7"),
        ]
        assert frames.index(event) > frames.index(replies[0])
        assert frames.index(event) < frames.index(replies[3])
        assert replies[2]["code"] == "already_subscribed"
        assert replies[5]["code"] == "not_subscribed"


@asynctest
async def test_server_sends_one_json_object_per_text_message() -> None:
    """UNI-TR-9: every server message is a text frame holding one JSON object."""
    async with running_server() as h:
        client = await h.connect()
        await client.subscribe("tasks.1")
        await client.publish("tasks.1", {"a": [1, 2]})
        frames = [client.welcome, *(await client.fence())]  # type: ignore[attr-defined]
        assert [f["type"] for f in frames] == ["welcome", "event"]
        for frame in frames:
            assert isinstance(json.loads(frame.raw), dict)
            assert frame.raw.count("\n") == 0


def _upgrade(host: str, port: int) -> bytes:
    """A raw handshake request with a header no client library adds (``X-Probe``)."""
    request = [
        "GET / HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Protocol: {PROTOCOL_TOKEN}",
        "X-Probe: 1",
    ]
    return ("\r\n".join(request) + "\r\n\r\n").encode()


async def _until_open(server: UnisockServer, count: int) -> None:
    """The handler runs, and lists the connection, once the handshake is answered."""
    async with asyncio.timeout(LIMIT):
        while len(server.conns) < count:
            await asyncio.sleep(0)


@asynctest
async def test_server_keeps_no_handshake_headers_once_a_connection_is_open() -> None:
    """An open connection holds no handshake headers: an idle one costs less memory."""
    async with running_server() as h:
        reader, writer = await asyncio.open_connection(h.host, h.port)
        writer.write(_upgrade(h.host, h.port))
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), LIMIT)
        assert response.startswith(b"HTTP/1.1 101 ")
        await _until_open(h.server, 1)
        gc.collect()
        kept = [o for o in gc.get_objects() if isinstance(o, Headers) and o.get("X-Probe")]
        assert kept == []
        writer.close()


def test_server_connections_accepted_in_one_burst_hold_no_dictionary_each() -> None:
    """Connections accepted together, as after a restart, share their attribute names like
    any others. The first burst of a process decides it, so a fresh process runs it."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_own_dictionaries_after_a_burst, (20,)) == 0


def _own_dictionaries_after_a_burst(count: int) -> int:
    async def burst() -> int:
        async with running_server() as h:
            opened = [asyncio.open_connection(h.host, h.port) for _ in range(count)]
            streams = await asyncio.gather(*opened)  # accepted in one turn of the loop
            for _, writer in streams:
                writer.write(_upgrade(h.host, h.port))
            await _until_open(h.server, count)
            own = sum(
                any(isinstance(r, dict) and "transport" in r for r in gc.get_referents(c.ws))
                for c in h.server.conns.values()
            )
            for _, writer in streams:
                writer.close()
            return own

    return asyncio.run(burst())
