"""Tenancy and channels over real sockets: grammar, isolation, $me, $sys (UNI-CH)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from server_harness import asynctest, running_server, token

VECTORS = Path(__file__).resolve().parents[1] / "conformance" / "vectors"


def _cases(name: str, key: str) -> list[tuple[str, bool]]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return [(case["input"][key], case["expected"]["valid"]) for case in data["cases"]]


NAMES = _cases("channel-names.json", "name")
PATTERNS = _cases("patterns.json", "pattern")
INVALID_NAMES = [name for name, valid in NAMES if not valid]
INVALID_PATTERNS = [p for p, valid in PATTERNS if not valid] + [
    name for name in INVALID_NAMES if "*" not in name and ">" not in name
]
ALL = (">", "$sys.>", "$me", "$me.>")


@asynctest
async def test_server_refuses_every_hostile_channel_name_in_publish_with_invalid_channel() -> None:
    """UNI-CH-3..5, UNI-PUB-2: no spelling is normalised into a name; each is refused."""
    async with running_server(publish_rate_burst=1000) as h:
        client = await h.connect(token(subscribe=ALL, publish=ALL, broadcaster=True))
        for name in INVALID_NAMES:
            reply = await client.publish_raw(name, "x")
            assert (reply["type"], reply.get("code")) == ("error", "invalid_channel"), name
        assert await client.fence() == []


@asynctest
async def test_server_refuses_every_hostile_pattern_in_subscribe_with_invalid_channel() -> None:
    """UNI-CH-3..5: hostile vectors and invalid patterns are refused without effect."""
    async with running_server(max_subscriptions=1) as h:
        client = await h.connect(token(subscribe=ALL))
        for pattern in INVALID_PATTERNS:
            reply = await client.request({"type": "subscribe", "channel": pattern})
            assert (reply["type"], reply.get("code")) == ("error", "invalid_channel"), pattern
        await client.subscribe("tasks.1")  # nothing above took the only slot


@asynctest
async def test_server_accepts_every_valid_vector_name_as_a_channel() -> None:
    """UNI-CH-3: canonical names, including 255-octet and 16-segment ones, are accepted."""
    async with running_server(publish_rate_burst=1000) as h:
        client = await h.connect(token(subscribe=ALL, publish=ALL, broadcaster=True))
        for name, valid in NAMES:
            if valid:
                reply = await client.publish_raw(name, "x")
                assert reply["type"] == "ack", (name, reply)


@asynctest
async def test_server_keeps_same_channel_name_of_two_tenants_apart() -> None:
    """UNI-CH-1, UNI-CH-2, UNI-DEL-6: tasks.1 of globex never reaches acme; own offsets."""
    async with running_server() as h:
        alice = await h.connect(token("acme", "alice"))
        await alice.subscribe("tasks.>")
        mallory = await h.connect(token("globex", "alice"))
        await mallory.subscribe("tasks.>")
        foreign = await mallory.publish("tasks.1", "globex secret")
        assert foreign["offset"] == 1
        carol = await h.connect(token("acme", "carol"))
        fence = await carol.publish("tasks.1", "acme fence")
        assert fence["offset"] == 1  # acme's sequence is not advanced by globex
        [event] = await alice.events(1)
        assert event["data"] == "acme fence"
        assert await alice.fence() == []
        [own] = await mallory.events(1)
        assert own["data"] == "globex secret"
        assert await mallory.fence() == []


@pytest.mark.parametrize("prefix", ["globex.", "globex:", "$globex.", "..", "$sys.globex."])
def test_server_offers_no_syntax_that_names_another_tenants_channel(prefix: str) -> None:
    """UNI-CH-1, UNI-CH-2: a tenant-looking prefix is refused or stays in the own tenant."""

    @asynctest
    async def run() -> None:
        async with running_server() as h:
            victim = await h.connect(token("globex", "bob", publish=(">",)))
            attacker = await h.connect(token("acme", "eve", subscribe=(">",), publish=(">",)))
            reply = await attacker.request({"type": "subscribe", "channel": prefix + "tasks.1"})
            assert reply["type"] in ("subscribed", "error")
            if reply["type"] == "error":
                assert reply["code"] in ("invalid_channel", "forbidden")
            await victim.publish("tasks.1", "globex only")
            await attacker.publish_raw(prefix + "tasks.1", "probe")
            await attacker.subscribe("fence")
            await h.connect(token("acme", "x", publish=("fence",)))
            publisher = h.clients[-1]
            await publisher.publish("fence", "fence")
            [event] = await attacker.events(1)
            assert event["data"] != "globex only"

    run()


@asynctest
async def test_server_tenant_patterns_never_deliver_private_or_system_events() -> None:
    """UNI-CH-9: '>' in the tenant namespace matches neither $me nor $sys channels."""
    async with running_server() as h:
        alice = await h.connect(token(subscribe=(">",), publish=("$me.>", "zzz")))
        await alice.subscribe(">")
        svc = await h.connect(token(sub="svc", publish=("$sys.>", "$me.>"), broadcaster=True))
        await svc.publish("$sys.maintenance", "sys")
        await svc.publish("$me.inbox", "private", user="alice")
        await alice.publish("$me.inbox", "own private")
        await alice.publish("zzz", "fence")
        [event] = await alice.events(1)
        assert event["channel"] == "zzz"


@asynctest
async def test_server_delivers_private_channels_only_to_their_owner() -> None:
    """UNI-CH-10, UNI-CH-11, UNI-DEL-3, UNI-PUB-8: $me needs no grant; owner only; $me form."""
    async with running_server() as h:
        alice = await h.connect(token("acme", "alice", subscribe=()))
        await alice.subscribe("$me.>")
        bob = await h.connect(token("acme", "bob", subscribe=()))
        await bob.subscribe("$me.inbox")
        bob_globex = await h.connect(token("globex", "bob", subscribe=()))
        await bob_globex.subscribe("$me.inbox")
        svc = await h.connect(token("acme", "svc", publish=("$me.>",), broadcaster=True))
        ack = await svc.publish("$me.inbox", {"text": "for bob"}, user="bob")
        assert (ack["channel"], ack["offset"]) == ("$me.inbox", 1)
        await svc.publish("$me.inbox", {"text": "for alice"}, user="alice")
        [event] = await bob.events(1)
        assert event["channel"] == "$me.inbox"
        assert event["data"] == {"text": "for bob"}
        assert "bob" not in event.raw.replace('"publisher":"svc"', "").split('"data"')[0]
        [event] = await alice.events(1)
        assert (event["data"], event["offset"]) == ({"text": "for alice"}, 1)
        assert await bob.fence() == []
        assert await bob_globex.fence() == []


@asynctest
async def test_server_refuses_system_subscriptions_without_a_system_grant() -> None:
    """UNI-CH-14: no tenant grant, not even '>', opens $sys; $sys grants are containment-checked."""
    async with running_server() as h:
        client = await h.connect(token(subscribe=(">", "$sys.announcements")))
        await client.error({"type": "subscribe", "channel": "$sys.maintenance"}, "forbidden")
        await client.error({"type": "subscribe", "channel": "$sys.>"}, "forbidden")
        await client.subscribe("$sys.announcements")


@asynctest
async def test_server_delivers_system_events_to_granted_connections_of_every_tenant() -> None:
    """UNI-CH-13: one $sys event reaches subscribers in acme and globex, with one offset."""
    async with running_server() as h:
        acme = await h.connect(token("acme", "alice", subscribe=("$sys.>",)))
        await acme.subscribe("$sys.>")
        globex = await h.connect(token("globex", "bob", subscribe=("$sys.maintenance",)))
        await globex.subscribe("$sys.maintenance")
        svc = await h.connect(token("ops", "svc", publish=("$sys.>",), broadcaster=True))
        ack = await svc.publish("$sys.maintenance", {"at": "02:00"})
        [a] = await acme.events(1)
        [g] = await globex.events(1)
        assert a.raw == g.raw
        assert (a["channel"], a["offset"]) == ("$sys.maintenance", ack["offset"])


@asynctest
async def test_server_without_system_namespace_feature_forbids_sys() -> None:
    """UNI-CH-16, UNI-LC-13: without system_namespace, $sys subscribe and publish are forbidden."""
    async with running_server(features=("coalescing", "typed_events")) as h:
        svc = await h.open()
        welcome = await svc.hello(
            token(subscribe=("$sys.>",), publish=("$sys.>",), broadcaster=True)
        )
        assert "system_namespace" not in welcome["features"]
        await svc.error({"type": "subscribe", "channel": "$sys.>"}, "forbidden")
        reply = await svc.publish_raw("$sys.maintenance", "x")
        assert (reply["type"], reply.get("code")) == ("error", "forbidden")
