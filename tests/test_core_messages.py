"""Wire messages, the client parser, the encoders and the error tree (UNI-TR, UNI-ERR)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from unisock.broker import ChannelKey, Position, PublishRecord
from unisock.closecodes import close_name, parse_close_reason
from unisock.errors import (
    AuthFailed,
    CloseError,
    Forbidden,
    InternalError,
    InvalidChannel,
    InvalidEventData,
    InvalidFilter,
    InvalidJson,
    InvalidMessage,
    InvalidPosition,
    LocalError,
    MessageInvariantError,
    PeerError,
    RateLimited,
    ReplyError,
    RequestError,
    ServiceError,
    ServiceRestart,
    Unavailable,
    UnisockError,
    UnknownType,
    error_classes,
)
from unisock.messages import (
    Ack,
    Drain,
    Error,
    Event,
    Gap,
    Hello,
    Ping,
    Pong,
    Publish,
    Refresh,
    Refreshed,
    SessionInfo,
    Subscribe,
    Subscribed,
    TokenExpiring,
    Unsubscribe,
    Unsubscribed,
    Welcome,
    add_coalesced,
    encode,
    encode_ack,
    encode_event_frame,
    parse_client_message,
)
from unisock.resources import load_json
from unisock.schemas import validate_server_message

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl"


def _parse(obj: Any) -> Any:
    return parse_client_message(json.dumps(obj))


def _record(**kw: Any) -> PublishRecord:
    fields: dict[str, Any] = {
        "key": ChannelKey("acme", None, "tasks.42"),
        "event_type": "task.updated",
        "data": {"status": "done", "name": "café"},
        "message_id": "m1",
        "attrs": {"priority": 2},
        "to": None,
        "exclude": None,
        "exclude_self": False,
        "coalesce_key": None,
        "publisher_sub": "alice",
        "publisher_connection": "c1",
    }
    fields.update(kw)
    return PublishRecord(**fields)


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        Hello(token=TOKEN, client={"name": "web", "version": "1"}, id="h1"),
        Hello(token=TOKEN),
        Refresh(id="r1", token=TOKEN),
        Subscribe(
            id="s1",
            channel="tasks.>",
            filter={"eq": ["$event", "task.updated"]},
            from_={"tasks.42": Position("e-1", 17)},
            since=1764120000000,
        ),
        Subscribe(id="s2", channel="$me"),
        Unsubscribe(id="u1", channel="tasks.>"),
        Publish(
            id="p1",
            channel="tasks.42",
            event="task.updated",
            data={"x": [1, 2]},
            message_id="m1",
            attrs={"priority": 2},
            to=("bob",),
            exclude=("carol",),
            exclude_self=True,
            key="task-42",
        ),
        Publish(id="p2", channel="$me.inbox", event="note", data=None, message_id="m", user="u"),
        Ping(),
        Ping(id="q", nonce="n"),
        Pong(nonce="n"),
    ],
)
def test_client_messages_round_trip_through_encode_and_parse(message: Any) -> None:
    assert parse_client_message(encode(message)) == message


def test_parser_keeps_finite_floats() -> None:
    message = _parse(
        {
            "type": "publish",
            "id": "p",
            "channel": "a",
            "event": "e",
            "data": {"x": 1.5e300},
            "message_id": "m",
        }
    )
    assert message.data == {"x": 1.5e300}


def test_parser_ignores_unknown_fields() -> None:
    assert _parse({"type": "ping", "future": {"x": 1}}) == Ping()
    assert _parse({"type": "ping", "channel": "Not Checked"}) == Ping()


@pytest.mark.parametrize(
    "text", ["{", "", "nul", "[1,", "NaN", '{"a": Infinity}', "1" * 5000, '{"a": 1e400}']
)
def test_parser_rejects_invalid_json(text: str) -> None:
    with pytest.raises(InvalidJson) as info:
        parse_client_message(text)
    assert info.value.to_message() == {
        "type": "error",
        "code": "invalid_json",
        "message": "the frame is not valid JSON",
    }


def test_parser_turns_deep_nesting_into_invalid_json_not_a_crash() -> None:
    with pytest.raises(InvalidJson):
        parse_client_message("[" * 100_000 + "]" * 100_000)


@pytest.mark.parametrize("text", ["[]", '"hello"', "3", "null"])
def test_parser_rejects_non_object(text: str) -> None:
    with pytest.raises(InvalidMessage, match="object"):
        parse_client_message(text)


def test_parser_rejects_missing_or_non_string_type_keeping_readable_id() -> None:
    with pytest.raises(InvalidMessage) as info:
        _parse({"id": "x1", "type": 3})
    assert info.value.to_message()["id"] == "x1"
    with pytest.raises(InvalidMessage):
        _parse({"id": "x1"})


def test_parser_reports_unknown_type_with_the_id() -> None:
    with pytest.raises(UnknownType) as info:
        _parse({"type": "teleport", "id": "t1"})
    assert info.value.to_message() == {
        "type": "error",
        "id": "t1",
        "code": "unknown_type",
        "message": "unknown message type",
    }


@pytest.mark.parametrize("rid", ["", "x" * 65, 7, None])
def test_parser_does_not_echo_an_unreadable_id(rid: Any) -> None:
    with pytest.raises(UnknownType) as info:
        _parse({"type": "teleport", "id": rid})
    assert "id" not in info.value.to_message()


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "subscribe", "id": "s", "channel": "Tasks"},
        {"type": "subscribe", "id": "s", "channel": "a..b"},
        {"type": "unsubscribe", "id": "s", "channel": "a.>.b"},
        {
            "type": "publish",
            "id": "s",
            "channel": "tasks.*",
            "event": "e",
            "data": 1,
            "message_id": "m",
        },
        {
            "type": "publish",
            "id": "s",
            "channel": "tasks/1",
            "event": "e",
            "data": 1,
            "message_id": "m",
        },
    ],
)
def test_parser_reports_bad_channel_as_invalid_channel(obj: dict[str, Any]) -> None:
    with pytest.raises(InvalidChannel) as info:
        _parse(obj)
    assert info.value.request_id == "s"


def test_parser_reports_bad_filter_as_invalid_filter() -> None:
    obj = {"type": "subscribe", "id": "s", "channel": "a", "filter": {"eq": ["x", 1], "ne": []}}
    with pytest.raises(InvalidFilter):
        _parse(obj)
    many = {"and": [{"exists": f"a{i}"} for i in range(3)]}
    with pytest.raises(InvalidFilter):
        parse_client_message(
            json.dumps({"type": "subscribe", "id": "s", "channel": "a", "filter": many}),
            max_filter_nodes=3,
        )
    parse_client_message(
        json.dumps({"type": "subscribe", "id": "s", "channel": "a", "filter": many}),
        max_filter_nodes=4,
    )


def test_parser_reports_non_channel_resume_key_as_invalid_position() -> None:
    obj = {
        "type": "subscribe",
        "id": "s",
        "channel": "a.>",
        "from": {"a.*": {"epoch": "e", "offset": 1}},
    }
    with pytest.raises(InvalidPosition):
        _parse(obj)


@pytest.mark.parametrize(
    ("obj", "pointer"),
    [
        ({"type": "subscribe", "id": "s"}, "'channel' is a required property"),
        ({"type": "subscribe", "id": "s", "channel": "a", "since": -1}, "/since"),
        (
            {
                "type": "publish",
                "id": "p",
                "channel": "a",
                "event": "E",
                "data": 1,
                "message_id": "m",
            },
            "/event",
        ),
        (
            {
                "type": "publish",
                "id": "p",
                "channel": "a",
                "event": "e",
                "data": 1,
                "message_id": "m",
                "attrs": {"Bad": 1},
            },
            "/attrs",
        ),
        ({"type": "ping", "nonce": "n" * 65}, "/nonce"),
        ({"type": "unsubscribe", "channel": "a"}, "'id' is a required property"),
    ],
)
def test_parser_reports_schema_violations_as_invalid_message(
    obj: dict[str, Any], pointer: str
) -> None:
    with pytest.raises(InvalidMessage) as info:
        _parse(obj)
    assert pointer in info.value.message
    assert len(info.value.message) <= 200


def test_parser_truncates_long_schema_reasons() -> None:
    with pytest.raises(InvalidMessage) as info:
        _parse(
            {
                "type": "publish",
                "id": "p",
                "channel": "a",
                "event": "e",
                "data": 1,
                "message_id": "m",
                "key": "k" * 300,
            }
        )
    assert info.value.message.endswith("...")
    assert len(info.value.message) == 200


@pytest.mark.parametrize("kind", ["hello", "refresh"])
def test_parser_never_quotes_a_token_in_errors(kind: str) -> None:
    secret_token = "not a jwt but secret"
    with pytest.raises(InvalidMessage) as info:
        _parse({"type": kind, "id": "r", "token": secret_token})
    assert secret_token not in json.dumps(info.value.to_message())


def test_token_messages_redact_the_token_in_repr() -> None:
    assert TOKEN not in repr(Hello(token=TOKEN))
    assert TOKEN not in repr(Refresh(id="r", token=TOKEN))


def test_parser_raises_only_request_errors_for_odd_input() -> None:
    samples = [
        '{"type":"subscribe","id":"s","channel":"a","from":{"a":{"epoch":"e","offset":-1}}}',
        '{"type":"publish","id":"p","channel":"a","event":"e","data":1,"message_id":"m","to":[]}',
        '{"type":"hello","token":""}',
        "\ud800",
    ]
    for text in samples:
        with pytest.raises(RequestError):
            parse_client_message(text)


def test_parser_maps_dataclass_invariant_failures_to_invalid_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import unisock.messages as messages

    class Lenient:
        def iter_errors(self, obj: object) -> list[object]:
            return []

    monkeypatch.setattr(messages, "validator_for", lambda name: Lenient())
    with pytest.raises(InvalidMessage, match="malformed") as info:
        _parse({"type": "refresh", "id": "r", "token": ""})
    assert info.value.request_id == "r"


# --- invariants -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: Ping(id=""),
        lambda: Ping(nonce="n" * 65),
        lambda: Pong(id="x" * 65),
        lambda: Pong(nonce="n" * 65),
        lambda: Hello(token=""),
        lambda: Subscribe(id="s", channel=""),
        lambda: Subscribe(id="s", channel="a", since=-1),
        lambda: Subscribe(id="s", channel="a", from_={"a": Position("e", -1)}),
        lambda: Publish(id="p", channel="a", event="e", data=1, message_id="m", to=()),
        lambda: Publish(id="p", channel="a", event="e", data=1, message_id="m", exclude_self=1),  # type: ignore[arg-type]
        lambda: Unsubscribed(channel="a", reason="bored"),
        lambda: Unsubscribed(channel="a", reason="revoked", id="u1"),
        lambda: Ack(id="p", channel="a", message_id="m", epoch="e", offset=0),
        lambda: Event(
            channel="a",
            epoch="e",
            offset=5,
            event="x",
            data=1,
            message_id="m",
            ts=1,
            coalesced=(3, 2),
        ),
        lambda: Event(
            channel="a",
            epoch="e",
            offset=5,
            event="x",
            data=1,
            message_id="m",
            ts=1,
            coalesced=(5,),
        ),
        lambda: Event(
            channel="a", epoch="e", offset=5, event="x", data=1, message_id="m", ts=1, coalesced=()
        ),
        lambda: Gap(channel="a", epoch="e", offset=1, reason="lost"),
        lambda: Error(code="forbidden", message="m", retry_after_ms=5),
        lambda: Error(code="rate_limited", message="m"),
        lambda: Error(code="unavailable", message="m", retry_after_ms=True),
        lambda: Drain(window_ms=-1),
        lambda: TokenExpiring(expires_at=-5),
        lambda: Refreshed(id="r", expires_at=1.5),  # type: ignore[arg-type]
        lambda: Subscribed(id="s", channel="a", ts=1, position=Position("e", -1)),
        lambda: Welcome(
            connection_id="c",
            session=SessionInfo(tenant="a", sub="b", role="user", expires_at=1),
            settings={},
            protocol="unisock.v2",
        ),
    ],
)
def test_messages_check_their_invariants(build: Any) -> None:
    with pytest.raises(MessageInvariantError):
        build()


def test_invariant_errors_are_local_value_errors() -> None:
    assert issubclass(MessageInvariantError, LocalError)
    assert issubclass(MessageInvariantError, ValueError)


# --- encoding ---------------------------------------------------------------------------------

SERVER_SAMPLES: list[Any] = [
    Welcome(
        connection_id="c1",
        session=SessionInfo(tenant="acme", sub="alice", sid="tab-1", role="user", expires_at=9),
        settings={
            "heartbeat": {"interval_ms": 1, "timeout_ms": 1},
            "backoff": {"base_ms": 1, "cap_ms": 1, "floor_ms": 1, "reset_after_ms": 1},
            "limits": {
                "max_message_bytes": 1,
                "max_subscriptions": 1,
                "publish_rate": {"per_second": 1, "burst": 1},
                "max_queue": 1,
                "max_connections_per_user": 1,
                "auth_timeout_ms": 1,
                "max_filter_nodes": 1,
                "max_targets": 1,
                "max_attrs": 1,
            },
            "history": {"max_count": 1, "max_age_ms": 1},
            "dedup_window_ms": 1,
            "refresh_warning_ms": 1,
            "features": ["coalescing"],
        },
    ),
    Refreshed(id="r1", expires_at=5),
    Subscribed(id="s1", channel="tasks.42", ts=1, position=Position("e", 0)),
    Subscribed(id="s1", channel="tasks.>", ts=1),
    Unsubscribed(channel="tasks.>", reason="revoked"),
    Unsubscribed(channel="tasks.>", reason="requested", id="u1"),
    Ack(id="p1", channel="tasks.42", message_id="m", epoch="e", offset=3, duplicate=True),
    Event(
        channel="tasks.42",
        epoch="e",
        offset=3,
        event="x",
        data=None,
        message_id="m",
        ts=1,
        attrs={"a": 1},
        publisher="alice",
        coalesced=(1, 2),
    ),
    Gap(channel="tasks.42", epoch="e", offset=0, reason="epoch_changed"),
    Error(code="rate_limited", message="slow down", id="p1", retry_after_ms=10),
    Error(code="invalid_event_data", message="bad", details={"pointer": "/data/x"}),
    TokenExpiring(expires_at=5),
    Drain(window_ms=1000, reason="deploy"),
    Drain(window_ms=0),
    Ping(),
    Pong(id="q", nonce="n"),
]


@pytest.mark.parametrize("message", SERVER_SAMPLES)
def test_server_messages_encode_to_schema_valid_compact_json(message: Any) -> None:
    text = encode(message)
    assert validate_server_message(json.loads(text)) == []
    assert ", " not in text and ": " not in text
    assert "null" not in text or isinstance(message, Event)


def test_encode_omits_absent_optionals_and_keeps_unicode() -> None:
    assert encode(Ping()) == '{"type":"ping"}'
    assert encode(Unsubscribed(channel="a", reason="revoked")) == (
        '{"type":"unsubscribed","channel":"a","reason":"revoked"}'
    )
    text = encode(Publish(id="p", channel="a", event="e", data="café", message_id="m"))
    assert "café" in text
    assert "exclude_self" not in text


def test_welcome_omits_sid_when_absent() -> None:
    info = SessionInfo(tenant="acme", sub="alice", role="user", expires_at=1)
    assert "sid" not in info.to_wire()


def test_event_frame_is_identical_to_the_encoded_event_message() -> None:
    record = _record()
    frame = encode_event_frame(record, "e-1", 43, 1764120000456)
    expected = Event(
        channel="tasks.42",
        epoch="e-1",
        offset=43,
        event="task.updated",
        data=record.data,
        message_id="m1",
        ts=1764120000456,
        attrs={"priority": 2},
        publisher="alice",
    )
    assert frame == encode(expected)
    assert validate_server_message(json.loads(frame)) == []
    assert "café" in frame


@pytest.mark.parametrize(
    ("channel", "message_id", "duplicate"),
    [("tasks.42", "m1", False), ("$me.inbox", 'caf\u00e9 "1"', True), ("a", "\u2028", False)],
)
def test_ack_fast_encoding_is_identical_to_the_encoded_ack_message(
    channel: str, message_id: str, duplicate: bool
) -> None:
    """The ack written per publish has the bytes of :class:`Ack` encoded (UNI-PUB)."""
    frame = encode_ack("p1", channel, message_id, "e-1", 43, duplicate)
    expected = Ack(
        id="p1",
        channel=channel,
        message_id=message_id,
        epoch="e-1",
        offset=43,
        duplicate=duplicate,
    )
    assert frame == encode(expected)
    assert validate_server_message(json.loads(frame)) == []


def test_event_frame_uses_the_wire_form_of_private_channels() -> None:
    record = _record(key=ChannelKey("acme", "bob", "$me.inbox"), attrs=None)
    frame = json.loads(encode_event_frame(record, "e", 1, 2))
    assert frame["channel"] == "$me.inbox"
    assert "attrs" not in frame
    assert "bob" not in json.dumps(frame)


def test_event_frame_copies_attrs_the_publish_carried_even_when_empty() -> None:
    """UNI-PUB-14: ``attrs`` are copied when the publish had them, ``{}`` included."""
    frame = json.loads(encode_event_frame(_record(attrs={}), "e", 1, 2))
    assert frame["attrs"] == {}
    event = Event(
        channel="a", epoch="e", offset=1, event="x", data=1, message_id="m", ts=1, attrs={}
    )
    assert json.loads(encode(event))["attrs"] == {}


def test_add_coalesced_appends_the_replaced_offsets() -> None:
    frame = encode_event_frame(_record(), "e", 43, 2)
    merged = add_coalesced(frame, [40, 41])
    assert json.loads(merged)["coalesced"] == [40, 41]
    assert json.loads(merged)["offset"] == 43
    assert validate_server_message(json.loads(merged)) == []
    assert add_coalesced(frame, []) == frame


def test_error_message_round_trips_from_an_error_dict() -> None:
    error = RateLimited("slow", retry_after_ms=7, request_id="p")
    assert Error.from_dict(error.to_message()).to_wire() == error.to_message()


# --- error tree -------------------------------------------------------------------------------


def test_error_classes_cover_exactly_the_registry_codes() -> None:
    registry = {entry["code"] for entry in load_json("v1/registries/error-codes.json")["codes"]}
    assert set(error_classes()) == registry


def test_close_errors_carry_registry_codes_and_names() -> None:
    found: dict[int, str] = {}
    pending: list[type[CloseError]] = list(CloseError.__subclasses__())
    while pending:
        klass = pending.pop()
        pending.extend(klass.__subclasses__())
        found[klass.close_code] = klass.close_name
    assert found == {
        4000: "protocol_violation",
        4100: "auth_failed",
        4101: "token_expired",
        4102: "auth_timeout",
        4200: "slow_consumer",
        4201: "heartbeat_timeout",
        1009: "message_too_big",
        1003: "unsupported_data",
        1012: "service_restart",
    }
    for code, name in found.items():
        assert close_name(code) == name


def test_service_restart_reason_carries_its_window() -> None:
    reason = ServiceRestart(window_ms=3000).close_reason()
    assert reason == "service_restart;window_ms=3000"
    assert parse_close_reason(reason).window_ms == 3000


def test_close_reason_carries_retry_after_when_given() -> None:
    assert AuthFailed().close_reason() == "auth_failed"
    assert AuthFailed("x", retry_after_ms=50).close_reason() == "auth_failed;retry_after_ms=50"


def test_peer_local_and_service_errors_are_distinct_branches() -> None:
    assert issubclass(Forbidden, RequestError)
    assert issubclass(Forbidden, PeerError)
    assert issubclass(AuthFailed, PeerError)
    assert not issubclass(InternalError, PeerError)
    assert issubclass(InternalError, ServiceError)
    assert issubclass(Unavailable, ReplyError)
    assert not issubclass(LocalError, PeerError)
    for klass in (PeerError, LocalError, ServiceError):
        assert issubclass(klass, UnisockError)


@pytest.mark.parametrize("klass", [error_classes()[code] for code in sorted(error_classes())])
def test_every_error_becomes_a_schema_valid_error_message(klass: type[ReplyError]) -> None:
    error: ReplyError
    if klass is RateLimited:
        error = RateLimited(retry_after_ms=5)
    elif klass is Unavailable:
        error = Unavailable(retry_after_ms=5)
    elif klass is InvalidEventData:
        error = InvalidEventData(pointer="/data/a")
    elif klass is InternalError:
        error = InternalError()
    else:
        error = klass()
    message = error.to_message("r1")
    assert message["code"] == klass.code
    assert message["id"] == "r1"
    assert message["message"]
    assert validate_server_message(message) == []


def test_retry_after_is_only_on_rate_limited_and_unavailable() -> None:
    assert RateLimited(retry_after_ms=9).to_message()["retry_after_ms"] == 9
    assert Unavailable("broker down", retry_after_ms=3).to_message()["retry_after_ms"] == 3
    assert "retry_after_ms" not in Forbidden().to_message()


def test_invalid_event_data_names_the_pointer_only() -> None:
    message = InvalidEventData("bad data", pointer="/data/status", request_id="p1").to_message()
    assert message["details"] == {"pointer": "/data/status"}
    assert message["id"] == "p1"


def test_internal_error_has_no_detail_on_the_wire() -> None:
    message = InternalError("p1").to_message()
    assert message == {
        "type": "error",
        "id": "p1",
        "code": "internal_error",
        "message": "internal error",
    }


def test_to_message_request_id_overrides_the_recorded_one() -> None:
    assert Forbidden(request_id="a").to_message("b")["id"] == "b"
    assert Forbidden(request_id="a").to_message()["id"] == "a"


@pytest.mark.parametrize(
    "text",
    ['{"type":"ping","id":"\\ud800"}', '{"type":"ping","nonce":"ok","x":["\\udfff"]}'],
)
def test_parser_reports_lone_surrogates_as_invalid_json(text: str) -> None:
    """A lone surrogate parses as JSON but is no Unicode string; it can never be echoed."""
    with pytest.raises(InvalidJson):
        parse_client_message(text)
