"""Security over real sockets: origins, compression, isolation under hostile input (UNI-SEC)."""

from __future__ import annotations

import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from server_harness import asynctest, running_server, token

ORIGINS = ("https://app.example.com", "http://localhost:3000")


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "https://app.example.com.evil.test",
        "http://app.example.com",
        "https://app.example.com:8443",
        "HTTPS://APP.EXAMPLE.COM",
        "null",
    ],
)
def test_server_refuses_origin_outside_allowlist_with_403(origin: str) -> None:
    """UNI-SEC-1, UNI-SEC-3: exact match of the serialised origin, else 403 and no upgrade."""

    @asynctest
    async def run() -> None:
        async with running_server(allowed_origins=ORIGINS) as h:
            with pytest.raises(InvalidStatus) as refused:
                await h.open(origin=origin)
            assert refused.value.response.status_code == 403

    run()


@asynctest
async def test_server_accepts_allowed_origins_and_handshakes_without_origin() -> None:
    """UNI-SEC-1, UNI-SEC-2: listed origins connect; a non-browser client sends none."""
    async with running_server(allowed_origins=ORIGINS) as h:
        for origin in ORIGINS:
            await h.connect(origin=origin)
        await h.connect()


@asynctest
async def test_server_does_not_negotiate_compression_by_default() -> None:
    """UNI-SEC-16: permessage-deflate offered by the client is declined."""
    async with (
        running_server() as h,
        connect(h.url, subprotocols=["unisock.v1"]) as ws,  # type: ignore[list-item]
    ):
        assert "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers


@asynctest
async def test_server_keeps_serving_others_while_one_peer_sends_garbage() -> None:
    """UNI-SEC-13: hostile input yields only its own error or close; others are unaffected."""
    async with running_server(max_message_bytes=4096) as h:
        bob = await h.connect(token(sub="bob"))
        await bob.subscribe("tasks.>")
        alice = await h.connect()
        hostile = await h.connect(token(sub="eve", subscribe=(">",), publish=(">",)))
        garbage = [
            "\x00" * 10,
            "{" * 3000,
            '{"type":"publish"}',
            "[" * 500 + "]" * 500,
            '{"type":"subscribe","id":"x","channel":"tasks.>","filter":'
            + '{"not":' * 50
            + "{}"
            + "}" * 51,
            json.dumps(
                {
                    "type": "publish",
                    "id": "p",
                    "channel": "../acme",
                    "event": "a",
                    "data": 1,
                    "message_id": "m",
                }
            ),
            json.dumps({"type": "subscribe", "id": "s", "channel": "$sys.>"}),
            '{"type":"ping","nonce":' + "9" * 4000 + "}",
        ]
        for text in garbage:
            await hostile.send_raw(text)
            await alice.publish("tasks.1", text[:20])
        events = await bob.events(len(garbage))
        assert [e["offset"] for e in events] == list(range(1, len(garbage) + 1))
        await hostile.send_raw(b"\x00")
        assert (await hostile.expect_close()).code == 1003
        await alice.publish("tasks.1", "after")
        [event] = await bob.events(1)
        assert event["data"] == "after"


@asynctest
async def test_server_forbidden_subscribe_reveals_nothing_about_the_channel() -> None:
    """UNI-SEC-17: identical code and text whether or not the channel has history."""
    async with running_server() as h:
        owner = await h.connect(token(sub="bob", subscribe=("secret.>",), publish=("secret.>",)))
        await owner.subscribe("secret.busy")
        await owner.publish("secret.busy", "x")
        probe = await h.connect(token(subscribe=("tasks.>",)))
        busy = await probe.error(
            {"type": "subscribe", "id": "a", "channel": "secret.busy"}, "forbidden"
        )
        empty = await probe.error(
            {"type": "subscribe", "id": "a", "channel": "secret.none"}, "forbidden"
        )
        assert busy.raw == empty.raw


@asynctest
async def test_server_keeps_idempotency_records_per_tenant() -> None:
    """UNI-SEC-11: the same message_id on the same channel name in two tenants is two events."""
    async with running_server() as h:
        acme = await h.connect(token("acme", "alice"))
        globex = await h.connect(token("globex", "alice"))
        first = await acme.publish("tasks.1", "a", message_id="shared-id")
        second = await globex.publish("tasks.1", "g", message_id="shared-id")
        assert first["duplicate"] is False
        assert second["duplicate"] is False
