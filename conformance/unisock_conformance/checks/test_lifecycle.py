"""Session lifecycle (spec section 2): authentication deadline, invalid first messages,
``welcome`` contents, a second ``hello``, and what survives a close.

Timer checks wait for the server's announced deadline only when it fits the profile's budget
(quick: 3 s, full: 30 s); otherwise they are skipped as not run, with the reason.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest

from unisock_conformance.checks.conftest import Connect, User
from unisock_conformance.deployment import (
    Deployment,
    Names,
    ServerInfo,
    not_applicable,
)
from unisock_conformance.timing import require_time
from unisock_conformance.wire import FrameTimeout

Frame = dict[str, Any]


def _late(deployment: Deployment, seconds: float) -> float:
    """Allowance for scheduling delay after a timer of ``seconds`` (section 14)."""
    return deployment.timeout(max(0.3, 0.25 * seconds))


def _serves(user: User, names: Names) -> None:
    fresh = user(names.tenant(90), names.user(90))
    assert fresh.request({"type": "ping", "id": "alive"})["type"] == "pong"


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def _forged(token: str) -> str:
    """The token with its signature's first character changed: it no longer verifies."""
    header, payload, signature = token.split(".")
    first = "A" if signature[0] != "A" else "B"
    return f"{header}.{payload}.{first}{signature[1:]}"


# -- 2.2 connect and authenticate ------------------------------------------------------------------


@pytest.mark.requirement("UNI-LC-4", "UNI-LC-5", "UNI-LC-1", "UNI-CLOSE-9")
@pytest.mark.timing
def test_server_closes_4102_when_no_hello_within_auth_timeout(
    connect: Connect, deployment: Deployment, server_info: ServerInfo
) -> None:
    timeout_s = server_info.limits["auth_timeout_ms"] / 1000
    require_time(deployment, timeout_s + _late(deployment, timeout_s), "auth_timeout_ms")
    start = time.monotonic()  # no later than the server's deadline starts
    conn = connect(hello=False)
    code, reason = conn.expect_close(timeout=timeout_s + _late(deployment, timeout_s))
    elapsed = time.monotonic() - start
    assert code == 4102, f"closed with {code} {reason!r}, expected 4102 auth_timeout"
    assert reason.split(";")[0] == "auth_timeout", reason
    assert elapsed >= timeout_s - deployment.timeout(0.1), (
        f"closed after {elapsed:.3f} s, before the announced auth_timeout_ms {timeout_s:.3f} s"
    )
    assert conn.frames == [], f"server sent messages before hello: {conn.frames}"


@pytest.mark.requirement("UNI-LC-1", "UNI-LC-4", "UNI-LC-9")
def test_server_sends_nothing_before_hello_and_accepts_hello_before_deadline(
    connect: Connect, deployment: Deployment, server_info: ServerInfo, names: Names
) -> None:
    wait = min(server_info.limits["auth_timeout_ms"] / 2000, 1.0)
    conn = connect(hello=False)
    with pytest.raises(FrameTimeout):
        frame = conn.recv(timeout=wait)
        pytest.fail(f"server sent a message in awaiting_hello: {frame}")
    welcome = conn.hello(deployment.mint(names.tenant(), names.user()))
    assert welcome["type"] == "welcome"


def _invalid_first_messages(token: str) -> list[tuple[str, str | Frame]]:
    return [
        ("not-json", "hello"),
        ("truncated-json", '{"type":"hello","token":'),
        ("array", json.dumps([{"type": "hello", "token": token}])),
        ("number", "1"),
        ("no-type", {"token": token}),
        ("ping", {"type": "ping", "id": "p1"}),
        ("subscribe", {"type": "subscribe", "id": "s1", "channel": "tasks"}),
        ("refresh", {"type": "refresh", "id": "r1", "token": token}),
        ("unknown-type", {"type": "helo", "token": token}),
        ("upper-case-type", {"type": "HELLO", "token": token}),
        ("no-token", {"type": "hello"}),
        ("numeric-token", {"type": "hello", "token": 42}),
        ("null-token", {"type": "hello", "token": None}),
        ("token-in-array", {"type": "hello", "token": [token]}),
        ("not-jws", {"type": "hello", "token": "not-a-jwt"}),
        ("two-part-token", {"type": "hello", "token": ".".join(token.split(".")[:2])}),
        ("four-part-token", {"type": "hello", "token": token + ".x"}),
        ("token-with-space", {"type": "hello", "token": " " + token}),
        ("empty-id", {"type": "hello", "id": "", "token": token}),
        ("client-not-object", {"type": "hello", "token": token, "client": "browser"}),
    ]


_FIRST_IDS = [name for name, _ in _invalid_first_messages("a.b.c")]


@pytest.mark.requirement("UNI-LC-6", "UNI-LC-1", "UNI-CLOSE-9", "UNI-SEC-13")
@pytest.mark.parametrize("case", _FIRST_IDS)
def test_server_closes_4000_when_first_message_is_not_a_valid_hello(
    connect: Connect, user: User, deployment: Deployment, names: Names, case: str
) -> None:
    token = deployment.mint(names.tenant(), names.user())
    message = dict(_invalid_first_messages(token))[case]
    conn = connect(hello=False)
    conn.send(message)
    code, reason = conn.expect_close()
    assert code == 4000, f"{case}: closed with {code} {reason!r}, expected 4000"
    assert reason.split(";")[0] == "protocol_violation", reason
    assert conn.frames == [], f"{case}: server answered before closing: {conn.frames}"
    _serves(user, names)


@pytest.mark.requirement("UNI-LC-7", "UNI-LC-1", "UNI-SEC-18", "UNI-AUTH-6")
def test_server_closes_4100_without_error_when_hello_token_is_rejected(
    connect: Connect, deployment: Deployment, names: Names
) -> None:
    conn = connect(hello=False)
    conn.send({"type": "hello", "id": "h1", "token": _forged(deployment.mint(names.tenant(), "u"))})
    code, reason = conn.expect_close()
    assert (code, reason) == (4100, "auth_failed"), (code, reason)
    assert conn.frames == [], f"server sent messages before the 4100 close: {conn.frames}"


# -- 2.3 welcome -----------------------------------------------------------------------------------

WELCOME_INTEGERS = [
    ("session", "expires_at"),
    ("heartbeat", "interval_ms"),
    ("heartbeat", "timeout_ms"),
    ("backoff", "base_ms"),
    ("backoff", "cap_ms"),
    ("backoff", "floor_ms"),
    ("backoff", "reset_after_ms"),
    ("limits", "max_message_bytes"),
    ("limits", "max_subscriptions"),
    ("limits", "max_queue"),
    ("limits", "max_connections_per_user"),
    ("limits", "auth_timeout_ms"),
    ("limits", "max_filter_nodes"),
    ("limits", "max_targets"),
    ("limits", "max_attrs"),
    ("history", "max_count"),
    ("history", "max_age_ms"),
]


@pytest.mark.requirement("UNI-LC-9")
def test_welcome_carries_every_announced_field(user: User, names: Names) -> None:
    conn = user(names.tenant(), names.user())
    welcome = conn.welcome
    assert welcome is not None
    for key in ("protocol", "spec_version", "connection_id"):
        assert isinstance(welcome.get(key), str) and welcome[key], key
    for key in ("tenant", "sub", "role"):
        assert isinstance(welcome["session"].get(key), str), f"session.{key} missing"
    for group, key in WELCOME_INTEGERS:
        value = welcome.get(group, {}).get(key)
        assert isinstance(value, int) and not isinstance(value, bool), f"{group}.{key}: {value!r}"
    rate = welcome["limits"]["publish_rate"]
    assert isinstance(rate.get("per_second"), int | float) and rate["per_second"] > 0, rate
    assert isinstance(rate.get("burst"), int) and rate["burst"] >= 1, rate
    for key in ("dedup_window_ms", "refresh_warning_ms"):
        assert isinstance(welcome.get(key), int), key
    assert isinstance(welcome.get("features"), list), welcome.get("features")
    assert all(isinstance(name, str) for name in welcome["features"])
    # A server that accepts the hello has entered ``open``: it answers requests.
    assert conn.request({"type": "ping", "id": "open"})["type"] == "pong"


@pytest.mark.requirement("UNI-LC-10", "UNI-AUTH-15")
@pytest.mark.parametrize(
    ("sid", "broadcaster"),
    [(None, False), ("tab-1", False), (None, True), ("worker-7", True)],
    ids=["user-without-sid", "user-with-sid", "broadcaster", "broadcaster-with-sid"],
)
def test_welcome_session_mirrors_the_token(
    connect: Connect,
    deployment: Deployment,
    names: Names,
    sid: str | None,
    broadcaster: bool,
) -> None:
    tenant, sub = names.tenant(), names.user()
    token = deployment.mint(tenant, sub, sid=sid, broadcaster=broadcaster, ttl_s=1800)
    claims = _claims(token)
    welcome = connect(token).welcome
    assert welcome is not None
    session = welcome["session"]
    assert session["tenant"] == tenant and session["sub"] == sub, session
    assert session["role"] == ("broadcaster" if broadcaster else "user"), session
    assert session["expires_at"] == claims["exp"], (session, claims.get("exp"))
    if sid is None:
        assert "sid" not in session, f"sid announced for a token without one: {session}"
    else:
        assert session.get("sid") == sid, session


@pytest.mark.requirement("UNI-LC-11")
def test_connection_ids_differ_between_open_connections(user: User, names: Names) -> None:
    conns = [user(names.tenant(i % 2), names.user(i)) for i in range(6)]
    conns.append(user(names.tenant(1), names.user(0)))  # same sub in the other tenant
    ids = [conn.welcome["connection_id"] for conn in conns if conn.welcome]
    assert len(ids) == len(conns) and len(set(ids)) == len(ids), ids


@pytest.mark.requirement("UNI-LC-13", "UNI-CH-16", "UNI-PUB-20")
def test_server_uses_no_optional_feature_it_did_not_announce(user: User, names: Names) -> None:
    tenant, channel = names.tenant(), names.channel()
    conn = user(tenant, names.user(0), subscribe=(">", "$sys.>"), publish=(">", "$sys.>"))
    assert conn.welcome is not None
    features = set(conn.welcome["features"])
    absent = {"coalescing", "system_namespace", "typed_events"} - features
    if not absent:
        not_applicable("the server announces every optional feature")
    sub = user(tenant, names.user(1))
    sub.subscribe(channel)
    if "system_namespace" in absent:
        reply = conn.request({"type": "subscribe", "id": "sys", "channel": "$sys.>"})
        assert reply.get("code") == "forbidden", reply
    if "typed_events" in absent:
        # Data that no reasonable schema of these names accepts: still acknowledged.
        for event in ("task.updated", "task.created", "form.submitted"):
            conn.publish(channel, event, data=[None, {"status": 5}])
    if "coalescing" in absent:
        for index in range(5):
            conn.publish(channel, data={"i": index}, key="same-key")
    fence = conn.publish(channel, "fence.event")
    assert sub.wait_events(lambda e: e["offset"] == fence["offset"])
    for frame in sub.events(channel):
        assert "coalesced" not in frame, f"coalescing used although not announced: {frame}"


# -- 2.4 a second hello ----------------------------------------------------------------------------


@pytest.mark.requirement("UNI-LC-16", "UNI-TR-25", "UNI-ERR-5", "UNI-SESS-1")
@pytest.mark.parametrize("kind", ["same-token", "other-tenant", "broader-grants", "forged"])
def test_server_answers_second_hello_with_already_authenticated(
    user: User, deployment: Deployment, names: Names, kind: str
) -> None:
    tenant, channel = names.tenant(), names.channel()
    own = f"{channel}.own"
    alice = user(tenant, names.user(0), subscribe=(f"{channel}.*",), publish=(f"{channel}.*",))
    peer = user(tenant, names.user(1))
    alice.subscribe(own)
    tokens = {
        "same-token": deployment.mint(
            tenant, names.user(0), subscribe=(f"{channel}.*",), publish=(f"{channel}.*",)
        ),
        "other-tenant": deployment.mint(names.tenant(1), names.user(5), broadcaster=True),
        "broader-grants": deployment.mint(tenant, names.user(0), subscribe=(">",)),
        "forged": _forged(deployment.mint(tenant, names.user(0))),
    }
    reply = alice.request({"type": "hello", "id": "h2", "token": tokens[kind]})
    assert reply["type"] == "error" and reply["code"] == "already_authenticated", reply
    # Identity, grants and subscriptions are unchanged, and the connection stays open.
    refused = alice.request({"type": "subscribe", "id": "wide", "channel": "elsewhere"})
    assert refused.get("code") == "forbidden", f"grants changed by a second hello: {refused}"
    ack = peer.publish(own)
    alice.wait_events(lambda e: e["channel"] == own and e["offset"] == ack["offset"])
    mine = alice.publish(own)
    event = alice.wait_events(lambda e: e["offset"] == mine["offset"] and e["channel"] == own)
    assert event[0]["publisher"] == names.user(0), event[0]


# -- 2.6 close -------------------------------------------------------------------------------------


@pytest.mark.requirement("UNI-LC-19")
def test_server_discards_subscriptions_when_the_connection_closes(user: User, names: Names) -> None:
    tenant, channel = names.tenant(), names.channel()
    first = user(tenant, names.user(), sid="tab-1")
    first.subscribe(channel)
    first.subscribe("$me.inbox")
    first.close()
    again = user(tenant, names.user(), sid="tab-1")
    for pattern in (channel, "$me.inbox"):
        reply = again.request({"type": "unsubscribe", "id": "u", "channel": pattern})
        assert reply.get("code") == "not_subscribed", f"{pattern} survived the close: {reply}"
    publisher = user(tenant, names.user(1))
    fence = names.channel()
    again.subscribe(fence)
    publisher.publish(channel)
    again.assert_no_frame("event", lambda: publisher.publish(fence), where=lambda f: True)
