"""Transport and versioning (spec section 1): handshake, framing, classification, replies.

Every check here talks to the server only through its WebSocket endpoint. Malformed input is
sent raw (``Conn.send`` with a string, ``Conn.ws.send`` for bytes) so that nothing on the
client side repairs it first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from unisock_conformance.checks.conftest import Connect, User
from unisock_conformance.deployment import Deployment, Names
from unisock_conformance.wire import PROTOCOL, Conn, HandshakeRefused, open_conn

Frame = dict[str, Any]

MAX_SAFE_INTEGER = 9_007_199_254_740_991
SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:[-+][0-9A-Za-z.+-]*)?")


def _serves(user: User, names: Names) -> None:
    """A fresh connection still gets ``welcome`` and a reply (UNI-SEC-13)."""
    fresh = user(names.tenant(90), names.user(90))
    assert fresh.welcome is not None
    pong = fresh.request({"type": "ping", "id": "alive"})
    assert pong["type"] == "pong", pong


def _ping(conn: Conn, ident: str = "fence") -> None:
    """Round trip proving the connection is open and processed everything sent before."""
    reply = conn.request({"type": "ping", "id": ident})
    assert reply["type"] == "pong", f"expected pong for ping {ident!r}, got {reply}"


def _refused(deployment: Deployment, subprotocols: tuple[str, ...] | None) -> HandshakeRefused:
    try:
        conn = open_conn(
            deployment.url,
            name="handshake",
            subprotocols=subprotocols,
            origin=deployment.origin,
            headers=deployment.headers,
            timeout=deployment.timeout(),
        )
    except HandshakeRefused as refused:
        return refused
    try:
        pytest.fail(
            f"the server completed the handshake (selected {conn.subprotocol!r}) for an offer "
            f"of {subprotocols!r}; expected HTTP 400 and no upgrade"
        )
    finally:
        conn.close()


def _integers(value: Any, path: str = "") -> Iterator[tuple[str, int]]:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _integers(item, f"{path}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _integers(item, f"{path}/{index}")


# -- 1.2 handshake ---------------------------------------------------------------------------------


@pytest.mark.requirement("UNI-TR-3")
@pytest.mark.parametrize(
    "offer",
    [(PROTOCOL,), ("unisock.v2", PROTOCOL), (PROTOCOL, "chat.v3"), ("chat.v3", PROTOCOL)],
    ids=["only-v1", "v2-then-v1", "v1-then-other", "other-then-v1"],
)
def test_server_selects_unisock_v1_when_offered(connect: Connect, offer: tuple[str, ...]) -> None:
    conn = connect(subprotocols=offer, hello=False)
    assert conn.subprotocol == PROTOCOL, f"offer {offer!r} selected {conn.subprotocol!r}"


@pytest.mark.requirement("UNI-TR-4")
@pytest.mark.parametrize(
    "offer",
    [("chat.v3",), ("unisock.v2",), ("Unisock.V1",), None],
    ids=["other-protocol", "unknown-major", "wrong-case", "no-header"],
)
def test_server_refuses_handshake_without_unisock_v1_with_http_400(
    deployment: Deployment, offer: tuple[str, ...] | None
) -> None:
    refused = _refused(deployment, offer)
    assert refused.status == 400, f"offer {offer!r}: expected HTTP 400, got {refused.status}"


@pytest.mark.requirement("UNI-TR-7")
def test_welcome_names_selected_protocol_and_spec_version(user: User, names: Names) -> None:
    conn = user(names.tenant(), names.user())
    assert conn.welcome is not None
    assert conn.welcome["protocol"] == conn.subprotocol == PROTOCOL
    version = conn.welcome["spec_version"]
    assert isinstance(version, str) and SEMVER.fullmatch(version), version
    assert version.split(".")[0] == "1", f"spec_version {version!r} has a major other than 1"


# -- 1.4 framing -----------------------------------------------------------------------------------


@pytest.mark.requirement("UNI-TR-9", "UNI-TR-15")
def test_server_sends_single_json_objects_with_safe_integers(user: User, names: Names) -> None:
    """Every frame is checked on arrival (text, one JSON object, schema); integers here."""
    tenant, channel = names.tenant(), names.channel()
    sub = user(tenant, names.user(0))
    pub = user(tenant, names.user(1))
    sub.subscribe(channel)
    sub.subscribe(names.channel() + ".*")
    ack = pub.publish(channel, data={"n": 1, "big": MAX_SAFE_INTEGER})
    sub.wait_events(lambda e: e.get("offset") == ack["offset"] and e["channel"] == channel)
    sub.send("not json")
    sub.expect("error")
    _ping(sub)
    frames = sub.frames + pub.frames
    assert len(frames) >= 6
    for frame in frames:
        assert isinstance(frame, dict), frame
        for path, number in _integers(frame):
            if frame.get("type") == "event" and path.startswith("/data"):
                continue  # application data, not a field the specification defines
            assert -MAX_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER, (frame["type"], path, number)


@pytest.mark.requirement("UNI-TR-11", "UNI-SEC-13")
@pytest.mark.parametrize("state", ["awaiting_hello", "open"])
@pytest.mark.parametrize(
    "payload",
    [b"\x00\x01\x02", b'{"type":"ping","id":"b1"}'],
    ids=["bytes", "json-in-binary"],
)
def test_server_closes_1003_on_binary_message(
    connect: Connect,
    user: User,
    deployment: Deployment,
    names: Names,
    state: str,
    payload: bytes,
) -> None:
    conn = user(names.tenant(), names.user()) if state == "open" else connect(hello=False)
    conn.send_bytes(payload)
    code, _reason = conn.expect_close()
    assert code == 1003, f"binary message in {state}: closed with {code}, expected 1003"
    assert all(frame.get("type") != "pong" for frame in conn.frames), "binary frame processed"
    _serves(user, names)


@pytest.mark.requirement("UNI-TR-11")
def test_server_closes_1003_on_binary_hello(
    connect: Connect, deployment: Deployment, names: Names
) -> None:
    """A valid ``hello`` sent as a binary message is not a hello: no welcome follows."""
    conn = connect(hello=False)
    token = deployment.mint(names.tenant(), names.user())
    conn.send_bytes(json.dumps({"type": "hello", "token": token}).encode())
    code, _reason = conn.expect_close()
    assert code == 1003, f"closed with {code}, expected 1003"
    assert conn.frames == [], f"server answered a binary hello: {conn.frames}"


@pytest.mark.requirement("UNI-TR-13", "UNI-SEC-13")
@pytest.mark.parametrize("state", ["awaiting_hello", "open"])
@pytest.mark.parametrize(
    "payload",
    [
        b'{"type":"ping","id":"u1","nonce":"\xff"}',
        b'{"type":"ping","id":"u1","nonce":"\xc3"}',
        b'{"type":"ping","id":"u1","nonce":"\xed\xa0\x80"}',
        b'{"type":"ping","id":"u1","nonce":"\xc0\xae"}',
    ],
    ids=["invalid-byte", "truncated-sequence", "encoded-surrogate", "overlong-dot"],
)
def test_server_closes_1007_on_invalid_utf8_text(
    connect: Connect,
    user: User,
    names: Names,
    state: str,
    payload: bytes,
) -> None:
    conn = user(names.tenant(), names.user()) if state == "open" else connect(hello=False)
    conn.ws.send(payload, text=True)
    code, _reason = conn.expect_close()
    assert code == 1007, f"invalid UTF-8 in {state}: closed with {code}, expected 1007"
    assert all(frame.get("type") != "pong" for frame in conn.frames), "invalid UTF-8 processed"
    _serves(user, names)


# -- 1.5 classification ----------------------------------------------------------------------------


@pytest.mark.requirement("UNI-TR-16", "UNI-TR-25", "UNI-ERR-5")
@pytest.mark.parametrize(
    "text",
    [
        '{"type":"subscribe",',
        "not json",
        "",
        '{"type":"ping","id":"n1"} {"type":"ping"}',
        '{"type":"ping","id":"n1","nonce":NaN}',
        '{"type":"ping","id":"n1","nonce":Infinity}',
        "{'type':'ping','id':'n1'}",
        '{"type":"ping","id":"n1",}',
    ],
    ids=[
        "truncated",
        "bare-words",
        "empty",
        "two-objects",
        "nan-literal",
        "infinity-literal",
        "single-quotes",
        "trailing-comma",
    ],
)
def test_server_answers_non_json_with_invalid_json_and_stays_open(
    user: User, names: Names, text: str
) -> None:
    conn = user(names.tenant(), names.user())
    conn.send(text)
    error = conn.expect("error")
    assert error["code"] == "invalid_json", error
    assert "id" not in error, f"an id was echoed although none is readable: {error}"
    _ping(conn)
    assert not [f for f in conn.unmatched if f.get("type") not in ("ping",)], conn.unmatched


@pytest.mark.requirement("UNI-TR-17", "UNI-TR-25", "UNI-ERR-5")
@pytest.mark.parametrize(
    ("text", "echo"),
    [
        ("[]", None),
        ('[{"type":"ping","id":"x1"}]', None),
        ("42", None),
        ('"ping"', None),
        ("null", None),
        ("true", None),
        ("{}", None),
        ('{"id":"x1"}', "x1"),
        ('{"type":5,"id":"x1"}', "x1"),
        ('{"type":null,"id":"x1"}', "x1"),
        ('{"type":["ping"],"id":"x1"}', "x1"),
        ('{"type":{"name":"ping"},"id":"x1"}', "x1"),
    ],
    ids=[
        "array",
        "array-of-message",
        "number",
        "string",
        "null",
        "boolean",
        "empty-object",
        "no-type",
        "numeric-type",
        "null-type",
        "array-type",
        "object-type",
    ],
)
def test_server_answers_non_message_json_with_invalid_message(
    user: User, names: Names, text: str, echo: str | None
) -> None:
    conn = user(names.tenant(), names.user())
    conn.send(text)
    error = conn.expect("error")
    assert error["code"] == "invalid_message", error
    assert error.get("id") == echo, f"expected id {echo!r}, got {error}"
    _ping(conn)


@pytest.mark.requirement("UNI-TR-18", "UNI-TR-25", "UNI-ERR-5")
@pytest.mark.parametrize(
    "message",
    [
        {"type": "presence_query", "id": "q7", "channel": "tasks.42"},
        {"type": "Subscribe", "id": "q7", "channel": "tasks.42"},
        {"type": "", "id": "q7"},
        {"type": "hello ", "id": "q7", "token": "x.y.z"},
    ],
    ids=["future-type", "wrong-case", "empty-type", "trailing-space"],
)
def test_server_answers_unknown_type_with_unknown_type_and_stays_open(
    user: User, names: Names, message: Frame
) -> None:
    conn = user(names.tenant(), names.user())
    error = conn.request(message)
    assert error["type"] == "error" and error["code"] == "unknown_type", error
    _ping(conn)


@pytest.mark.requirement("UNI-TR-18")
def test_server_answers_unknown_type_without_id_without_id(user: User, names: Names) -> None:
    conn = user(names.tenant(), names.user())
    conn.send({"type": "presence"})
    error = conn.expect("error")
    assert error["code"] == "unknown_type" and "id" not in error, error
    _ping(conn)


SCHEMA_INVALID: list[tuple[str, Frame]] = [
    ("subscribe-no-channel", {"type": "subscribe", "id": "v1"}),
    ("subscribe-numeric-channel", {"type": "subscribe", "id": "v1", "channel": 42}),
    ("subscribe-null-channel", {"type": "subscribe", "id": "v1", "channel": None}),
    ("subscribe-no-id", {"type": "subscribe", "channel": "tasks"}),
    ("subscribe-numeric-id", {"type": "subscribe", "id": 7, "channel": "tasks"}),
    ("subscribe-empty-id", {"type": "subscribe", "id": "", "channel": "tasks"}),
    ("subscribe-string-since", {"type": "subscribe", "id": "v1", "channel": "t", "since": "x"}),
    ("subscribe-array-from", {"type": "subscribe", "id": "v1", "channel": "t", "from": []}),
    ("unsubscribe-no-channel", {"type": "unsubscribe", "id": "v1"}),
    (
        "publish-no-id",
        {"type": "publish", "channel": "t", "event": "a.b", "data": 1, "message_id": "m"},
    ),
    (
        "publish-no-message-id",
        {"type": "publish", "id": "v1", "channel": "t", "event": "a.b", "data": 1},
    ),
    (
        "publish-no-data",
        {"type": "publish", "id": "v1", "channel": "t", "event": "a.b", "message_id": "m"},
    ),
    (
        "publish-bad-event-name",
        {
            "type": "publish",
            "id": "v1",
            "channel": "t",
            "event": "Task Updated",
            "data": 1,
            "message_id": "m",
        },
    ),
    ("refresh-no-token", {"type": "refresh", "id": "v1"}),
    ("refresh-not-jws", {"type": "refresh", "id": "v1", "token": "not-a-jwt"}),
    ("ping-numeric-nonce", {"type": "ping", "id": "v1", "nonce": 5}),
    ("ping-long-nonce", {"type": "ping", "id": "v1", "nonce": "n" * 65}),
    ("server-type-welcome", {"type": "welcome", "id": "v1"}),
    ("server-type-event", {"type": "event", "id": "v1", "channel": "t"}),
    ("server-type-error", {"type": "error", "id": "v1", "code": "x", "message": "y"}),
]


@pytest.mark.requirement("UNI-TR-19", "UNI-TR-25", "UNI-ERR-5")
@pytest.mark.parametrize(
    "message", [m for _, m in SCHEMA_INVALID], ids=[n for n, _ in SCHEMA_INVALID]
)
def test_server_answers_schema_invalid_message_with_invalid_message(
    user: User, names: Names, message: Frame
) -> None:
    conn = user(names.tenant(), names.user())
    conn.send(message)
    error = conn.expect("error")
    assert error["code"] == "invalid_message", error
    ident = message.get("id")
    readable = isinstance(ident, str) and 1 <= len(ident) <= 64
    if readable:
        assert error.get("id") == ident, f"readable id not echoed: {error}"
    else:
        assert "id" not in error, f"unreadable id echoed: {error}"
    _ping(conn)


@pytest.mark.requirement("UNI-TR-19", "UNI-ERR-6")
def test_server_applies_no_part_of_a_schema_invalid_subscribe(user: User, names: Names) -> None:
    tenant, channel = names.tenant(), names.channel()
    conn = user(tenant, names.user(0))
    pub = user(tenant, names.user(1))
    bad = {"type": "subscribe", "id": "bad", "channel": channel, "since": "yesterday"}
    assert conn.request(bad)["code"] == "invalid_message"
    # Not subscribed: a new subscribe is accepted, not refused as already_subscribed ...
    conn.subscribe(channel, id="good")
    conn.unsubscribe(channel)
    # ... and nothing published before reaches the connection through the refused request.
    other = names.channel()
    conn.subscribe(other)
    pub.publish(channel)
    conn.assert_no_frame(
        "event", lambda: pub.publish(other), where=lambda f: f.get("channel") == channel
    )


# -- 1.6 unknown members ---------------------------------------------------------------------------


@pytest.mark.requirement("UNI-TR-20")
def test_server_ignores_unknown_members_of_client_messages(
    connect: Connect, deployment: Deployment, names: Names
) -> None:
    tenant, channel = names.tenant(), names.channel()
    conn = connect(hello=False)
    token = deployment.mint(tenant, names.user(), subscribe=(">",), publish=(">",))
    conn.hello(token, priority="high", client={"name": "c", "version": "1", "extra": [1]})
    reply = conn.request(
        {"type": "subscribe", "id": "s1", "channel": channel, "priority": "high", "v2": {"a": 1}}
    )
    assert reply["type"] == "subscribed" and reply["channel"] == channel, reply
    message = conn.publish_message(channel, data={"k": 1})
    message["future_field"] = {"nested": True}
    ack = conn.request(message)
    assert ack["type"] == "ack", ack
    event = conn.wait_events(lambda e: e.get("offset") == ack["offset"])[0]
    assert event["data"] == {"k": 1}
    pong = conn.request({"type": "ping", "id": "k1", "nonce": "n", "extra": 1})
    assert pong["type"] == "pong" and pong.get("nonce") == "n", pong
    reply = conn.request({"type": "unsubscribe", "id": "u1", "channel": channel, "x": None})
    assert reply["type"] == "unsubscribed", reply


# -- 1.7 request ids and replies -------------------------------------------------------------------


@pytest.mark.requirement("UNI-TR-25")
@pytest.mark.parametrize(
    "ident",
    ["a", "x" * 64, "\U0001f680" * 64, "id with spaces", 'é"\\/'],
    ids=["one-char", "64-ascii", "64-code-points", "spaces", "escapes"],
)
def test_server_echoes_readable_id_unchanged(user: User, names: Names, ident: str) -> None:
    conn = user(names.tenant(), names.user())
    pong = conn.request({"type": "ping", "id": ident})
    assert pong["type"] == "pong" and pong["id"] == ident, pong
    error = conn.request({"type": "subscribe", "id": ident, "channel": "Bad"})
    assert error["type"] == "error" and error["id"] == ident, error


@pytest.mark.requirement("UNI-TR-25")
@pytest.mark.parametrize(
    "ident", ["y" * 65, "", 17, None, ["r1"]], ids=["65-chars", "empty", "number", "null", "array"]
)
def test_server_omits_unreadable_id_from_error(user: User, names: Names, ident: Any) -> None:
    conn = user(names.tenant(), names.user())
    conn.send({"type": "subscribe", "id": ident, "channel": names.channel()})
    error = conn.expect("error")
    assert error["code"] == "invalid_message", error
    assert "id" not in error, f"unreadable id {ident!r} echoed: {error}"
    _ping(conn)


@pytest.mark.requirement("UNI-TR-26", "UNI-TR-27")
def test_server_answers_each_request_exactly_once_in_order(user: User, names: Names) -> None:
    tenant = names.tenant()
    conn = user(tenant, names.user(), subscribe=("a.>",), publish=("a.>",))
    a, b = f"a.{names.channel()}", f"a.{names.channel()}"
    requests: list[Frame] = [
        {"type": "subscribe", "id": "q1", "channel": a},
        {"type": "subscribe", "id": "q2", "channel": a},
        {"type": "unsubscribe", "id": "q3", "channel": a},
        {"type": "unsubscribe", "id": "q4", "channel": a},
        {"type": "subscribe", "id": "q5", "channel": a},
        conn.publish_message(b, id="q6"),
        conn.publish_message("z.forbidden", id="q7"),
        {"type": "subscribe", "id": "q8", "channel": "zz"},
        {"type": "unsubscribe", "id": "q9", "channel": "Bad"},
        {"type": "refresh", "id": "q10", "token": "a.b.c"},
        {"type": "ping", "id": "q11"},
    ]
    for message in requests:
        conn.send(message)
    conn.expect("pong", where=lambda f: f.get("id") == "q11")
    replies = [f for f in conn.frames if "id" in f and f.get("type") != "ping"]
    ids = [f["id"] for f in replies]
    assert ids == [m["id"] for m in requests], f"replies out of order or repeated: {ids}"
    kinds = [f["type"] if f["type"] != "error" else f["code"] for f in replies]
    assert kinds[:5] == [
        "subscribed",
        "already_subscribed",
        "unsubscribed",
        "not_subscribed",
        "subscribed",
    ], f"effects not applied in arrival order: {kinds}"
    assert kinds[5] == "ack" and kinds[6] == "forbidden" and kinds[7] == "forbidden", kinds
    assert kinds[8] == "invalid_channel", kinds
    assert kinds[9] in ("token_invalid", "invalid_message"), kinds


@pytest.mark.requirement("UNI-TR-27")
def test_server_applies_pipelined_requests_in_arrival_order(user: User, names: Names) -> None:
    tenant, channel = names.tenant(), names.channel()
    conn = user(tenant, names.user())
    for index in range(10):
        kind = "subscribe" if index % 2 == 0 else "unsubscribe"
        conn.send({"type": kind, "id": f"o{index}", "channel": channel})
    conn.send(conn.publish_message(channel, id="o-pub"))
    conn.send({"type": "ping", "id": "o-end"})
    conn.expect("pong", where=lambda f: f.get("id") == "o-end")
    replies = [f for f in conn.frames if str(f.get("id", "")).startswith("o")]
    expected = ["subscribed", "unsubscribed"] * 5
    assert [f["type"] for f in replies[:10]] == expected, [f.get("type") for f in replies]
    assert replies[10]["type"] == "ack", replies[10]
    assert not conn.events(channel), "event delivered after the last unsubscribe was processed"


@pytest.mark.requirement("UNI-TR-27", "UNI-PUB-25")
def test_server_sequences_and_answers_a_burst_of_publishes_in_arrival_order(
    user: User, names: Names
) -> None:
    # Publishes sent without waiting, as a backend publisher sends them: a server that hands
    # them to its store together must still sequence and answer them in arrival order, and a
    # subscribe among them takes effect after the earlier ones and before the later ones.
    channel = names.channel()
    conn = user(names.tenant(), names.user())
    assert conn.welcome is not None
    burst = int(conn.welcome["limits"]["publish_rate"]["burst"])
    count = max(4, min(24, burst - 1))  # within one bucket where the deployment allows it
    half = count // 2
    sent: list[str] = []
    for index in range(count):
        if index == half:
            conn.send({"type": "subscribe", "id": "b-sub", "channel": channel})
            sent.append("b-sub")
        conn.send(conn.publish_message(channel, data={"n": index}, id=f"b{index}"))
        sent.append(f"b{index}")
    conn.send({"type": "ping", "id": "b-end"})
    conn.expect("pong", where=lambda f: f.get("id") == "b-end")
    replies = {f["id"]: f for f in conn.frames if f.get("id") in sent}
    order = [f["id"] for f in conn.frames if f.get("id") in sent]
    assert order == sent, f"replies out of arrival order: {order}"
    acks = [replies[f"b{index}"] for index in range(count)]
    assert all(a["type"] == "ack" for a in acks), [a.get("code", a["type"]) for a in acks]
    offsets = [a["offset"] for a in acks]
    assert offsets == list(range(offsets[0], offsets[0] + count)), (
        f"a burst on one channel was not sequenced in arrival order: {offsets}"
    )
    subscribed = replies["b-sub"]
    assert subscribed["type"] == "subscribed", subscribed
    assert subscribed["position"]["offset"] == offsets[half - 1], (
        f"the subscribe did not start after the {half} publishes before it: {subscribed}"
    )
    # Events of one channel arrive in offset order (UNI-DEL-14): once the last is here, any
    # event of an earlier publish that the subscription wrongly delivered is here too.
    conn.wait_events(lambda e: e.get("channel") == channel and e["offset"] == offsets[-1])
    delivered = [e["offset"] for e in conn.events(channel)]
    assert delivered == offsets[half:], (
        f"the subscription's events are not exactly the publishes after it: {delivered}"
    )


@pytest.mark.requirement("UNI-TR-28")
def test_server_sends_events_and_notifications_without_id(
    user: User, deployment: Deployment, names: Names
) -> None:
    tenant, channel = names.tenant(), names.channel()
    sub = user(tenant, names.user(0), subscribe=(f"{channel}.>",), publish=(f"{channel}.>",))
    pub = user(tenant, names.user(1))
    a, b = f"{channel}.a", f"{channel}.b"
    sub.subscribe(a, id="sa")
    sub.subscribe(b, id="sb")
    ack = pub.publish(a, id="pa")
    event = sub.wait_events(lambda e: e["channel"] == a and e["offset"] == ack["offset"])[0]
    assert "id" not in event, event
    # A resume position ahead of the head yields a gap, which is not a reply either.
    sub.unsubscribe(a)
    sub.subscribe(a, from_={a: {"epoch": ack["epoch"], "offset": ack["offset"] + 5}}, id="sg")
    gap = sub.expect("gap", where=lambda f: f.get("channel") == a)
    assert "id" not in gap, gap
    # A refresh that narrows the grants revokes ``b`` with an unsubscribed without id.
    narrowed = deployment.mint(tenant, names.user(0), subscribe=(a,), publish=(a,))
    sub.send({"type": "refresh", "id": "rf", "token": narrowed})
    revoked = sub.expect("unsubscribed", where=lambda f: f.get("reason") == "revoked")
    assert revoked["channel"] == b and "id" not in revoked, revoked
    sub.expect("refreshed", where=lambda f: f.get("id") == "rf")
