"""JSON limits (spec 1.4.1) and the core's last line of defence (UNI-TR-29..31, UNI-AUTH-26).

Each test pins one cause of a crafted message misbehaving: recursion on deep values, numbers
beyond binary64, lone surrogates from a message or a signed token, and exceptions that would
escape the core into the transport's default close.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest

from test_core_session import (
    SECRET,
    T0,
    closes,
    error_of,
    frames,
    new_core,
    opened,
    publish_msg,
    send,
)
from unisock import jsonlimits
from unisock.auth import AuthConfig, TokenVerifier
from unisock.errors import AuthFailed, InvalidJson
from unisock.messages import parse_client_message
from unisock.session import Close, InternalFailure, StartPublish
from unisock.state import State


def _nest(depth: int) -> str:
    """A ping whose deepest array is at ``depth`` (the ping object is depth 1)."""
    inner = depth - 1
    return '{"type":"ping","x":' + "[" * inner + "]" * inner + "}"


def test_nesting_up_to_64_is_accepted_and_65_is_invalid_json() -> None:
    parse_client_message(_nest(64))
    for depth in (65, 200, 979, 980, 981, 5000, 100_000):
        with pytest.raises(InvalidJson):
            parse_client_message(_nest(depth))


@pytest.mark.parametrize(
    ("number", "ok"),
    [
        ("1e400", False),
        ("-1e400", False),
        ("1" + "0" * 309, False),
        ("1.7976931348623159e308", False),
        ("1.7976931348623157e308", True),
        ("1" + "0" * 308, True),
        ("1e-400", True),
        ("9007199254740993", True),
    ],
)
def test_numbers_must_round_to_a_finite_binary64(number: str, ok: bool) -> None:
    text = '{"type":"ping","x":' + number + "}"
    if ok:
        parse_client_message(text)
    else:
        with pytest.raises(InvalidJson):
            parse_client_message(text)


@pytest.mark.parametrize(
    ("escaped", "ok"),
    [
        ("\\ud800", False),
        ("\\udc00", False),
        ("\\ude00\\ud83d", False),
        ("x\\ud83d", False),
        ("\\ud83d\\ude00", True),
        ("\\u00e9", True),
    ],
)
def test_lone_surrogates_are_invalid_json_in_values_and_member_names(
    escaped: str, ok: bool
) -> None:
    for text in (
        '{"type":"ping","nonce":"' + escaped + '"}',
        '{"type":"ping","x":{"' + escaped + '":1}}',
    ):
        if ok:
            parse_client_message(text)
        else:
            with pytest.raises(InvalidJson):
                parse_client_message(text)


def test_check_value_is_iterative_and_names_no_recursion() -> None:
    value: Any = 0
    for _ in range(50_000):
        value = [value]
    with pytest.raises(jsonlimits.JsonLimitError):
        jsonlimits.check_value(value)
    jsonlimits.check_value(value, max_nesting=60_000)  # no RecursionError however deep


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ('{"a": "' + "[" * 100 + '"}', True),  # brackets in a string are no nesting
        ('{"a": "' + "1" * 400 + '"}', True),  # nor are digits in a string a number
        ('{"a": "caf\u00e9 \u2603"}', True),
        ('{"a": "caf\u00e9 \ud800"}', False),  # non-ASCII text with an escaped lone one
        ('{"a": "\u00e9' + "\ud800" + '"}', False),
        ('{"a": "é' + chr(0xD800) + '"}', False),  # a raw lone surrogate in a str, no escape
        ('{"a": ' + "9" * 309 + "}", False),
        ('{"a": ' + "9" * 308 + "}", True),
    ],
)
def test_loads_judges_the_value_whether_or_not_the_text_looks_plain(text: str, ok: bool) -> None:
    """The shortcut for plain texts never lets a value past a limit the walk would catch."""
    if ok:
        jsonlimits.loads(text)
    else:
        with pytest.raises(jsonlimits.JsonLimitError):
            jsonlimits.loads(text)


def test_deep_filters_get_invalid_filter_or_invalid_json_and_the_connection_stays() -> None:
    core, _ = opened()
    for op, depth, code in (
        ("not", 62, "invalid_filter"),
        ("and", 31, "invalid_filter"),
        ("not", 256, "invalid_json"),
        ("and", 128, "invalid_json"),
    ):
        node: Any = {"eq": ["n", 1]}
        for _ in range(depth - 1):
            node = {"not": node} if op == "not" else {op: [node]}
        msg = {"type": "subscribe", "id": "s1", "channel": "tasks.>", "filter": node}
        error = error_of(send(core, msg))
        assert error["code"] == code, (op, depth, error)
        assert core.state is State.OPEN


def test_publish_data_at_the_limit_is_sequenced_and_deeper_is_invalid_json() -> None:
    core, _ = opened()
    data: Any = 0
    for _ in range(62):  # the publish object is depth 1, data's outer array depth 2
        data = [data]
    actions = send(core, publish_msg(data=data))
    assert [type(a) for a in actions] == [StartPublish]
    text = json.dumps(publish_msg(data="D")).replace('"D"', "[" * 980 + "]" * 980)
    actions = core.receive_text(text)
    assert error_of(actions)["code"] == "invalid_json"
    assert not any(isinstance(a, StartPublish) for a in actions)  # nothing sequenced


def _signed(payload: bytes) -> str:
    return jwt.api_jws.encode(payload, SECRET, algorithm="HS256")


def _claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "tenant": "acme", "exp": T0 // 1000 + 3600, **extra}


@pytest.mark.parametrize(
    "payload",
    [
        json.dumps(_claims(sub="\ud800x")).encode(),
        json.dumps(_claims(sid="tab\udfff")).encode(),
        json.dumps(_claims()).encode()[:-1] + b',"sid":"\xed\xa0\x80"}',
        json.dumps(_claims()).encode()[:-1] + b',"sid":"\xff"}',
        json.dumps(_claims()).encode()[:-1] + b',"x":1e400}',
        json.dumps(_claims()).encode()[:-1] + b',"x":' + b"[" * 70 + b"]" * 70 + b"}",
        json.dumps(_claims()).encode()[:-1] + b',"x":' + b"[" * 3000 + b"]" * 3000 + b"}",
    ],
    ids=[
        "sub-escape",
        "sid-escape",
        "raw-surrogate",
        "not-utf8",
        "1e400",
        "depth-71",
        "depth-3001",
    ],
)
def test_token_outside_the_json_limits_is_rejected_with_4100(payload: bytes) -> None:
    verifier = TokenVerifier(AuthConfig(hs256_secret=SECRET))
    with pytest.raises(AuthFailed):
        verifier.verify(_signed(payload), T0 / 1000)
    core, _ = new_core()
    actions = send(core, {"type": "hello", "token": _signed(payload)})
    assert closes(actions) == (4100, "auth_failed")
    assert frames(actions) == []


def test_a_surrogate_pair_in_a_token_reaches_welcome_intact() -> None:
    core, _ = new_core()
    payload = json.dumps(_claims(sub="\U0001f600")).encode()
    welcome = frames(send(core, {"type": "hello", "token": _signed(payload)}))[0]
    assert welcome["session"]["sub"] == "\U0001f600"


def test_an_exception_anywhere_in_the_core_closes_1011_not_the_transport_default() -> None:
    core, _ = opened()
    boom = RecursionError("deep")

    def explode(text: str, decoded: Any) -> Any:
        raise boom

    core._receive_text = explode  # type: ignore[method-assign]
    actions = core.receive_text('{"type":"ping"}')
    assert actions == [Close(1011, "internal_error"), InternalFailure(boom)]
    assert core.state is State.CLOSED
