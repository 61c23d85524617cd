"""Subscribe, unsubscribe and filters (spec section 5).

Filter semantics are checked end to end with the language-independent vectors: each valid
vector filter becomes a subscription, the vector's event is published, and the event must
arrive exactly when the vector says the filter is true. Event type names are given a fixed
prefix (in the event and in the filter's ``$event`` operands alike) so that no registered
typed-event schema interferes; the prefix preserves every equality and inequality.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from unisock_conformance.checks.conftest import User, subscription_cap
from unisock_conformance.deployment import Names, ServerInfo
from unisock_conformance.paths import VECTORS_DIR
from unisock_conformance.wire import Conn

Frame = dict[str, Any]
FENCE = "fence.event"
FENCE_FILTER: Frame = {"eq": ["$event", FENCE]}
TYPE_PREFIX = "cf"
CLOCK_SKEW_MS = 30_000


class Publishers:
    """Broadcaster connections of one tenant, rotated so no bucket runs dry."""

    def __init__(self, user: User, names: Names, tenant: str, base: int = 50) -> None:
        self.user, self.names, self.tenant, self.base = user, names, tenant, base
        self.conn: Conn | None = None
        self.left = 0

    def publish(self, channel: str, event: str = "test.event", **fields: Any) -> Frame:
        if self.conn is None or self.left == 0:
            self.conn = self.user(
                self.tenant,
                self.names.user(self.base),
                subscribe=(),
                publish=(">", "$me.>"),
                broadcaster=True,
            )
            assert self.conn.welcome is not None
            self.conn.pace = False  # exactly one burst per fresh connection
            self.left = int(self.conn.welcome["limits"]["publish_rate"]["burst"])
        self.left -= 1
        return self.conn.publish(channel, event, **fields)


def _reply(conn: Conn, ident: str, type_: str | None = None) -> Frame:
    """The reply to the request ``ident`` (``type_`` None: any type)."""
    return conn.expect(type_, where=lambda frame: frame.get("id") == ident)


def _arrived(conn: Conn, channel: str, offset: int) -> list[Frame]:
    """Wait until the event at ``offset`` on ``channel`` has reached ``conn``."""
    return conn.wait_events(lambda e: e["channel"] == channel and e["offset"] == offset)


def _code(reply: Frame) -> str:
    return str(reply["type"] if reply["type"] != "error" else reply["code"])


def _sub(conn: Conn, channel: str, ident: str = "s", **fields: Any) -> Frame:
    return conn.request({"type": "subscribe", "id": ident, "channel": channel, **fields})


def _unsub(conn: Conn, channel: str, ident: str = "u") -> Frame:
    return conn.request({"type": "unsubscribe", "id": ident, "channel": channel})


# -- 5.1 subscribe ---------------------------------------------------------------------------------


@pytest.mark.requirement("UNI-SUB-1")
def test_server_confirms_subscribe_with_id_pattern_and_activation_time(
    user: User, names: Names
) -> None:
    tenant = names.tenant()
    conn = user(tenant, names.user(0))
    pub = user(tenant, names.user(1))
    channel = names.channel()
    stamps = []
    for pattern in (channel, f"{channel}.*", f"{channel}.>", "$me.inbox"):
        before = int(time.time() * 1000)
        reply = conn.request({"type": "subscribe", "id": f"id-{pattern}", "channel": pattern})
        assert reply["type"] == "subscribed", reply
        assert reply["id"] == f"id-{pattern}" and reply["channel"] == pattern, reply
        ts = reply["ts"]
        assert isinstance(ts, int) and abs(ts - before) < CLOCK_SKEW_MS, (ts, before)
        stamps.append(ts)
        if pattern != channel:
            conn.unsubscribe(pattern)  # within any max_subscriptions
    assert stamps == sorted(stamps), f"activation times go backwards: {stamps}"
    ack = pub.publish(channel)
    event = conn.wait_events(lambda e: e["offset"] == ack["offset"] and e["channel"] == channel)
    assert event[0]["ts"] >= stamps[0], "event sequenced before the subscription became active"


@pytest.mark.requirement("UNI-SUB-2")
def test_server_reports_position_exactly_for_patterns_without_wildcards(
    user: User, names: Names
) -> None:
    tenant = names.tenant()
    conn = user(tenant, names.user(0), publish=(">", "$me.>"))
    fresh, used = names.channel(), names.channel()
    acks = [conn.publish(used) for _ in range(3)]
    own = conn.publish("$me.inbox")
    first = conn.subscribe(fresh)
    assert first["position"]["offset"] == 0 and isinstance(first["position"]["epoch"], str)
    head = conn.subscribe(used)["position"]
    assert head == {"epoch": acks[-1]["epoch"], "offset": acks[-1]["offset"]}, (head, acks[-1])
    inbox = conn.subscribe("$me.inbox")["position"]
    assert inbox == {"epoch": own["epoch"], "offset": own["offset"]}, inbox
    for pattern in (fresh, used, "$me.inbox"):
        conn.unsubscribe(pattern)
    assert "position" in conn.subscribe("$me"), "no position for the wildcard-free $me"
    for pattern in (f"{used}.*", f"{used}.>", "*", ">", "$me.>", "$me.*", f"*.{used}"):
        reply = conn.subscribe(pattern)
        assert "position" not in reply, f"position given for wildcard pattern {pattern!r}"
        conn.unsubscribe(pattern)


@pytest.mark.requirement("UNI-SUB-3", "UNI-DEL-10")
def test_server_accepts_overlapping_patterns_and_delivers_once(user: User, names: Names) -> None:
    tenant, base = names.tenant(), names.channel()
    conn = user(tenant, names.user(0))
    pub = user(tenant, names.user(1))
    cap = subscription_cap(conn, 2, "overlapping subscriptions")
    patterns = [f"{base}.a", f"{base}.*", f"{base}.>", "*.a", ">", "*.*"][:cap]
    for pattern in patterns:
        assert conn.subscribe(pattern)["channel"] == pattern
    ack = pub.publish(f"{base}.a")
    fence = pub.publish(f"{base}.a", FENCE)
    conn.wait_events(lambda e: e["offset"] == fence["offset"] and e["channel"] == f"{base}.a")
    got = [e for e in conn.events(f"{base}.a") if e["offset"] == ack["offset"]]
    assert len(got) == 1, f"event delivered {len(got)} times"


@pytest.mark.requirement("UNI-SUB-4", "UNI-SUB-6", "UNI-ERR-6")
def test_server_refuses_repeated_pattern_with_already_subscribed_keeping_the_filter(
    user: User, names: Names
) -> None:
    tenant, channel = names.tenant(), names.channel()
    conn = user(tenant, names.user(0))
    pub = user(tenant, names.user(1))
    conn.subscribe(channel, filter={"eq": ["$event", "x.one"]})
    for variant in ({}, {"filter": {"eq": ["$event", "x.two"]}}, {"since": 0}):
        reply = _sub(conn, channel, "again", **variant)
        assert reply.get("code") == "already_subscribed" and reply.get("id") == "again", reply
    skipped = pub.publish(channel, "x.two")
    kept = pub.publish(channel, "x.one")
    conn.wait_events(lambda e: e["offset"] == kept["offset"] and e["channel"] == channel)
    offsets = [e["offset"] for e in conn.events(channel)]
    assert skipped["offset"] not in offsets, "refused subscribe replaced the filter"
    assert offsets == [kept["offset"]], offsets


@pytest.mark.requirement("UNI-SUB-5", "UNI-SUB-6", "UNI-LC-12", "UNI-SESS-3")
def test_server_refuses_subscription_beyond_max_subscriptions_counting_namespaces(
    user: User, names: Names, server_info: ServerInfo
) -> None:
    tenant = names.tenant()
    system = "system_namespace" in server_info.features
    conn = user(tenant, names.user(0), subscribe=(">", "$sys.>"))
    pub = Publishers(user, names, tenant)
    assert conn.welcome is not None
    cap = int(conn.welcome["limits"]["max_subscriptions"])
    special = ["$me.inbox"] + ([f"$sys.{names.channel()}"] if system else [])
    patterns = special[:cap] + [f"c{i}.{names.channel()}" for i in range(cap - len(special[:cap]))]
    for pattern in patterns:
        conn.subscribe(pattern)
    over = [names.channel(), "$me.other"] + ([f"$sys.{names.channel()}"] if system else [])
    for pattern in over:
        reply = _sub(conn, pattern, "over")
        assert reply.get("code") == "subscription_limit", f"{pattern}: {reply}"
        assert _unsub(conn, pattern).get("code") == "not_subscribed", "refused subscribe created"
    pub.publish(over[0])
    fence = pub.publish(patterns[-1])
    conn.wait_events(lambda e: e["offset"] == fence["offset"] and e["channel"] == patterns[-1])
    assert not conn.events(over[0]), "event delivered through a refused subscription"
    delivered = pub.publish("$me.inbox", user=names.user(0))
    conn.wait_events(lambda e: e["channel"] == "$me.inbox" and e["offset"] == delivered["offset"])


@pytest.mark.requirement("UNI-SUB-6", "UNI-ERR-6")
def test_refused_subscribe_sends_no_event_or_gap(user: User, names: Names) -> None:
    tenant = names.tenant()
    ok = names.channel("ok")
    conn = user(tenant, names.user(0), subscribe=(f"{ok}.>",))
    pub = user(tenant, names.user(1))
    target, secret = f"{ok}.a", names.channel("no")
    ack = pub.publish(target)
    pub.publish(secret)
    position = {"epoch": ack["epoch"], "offset": 0}
    refusals: list[tuple[Frame, str]] = [
        ({"channel": secret, "from": {secret: position}}, "forbidden"),
        ({"channel": secret, "since": 0}, "forbidden"),
        ({"channel": target, "from": {secret: position}}, "invalid_position"),
        ({"channel": target, "filter": {"bogus": 1}, "from": {target: position}}, "invalid_filter"),
        ({"channel": f"{ok}.A", "since": 0}, "invalid_channel"),
    ]
    for index, (fields, code) in enumerate(refusals):
        reply = _sub(
            conn,
            str(fields["channel"]),
            f"r{index}",
            **{k: v for k, v in fields.items() if k != "channel"},
        )
        assert reply.get("code") == code, (fields, reply)
    conn.subscribe(f"{ok}.fence")
    fence = pub.publish(f"{ok}.fence")
    conn.wait_events(lambda e: e["offset"] == fence["offset"] and e["channel"] == f"{ok}.fence")
    stray = [
        f
        for f in conn.frames
        if f.get("type") in ("event", "gap") and f.get("channel") != f"{ok}.fence"
    ]
    assert stray == [], f"refused subscribes sent: {stray}"


@pytest.mark.requirement("UNI-SUB-7", "UNI-SUB-11")
def test_server_reports_the_first_failing_subscribe_check(user: User, names: Names) -> None:
    tenant, ok = names.tenant(), names.channel("ok")
    conn = user(tenant, names.user(), subscribe=(f"{ok}.>",))
    assert conn.welcome is not None
    cap = int(conn.welcome["limits"]["max_subscriptions"])
    position = {"epoch": "e", "offset": 1}
    outside = names.channel("no")
    cases: list[tuple[Frame, str]] = [
        ({"channel": "Bad", "since": "x", "filter": {"bogus": 1}}, "invalid_message"),
        ({"channel": "Bad", "filter": {"bogus": 1}, "from": {"x.y": position}}, "invalid_channel"),
        ({"channel": outside, "filter": {"bogus": 1}, "from": {"x.y": position}}, "invalid_filter"),
        ({"channel": outside, "from": {"x.y": position}}, "invalid_position"),
        ({"channel": f"{ok}.*", "from": {f"{ok}.*": position}}, "invalid_position"),
    ]
    for fields, code in cases:
        reply = conn.request({"type": "subscribe", "id": "o", **fields})
        assert reply.get("code") == code, f"{fields}: expected {code}, got {reply}"
    held = [f"{ok}.{i}" for i in range(cap)]
    for pattern in held:
        conn.subscribe(pattern)
    at_cap: list[tuple[Frame, str]] = [
        ({"channel": outside}, "forbidden"),
        ({"channel": held[0]}, "already_subscribed"),
        ({"channel": held[0], "from": {"x.y": position}}, "invalid_position"),
        ({"channel": f"{ok}.new"}, "subscription_limit"),
    ]
    for fields, code in at_cap:
        reply = conn.request({"type": "subscribe", "id": "c", **fields})
        assert reply.get("code") == code, f"{fields} at the cap: expected {code}, got {reply}"


@pytest.mark.requirement("UNI-SUB-11", "UNI-SUB-6")
@pytest.mark.parametrize(
    ("pattern", "key"),
    [
        ("tasks.*", "projects.apollo"),
        ("tasks.*", "tasks.42.notes"),
        ("tasks.*", "tasks.*"),
        ("tasks.42", "tasks.43"),
        ("tasks.>", "Tasks.42"),
        ("tasks.>", "$me.tasks.42"),
        ("$me.>", "tasks.1"),
        (">", "$me.inbox"),
        ("tasks.>", ""),
        ("tasks.>", "tasks..42"),
        ("tasks.>", "tasks." + "a" * 250),
        ("tasks.>", "tasks.>"),
    ],
)
def test_server_refuses_from_key_not_matched_by_the_pattern_with_invalid_position(
    user: User, names: Names, pattern: str, key: str
) -> None:
    conn = user(names.tenant(), names.user())
    reply = _sub(conn, pattern, "p", **{"from": {key: {"epoch": "e-1", "offset": 3}}})
    assert reply.get("code") == "invalid_position", reply
    assert _sub(conn, pattern, "p2")["type"] == "subscribed", "the refused subscribe created one"


@pytest.mark.requirement("UNI-SUB-11", "UNI-TR-19")
@pytest.mark.parametrize(
    "positions",
    [
        {"tasks..42": {"epoch": "e-1"}},
        {"": {"epoch": "e-1", "offset": -1}},
        {"tasks.*": 3},
    ],
    ids=["no-offset", "negative-offset", "not-an-object"],
)
def test_server_refuses_a_malformed_from_value_with_invalid_message_before_any_key(
    user: User, names: Names, positions: Frame
) -> None:
    """Section 1.5: a position value fails step 4 (schema) before step 5 judges its key."""
    conn = user(names.tenant(), names.user())
    reply = _sub(conn, "tasks.>", "v", **{"from": positions})
    assert reply.get("code") == "invalid_message", reply


# -- 5.2 order after subscribe ---------------------------------------------------------------------


@pytest.mark.requirement("UNI-SUB-9")
def test_server_sends_no_event_before_the_subscribed_reply(user: User, names: Names) -> None:
    tenant, channel = names.tenant(), names.channel()
    conn = user(tenant, names.user(0))
    pub = user(tenant, names.user(1))
    assert pub.welcome is not None
    burst = int(pub.welcome["limits"]["publish_rate"]["burst"])
    count = max(2, burst - 2)
    ack = pub.publish(channel)
    messages = [pub.publish_message(channel, id=f"race{i}") for i in range(count)]
    for message in messages[: count // 2]:
        pub.send(message)
    conn.send({"type": "subscribe", "id": "live", "channel": channel})
    conn.send({"type": "subscribe", "id": "gap", "channel": f"{channel}.>", "since": 0})
    conn.send(
        {
            "type": "subscribe",
            "id": "resume",
            "channel": f"{channel}.*",
            "from": {f"{channel}.x": {"epoch": ack["epoch"] + "-old", "offset": 1}},
        }
    )
    for message in messages[count // 2 :]:
        pub.send(message)
    for message in messages:
        _reply(pub, message["id"], "ack")
    fence = pub.publish(channel)
    conn.wait_events(lambda e: e["offset"] == fence["offset"] and e["channel"] == channel)
    index = {f.get("id"): i for i, f in enumerate(conn.frames) if f.get("type") == "subscribed"}
    for i, frame in enumerate(conn.frames):
        if frame.get("type") == "event" and frame["channel"] == channel:
            assert i > index["live"], f"event {frame['offset']} before its subscribed reply"
        if frame.get("type") == "gap" and frame["channel"] == f"{channel}.x":
            assert i > index["resume"], "gap before its subscribed reply"


@pytest.mark.requirement("UNI-SUB-10", "UNI-SUB-9")
def test_server_replays_before_live_delivery_on_each_channel(user: User, names: Names) -> None:
    tenant, channel = names.tenant(), names.channel()
    conn = user(tenant, names.user(0))
    pub = user(tenant, names.user(1))
    acks = [pub.publish(channel, data={"n": n}) for n in range(4)]
    live = [pub.publish_message(channel, data={"n": 10 + n}, id=f"l{n}") for n in range(3)]
    start = {channel: {"epoch": acks[0]["epoch"], "offset": acks[0]["offset"]}}
    for message in live[:1]:
        pub.send(message)
    conn.send({"type": "subscribe", "id": "r", "channel": channel, "from": start})
    for message in live[1:]:
        pub.send(message)
    last = [_reply(pub, m["id"], "ack") for m in live][-1]
    events = conn.wait_events(
        lambda e: e["channel"] == channel and e["offset"] <= last["offset"],
        count=last["offset"] - acks[0]["offset"],
    )
    offsets = [e["offset"] for e in events]
    assert offsets == list(range(acks[0]["offset"] + 1, last["offset"] + 1)), offsets
    reply_index = next(i for i, f in enumerate(conn.frames) if f.get("id") == "r")
    assert all(conn.frames.index(e) > reply_index for e in events)


# -- 5.4 unsubscribe -------------------------------------------------------------------------------


@pytest.mark.requirement("UNI-SUB-12")
@pytest.mark.parametrize("pattern", ["tasks.42", "tasks.>", "*", "$me", "$me.>"])
def test_server_confirms_unsubscribe_with_reason_requested(
    user: User, names: Names, pattern: str
) -> None:
    conn = user(names.tenant(), names.user())
    conn.subscribe(pattern)
    reply = _unsub(conn, pattern, "un-1")
    assert reply == {
        **reply,
        "type": "unsubscribed",
        "id": "un-1",
        "channel": pattern,
        "reason": "requested",
    }, reply
    assert _sub(conn, pattern)["type"] == "subscribed", "the pattern is still active"


@pytest.mark.requirement("UNI-TR-27", "UNI-TR-26", "UNI-SUB-12", "UNI-SUB-14")
@pytest.mark.parametrize("resume", [False, True], ids=["plain", "resuming"])
def test_server_answers_a_pipelined_subscribe_then_unsubscribe_in_order(
    user: User, names: Names, resume: bool
) -> None:
    """An ``unsubscribe`` sent right behind its ``subscribe`` (before ``subscribed`` arrived)
    is processed after it: ``subscribed``, then ``unsubscribed``, then no event of it."""
    tenant, base = names.tenant(), names.channel()
    channel, fence = f"{base}.x", f"{base}.fence"
    alice, bob = user(tenant, names.user(0)), user(tenant, names.user(1))
    ack = alice.publish(channel)
    bob.subscribe(fence)
    message: Frame = {"type": "subscribe", "id": "s-pipe", "channel": channel}
    if resume:
        message["from"] = {channel: {"epoch": ack["epoch"], "offset": 0}}
    bob.send(message)
    bob.send({"type": "unsubscribe", "id": "u-pipe", "channel": channel})
    first = bob.expect(None, where=lambda f: f.get("id") in ("s-pipe", "u-pipe"))
    second = bob.expect(None, where=lambda f: f.get("id") in ("s-pipe", "u-pipe"))
    assert (first.get("type"), first.get("id")) == ("subscribed", "s-pipe"), (first, second)
    assert (second.get("type"), second.get("id")) == ("unsubscribed", "u-pipe"), (first, second)
    alice.publish(channel)
    last = alice.publish(fence)
    _arrived(bob, fence, last["offset"])
    cut = bob.frames.index(second)
    late = [f for f in bob.frames[cut:] if f.get("type") == "event" and f["channel"] == channel]
    assert late == [], f"events of {channel} after its unsubscribed: {late}"


@pytest.mark.requirement("UNI-SUB-13", "UNI-ERR-6")
def test_server_refuses_unsubscribe_of_inactive_pattern_with_not_subscribed(
    user: User, names: Names
) -> None:
    tenant, base = names.tenant(), names.channel()
    conn = user(tenant, names.user(0))
    pub = user(tenant, names.user(1))
    conn.subscribe(f"{base}.>")
    for pattern in (f"{base}.a", f"{base}.*", ">", f"{base}", f"{base}.>.", "$me"):
        reply = _unsub(conn, pattern, "nu")
        expected = "invalid_channel" if pattern.endswith(".") else "not_subscribed"
        assert reply.get("code") == expected and reply.get("id") == "nu", (pattern, reply)
    ack = pub.publish(f"{base}.a")
    conn.wait_events(lambda e: e["offset"] == ack["offset"] and e["channel"] == f"{base}.a")
    conn.unsubscribe(f"{base}.>")
    assert _unsub(conn, f"{base}.>").get("code") == "not_subscribed", "unsubscribed twice"


@pytest.mark.requirement("UNI-SUB-14")
def test_server_delivers_nothing_for_a_subscription_after_unsubscribed(
    user: User, names: Names
) -> None:
    tenant, channel = names.tenant(), names.channel()
    conn = user(tenant, names.user(0))
    pub = user(tenant, names.user(1))
    assert pub.welcome is not None
    conn.subscribe(channel)
    conn.subscribe(">", filter=FENCE_FILTER)
    count = max(2, int(pub.welcome["limits"]["publish_rate"]["burst"]) - 5)
    messages = [pub.publish_message(channel, id=f"f{i}") for i in range(count)]
    for message in messages[: count // 2]:
        pub.send(message)
    conn.send({"type": "unsubscribe", "id": "stop", "channel": channel})
    for message in messages[count // 2 :]:
        pub.send(message)
    for message in messages:
        _reply(pub, message["id"], "ack")
    _reply(conn, "stop", "unsubscribed")
    for _ in range(2):  # published after the reply: none may arrive, whatever the timing
        pub.publish(channel)
    fence = pub.publish(channel, FENCE)
    conn.wait_events(lambda e: e["offset"] == fence["offset"] and e["channel"] == channel)
    stop = next(i for i, f in enumerate(conn.frames) if f.get("id") == "stop")
    late = [
        f
        for f in conn.frames[stop:]
        if f.get("type") == "event" and f["channel"] == channel and f["event"] != FENCE
    ]
    assert late == [], f"{len(late)} event(s) after unsubscribed: {late[:2]}"


# -- 5.5 filters -----------------------------------------------------------------------------------


def _filter_cases() -> list[dict[str, Any]]:
    data = json.loads((VECTORS_DIR / "filters.json").read_text(encoding="utf-8"))
    cases: list[dict[str, Any]] = data["cases"]
    return cases


def _nodes(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + sum(_nodes(v) for v in value.values())
    if isinstance(value, list):
        return sum(_nodes(v) for v in value)
    return 0


def _prefixed(node: Any) -> Any:
    """Prefix the string operands compared with ``$event`` (see the module docstring)."""
    if not isinstance(node, dict) or len(node) != 1:
        return node
    ((op, arg),) = node.items()
    if op in ("and", "or") and isinstance(arg, list):
        return {op: [_prefixed(item) for item in arg]}
    if op == "not":
        return {op: _prefixed(arg)}
    if isinstance(arg, list) and len(arg) == 2 and arg[0] == "$event":
        value = arg[1]
        if isinstance(value, str):
            return {op: ["$event", TYPE_PREFIX + value]}
        if isinstance(value, list):
            items = [TYPE_PREFIX + v if isinstance(v, str) else v for v in value]
            return {op: ["$event", items]}
    return node


def _build(nodes: int) -> Frame:
    """A valid filter of exactly ``nodes`` nodes and logarithmic depth."""
    if nodes == 1:
        return {"exists": "a"}
    rest = nodes - 1
    width = min(16, rest)
    sizes = [rest // width + (1 if i < rest % width else 0) for i in range(width)]
    return {"or": [_build(size) for size in sizes]}


def _chain(depth: int) -> Frame:
    node: Frame = {"exists": "a"}
    for _ in range(depth - 1):
        node = {"not": node}
    return node


@pytest.mark.requirement("UNI-SUB-17", "UNI-SUB-18", "UNI-SUB-6")
def test_server_refuses_invalid_vector_filters_with_invalid_filter(
    user: User, names: Names, server_info: ServerInfo
) -> None:
    conn = user(names.tenant(), names.user())
    limit = int(server_info.limits["max_filter_nodes"])
    channel = names.channel()
    checked = 0
    for index, case in enumerate(_filter_cases()):
        nodes = _nodes(case["input"]["filter"])
        valid = case["expected"]["valid"]
        if not valid and nodes > 32 and limit >= nodes:
            continue  # invalid only under the default limit of 32 nodes
        if valid and nodes <= limit:
            continue
        reply = _sub(conn, channel, f"f{index}", filter=case["input"]["filter"])
        assert reply.get("code") == "invalid_filter", f"{case['description']}: {reply}"
        checked += 1
    assert checked >= 30
    assert _sub(conn, channel)["type"] == "subscribed", "a refused filter created a subscription"


INVALID_FILTERS: list[tuple[str, Any]] = [
    ("two-operators", {"eq": ["a", 1], "exists": "a"}),
    ("unknown-operator", {"like": ["a", "x%"]}),
    ("and-empty", {"and": []}),
    ("and-17", {"and": [{"exists": "a"}] * 17}),
    ("or-not-list", {"or": {"exists": "a"}}),
    ("in-33", {"in": ["a", list(range(33))]}),
    ("in-empty", {"in": ["a", []]}),
    ("lt-string", {"lt": ["a", "5"]}),
    ("gte-bool", {"gte": ["a", False]}),
    ("eq-object", {"eq": ["a", {"x": 1}]}),
    ("field-uppercase", {"eq": ["A", 1]}),
    ("field-33-chars", {"eq": ["a" * 33, 1]}),
    ("field-dollar", {"exists": "$data"}),
    ("not-list", {"not": [{"exists": "a"}]}),
    ("nested-invalid", {"and": [{"exists": "a"}, {"or": [{"exists": "b"}, {"eq": ["c"]}]}]}),
    ("number-filter", 7),
    ("empty-object", {}),
]


@pytest.mark.requirement("UNI-SUB-17")
@pytest.mark.parametrize(
    "filter_", [f for _, f in INVALID_FILTERS], ids=[n for n, _ in INVALID_FILTERS]
)
def test_server_refuses_malformed_filter_with_invalid_filter(
    user: User, names: Names, filter_: Any
) -> None:
    conn = user(names.tenant(), names.user())
    reply = _sub(conn, names.channel(), "bad", filter=filter_)
    assert reply.get("code") in ("invalid_filter",) or (
        not isinstance(filter_, dict) and reply.get("code") == "invalid_message"
    ), reply


@pytest.mark.requirement("UNI-SUB-18", "UNI-LC-12")
def test_server_accepts_filter_at_max_filter_nodes_and_refuses_one_more(
    user: User, names: Names
) -> None:
    conn = user(names.tenant(), names.user())
    assert conn.welcome is not None
    limit = int(conn.welcome["limits"]["max_filter_nodes"])
    at, over = _build(limit), _build(limit + 1)
    assert _nodes(at) == limit and _nodes(over) == limit + 1
    assert _sub(conn, names.channel(), "at", filter=at)["type"] == "subscribed"
    reply = _sub(conn, names.channel(), "over", filter=over)
    assert reply.get("code") == "invalid_filter", reply


@pytest.mark.requirement("UNI-SUB-18")
def test_server_accepts_filter_depth_8_and_refuses_depth_9(user: User, names: Names) -> None:
    conn = user(names.tenant(), names.user())
    assert conn.welcome is not None
    if int(conn.welcome["limits"]["max_filter_nodes"]) >= 8:
        assert _sub(conn, names.channel(), "d8", filter=_chain(8))["type"] == "subscribed"
    reply = _sub(conn, names.channel(), "d9", filter=_chain(9))
    assert reply.get("code") == "invalid_filter", reply


@pytest.mark.requirement("UNI-SUB-19")
@pytest.mark.parametrize(
    ("filter_", "pointer"),
    [
        ({"and": [{"exists": "a"}, {"bogus": 1}]}, "/filter/and/1"),
        ({"not": {"eq": ["a"]}}, "/filter/not"),
        (
            {"or": [{"exists": "a"}, {"and": [{"exists": "b"}, {"lt": ["c", "x"]}]}]},
            "/filter/or/1/and/1",
        ),
    ],
)
def test_invalid_filter_error_points_at_the_first_offending_node(
    user: User, names: Names, filter_: Frame, pointer: str
) -> None:
    conn = user(names.tenant(), names.user())
    reply = _sub(conn, names.channel(), "ptr", filter=filter_)
    assert reply.get("code") == "invalid_filter", reply
    assert reply.get("details", {}).get("pointer") == pointer, reply


@pytest.mark.requirement("UNI-SUB-20")
def test_server_delivers_exactly_the_events_vector_filters_select(
    user: User, names: Names, server_info: ServerInfo
) -> None:
    tenant = names.tenant()
    limits = server_info.limits
    cases = [
        c
        for c in _filter_cases()
        if c["expected"]["valid"]
        and _nodes(c["input"]["filter"]) <= int(limits["max_filter_nodes"])
        and len(c["input"]["event"].get("attrs", {})) <= int(limits["max_attrs"])
    ]
    per_conn = max(1, int(limits["max_subscriptions"]) - 1)
    publishers = Publishers(user, names, tenant)
    plan: list[tuple[Conn, str, dict[str, Any]]] = []
    for start in range(0, len(cases), per_conn):
        conn = user(tenant, names.user(start))
        conn.subscribe(">", filter=FENCE_FILTER)
        for offset, case in enumerate(cases[start : start + per_conn]):
            channel = f"f{start + offset}"
            conn.subscribe(channel, filter=_prefixed(case["input"]["filter"]))
            plan.append((conn, channel, case))
    acks = {}
    for _conn, channel, case in plan:
        event = case["input"]["event"]
        attrs = event.get("attrs")
        extra = {"attrs": attrs} if attrs is not None else {}
        acks[channel] = publishers.publish(channel, TYPE_PREFIX + event["event"], **extra)
    wrong = []
    for conn, channel, case in plan:
        fence = publishers.publish(channel, FENCE)
        _arrived(conn, channel, fence["offset"])
        got = [e for e in conn.events(channel) if e["offset"] == acks[channel]["offset"]]
        if len(got) != (1 if case["expected"]["result"] else 0):
            wrong.append(
                f"{case['description']}: expected {case['expected']['result']}, received {len(got)}"
            )
    assert not wrong, "\n".join(wrong)
    assert len(plan) >= 40
