"""The I/O-free server session, driven directly: every error, close code and timer.

Also covers the pieces the session is built from: configuration, the typed-event registry
and the publish token bucket.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unisock.auth import AuthConfig, TokenVerifier, mint_token
from unisock.broker import ChannelKey, Position, PublishRecord, PublishResult, Replay, StoredEvent
from unisock.config import EventTypeRegistry, ServerConfig
from unisock.delivery import should_deliver
from unisock.errors import (
    InvalidEventData,
    LocalError,
    SlowConsumer,
    Unavailable,
    UnknownEventType,
)
from unisock.messages import encode_event_frame
from unisock.ratelimit import TokenBucket
from unisock.schemas import validate_server_message
from unisock.session import (
    Action,
    Authenticated,
    Close,
    Deliver,
    InternalFailure,
    RefuseUnlessDuplicate,
    Revoked,
    Send,
    SessionCore,
    StartPublish,
    StartSubscribe,
    StopSubscribe,
    event_view,
)
from unisock.state import State

SECRET = "0123456789abcdef0123456789abcdef"
T0 = 1_764_120_000_000
EPOCH = "e-1"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def token(sub: str = "alice", tenant: str = "acme", *, at: int = T0, **kw: Any) -> str:
    kw.setdefault("subscribe", ["tasks.>", "$sys.>"])
    kw.setdefault("publish", ["tasks.*", "$me.>", "$me", "$sys.maint"])
    return mint_token(SECRET, tenant, sub, now=at / 1000, **kw)


def new_core(
    config: ServerConfig | None = None,
    clock: Clock | None = None,
    connection_id: str = "c1",
    registry: EventTypeRegistry | None = None,
) -> tuple[SessionCore, Clock]:
    clock = clock or Clock()
    verifier = TokenVerifier(AuthConfig(hs256_secret=SECRET))
    core = SessionCore(config or ServerConfig(), verifier, connection_id, clock, registry)
    return core, clock


def frames(actions: list[Action]) -> list[dict[str, Any]]:
    """Every Send frame, decoded and checked against the server-message schema."""
    out = []
    for action in actions:
        if isinstance(action, Send):
            message = json.loads(action.frame)
            assert validate_server_message(message) == [], message
            out.append(message)
    return out


def only(actions: list[Action]) -> dict[str, Any]:
    found = frames(actions)
    assert len(found) == 1, actions
    return found[0]


def error_of(actions: list[Action]) -> dict[str, Any]:
    message = only(actions)
    assert message["type"] == "error", message
    return message


def closes(actions: list[Action]) -> tuple[int, str]:
    found = [a for a in actions if isinstance(a, Close)]
    assert len(found) == 1, actions
    return found[0].code, found[0].reason


def send(core: SessionCore, obj: dict[str, Any]) -> list[Action]:
    return core.receive_text(json.dumps(obj))


def opened(config: ServerConfig | None = None, **kw: Any) -> tuple[SessionCore, Clock]:
    core, clock = new_core(config, connection_id=kw.pop("connection_id", "c1"))
    actions = send(core, {"type": "hello", "token": token(**kw)})
    assert frames(actions)[0]["type"] == "welcome"
    return core, clock


def subscribe(
    core: SessionCore,
    channel: str,
    rid: str = "s1",
    resume: dict[str, Any] | None = None,
    **extra: Any,
) -> list[Action]:
    if resume is not None:
        extra["from"] = resume
    return send(core, {"type": "subscribe", "id": rid, "channel": channel, **extra})


def active(core: SessionCore, channel: str, head: Position | None = None) -> None:
    """Subscribe and complete the broker round trip with no replay."""
    start = subscribe(core, channel, rid=f"s-{channel}")
    assert isinstance(start[0], StartSubscribe), start
    if start[0].head is not None and head is None:
        head = Position(EPOCH, 0)
    assert only(core.subscribe_result(channel, head))["type"] == "subscribed"
    assert core.subscription_active(channel) == []


def publish_msg(channel: str = "tasks.42", rid: str = "p1", **extra: Any) -> dict[str, Any]:
    return {
        "type": "publish",
        "id": rid,
        "channel": channel,
        "event": "task.updated",
        "data": {"status": "done"},
        "message_id": f"m-{rid}",
        **extra,
    }


def stored(
    channel: str = "tasks.42",
    offset: int = 1,
    *,
    tenant: str | None = "acme",
    owner: str | None = None,
    epoch: str = EPOCH,
    attrs: dict[str, Any] | None = None,
    to: frozenset[str] | None = None,
    exclude: frozenset[str] | None = None,
    exclude_self: bool = False,
    publisher_connection: str = "c-other",
) -> StoredEvent:
    record = PublishRecord(
        key=ChannelKey(tenant, owner, channel),
        event_type="task.updated",
        data={"n": offset},
        message_id=f"m{offset}",
        attrs=attrs or {},
        to=to,
        exclude=exclude,
        exclude_self=exclude_self,
        coalesce_key=None,
        publisher_sub="bob",
        publisher_connection=publisher_connection,
    )
    return StoredEvent(record, epoch, offset, T0, encode_event_frame(record, epoch, offset, T0))


# --- hello and lifecycle (UNI-LC) ------------------------------------------------------------


def test_server_welcomes_a_valid_hello_with_every_announced_parameter() -> None:
    core, _ = new_core(connection_id="conn-7")
    actions = send(core, {"type": "hello", "token": token(sid="tab-1"), "client": {"name": "t"}})
    welcome = frames(actions)[0]
    assert welcome["type"] == "welcome"
    assert welcome["connection_id"] == "conn-7"
    assert welcome["protocol"] == "unisock.v1"
    assert welcome["spec_version"] == "1.0.0"
    assert welcome["session"] == {
        "tenant": "acme",
        "sub": "alice",
        "sid": "tab-1",
        "role": "user",
        "expires_at": T0 // 1000 + 3600,
    }
    for name, value in ServerConfig().welcome_payload().items():
        assert welcome[name] == value
    assert welcome["limits"]["publish_rate"] == {"per_second": 50, "burst": 100}
    authenticated = [a for a in actions if isinstance(a, Authenticated)]
    assert authenticated[0].identity.sub == "alice"
    assert core.state is State.OPEN


def test_welcome_omits_sid_when_the_token_has_none() -> None:
    core, _ = new_core()
    welcome = frames(send(core, {"type": "hello", "token": token()}))[0]
    assert "sid" not in welcome["session"]


@pytest.mark.parametrize(
    "text",
    [
        "{",
        "[]",
        '{"type":"ping"}',
        '{"type":"subscribe","id":"s","channel":"tasks.1"}',
        '{"type":"teleport"}',
        '{"type":"hello"}',
        '{"type":"hello","token":5}',
    ],
)
def test_server_closes_4000_when_the_first_message_is_not_a_valid_hello(text: str) -> None:
    core, _ = new_core()
    actions = core.receive_text(text)
    assert actions == [Close(4000, "protocol_violation")]
    assert core.state is State.CLOSED


@pytest.mark.parametrize(
    "bad",
    [
        mint_token("f" * 32, "acme", "alice", now=T0 / 1000),
        mint_token(SECRET, "acme", "alice", now=T0 / 1000 - 7200),
        "a.b.c",
    ],
)
def test_server_closes_4100_when_the_hello_token_does_not_verify(bad: str) -> None:
    core, _ = new_core()
    assert send(core, {"type": "hello", "token": bad}) == [Close(4100, "auth_failed")]
    assert core.state is State.CLOSED
    assert core.identity is None


def test_server_closes_4102_when_no_hello_arrives_within_auth_timeout() -> None:
    core, _ = new_core(ServerConfig(auth_timeout_ms=5000))
    assert core.next_deadline_ms() == T0 + 5000
    assert core.tick(T0 + 4999) == []
    assert core.tick(T0 + 5000) == [Close(4102, "auth_timeout")]
    assert core.tick(T0 + 9000) == []
    assert core.next_deadline_ms() is None


def test_second_hello_is_refused_and_identity_is_unchanged() -> None:
    core, _ = opened()
    error = error_of(send(core, {"type": "hello", "id": "h2", "token": token("bob")}))
    assert error["code"] == "already_authenticated"
    assert error["id"] == "h2"
    assert core.identity is not None and core.identity.sub == "alice"
    assert core.state is State.OPEN


def test_unknown_type_after_hello_gets_unknown_type_and_the_connection_stays() -> None:
    core, _ = opened()
    error = error_of(send(core, {"type": "teleport", "id": "t1"}))
    assert (error["code"], error["id"]) == ("unknown_type", "t1")
    assert core.state is State.OPEN


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{nope", "invalid_json"),
        ("[1]", "invalid_message"),
        ('{"type":"publish","id":"p"}', "invalid_message"),
    ],
)
def test_malformed_requests_after_hello_get_an_error_and_the_connection_stays(
    text: str, code: str
) -> None:
    core, _ = opened()
    assert error_of(core.receive_text(text))["code"] == code
    assert core.state is State.OPEN


@pytest.mark.parametrize("authenticate", [False, True])
def test_binary_frame_closes_1003(authenticate: bool) -> None:
    core, _ = opened() if authenticate else new_core()
    assert core.receive_binary() == [Close(1003, "unsupported_data")]
    assert core.receive_binary() == []


def test_frame_over_max_message_bytes_closes_1009_counting_utf8_octets() -> None:
    core, _ = opened(ServerConfig(max_message_bytes=1000))
    ping = '{"type":"ping","nonce":"' + "é" * 60 + '","pad":"' + "a" * 850 + '"}'
    assert len(ping) <= 1000 < len(ping.encode("utf-8"))
    assert core.receive_text(ping) == [Close(1009, "message_too_big")]
    assert core.state is State.CLOSED


def test_frame_at_max_message_bytes_is_accepted() -> None:
    core, _ = opened(ServerConfig(max_message_bytes=1000))
    text = '{"type":"ping","pad":"' + "é" * 487 + "aa" + '"}'
    assert len(text.encode("utf-8")) == 1000
    assert only(core.receive_text(text))["type"] == "pong"
    long_ascii = "x" * 1001
    assert core.receive_text(long_ascii) == [Close(1009, "message_too_big")]


def test_closed_session_ignores_everything() -> None:
    core, clock = opened()
    core.connection_closed()
    assert core.state is State.CLOSED
    assert core.receive_text('{"type":"ping"}') == []
    assert core.tick(clock.now + 10**9) == []
    assert core.drain() == []
    assert core.superseded() == []
    assert core.slow_consumer() == []
    assert core.connection_closed() == []
    assert core.publish_failed("p", Unavailable(retry_after_ms=1)) == []
    assert core.accepts(stored(), clock.now) is False
    assert core.next_deadline_ms() is None


def test_unexpected_failure_becomes_internal_error_without_detail() -> None:
    core, _ = opened()
    boom = RuntimeError("secret internals")

    def explode(event_type: str, data: Any) -> None:
        raise boom

    core.registry.check = explode  # type: ignore[method-assign]
    actions = send(core, publish_msg())
    error = error_of(actions)
    assert error == {
        "type": "error",
        "id": "p1",
        "code": "internal_error",
        "message": "internal error",
    }
    assert InternalFailure(boom) in actions
    assert core.state is State.OPEN


def test_unexpected_failure_during_hello_closes_1011() -> None:
    core, _ = new_core()
    boom = RuntimeError("x")

    def explode(token: str, now: float) -> Any:
        raise boom

    core.verifier.verify = explode  # type: ignore[method-assign]
    actions = send(core, {"type": "hello", "token": token()})
    assert actions == [Close(1011, "internal_error"), InternalFailure(boom)]
    assert core.state is State.CLOSED


def test_superseded_closes_4001_and_slow_consumer_closes_4200() -> None:
    core, _ = opened()
    assert core.superseded() == [Close(4001, "superseded")]
    core2, _ = opened()
    assert core2.slow_consumer() == [Close(4200, "slow_consumer")]
    core3, _ = opened()
    assert core3.abort(SlowConsumer()) == [Close(4200, "slow_consumer")]


# --- heartbeats (UNI-HB) ----------------------------------------------------------------------


def test_server_pings_every_interval() -> None:
    core, clock = opened(ServerConfig(heartbeat_interval_ms=1000, heartbeat_timeout_ms=500))
    assert core.tick(T0 + 999) == []
    assert only(core.tick(T0 + 1000)) == {"type": "ping"}
    assert core.tick(T0 + 1001) == []
    clock.now = T0 + 1001
    send(core, {"type": "pong"})
    assert only(core.tick(T0 + 2000)) == {"type": "ping"}


def test_late_tick_does_not_send_a_burst_of_pings() -> None:
    core, clock = opened(ServerConfig(heartbeat_interval_ms=1000, heartbeat_timeout_ms=10_000))
    clock.now = T0 + 5500
    send(core, {"type": "pong"})
    assert only(core.tick(T0 + 5500)) == {"type": "ping"}
    assert core.tick(T0 + 5600) == []
    assert only(core.tick(T0 + 6500)) == {"type": "ping"}


def test_server_answers_ping_with_pong_echoing_nonce_and_id() -> None:
    core, _ = opened()
    assert only(send(core, {"type": "ping", "id": "q1", "nonce": "abc"})) == {
        "type": "pong",
        "id": "q1",
        "nonce": "abc",
    }
    assert only(send(core, {"type": "ping"})) == {"type": "pong"}
    assert send(core, {"type": "pong", "nonce": "x"}) == []


def test_server_closes_4201_when_nothing_arrives_for_interval_plus_timeout() -> None:
    config = ServerConfig(heartbeat_interval_ms=1000, heartbeat_timeout_ms=500)
    core, clock = opened(config)
    clock.now = T0 + 1400
    send(core, {"type": "pong"})  # any message counts as a sign of life
    assert core.next_deadline_ms() == T0 + 1000  # the next ping comes first
    assert only(core.tick(T0 + 1000)) == {"type": "ping"}
    assert core.next_deadline_ms() == T0 + 2000
    assert [a for a in core.tick(T0 + 2899) if isinstance(a, Close)] == []
    assert core.tick(T0 + 2900) == [Close(4201, "heartbeat_timeout")]
    assert core.state is State.CLOSED


def test_server_does_not_take_a_peer_for_dead_while_it_reads_nothing_from_it() -> None:
    """UNI-ERR-16: while the adapter awaits the broker for this connection, frames the peer
    sent wait unread; silence over that time is no reason for 4201."""
    core, _ = opened(ServerConfig(heartbeat_interval_ms=1000, heartbeat_timeout_ms=500))
    core.reading_paused(T0 + 1400)  # the adapter was still awaiting the broker then
    assert [a for a in core.tick(T0 + 2800) if isinstance(a, Close)] == []
    assert core.tick(T0 + 2900) == [Close(4201, "heartbeat_timeout")]


def test_even_an_invalid_message_counts_as_a_sign_of_life() -> None:
    core, clock = opened(ServerConfig(heartbeat_interval_ms=1000, heartbeat_timeout_ms=500))
    clock.now = T0 + 1400
    core.receive_text("{bad")
    assert [a for a in core.tick(T0 + 2000) if isinstance(a, Close)] == []


# --- expiry (UNI-AUTH) ------------------------------------------------------------------------


def test_server_warns_once_refresh_warning_ms_before_expiry() -> None:
    core, _ = opened(ServerConfig(heartbeat_interval_ms=10**7), ttl_s=3600)
    exp = T0 + 3_600_000
    assert core.next_deadline_ms() == exp - 60_000
    send(core, {"type": "pong"})
    assert core.tick(exp - 60_001) == []
    assert only(core.tick(exp - 60_000)) == {"type": "token_expiring", "expires_at": exp // 1000}
    assert core.tick(exp - 59_000) == []


def test_server_warns_immediately_when_the_token_is_already_inside_the_window() -> None:
    core, _ = new_core()
    actions = send(core, {"type": "hello", "token": token(ttl_s=30)})
    assert [m["type"] for m in frames(actions)] == ["welcome", "token_expiring"]


def test_server_stops_delivery_at_expiry_and_closes_4101() -> None:
    config = ServerConfig(heartbeat_interval_ms=10**8, heartbeat_timeout_ms=10**8)
    core, _ = opened(config, ttl_s=120)
    active(core, "tasks.>")
    exp = T0 + 120_000
    assert core.accepts(stored(offset=1), exp - 1) is True
    assert core.accepts(stored(offset=2), exp) is False
    assert core.next_deadline_ms() == exp - 60_000
    assert only(core.tick(exp - 60_000))["type"] == "token_expiring"
    assert core.next_deadline_ms() == exp
    assert core.tick(exp) == [Close(4101, "token_expired")]
    assert core.accepts(stored(offset=3), exp - 1) is False


def test_a_refresh_received_at_expiry_is_neither_applied_nor_answered() -> None:
    """UNI-AUTH-21, UNI-TR-26: the 4101 close replaces the reply."""
    config = ServerConfig(heartbeat_interval_ms=10**8, heartbeat_timeout_ms=10**8)
    core, clock = opened(config, ttl_s=120)
    clock.now = T0 + 120_000
    actions = send(core, {"type": "refresh", "id": "late", "token": token(at=clock.now)})
    assert frames(actions) == []
    assert closes(actions) == (4101, "token_expired")
    assert core.state is State.CLOSED


# --- refresh (UNI-AUTH) -----------------------------------------------------------------------


def test_refresh_extends_expiry_and_rearms_the_warning() -> None:
    core, clock = opened(
        ServerConfig(heartbeat_interval_ms=10**8, heartbeat_timeout_ms=10**8), ttl_s=3600
    )
    exp = T0 + 3_600_000
    clock.now = exp - 30_000
    assert frames(core.tick(clock.now))[0]["type"] == "token_expiring"
    new = token(at=clock.now, ttl_s=3600)
    actions = send(core, {"type": "refresh", "id": "r1", "token": new})
    assert only(actions) == {
        "type": "refreshed",
        "id": "r1",
        "expires_at": (clock.now + 3_600_000) // 1000,
    }
    assert core.tick(exp) == []
    new_exp = clock.now + 3_600_000
    assert only(core.tick(new_exp - 60_000))["type"] == "token_expiring"


@pytest.mark.parametrize(
    "bad",
    [
        mint_token("f" * 32, "acme", "alice", now=T0 / 1000),
        mint_token(SECRET, "acme", "alice", now=T0 / 1000 - 7200),
    ],
)
def test_refresh_with_a_token_that_does_not_verify_is_token_invalid(bad: str) -> None:
    core, _ = opened()
    before = core.identity
    error = error_of(send(core, {"type": "refresh", "id": "r1", "token": bad}))
    assert (error["code"], error["id"]) == ("token_invalid", "r1")
    assert core.identity is before
    assert bad not in json.dumps(error)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sub": "bob"},
        {"tenant": "other"},
        {"sid": "tab-2"},
        {"broadcaster": True, "sid": "tab-1"},
        {"sid": None},
    ],
)
def test_refresh_for_another_principal_is_token_mismatch(kwargs: dict[str, Any]) -> None:
    core, _ = opened(sid="tab-1")
    before = core.identity
    kwargs = {"sid": "tab-1", **kwargs}
    error = error_of(send(core, {"type": "refresh", "id": "r1", "token": token(**kwargs)}))
    assert error["code"] == "token_mismatch"
    assert core.identity is before


def test_refresh_revokes_subscriptions_outside_the_new_grants() -> None:
    core, _ = opened(subscribe=["tasks.>", "news.*"])
    active(core, "tasks.>")
    active(core, "news.*")
    active(core, "$me.>")
    new = token(subscribe=["news.*"])
    actions = send(core, {"type": "refresh", "id": "r1", "token": new})
    assert frames(actions) == [  # UNI-AUTH-20: revocations before `refreshed`
        {"type": "unsubscribed", "channel": "tasks.>", "reason": "revoked"},
        {"type": "refreshed", "id": "r1", "expires_at": T0 // 1000 + 3600},
    ]
    assert StopSubscribe("tasks.>") in actions
    assert Revoked(("tasks.>",)) in actions
    assert core.subscriptions == ("news.*", "$me.>")
    assert core.accepts(stored("tasks.1"), T0) is False
    assert core.accepts(stored("news.a"), T0) is True


def test_refresh_that_revokes_nothing_emits_no_revocation() -> None:
    core, _ = opened()
    active(core, "tasks.>")
    actions = send(core, {"type": "refresh", "id": "r1", "token": token()})
    assert not [a for a in actions if isinstance(a, Revoked | StopSubscribe)]


def test_subscription_revoked_while_being_set_up_is_answered_forbidden() -> None:
    core, _ = opened()
    subscribe(core, "tasks.>", rid="s1")
    send(core, {"type": "refresh", "id": "r1", "token": token(subscribe=[])})
    assert core.accepts(stored("tasks.1"), T0) is False
    actions = core.subscribe_result("tasks.>")
    assert error_of(actions)["code"] == "forbidden"
    assert error_of(actions)["id"] == "s1"
    assert StopSubscribe("tasks.>") in actions
    assert core.subscription_active("tasks.>") == []


# --- subscribe / unsubscribe (UNI-SUB) --------------------------------------------------------


def test_subscribe_starts_broker_work_with_resolved_keys() -> None:
    core, _ = opened()
    start = subscribe(
        core,
        "tasks.>",
        since=5,
        resume={"tasks.42": {"epoch": "e", "offset": 3}},
        filter={"gt": ["priority", 1]},
    )
    assert len(start) == 1 and isinstance(start[0], StartSubscribe)
    action = start[0]
    assert action.request_id == "s1"
    assert action.pattern.text == "tasks.>"
    assert action.filter is not None
    assert action.from_positions == ((ChannelKey("acme", None, "tasks.42"), Position("e", 3)),)
    assert action.since == 5
    assert action.head is None
    assert action.scope == ("acme", None, "tenant")
    keys = [ChannelKey("acme", None, n) for n in ("tasks.42", "tasks.7", "other.1")]
    assert action.since_keys(keys) == [keys[1]]


def test_since_keys_is_empty_without_since() -> None:
    core, _ = opened()
    action = subscribe(core, "tasks.1")[0]
    assert isinstance(action, StartSubscribe)
    assert action.since_keys([ChannelKey("acme", None, "tasks.1")]) == []


@pytest.mark.parametrize(
    ("channel", "head", "scope"),
    [
        ("tasks.1", ChannelKey("acme", None, "tasks.1"), ("acme", None, "tenant")),
        ("$me", ChannelKey("acme", "alice", "$me"), ("acme", "alice", "$me")),
        ("$me.inbox", ChannelKey("acme", "alice", "$me.inbox"), ("acme", "alice", "$me")),
        ("$sys.maint", ChannelKey(None, None, "$sys.maint"), (None, None, "$sys")),
    ],
)
def test_subscribe_resolves_namespaces(
    channel: str, head: ChannelKey, scope: tuple[Any, ...]
) -> None:
    core, _ = opened()
    action = subscribe(core, channel)[0]
    assert isinstance(action, StartSubscribe)
    assert (action.head, action.scope) == (head, scope)


def test_private_channels_need_no_subscribe_grant() -> None:
    core, _ = opened(subscribe=[])
    assert isinstance(subscribe(core, "$me.>")[0], StartSubscribe)


@pytest.mark.parametrize("channel", ["news.1", "$sys.maint", "tasks"])
def test_server_rejects_subscribe_outside_grant(channel: str) -> None:
    core, _ = opened(subscribe=["tasks.>"])
    error = error_of(subscribe(core, channel))
    assert (error["code"], error["id"]) == ("forbidden", "s1")
    assert core.subscriptions == ()


@pytest.mark.parametrize("channel", ["Tasks", "a..b", "tasks.>.x", "ab*", "$sys", "tâches"])
def test_server_rejects_subscribe_with_bad_grammar(channel: str) -> None:
    core, _ = opened()
    assert error_of(subscribe(core, channel))["code"] == "invalid_channel"


def test_server_rejects_subscribe_with_bad_filter() -> None:
    core, _ = opened(ServerConfig(max_filter_nodes=2))
    assert error_of(subscribe(core, "tasks.1", filter={"bogus": 1}))["code"] == "invalid_filter"
    big = {"and": [{"exists": "a"}, {"exists": "b"}]}
    assert error_of(subscribe(core, "tasks.1", filter=big))["code"] == "invalid_filter"


def test_server_rejects_resume_position_not_matched_by_the_pattern() -> None:
    core, _ = opened()
    error = error_of(subscribe(core, "tasks.>", resume={"news.1": {"epoch": "e", "offset": 1}}))
    assert error["code"] == "invalid_position"
    error = error_of(subscribe(core, "tasks.>", resume={"tasks.*": {"epoch": "e", "offset": 1}}))
    assert error["code"] == "invalid_position"


def test_server_rejects_duplicate_subscription_pending_or_active() -> None:
    core, _ = opened()
    subscribe(core, "tasks.>", rid="a")
    assert error_of(subscribe(core, "tasks.>", rid="b"))["code"] == "already_subscribed"
    core.subscribe_result("tasks.>")
    core.subscription_active("tasks.>")
    assert error_of(subscribe(core, "tasks.>", rid="c"))["code"] == "already_subscribed"


def test_server_rejects_subscription_over_the_cap_and_changes_nothing() -> None:
    core, _ = opened(ServerConfig(max_subscriptions=2))
    active(core, "tasks.1")
    active(core, "tasks.2")
    assert error_of(subscribe(core, "tasks.3"))["code"] == "subscription_limit"
    assert core.subscriptions == ("tasks.1", "tasks.2")


def test_subscribed_carries_the_head_for_a_concrete_pattern_only() -> None:
    core, clock = opened()
    subscribe(core, "tasks.1", rid="a")
    subscribe(core, "tasks.>", rid="b")
    clock.now = T0 + 123
    assert only(core.subscribe_result("tasks.1", Position(EPOCH, 42))) == {
        "type": "subscribed",
        "id": "a",
        "channel": "tasks.1",
        "ts": T0 + 123,
        "position": {"epoch": EPOCH, "offset": 42},
    }
    assert "position" not in only(core.subscribe_result("tasks.>", Position(EPOCH, 42)))


def test_subscribe_result_without_head_for_concrete_pattern_is_a_local_error() -> None:
    core, _ = opened()
    subscribe(core, "tasks.1")
    with pytest.raises(LocalError):
        core.subscribe_result("tasks.1")


def test_subscribe_feeders_ignore_unknown_or_finished_subscriptions() -> None:
    core, _ = opened()
    assert core.subscribe_result("nope") == []
    assert core.subscribe_failed("nope", Unavailable(retry_after_ms=1)) == []
    assert (
        core.replay_actions(
            "nope", ChannelKey("acme", None, "a"), Replay(Position(EPOCH, 0), (), None)
        )
        == []
    )
    assert core.subscription_active("nope") == []
    subscribe(core, "tasks.>")
    assert core.subscription_active("tasks.>") == []  # not answered yet
    core.subscribe_result("tasks.>")
    assert core.subscribe_result("tasks.>") == []  # answered once only
    core.subscription_active("tasks.>")
    assert core.subscription_active("tasks.>") == []


def test_no_event_is_delivered_for_a_subscription_before_it_is_active() -> None:
    core, _ = opened()
    subscribe(core, "tasks.>")
    assert core.accepts(stored("tasks.1", 1), T0) is False
    assert core.view().subscriptions == ()
    core.subscribe_result("tasks.>")
    assert core.accepts(stored("tasks.1", 2), T0) is False
    held = core.subscription_active("tasks.>")
    assert [a.event.offset for a in held if isinstance(a, Deliver)] == [1, 2]
    assert core.accepts(stored("tasks.1", 3), T0) is True
    assert len(core.view().subscriptions) == 1


def test_events_up_to_the_announced_head_are_not_delivered_live() -> None:
    core, _ = opened()
    subscribe(core, "tasks.1")
    core.accepts(stored("tasks.1", 4), T0)
    core.accepts(stored("tasks.1", 5), T0)
    core.subscribe_result("tasks.1", Position(EPOCH, 4))
    held = core.subscription_active("tasks.1")
    assert [a.event.offset for a in held if isinstance(a, Deliver)] == [5]


def test_events_are_held_only_for_the_subscriptions_being_set_up_that_match() -> None:
    core, _ = opened(subscribe=["tasks.>", "news.*", "sport.*"])
    active(core, "sport.*")
    subscribe(core, "tasks.>", rid="a")
    subscribe(core, "news.*", rid="b")
    assert core.accepts(stored("news.1", 1), T0) is False
    assert core.accepts(stored("tasks.1", 1), T0) is False
    assert core.accepts(stored("sport.1", 1), T0) is True
    core.subscribe_result("tasks.>")
    core.subscribe_result("news.*")
    tasks = core.subscription_active("tasks.>")
    news = core.subscription_active("news.*")
    assert [a.event.record.key.name for a in tasks if isinstance(a, Deliver)] == ["tasks.1"]
    assert [a.event.record.key.name for a in news if isinstance(a, Deliver)] == ["news.1"]


def test_held_events_are_filtered_by_the_subscription() -> None:
    core, _ = opened()
    subscribe(core, "tasks.>", filter={"eq": ["priority", 1]})
    core.accepts(stored("tasks.1", 1, attrs={"priority": 1}), T0)
    core.accepts(stored("tasks.1", 2, attrs={"priority": 2}), T0)
    core.accepts(stored("news.1", 3, attrs={"priority": 1}), T0)
    core.subscribe_result("tasks.>")
    held = core.subscription_active("tasks.>")
    assert [a.event.offset for a in held if isinstance(a, Deliver)] == [1]


def test_too_many_held_events_close_as_slow_consumer() -> None:
    core, _ = opened(ServerConfig(max_queue=2))
    subscribe(core, "tasks.>")
    for offset in (1, 2, 3):
        core.accepts(stored("tasks.1", offset), T0)
    core.subscribe_result("tasks.>")
    assert core.subscription_active("tasks.>") == [Close(4200, "slow_consumer")]


def test_replay_delivers_matching_events_once_and_in_order() -> None:
    core, _ = opened()
    key = ChannelKey("acme", None, "tasks.1")
    subscribe(
        core,
        "tasks.>",
        filter={"ne": ["skip", True]},
        resume={"tasks.1": {"epoch": EPOCH, "offset": 1}},
    )
    core.accepts(stored("tasks.1", 4), T0)  # arrives during setup, also in the replay
    core.accepts(stored("tasks.1", 5), T0)  # arrives during setup, after the replay
    core.subscribe_result("tasks.>")
    events = (
        stored("tasks.1", 2),
        stored("tasks.1", 3, attrs={"skip": True}),
        stored("tasks.1", 4),
    )
    replayed = core.replay_actions("tasks.>", key, Replay(Position(EPOCH, 4), events, None))
    assert [a.event.offset for a in replayed if isinstance(a, Deliver)] == [2, 4]
    live = core.subscription_active("tasks.>")
    assert [a.event.offset for a in live if isinstance(a, Deliver)] == [5]
    assert core.accepts(stored("tasks.1", 5), T0) is False
    assert core.accepts(stored("tasks.1", 6), T0) is True


def test_replay_applies_the_resuming_subscriptions_filter_only() -> None:
    """UNI-DEL-36: another active subscription accepting an event does not widen a replay."""
    core, _ = opened()
    key = ChannelKey("acme", None, "tasks.1")
    subscribe(core, "tasks.*", rid="a", filter={"eq": ["p", 1]})
    core.subscribe_result("tasks.*")
    core.subscription_active("tasks.*")
    subscribe(
        core,
        "tasks.1",
        rid="b",
        filter={"eq": ["p", 2]},
        resume={"tasks.1": {"epoch": EPOCH, "offset": 0}},
    )
    core.subscribe_result("tasks.1", Position(EPOCH, 4))
    events = tuple(stored("tasks.1", n, attrs={"p": 2 - n % 2}) for n in range(1, 5))
    replayed = core.replay_actions("tasks.1", key, Replay(Position(EPOCH, 4), events, None))
    assert [a.event.offset for a in replayed if isinstance(a, Deliver)] == [2, 4]


def test_replay_gap_is_reported_and_live_delivery_resumes_after_the_head() -> None:
    core, _ = opened()
    key = ChannelKey("acme", None, "tasks.1")
    subscribe(core, "tasks.>", resume={"tasks.1": {"epoch": "old", "offset": 9}})
    core.accepts(stored("tasks.1", 7), T0)
    core.accepts(stored("tasks.1", 8), T0)
    core.subscribe_result("tasks.>")
    actions = core.replay_actions("tasks.>", key, Replay(Position(EPOCH, 7), (), "epoch_changed"))
    assert only(actions) == {
        "type": "gap",
        "channel": "tasks.1",
        "epoch": EPOCH,
        "offset": 7,
        "reason": "epoch_changed",
    }
    live = core.subscription_active("tasks.>")
    assert [a.event.offset for a in live if isinstance(a, Deliver)] == [8]


def test_subscribe_failure_is_reported_and_changes_nothing() -> None:
    core, _ = opened()
    subscribe(core, "tasks.>", rid="s9")
    actions = core.subscribe_failed("tasks.>", Unavailable("broker down", retry_after_ms=250))
    error = error_of(actions)
    assert (error["code"], error["id"], error["retry_after_ms"]) == ("unavailable", "s9", 250)
    assert StopSubscribe("tasks.>") in actions
    assert isinstance(subscribe(core, "tasks.>")[0], StartSubscribe)


def test_unsubscribe_removes_the_subscription_immediately() -> None:
    core, _ = opened()
    active(core, "tasks.>")
    assert core.accepts(stored("tasks.1", 1), T0) is True
    actions = send(core, {"type": "unsubscribe", "id": "u1", "channel": "tasks.>"})
    assert only(actions) == {
        "type": "unsubscribed",
        "id": "u1",
        "channel": "tasks.>",
        "reason": "requested",
    }
    assert StopSubscribe("tasks.>") in actions
    assert core.accepts(stored("tasks.1", 2), T0) is False
    assert core.subscriptions == ()


def test_unsubscribe_of_an_unknown_pattern_is_not_subscribed() -> None:
    core, _ = opened()
    active(core, "tasks.>")
    error = error_of(send(core, {"type": "unsubscribe", "id": "u1", "channel": "tasks.*"}))
    assert (error["code"], error["id"]) == ("not_subscribed", "u1")
    assert core.subscriptions == ("tasks.>",)


def test_unsubscribe_during_setup_is_answered_after_subscribed() -> None:
    core, _ = opened()
    subscribe(core, "tasks.>", rid="s1")
    assert send(core, {"type": "unsubscribe", "id": "u1", "channel": "tasks.>"}) == []
    again = error_of(send(core, {"type": "unsubscribe", "id": "u2", "channel": "tasks.>"}))
    assert again["code"] == "not_subscribed"
    actions = core.subscribe_result("tasks.>")
    assert [(m["type"], m["id"]) for m in frames(actions)] == [
        ("subscribed", "s1"),
        ("unsubscribed", "u1"),
    ]
    assert core.subscription_active("tasks.>") == []
    assert core.accepts(stored("tasks.1"), T0) is False


def test_unsubscribe_during_a_failing_setup_is_not_subscribed() -> None:
    core, _ = opened()
    subscribe(core, "tasks.>", rid="s1")
    send(core, {"type": "unsubscribe", "id": "u1", "channel": "tasks.>"})
    actions = core.subscribe_failed("tasks.>", Unavailable(retry_after_ms=5))
    assert [(m["code"], m["id"]) for m in frames(actions)] == [
        ("unavailable", "s1"),
        ("not_subscribed", "u1"),
    ]


def test_overlapping_subscriptions_deliver_each_event_once() -> None:
    core, _ = opened()
    active(core, "tasks.>")
    active(core, "tasks.*")
    event = stored("tasks.1", 1)
    assert core.accepts(event, T0) is True
    assert core.accepts(event, T0) is False
    send(core, {"type": "unsubscribe", "id": "u", "channel": "tasks.>"})
    assert core.accepts(stored("tasks.1", 1), T0) is False  # still remembered via tasks.*
    send(core, {"type": "unsubscribe", "id": "u", "channel": "tasks.*"})
    active(core, "tasks.*")
    assert core.accepts(stored("tasks.1", 1), T0) is True  # forgotten once nothing matched


# --- delivery predicate (UNI-DEL) -------------------------------------------------------------


def test_accepts_applies_the_delivery_predicate() -> None:
    core, _ = opened(connection_id="c1")
    active(core, "tasks.>")
    active(core, "$me.>")
    active(core, "$sys.>")
    assert core.accepts(stored("tasks.1", 1, tenant="other"), T0) is False
    assert core.accepts(stored("$me.x", 1, owner="bob"), T0) is False
    assert core.accepts(stored("$me.x", 2, owner="alice"), T0) is True
    assert core.accepts(stored("$sys.maint", 1, tenant=None), T0) is True
    assert core.accepts(stored("tasks.1", 2, to=frozenset({"bob"})), T0) is False
    assert core.accepts(stored("tasks.1", 3, exclude=frozenset({"alice"})), T0) is False
    assert (
        core.accepts(stored("tasks.1", 4, exclude_self=True, publisher_connection="c1"), T0)
        is False
    )
    assert core.accepts(stored("tasks.1", 5, exclude_self=True), T0) is True
    assert core.accepts(stored("news.1", 1), T0) is False


def test_accepts_keeps_offsets_increasing_per_channel_within_an_epoch() -> None:
    core, _ = opened()
    active(core, "tasks.>")
    assert core.accepts(stored("tasks.1", 5), T0) is True
    assert core.accepts(stored("tasks.1", 4), T0) is False
    assert core.accepts(stored("tasks.2", 1), T0) is True
    assert core.accepts(stored("tasks.1", 1, epoch="e-2"), T0) is True


def epoch_gap(epoch: str, offset: int, channel: str = "tasks.1") -> dict[str, Any]:
    return {
        "type": "gap",
        "channel": channel,
        "epoch": epoch,
        "offset": offset,
        "reason": "epoch_changed",
    }


def kinds(actions: list[Action]) -> list[str]:
    """Each action as the gap/event sequence the connection would see."""
    out = []
    for action in actions:
        if isinstance(action, Deliver):
            out.append(f"event {action.event.epoch}:{action.event.offset}")
        elif isinstance(action, Send):
            message = json.loads(action.frame)
            out.append(f"{message['type']} {message.get('epoch')}:{message.get('offset')}")
    return out


@pytest.mark.parametrize("pattern", ["tasks.1", "tasks.>"])  # the fast path and the general one
def test_live_event_of_a_new_epoch_is_preceded_by_an_epoch_changed_gap(pattern: str) -> None:
    core, _ = opened()
    active(core, pattern, Position(EPOCH, 0) if pattern == "tasks.1" else None)
    assert core.accepts(stored("tasks.1", 1), T0) is True
    assert core.pending_gaps == []
    assert core.accepts(stored("tasks.1", 3, epoch="e-2"), T0) is True
    assert frames(core.take_gaps()) == [epoch_gap("e-2", 2)]  # UNI-DEL-19
    assert core.pending_gaps == []
    assert core.accepts(stored("tasks.1", 4, epoch="e-2"), T0) is True
    assert core.pending_gaps == []


def test_first_event_on_a_channel_never_seen_needs_no_epoch_gap() -> None:
    core, _ = opened()
    active(core, "tasks.>")
    assert core.accepts(stored("tasks.1", 1), T0) is True
    assert core.accepts(stored("tasks.2", 7, epoch="e-2"), T0) is True
    assert core.pending_gaps == []


def test_held_event_of_a_new_epoch_follows_its_gap_when_the_subscription_activates() -> None:
    core, _ = opened()
    subscribe(core, "tasks.>", rid="a", filter={"ne": ["skip", True]})
    core.subscribe_result("tasks.>")
    core.subscription_active("tasks.>")
    assert core.accepts(stored("tasks.1", 3), T0) is True
    subscribe(core, "tasks.*", rid="b")
    assert core.accepts(stored("tasks.1", 1, epoch="e-2", attrs={"skip": True}), T0) is False
    core.subscribe_result("tasks.*")
    assert kinds(core.subscription_active("tasks.*")) == ["gap e-2:0", "event e-2:1"]


def test_replayed_events_of_a_new_epoch_follow_their_gap() -> None:
    core, _ = opened()
    active(core, "tasks.>")
    assert core.accepts(stored("tasks.1", 3), T0) is True
    subscribe(core, "tasks.1", rid="b", since=T0)
    core.subscribe_result("tasks.1", Position("e-2", 2))
    events = (stored("tasks.1", 1, epoch="e-2"), stored("tasks.1", 2, epoch="e-2"))
    replay = Replay(Position("e-2", 2), events, None)
    actions = core.replay_actions("tasks.1", ChannelKey("acme", None, "tasks.1"), replay)
    assert kinds(actions) == ["gap e-2:0", "event e-2:1", "event e-2:2"]


def test_subscribed_head_in_a_new_epoch_is_followed_by_a_gap() -> None:
    core, _ = opened()
    active(core, "tasks.>")
    assert core.accepts(stored("tasks.1", 3), T0) is True
    subscribe(core, "tasks.1", rid="b")
    actions = core.subscribe_result("tasks.1", Position("e-2", 5))
    assert [m["type"] for m in frames(actions)] == ["subscribed", "gap"]
    assert frames(actions)[1] == epoch_gap("e-2", 5)
    assert core.accepts(stored("tasks.1", 6, epoch="e-2"), T0) is True
    assert core.pending_gaps == []


def test_replay_gap_for_a_new_epoch_is_not_repeated_before_the_next_event() -> None:
    core, _ = opened()
    active(core, "tasks.>")
    assert core.accepts(stored("tasks.1", 3), T0) is True
    subscribe(core, "tasks.1", rid="b", resume={"tasks.1": {"epoch": EPOCH, "offset": 3}})
    core.subscribe_result("tasks.1", Position("e-2", 2))
    replay = Replay(Position("e-2", 2), (), "epoch_changed")
    actions = core.replay_actions("tasks.1", ChannelKey("acme", None, "tasks.1"), replay)
    assert frames(actions) == [epoch_gap("e-2", 2)]
    assert core.subscription_active("tasks.1") == []
    assert core.accepts(stored("tasks.1", 3, epoch="e-2"), T0) is True
    assert core.pending_gaps == []


def test_event_views_are_cached_per_event_and_bounded() -> None:
    from unisock import session

    events = [stored("tasks.1", n) for n in range(1, 300)]
    views = [session.event_view(e) for e in events]
    assert len(session._view_cache) <= 256
    assert session.event_view(events[-1]) is views[-1]
    assert session.event_view(events[0]) is not views[0]
    assert session.event_view(events[0]).event.channel.name == "tasks.1"


def test_view_reports_the_connection_for_the_predicate() -> None:
    core, _ = new_core(connection_id="c9")
    assert core.view().state == "awaiting_hello"
    assert core.accepts(stored(), T0) is False
    send(core, {"type": "hello", "token": token()})
    active(core, "tasks.>")
    view = core.view()
    assert (view.tenant, view.sub, view.connection_id, view.state) == (
        "acme",
        "alice",
        "c9",
        "open",
    )
    assert view.expires_at_ms == T0 + 3_600_000
    assert [s.pattern.text for s in view.subscriptions] == ["tasks.>"]


# --- publish (UNI-PUB) ------------------------------------------------------------------------


def test_publish_starts_sequencing_with_a_complete_record() -> None:
    config = ServerConfig(coalescing_channels=("tasks.*",))
    core, _ = opened(config, connection_id="c1")
    actions = send(
        core,
        publish_msg(
            attrs={"priority": 2}, to=["bob"], exclude=["carol"], exclude_self=True, key="k1"
        ),
    )
    assert len(actions) == 1 and isinstance(actions[0], StartPublish)
    assert actions[0].request_id == "p1"
    record = actions[0].record
    assert record.key == ChannelKey("acme", None, "tasks.42")
    assert (record.event_type, record.message_id) == ("task.updated", "m-p1")
    assert record.data == {"status": "done"}
    assert record.attrs == {"priority": 2}
    assert (record.to, record.exclude) == (frozenset({"bob"}), frozenset({"carol"}))
    assert record.exclude_self is True
    assert record.coalesce_key == "k1"
    assert (record.publisher_sub, record.publisher_connection) == ("alice", "c1")


def test_only_a_publish_that_cannot_change_state_is_taken_while_publishes_await_replies() -> None:
    """UNI-TR-27: the server lets the core see a publish while earlier ones await their
    replies; anything else, or a publish that would close the connection, waits for them."""
    core, clock = new_core(ServerConfig(max_message_bytes=4096))
    publish = json.dumps(publish_msg())
    assert core.pipelined_publish(publish) is None  # no hello yet
    assert frames(send(core, {"type": "hello", "token": token(ttl_s=60)}))[0]["type"] == "welcome"
    decoded = core.pipelined_publish(publish)
    assert decoded == json.loads(publish)
    refused = json.dumps(publish_msg(channel="no such grant"))
    assert core.pipelined_publish(refused) == json.loads(refused)  # refused by receive_text
    [start] = core.receive_text(publish, decoded)  # not decoded again, the same outcome
    assert isinstance(start, StartPublish) and start.record.message_id == "m-p1"
    for other in (
        {"type": "subscribe", "id": "s1", "channel": "tasks.42"},
        {"type": "ping", "id": "k1"},
        ["publish"],
        {"type": ["publish"]},
    ):
        assert core.pipelined_publish(json.dumps(other)) is None
    assert core.pipelined_publish('{"type": "publish", ') is None  # not JSON
    assert core.pipelined_publish(json.dumps(publish_msg(data="x" * 4096))) is None  # 1009
    clock.now += 60_000
    assert core.pipelined_publish(publish) is None  # expired: 4101
    clock.now -= 60_000
    core.connection_closed()
    assert core.pipelined_publish(publish) is None


def test_coalescing_key_is_dropped_on_channels_that_do_not_coalesce() -> None:
    core, _ = opened()
    action = send(core, publish_msg(key="k1"))[0]
    assert isinstance(action, StartPublish)
    assert action.record.coalesce_key is None
    assert action.record.to is None and action.record.attrs is None


def test_server_rejects_publish_outside_grants() -> None:
    core, _ = opened(publish=["tasks.*"])
    error = error_of(send(core, publish_msg("news.1")))
    assert (error["code"], error["id"]) == ("forbidden", "p1")


def test_server_rejects_publish_to_a_pattern() -> None:
    core, _ = opened()
    assert error_of(send(core, publish_msg("tasks.*")))["code"] == "invalid_channel"


def test_private_channel_publish_resolves_the_owner() -> None:
    core, _ = opened()
    action = send(core, publish_msg("$me.inbox"))[0]
    assert isinstance(action, StartPublish)
    assert action.record.key == ChannelKey("acme", "alice", "$me.inbox")
    action = send(core, publish_msg("$me.inbox", rid="p2", user="alice"))[0]
    assert isinstance(action, StartPublish)
    assert action.record.key.owner == "alice"


def test_user_role_cannot_publish_to_another_users_private_channel() -> None:
    core, _ = opened()
    assert error_of(send(core, publish_msg("$me.inbox", user="bob")))["code"] == "forbidden"


def test_private_channel_publish_needs_a_grant() -> None:
    core, _ = opened(publish=["tasks.*"])
    assert error_of(send(core, publish_msg("$me.inbox")))["code"] == "forbidden"


def test_broadcaster_publishes_to_a_users_private_channel() -> None:
    core, _ = opened(broadcaster=True)
    action = send(core, publish_msg("$me.inbox", user="bob"))[0]
    assert isinstance(action, StartPublish)
    assert action.record.key == ChannelKey("acme", "bob", "$me.inbox")


def test_system_publish_needs_broadcaster_role_and_grant() -> None:
    user, _ = opened()
    assert error_of(send(user, publish_msg("$sys.maint")))["code"] == "forbidden"
    caster, _ = opened(broadcaster=True)
    action = send(caster, publish_msg("$sys.maint"))[0]
    assert isinstance(action, StartPublish)
    assert action.record.key == ChannelKey(None, None, "$sys.maint")
    assert error_of(send(caster, publish_msg("$sys.other")))["code"] == "forbidden"


@pytest.mark.parametrize("extra", [{"to": ["bob"]}, {"exclude": ["bob"]}, {"user": "bob"}])
def test_targeting_is_invalid_on_system_publishes(extra: dict[str, Any]) -> None:
    core, _ = opened(broadcaster=True)
    assert error_of(send(core, publish_msg("$sys.maint", **extra)))["code"] == "invalid_message"


def test_user_field_is_invalid_outside_private_channels() -> None:
    core, _ = opened()
    assert error_of(send(core, publish_msg(user="alice")))["code"] == "invalid_message"


def targets(field: str, users: list[str]) -> dict[str, Any]:
    return {field: users}


@pytest.mark.parametrize("field", ["to", "exclude"])
def test_server_rejects_more_targets_than_max_targets(field: str) -> None:
    core, _ = opened(ServerConfig(max_targets=2))
    assert isinstance(send(core, publish_msg(**targets(field, ["a", "b"])))[0], StartPublish)
    error = error_of(send(core, publish_msg(rid="p2", **targets(field, ["a", "b", "c"]))))
    assert error["code"] == "invalid_message"


def test_server_rejects_more_attrs_than_max_attrs() -> None:
    core, _ = opened(ServerConfig(max_attrs=1))
    assert isinstance(send(core, publish_msg(attrs={"a": 1}))[0], StartPublish)
    error = error_of(send(core, publish_msg(rid="p2", attrs={"a": 1, "b": 2})))
    assert error["code"] == "invalid_message"


TASK_SCHEMA = {
    "type": "object",
    "required": ["status"],
    "properties": {"status": {"enum": ["open", "done"]}},
}


def test_server_rejects_typed_event_data_naming_the_pointer() -> None:
    config = ServerConfig(event_types={"task.updated": TASK_SCHEMA})
    core, _ = opened(config)
    msg = publish_msg()
    msg["data"] = {"status": "lost"}
    error = refusal_of(core, send(core, msg))
    assert (error["code"], error["id"]) == ("invalid_event_data", "p1")
    assert error["details"] == {"pointer": "/data/status"}
    assert isinstance(send(core, publish_msg(rid="p2"))[0], StartPublish)


def test_typed_event_refusal_defers_to_dedup_so_a_retry_is_still_acknowledged() -> None:
    """UNI-PUB-24: idempotency (step 4) precedes the typed-event check (step 5)."""
    core, _ = opened(ServerConfig(event_types={"task.updated": TASK_SCHEMA}))
    msg = publish_msg()
    msg["data"] = {"status": "lost"}
    [action] = send(core, msg)
    assert isinstance(action, RefuseUnlessDuplicate)
    assert (action.request_id, action.message_id) == ("p1", msg["message_id"])


def refusal_of(core: SessionCore, actions: list[Action]) -> dict[str, Any]:
    """The error the adapter sends when the broker knows no earlier publish of the id."""
    [action] = actions
    assert isinstance(action, RefuseUnlessDuplicate), action
    return error_of(core.publish_failed(action.request_id, action.error))


def test_unregistered_event_type_is_accepted_in_open_mode_and_refused_in_strict_mode() -> None:
    core, _ = opened(ServerConfig(event_types={"other": TASK_SCHEMA}))
    assert isinstance(send(core, publish_msg())[0], StartPublish)
    strict, _ = opened(ServerConfig(event_types={"other": TASK_SCHEMA}, registry_mode="strict"))
    error = refusal_of(strict, send(strict, publish_msg()))
    assert (error["code"], error["id"]) == ("unknown_event_type", "p1")


def test_publish_over_the_rate_is_rate_limited_with_retry_after() -> None:
    core, clock = opened(ServerConfig(publish_rate_per_second=10, publish_rate_burst=2))
    assert isinstance(send(core, publish_msg(rid="a"))[0], StartPublish)
    assert isinstance(send(core, publish_msg(rid="b"))[0], StartPublish)
    error = error_of(send(core, publish_msg(rid="c")))
    assert (error["code"], error["id"], error["retry_after_ms"]) == ("rate_limited", "c", 100)
    assert core.state is State.OPEN
    clock.now += 100
    assert isinstance(send(core, publish_msg(rid="d"))[0], StartPublish)


def test_every_publish_frame_consumes_a_rate_token_even_when_refused() -> None:
    """UNI-PUB-24 and section 6.8: the rate limit is step 1, whatever fails later."""
    core, _ = opened(
        ServerConfig(publish_rate_per_second=1, publish_rate_burst=2), publish=["tasks.*"]
    )
    assert error_of(send(core, publish_msg("news.1")))["code"] == "forbidden"
    invalid = publish_msg()
    del invalid["message_id"]
    assert error_of(send(core, invalid))["code"] == "invalid_message"
    assert error_of(send(core, publish_msg()))["code"] == "rate_limited"


def test_only_messages_of_type_publish_consume_rate_tokens() -> None:
    """UNI-PUB-39: a malformed publish takes a token; other messages, valid or not, take none."""
    core, _ = opened(ServerConfig(publish_rate_per_second=1, publish_rate_burst=2))
    assert error_of(core.receive_text('{"type": "publish",'))["code"] == "invalid_json"
    assert error_of(send(core, {"id": "x", "channel": "tasks.1"}))["code"] == "invalid_message"
    assert error_of(send(core, {"type": "publsh", "id": "x"}))["code"] == "unknown_type"
    assert frames(send(core, {"type": "ping", "id": "k"}))[0]["type"] == "pong"
    assert error_of(send(core, publish_msg("Tasks.1", rid="a")))["code"] == "invalid_channel"
    assert isinstance(send(core, publish_msg(rid="b"))[0], StartPublish)
    assert error_of(send(core, publish_msg(rid="c")))["code"] == "rate_limited"


def test_publish_result_becomes_an_ack_and_failure_an_error() -> None:
    core, _ = opened()
    action = send(core, publish_msg())[0]
    assert isinstance(action, StartPublish)
    event = StoredEvent(action.record, EPOCH, 43, T0, "{}")
    assert only(core.publish_result("p1", PublishResult(event, duplicate=False))) == {
        "type": "ack",
        "id": "p1",
        "channel": "tasks.42",
        "message_id": "m-p1",
        "epoch": EPOCH,
        "offset": 43,
        "duplicate": False,
    }
    assert only(core.publish_result("p1", PublishResult(event, duplicate=True)))["duplicate"]
    error = error_of(core.publish_failed("p1", Unavailable(retry_after_ms=500)))
    assert (error["code"], error["retry_after_ms"]) == ("unavailable", 500)
    core.connection_closed()
    assert core.publish_result("p1", PublishResult(event, duplicate=False)) == []


# --- drain (UNI-CLOSE) ------------------------------------------------------------------------


def test_drain_announces_the_window_keeps_serving_and_closes_4300_after_it() -> None:
    config = ServerConfig(heartbeat_interval_ms=10**7, heartbeat_timeout_ms=10**7)
    core, _ = opened(config)
    active(core, "tasks.>")
    assert only(core.drain(5000, "deploy")) == {
        "type": "drain",
        "window_ms": 5000,
        "reason": "deploy",
    }
    assert core.state is State.DRAINING
    assert core.drain(1) == []
    assert core.accepts(stored("tasks.1", 1), T0) is True
    assert only(send(core, {"type": "ping"}))["type"] == "pong"
    assert core.next_deadline_ms() == T0 + 5000
    assert core.tick(T0 + 4999) == []
    assert core.tick(T0 + 5000) == [Close(4300, "drain;window_ms=5000")]  # UNI-CLOSE-11


def test_drain_uses_the_configured_window_by_default() -> None:
    core, _ = opened(ServerConfig(drain_window_ms=777))
    assert only(core.drain()) == {"type": "drain", "window_ms": 777}


def test_drain_before_hello_closes_4300_with_the_window() -> None:
    core, _ = new_core()
    assert core.drain(2000) == [Close(4300, "drain;window_ms=2000")]
    assert core.state is State.CLOSED


# --- configuration and registry ---------------------------------------------------------------


def test_config_defaults_match_the_wire_contract() -> None:
    payload = ServerConfig().welcome_payload()
    assert payload["heartbeat"] == {"interval_ms": 25000, "timeout_ms": 10000}
    assert payload["backoff"] == {
        "base_ms": 500,
        "cap_ms": 30000,
        "floor_ms": 250,
        "reset_after_ms": 10000,
    }
    assert payload["limits"] == {
        "max_message_bytes": 65536,
        "max_subscriptions": 100,
        "publish_rate": {"per_second": 50, "burst": 100},
        "max_queue": 1024,
        "max_connections_per_user": 5,
        "auth_timeout_ms": 10000,
        "max_filter_nodes": 32,
        "max_targets": 100,
        "max_attrs": 16,
    }
    assert payload["history"] == {"max_count": 1000, "max_age_ms": 300000}
    assert (payload["dedup_window_ms"], payload["refresh_warning_ms"]) == (120000, 60000)
    assert payload["features"] == ["coalescing", "system_namespace", "typed_events"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_queue": 0},
        {"heartbeat_interval_ms": True},
        {"backoff_floor_ms": -1},
        {"publish_rate_per_second": 0},
        {"registry_mode": "lenient"},
        {"features": ("teleport",)},
        {"coalescing_channels": ("Bad",)},
    ],
)
def test_config_refuses_invalid_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ServerConfig(**kwargs)


def test_config_origin_allowlist() -> None:
    config = ServerConfig(allowed_origins=("https://app.example",))
    assert config.origin_allowed(None)
    assert config.origin_allowed("https://app.example")
    assert not config.origin_allowed("https://evil.example")
    assert not ServerConfig().origin_allowed("https://app.example")
    assert ServerConfig(allowed_origins=("*",)).origin_allowed("https://any.example")


def test_config_parses_coalescing_patterns() -> None:
    patterns = ServerConfig(coalescing_channels=("tasks.*",)).coalescing_patterns()
    assert [p.text for p in patterns] == ["tasks.*"]


def test_event_type_registry_checks_data_and_escapes_pointers() -> None:
    schema = {"type": "object", "properties": {"a/b": {"type": "integer"}}}
    registry = EventTypeRegistry({"x": schema}, "strict")
    assert "x" in registry and "y" not in registry
    registry.check("x", {"a/b": 1})
    with pytest.raises(InvalidEventData) as info:
        registry.check("x", {"a/b": "one"})
    assert info.value.pointer == "/data/a~1b"
    with pytest.raises(UnknownEventType):
        registry.check("y", {})


def test_event_type_registry_refuses_invalid_schemas() -> None:
    with pytest.raises(Exception, match="not valid"):
        EventTypeRegistry({"x": {"type": "nonsense"}})


# --- token bucket -----------------------------------------------------------------------------


def test_token_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    bucket = TokenBucket(per_second=4, burst=2)
    assert bucket.try_take(0) is None
    assert bucket.try_take(0) is None
    assert bucket.try_take(0) == 250
    assert bucket.try_take(100) == 150
    assert bucket.try_take(250) is None
    assert bucket.try_take(10_000) is None
    assert bucket.try_take(10_000) is None
    assert bucket.try_take(10_000) == 250


def test_token_bucket_ignores_a_clock_that_steps_back() -> None:
    bucket = TokenBucket(per_second=1, burst=1)
    assert bucket.try_take(5000) is None
    assert bucket.try_take(1000) == 1000
    assert bucket.try_take(5999) == 1
    assert bucket.try_take(6000) is None


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0)])
def test_token_bucket_refuses_invalid_parameters(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


# --- the fan-out check equals the predicate (UNI-DEL) ------------------------------------------

_HIGH = {"eq": ["prio", "high"]}
_SUBSCRIPTIONS = st.lists(
    st.tuples(
        st.sampled_from(["tasks.1", "tasks.2", "tasks.*", "tasks.>", "$me.inbox"]),
        st.sampled_from([None, _HIGH, {"ne": ["prio", "high"]}]),
        st.booleans(),  # answered by the broker (active), or still being set up
    ),
    max_size=4,
    unique_by=lambda sub: sub[0],
)
_EVENTS = st.builds(
    lambda channel, tenant, owner, prio, to, exclude_self: stored(
        channel,
        tenant=tenant,
        owner=owner if channel.startswith("$me") else None,
        attrs={} if prio is None else {"prio": prio},
        to=to,
        exclude_self=exclude_self,
        publisher_connection="c1",
    ),
    st.sampled_from(["tasks.1", "tasks.2", "tasks.3", "$me.inbox"]),
    st.sampled_from(["acme", "globex"]),
    st.sampled_from(["alice", "bob"]),
    st.sampled_from([None, "high", "low"]),
    st.sampled_from([None, frozenset({"alice"}), frozenset({"bob"})]),
    st.booleans(),
)


@given(_SUBSCRIPTIONS, _EVENTS)
def test_session_accepts_exactly_the_events_the_predicate_delivers(
    subscriptions: list[tuple[str, dict[str, Any] | None, bool]], event: StoredEvent
) -> None:
    """``accepts`` and its shortcuts give should_deliver's answer over the active view."""
    core, clock = opened(subscribe=["tasks.>", "$me.>"])
    for channel, flt, done in subscriptions:
        extra = {} if flt is None else {"filter": flt}
        start = subscribe(core, channel, rid=f"s-{channel}", **extra)
        assert isinstance(start[0], StartSubscribe), start
        if done:
            head = Position(EPOCH, 0) if start[0].head is not None else None
            core.subscribe_result(channel, head)
            core.subscription_active(channel)
    expected = should_deliver(core.view(), event_view(event).event, clock.now)
    assert core.accepts(event, clock.now) is expected
