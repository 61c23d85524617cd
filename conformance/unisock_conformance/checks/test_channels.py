"""Tenancy and channels (spec section 4): grammar without normalization, matching, tenant
isolation, the private ``$me`` namespace, the ``$sys`` namespace and grant containment.

Names come from the language-independent vectors (``conformance/vectors``). Every test runs
in tenants of its own, so the vectors' literal channel names never meet another test's.
To prove that an event was *not* delivered, a subscriber also holds a catch-all subscription
filtered to the fence event type: a fence published on the same channel after the event
reaches it, and per-channel ordering means the event would have arrived first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pytest

from unisock_conformance.checks.conftest import User, subscription_cap
from unisock_conformance.deployment import Names, ServerInfo, not_applicable
from unisock_conformance.paths import VECTORS_DIR
from unisock_conformance.wire import Conn

Frame = dict[str, Any]
FENCE = "fence.event"
FENCE_FILTER: Frame = {"eq": ["$event", FENCE]}
BROADCASTER_GRANTS = (">", "$me", "$me.>", "$sys.>")


def _cases(feature: str) -> list[dict[str, Any]]:
    data = json.loads((VECTORS_DIR / f"{feature}.json").read_text(encoding="utf-8"))
    cases: list[dict[str, Any]] = data["cases"]
    return cases


def _invalid_names() -> list[str]:
    return [c["input"]["name"] for c in _cases("channel-names") if not c["expected"]["valid"]]


def _valid_names() -> list[str]:
    return [c["input"]["name"] for c in _cases("channel-names") if c["expected"]["valid"]]


def _invalid_patterns() -> list[str]:
    patterns = [c["input"]["pattern"] for c in _cases("patterns") if not c["expected"]["valid"]]
    # An invalid channel name without wildcards is an invalid pattern as well.
    patterns += [n for n in _invalid_names() if "*" not in n and ">" not in n]
    return list(dict.fromkeys(patterns))


def _ns(name: str) -> str:
    head = name.split(".")[0]
    return head if head in ("$me", "$sys") else ""


def _arrived(conn: Conn, channel: str, offset: int) -> list[Frame]:
    """Wait until the event at ``offset`` on ``channel`` has reached ``conn``."""
    return conn.wait_events(lambda e: e["channel"] == channel and e["offset"] == offset)


class Publishers:
    """Broadcaster connections of one tenant, rotated so no bucket runs dry (UNI-PUB-31)."""

    def __init__(self, user: User, names: Names, tenant: str, base: int = 50) -> None:
        self.user, self.names, self.tenant, self.base = user, names, tenant, base
        self.conn: Conn | None = None
        self.left = 0
        self.count = 0

    def _current(self) -> Conn:
        if self.conn is None or self.left == 0:
            self.conn = self.user(
                self.tenant,
                self.names.user(self.base),
                subscribe=(),
                publish=BROADCASTER_GRANTS,
                broadcaster=True,
            )
            assert self.conn.welcome is not None
            self.conn.pace = False  # exactly one burst per fresh connection
            self.left = int(self.conn.welcome["limits"]["publish_rate"]["burst"])
        self.left -= 1
        return self.conn

    def publish(self, channel: str, event: str = "test.event", **fields: Any) -> Frame:
        return self._current().publish(channel, event, **fields)


def _fence_patterns(channel: str) -> tuple[str, ...]:
    return {"": (">",), "$me": ("$me", "$me.>"), "$sys": ("$sys.>",)}[_ns(channel)]


def _add_fences(conn: Conn, channels: Iterable[str], own: Iterable[str] = ()) -> None:
    """Subscribe ``conn`` to fence events on every namespace of ``channels``."""
    wanted = {p for c in channels for p in _fence_patterns(c)} - set(own)
    for pattern in sorted(wanted):
        conn.subscribe(pattern, filter=FENCE_FILTER)


def _fenced(conn: Conn, channel: str, fence_ack: Frame) -> list[Frame]:
    """Events on ``channel`` before the fence (which has arrived once this returns)."""
    conn.wait_events(
        lambda e: (
            e["channel"] == channel and e["offset"] == fence_ack["offset"] and e["event"] == FENCE
        )
    )
    return [e for e in conn.events(channel) if e["event"] != FENCE]


# -- 4.2 grammar -----------------------------------------------------------------------------------


def _only_errors(conn: Conn, sent: list[Frame], code: str) -> None:
    """Every message in ``sent`` got exactly ``code`` and nothing else arrived."""
    conn.send({"type": "ping", "id": "end"})
    conn.expect("pong", where=lambda f: f.get("id") == "end")
    replies = [f for f in conn.frames if f.get("type") not in ("welcome", "ping", "pong")]
    by_id = {f.get("id"): f for f in replies}
    for message in sent:
        reply = by_id.get(message["id"])
        assert reply is not None, f"no reply to {message!r}"
        assert reply.get("code") == code, f"{message['channel']!r}: got {reply}"
    assert len(replies) == len(sent), f"unexpected frames: {replies[len(sent) :]}"


@pytest.mark.requirement("UNI-CH-3", "UNI-CH-4", "UNI-CH-5", "UNI-ERR-6")
def test_server_refuses_every_invalid_name_in_publish_with_invalid_channel(
    user: User, names: Names
) -> None:
    tenant = names.tenant()
    invalid = [*_invalid_names(), "*.tasks", "tasks.*", ">", "$sys"]
    watcher = user(tenant, names.user(99), subscribe=(">", "$me.>", "$me"))
    watcher.subscribe(">")
    watcher.subscribe("$me.>")
    index = 0
    while index < len(invalid):
        conn = user(tenant, names.user(index), publish=(">", "$me", "$me.>"))
        assert conn.welcome is not None
        burst = int(conn.welcome["limits"]["publish_rate"]["burst"])
        conn.pace = False  # exactly one burst per fresh connection
        chunk = invalid[index : index + burst]
        sent = [conn.publish_message(name, id=f"p{index + i}") for i, name in enumerate(chunk)]
        for message in sent:
            conn.send(message)
        _only_errors(conn, sent, "invalid_channel")
        index += len(chunk)
    fence = user(tenant, names.user(98)).publish("fence")
    events = watcher.wait_events(lambda e: e["channel"] == "fence")
    assert [e["offset"] for e in watcher.events()] == [fence["offset"]], watcher.events()
    assert events


@pytest.mark.requirement("UNI-CH-3", "UNI-CH-4", "UNI-CH-5", "UNI-SUB-6")
@pytest.mark.parametrize("kind", ["subscribe", "unsubscribe"])
def test_server_refuses_every_invalid_pattern_with_invalid_channel(
    user: User, names: Names, kind: str
) -> None:
    conn = user(names.tenant(), names.user(), subscribe=(">", "$me.>", "$sys.>"))
    sent = [
        {"type": kind, "id": f"s{i}", "channel": pattern}
        for i, pattern in enumerate(_invalid_patterns())
    ]
    for message in sent:
        conn.send(message)
    _only_errors(conn, sent, "invalid_channel")


@pytest.mark.requirement("UNI-CH-3", "UNI-CH-4", "UNI-CH-11", "UNI-PUB-8")
def test_server_accepts_every_valid_name_in_subscribe_and_publish(user: User, names: Names) -> None:
    tenant = names.tenant()
    valid = [n for n in _valid_names() if _ns(n) != "$sys"]
    conn = user(tenant, names.user(0))
    publishers = Publishers(user, names, tenant)
    for name in valid:
        conn.subscribe(name)
        ack = publishers.publish(name, user=names.user(0) if _ns(name) else None)
        _arrived(conn, name, ack["offset"])
        conn.unsubscribe(name)


@pytest.mark.requirement("UNI-CH-5")
def test_server_neither_folds_case_nor_decodes_names(user: User, names: Names) -> None:
    tenant = names.tenant()
    base = names.channel()
    sub = user(tenant, names.user(0))
    pub = user(tenant, names.user(1))
    for variant in (f"{base}.a-b", f"{base}.a_b"):
        sub.subscribe(variant)
    for spelling in (f"{base.upper()}.a-b", f"{base}%2Ea-b", f"{base}\uff0ea-b", f" {base}.a-b"):
        reply = pub.request(pub.publish_message(spelling))
        assert reply.get("code") == "invalid_channel", f"{spelling!r} was accepted: {reply}"
    # A JSON escape is syntax, not normalization: ``\u002e`` is the dot itself.
    escaped = json.dumps(f"{base}.a-b").replace(".", "\\u002e")
    pub.send(
        '{"type":"publish","id":"esc","channel":' + escaped + ',"event":"test.event",'
        '"data":1,"message_id":"' + names.message_id() + '"}'
    )
    ack = pub.expect("ack", where=lambda f: f.get("id") == "esc")
    assert ack["channel"] == f"{base}.a-b", ack
    event = sub.wait_events(
        lambda e: e["offset"] == ack["offset"] and e["channel"] == ack["channel"]
    )
    assert event[0]["channel"] == f"{base}.a-b"
    fence = pub.publish(f"{base}.a_b")
    sub.wait_events(lambda e: e["channel"] == f"{base}.a_b" and e["offset"] == fence["offset"])
    assert len(sub.events(f"{base}.a_b")) == 1, "a-b and a_b are one channel"
    assert len(sub.events(f"{base}.a-b")) == 1


# -- 4.1 tenants -----------------------------------------------------------------------------------


@pytest.mark.requirement("UNI-CH-1", "UNI-CH-2", "UNI-TR-20")
def test_server_takes_tenant_only_from_the_token(user: User, names: Names) -> None:
    home, other = names.tenant(0), names.tenant(1)
    channel = names.channel()
    victim = user(other, names.user(1))
    victim.subscribe(channel, filter=None)
    victim.subscribe(">", filter=FENCE_FILTER)
    attacker = user(home, names.user(0))
    attacker.send({"type": "subscribe", "id": "t1", "channel": channel, "tenant": other})
    attacker.expect("subscribed", where=lambda f: f.get("id") == "t1")
    message = attacker.publish_message(channel, id="t2")
    message["tenant"] = other
    ack = attacker.request(message)
    assert ack["type"] == "ack", ack
    own = attacker.wait_events(lambda e: e["channel"] == channel and e["offset"] == ack["offset"])
    assert own
    fence = user(other, names.user(2)).publish(channel, FENCE)
    leaked = _fenced(victim, channel, fence)
    assert leaked == [], f"an event of tenant {home} reached tenant {other}: {leaked}"


@pytest.mark.requirement("UNI-CH-2", "UNI-CH-9", "UNI-CH-10")
def test_events_never_cross_tenants_with_identical_names(user: User, names: Names) -> None:
    tenants = [names.tenant(0), names.tenant(1)]
    channels = ["tasks.42", "globex.tasks.42", f"{tenants[1]}.tasks", "a", "a.b.c", "$me.inbox"]
    subs = {t: user(t, "alice") for t in tenants}
    cap = subscription_cap(subs[tenants[0]], 2, "receiving tenant and private channels")
    # Overlapping patterns beyond the two that receive everything, as the cap allows.
    for conn in subs.values():
        for pattern in (">", "$me.inbox", "*", "tasks.>")[:cap]:
            conn.subscribe(pattern)
    pubs = {t: Publishers(user, names, t) for t in tenants}
    for tenant in tenants:
        for channel in channels:
            owner = {"user": "alice"} if channel.startswith("$me") else {}
            pubs[tenant].publish(channel, data={"from": tenant}, **owner)
    for tenant in tenants:
        conn = subs[tenant]
        for channel in channels:
            owner = {"user": "alice"} if channel.startswith("$me") else {}
            fence = pubs[tenant].publish(channel, FENCE, **owner)
            _arrived(conn, fence["channel"], fence["offset"])
        mine = [e for e in conn.events() if e["event"] != FENCE]
        foreign = [e for e in mine if e["data"] != {"from": tenant}]
        assert foreign == [], f"tenant {tenant} received another tenant's events: {foreign}"
        assert len(mine) == len(channels), f"{tenant} missed its own events: {mine}"


# -- 4.3 matching ----------------------------------------------------------------------------------


def _matching_cases(features: frozenset[str]) -> dict[str, list[tuple[str, bool]]]:
    grouped: dict[str, list[tuple[str, bool]]] = {}
    for case in _cases("matching"):
        pattern, channel = case["input"]["pattern"], case["input"]["channel"]
        if "system_namespace" not in features and "$sys" in (_ns(pattern), _ns(channel)):
            continue
        grouped.setdefault(pattern, []).append((channel, bool(case["expected"]["matches"])))
    return grouped


@pytest.mark.requirement("UNI-CH-8", "UNI-CH-9", "UNI-CH-13", "UNI-SUB-20")
def test_server_matches_patterns_exactly_as_the_match_algorithm(
    user: User, names: Names, server_info: ServerInfo
) -> None:
    tenant = names.tenant()
    publishers = Publishers(user, names, tenant)
    grouped = _matching_cases(server_info.features)
    # One subscriber per pattern and namespace of the channels it is tried on: the pattern
    # plus that namespace's fence subscriptions stay within a small max_subscriptions.
    plan: list[tuple[str, Conn, str, list[tuple[str, bool]]]] = []
    for pattern, cases in grouped.items():
        by_namespace: dict[str, list[tuple[str, bool]]] = {}
        for channel, expected in cases:
            by_namespace.setdefault(_ns(channel), []).append((channel, expected))
        for namespace_cases in by_namespace.values():
            owner = names.user(len(plan))
            conn = user(tenant, owner, subscribe=(">", "$sys.>"))
            fences = {p for c, _ in namespace_cases for p in _fence_patterns(c)} - {pattern}
            subscription_cap(conn, 1 + len(fences), "a pattern beside its fence subscriptions")
            conn.subscribe(pattern)
            _add_fences(conn, [channel for channel, _ in namespace_cases], own=[pattern])
            plan.append((pattern, conn, owner, namespace_cases))
    acks: dict[tuple[str, str, str], Frame] = {}
    for pattern, _conn, owner, cases in plan:
        for channel, _ in cases:
            extra = {"user": owner} if _ns(channel) == "$me" else {}
            acks[(pattern, owner, channel)] = publishers.publish(
                channel, data={"p": pattern}, **extra
            )
    for pattern, conn, owner, cases in plan:
        for channel, expected in cases:
            extra = {"user": owner} if _ns(channel) == "$me" else {}
            fence = publishers.publish(channel, FENCE, **extra)
            ack = acks[(pattern, owner, channel)]
            got = [
                e
                for e in _fenced(conn, channel, fence)
                if e["offset"] == ack["offset"] and e["epoch"] == ack["epoch"]
            ]
            assert len(got) == (1 if expected else 0), (
                f"pattern {pattern!r} and channel {channel!r}: expected match={expected}, "
                f"received {len(got)} event(s)"
            )


# -- 4.4 $me ---------------------------------------------------------------------------------------


@pytest.mark.requirement("UNI-CH-10", "UNI-CH-9", "UNI-PUB-8")
def test_server_delivers_private_channel_events_only_to_the_owner(user: User, names: Names) -> None:
    tenant, other = names.tenant(0), names.tenant(1)
    alice = user(tenant, "alice", publish=("$me.>",))
    bob = user(tenant, "bob")
    twin = user(other, "alice")  # same sub in another tenant
    for conn in (alice, bob, twin):
        conn.subscribe("$me.inbox")
        conn.subscribe(">")  # never matches $me channels (UNI-CH-9)
    publishers = Publishers(user, names, tenant)
    own = alice.publish("$me.inbox", data="alice to herself")
    to_bob = publishers.publish("$me.inbox", user="bob", data="to bob")
    got = alice.wait_events(lambda e: e["offset"] == own["offset"] and e["channel"] == "$me.inbox")
    assert got[0]["channel"] == "$me.inbox"
    bob.wait_events(lambda e: e["offset"] == to_bob["offset"] and e["channel"] == "$me.inbox")
    fence_alice = publishers.publish("$me.inbox", FENCE, user="alice")
    alice.wait_events(lambda e: e["offset"] == fence_alice["offset"] and e["event"] == FENCE)
    mine = [e["data"] for e in alice.events() if e["event"] != FENCE]
    assert mine == ["alice to herself"], alice.events()
    fence_bob = publishers.publish("$me.inbox", FENCE, user="bob")
    bob.wait_events(lambda e: e["offset"] == fence_bob["offset"] and e["event"] == FENCE)
    assert [e["data"] for e in bob.events() if e["event"] != FENCE] == ["to bob"], bob.events()
    twin_fence = Publishers(user, names, other).publish("$me.inbox", FENCE, user="alice")
    twin.wait_events(lambda e: e["offset"] == twin_fence["offset"] and e["event"] == FENCE)
    assert [e for e in twin.events() if e["event"] != FENCE] == [], twin.events()


@pytest.mark.requirement("UNI-CH-11")
@pytest.mark.parametrize("pattern", ["$me", "$me.inbox", "$me.>", "$me.*", "$me.a.*.c"])
def test_server_allows_private_subscriptions_without_grants(
    user: User, names: Names, pattern: str
) -> None:
    conn = user(names.tenant(), names.user(), subscribe=(), publish=())
    assert conn.subscribe(pattern)["channel"] == pattern


# -- 4.5 $sys --------------------------------------------------------------------------------------


@pytest.mark.requirement("UNI-CH-13", "UNI-CH-9")
@pytest.mark.feature("system_namespace")
def test_server_delivers_system_events_to_subscribers_of_every_tenant(
    user: User, names: Names
) -> None:
    channel = f"$sys.{names.channel()}"
    subs = [user(names.tenant(i), names.user(i), subscribe=("$sys.>",)) for i in range(3)]
    for conn in subs:
        conn.subscribe(channel)
    # Patterns that must not match a $sys channel, each beside a fence subscription.
    quiet = []
    for index, pattern in enumerate((">", "*", f"{channel}.more")):
        conn = user(names.tenant(3), names.user(3 + index), subscribe=(">", "$sys.>"))
        subscription_cap(conn, 2, "a pattern beside its fence subscription")
        conn.subscribe(pattern)
        conn.subscribe("$sys.>", filter=FENCE_FILTER)
        quiet.append(conn)
    publishers = Publishers(user, names, names.tenant(0))
    ack = publishers.publish(channel, data={"n": 1})
    for conn in subs:
        conn.wait_events(lambda e: e["channel"] == channel and e["offset"] == ack["offset"])
    fence = publishers.publish(channel, FENCE)
    for conn in quiet:
        assert _fenced(conn, channel, fence) == [], "a tenant pattern delivered a $sys event"


@pytest.mark.requirement("UNI-CH-14", "UNI-SEC-17")
@pytest.mark.feature("system_namespace")
@pytest.mark.parametrize(
    ("grants", "pattern", "allowed"),
    [
        ((">",), "$sys.alerts", False),
        ((">",), "$sys.>", False),
        (("*", ">", "$me.>"), "$sys.*", False),
        (("$sys.a.*",), "$sys.a.b", True),
        (("$sys.a.*",), "$sys.a.>", False),
        (("$sys.a.*",), "$sys.b", False),
        (("$sys.>",), "$sys.x.y", True),
        (("sys.>",), "$sys.x", False),
    ],
)
def test_server_requires_a_system_grant_to_subscribe_to_system_channels(
    user: User, names: Names, grants: tuple[str, ...], pattern: str, allowed: bool
) -> None:
    conn = user(names.tenant(), names.user(), subscribe=grants)
    reply = conn.request({"type": "subscribe", "id": "s", "channel": pattern})
    expected = "subscribed" if allowed else "forbidden"
    assert (reply["type"] if allowed else reply.get("code")) == expected, reply


@pytest.mark.requirement("UNI-CH-16")
def test_server_without_system_namespace_refuses_system_channels(
    user: User, names: Names, server_info: ServerInfo
) -> None:
    if "system_namespace" in server_info.features:
        not_applicable("the server announces system_namespace; the rule binds servers without it")
    tenant = names.tenant()
    conn = user(tenant, names.user(), subscribe=("$sys.>",), publish=("$sys.>",), broadcaster=True)
    for pattern in ("$sys.>", "$sys.alerts"):
        reply = conn.request({"type": "subscribe", "id": "s", "channel": pattern})
        assert reply.get("code") == "forbidden", reply
    reply = conn.request(conn.publish_message("$sys.alerts"))
    assert reply.get("code") == "forbidden", reply


# -- 4.6 grants ------------------------------------------------------------------------------------


@pytest.mark.requirement("UNI-CH-17", "UNI-CH-11", "UNI-CH-14")
def test_server_authorises_subscribe_by_grant_containment(
    user: User, names: Names, server_info: ServerInfo
) -> None:
    tenant = names.tenant()
    system = "system_namespace" in server_info.features
    grouped: dict[str, list[tuple[str, bool]]] = {}
    for case in _cases("containment"):
        grant, pattern = case["input"]["grant"], case["input"]["pattern"]
        allowed = bool(case["expected"]["contained"]) or _ns(pattern) == "$me"
        if _ns(pattern) == "$sys" and not system:
            allowed = False
        grouped.setdefault(grant, []).append((pattern, allowed))
    for index, (grant, cases) in enumerate(grouped.items()):
        conn = user(tenant, names.user(index), subscribe=(grant,), publish=())
        for pattern, allowed in cases:
            reply = conn.request({"type": "subscribe", "id": "s", "channel": pattern})
            outcome = reply["type"] if reply["type"] != "error" else reply["code"]
            assert outcome == ("subscribed" if allowed else "forbidden"), (
                f"grant {grant!r}, subscribe {pattern!r}: got {reply}"
            )
            if allowed:
                conn.unsubscribe(pattern)
