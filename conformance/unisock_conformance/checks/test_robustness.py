"""Robustness (spec 1.4.1, 3.3, 5.5, 12): hostile input gets its specified answer, nothing else.

These checks send what a stranger on the internet would: values at and past the JSON limits,
deep filters, tokens with lone surrogates, numbers where binary64 and exact integers part.
Each is graded by the rule it exercises, and after each the connection (and a fresh one)
must still be served: a crafted message ends at most its own connection, with a registry
close code and a reason that follows the grammar.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest

from unisock_conformance.checks.conftest import Connect, User
from unisock_conformance.deployment import Deployment, Names, not_run, require_secret
from unisock_conformance.hostile import stream
from unisock_conformance.wire import Conn

Frame = dict[str, Any]

MAX_NESTING = 64  # UNI-TR-29: the top-level object has depth 1


def _nested(depth: int, leaf: Any = 0) -> Any:
    """An array nesting of ``depth`` levels around ``leaf`` (depth 1 = ``[leaf]``)."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def _nested_text(depth: int) -> str:
    """A ``ping`` whose unknown member nests arrays so that the deepest is at ``depth``."""
    inner = depth - 1  # the ping object itself is depth 1
    return '{"type":"ping","id":"deep","x":' + "[" * inner + "0" + "]" * inner + "}"


def _ping(conn: Conn, ident: str = "fence") -> None:
    reply = conn.request({"type": "ping", "id": ident})
    assert reply["type"] == "pong", f"expected pong for ping {ident!r}, got {reply}"


def _invalid_json(conn: Conn, text: str, case: str) -> None:
    """``text`` is answered with ``invalid_json`` without ``id``, and the connection stays."""
    conn.send(text)
    error = conn.expect("error")
    assert error["code"] == "invalid_json", f"{case}: expected invalid_json, got {error}"
    assert "id" not in error, f"{case}: no id is readable from a refused payload: {error}"
    _ping(conn)


def _serves(user: User, names: Names) -> None:
    """Another connection is still welcomed and answered (UNI-SEC-13, UNI-ERR-10)."""
    fresh = user(names.tenant(91), names.user(91))
    _ping(fresh, "alive")


@pytest.mark.requirement("UNI-TR-29", "UNI-ERR-5")
def test_server_accepts_nesting_depth_64_and_refuses_65_as_invalid_json(
    user: User, names: Names
) -> None:
    conn = user(names.tenant(), names.user())
    conn.send(_nested_text(MAX_NESTING))
    reply = conn.expect(None, where=lambda f: f.get("id") == "deep" and f.get("type") != "ping")
    assert reply["type"] == "pong", f"depth {MAX_NESTING} must be accepted, got {reply}"
    for depth in (MAX_NESTING + 1, 200, 1000, 5000):
        _invalid_json(conn, _nested_text(depth), f"depth {depth}")
    _serves(user, names)


@pytest.mark.requirement("UNI-TR-30", "UNI-ERR-5")
@pytest.mark.parametrize(
    ("number", "accepted"),
    [
        ("1e400", False),
        ("-1e400", False),
        ("1" + "0" * 400, False),
        ("1.7976931348623159e308", False),
        ("1.7976931348623157e308", True),
        ("1e-400", True),
        ("-0.0", True),
        ("9007199254740993", True),
    ],
)
def test_server_refuses_numbers_beyond_binary64_as_invalid_json(
    user: User, names: Names, number: str, accepted: bool
) -> None:
    conn = user(names.tenant(), names.user())
    text = '{"type":"ping","id":"num","x":' + number + "}"
    if accepted:
        conn.send(text)
        reply = conn.expect(None, where=lambda f: f.get("id") == "num" and f.get("type") != "ping")
        assert reply["type"] == "pong", f"{number} rounds to a finite binary64, got {reply}"
    else:
        _invalid_json(conn, text, number)


@pytest.mark.requirement("UNI-TR-31", "UNI-ERR-5")
@pytest.mark.parametrize(
    ("text", "accepted"),
    [
        ('{"type":"ping","id":"s","nonce":"\\ud800"}', False),
        ('{"type":"ping","id":"s","nonce":"\\udc00x"}', False),
        ('{"type":"ping","id":"s","nonce":"\\ude00\\ud83d"}', False),
        ('{"type":"ping","id":"s","nonce":"a\\ud83d"}', False),
        ('{"type":"ping","id":"s","x":{"\\udfff":1}}', False),
        ('{"type":"ping","id":"s","nonce":"\\ud83d\\ude00"}', True),
    ],
    ids=["high-alone", "low-alone", "reversed-pair", "high-at-end", "member-name", "pair"],
)
def test_server_refuses_lone_surrogates_as_invalid_json(
    user: User, names: Names, text: str, accepted: bool
) -> None:
    conn = user(names.tenant(), names.user())
    if accepted:
        conn.send(text)
        reply = conn.expect(None, where=lambda f: f.get("id") == "s" and f.get("type") != "ping")
        assert reply["type"] == "pong", f"a surrogate pair is one character, got {reply}"
        assert reply.get("nonce") == "\U0001f600", f"the pair was not echoed intact: {reply}"
    else:
        _invalid_json(conn, text, text)


@pytest.mark.requirement("UNI-LC-6", "UNI-TR-29", "UNI-TR-31")
@pytest.mark.parametrize("case", ["depth-65", "lone-surrogate", "huge-number"])
def test_server_closes_4000_for_a_hello_beyond_the_json_limits(
    connect: Connect, deployment: Deployment, names: Names, case: str
) -> None:
    token = deployment.mint(names.tenant(), names.user())
    texts = {
        "depth-65": '{"type":"hello","token":"' + token + '","x":' + "[" * 64 + "]" * 64 + "}",
        "lone-surrogate": '{"type":"hello","token":"' + token + '","x":"\\ud800"}',
        "huge-number": '{"type":"hello","token":"' + token + '","x":1e400}',
    }
    conn = connect(hello=False)
    conn.send(texts[case])
    code, reason = conn.expect_close()
    assert code == 4000, f"{case}: closed with {code} {reason!r}, expected 4000"
    assert conn.frames == [], f"{case}: only a close may follow an invalid hello: {conn.frames}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _raw_payload(claims: dict[str, Any], case: str) -> bytes:
    text = json.dumps(claims, separators=(",", ":")).encode()
    payloads = {
        "sub-lone-surrogate": text.replace(
            f'"sub":"{claims["sub"]}"'.encode(), b'"sub":"\\ud800x"'
        ),
        "sid-lone-surrogate": text[:-1] + b',"sid":"tab\\udfff"}',
        "raw-surrogate-octets": text[:-1] + b',"sid":"tab\xed\xa0\x80"}',  # U+D800 as UTF-8
        "not-utf8": text[:-1] + b',"sid":"tab\xff\xfe"}',
    }
    return payloads[case]


def _from_token_command(deployment: Deployment, claims: dict[str, Any], case: str) -> str:
    """The case signed by the deployment's token command: only the lone surrogates can be
    asked of it (as JSON escapes); octets that are no UTF-8 are no claims it could be sent."""
    if case == "sub-lone-surrogate":
        claims["sub"], escape = "\ud800x", b"\\ud800"
    elif case == "sid-lone-surrogate":
        claims["sid"], escape = "tab\udfff", b"\\udfff"
    else:
        not_run(
            f"{case}: a payload that is not UTF-8 cannot be asked of a token command (--secret)"
        )
    token = deployment.sign(claims)
    part = token.split(".")[1]
    payload = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    if escape not in payload:
        not_run("the token command did not sign the lone surrogate as sent (UNI-TOK-2)")
    return token


def _hs256(secret: str, payload: bytes) -> str:
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{_b64(payload)}".encode()
    mac = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{signing_input.decode()}.{_b64(mac)}"


@pytest.mark.requirement("UNI-AUTH-26", "UNI-LC-7")
@pytest.mark.parametrize(
    "case", ["sub-lone-surrogate", "sid-lone-surrogate", "raw-surrogate-octets", "not-utf8"]
)
def test_server_rejects_a_signed_token_outside_the_json_limits(
    connect: Connect, deployment: Deployment, names: Names, case: str
) -> None:
    require_secret(deployment)
    claims = deployment.claims(names.tenant(), names.user())
    if deployment.secret is None:
        token = _from_token_command(deployment, claims, case)
    else:
        token = _hs256(deployment.secret, _raw_payload(claims, case))
    conn = connect(hello=False)
    conn.send({"type": "hello", "token": token})
    code, reason = conn.expect_close()
    assert code == 4100, f"{case}: closed with {code} {reason!r}, expected 4100 auth_failed"
    assert reason == "auth_failed", f"{case}: close reason {reason!r}"
    assert conn.frames == [], f"{case}: the token was accepted: {conn.frames}"


def _filter(op: str, depth: int) -> Any:
    node: Any = {"eq": ["n", 1]}
    for _ in range(depth - 1):
        node = {"not": node} if op == "not" else {op: [node]}
    return node


@pytest.mark.requirement("UNI-SUB-18", "UNI-TR-29", "UNI-ERR-5")
@pytest.mark.parametrize(
    ("op", "depth", "code"),
    [
        ("not", 9, "invalid_filter"),
        ("not", 62, "invalid_filter"),  # the message's deepest object is at depth 64
        ("and", 31, "invalid_filter"),  # 31 objects and 30 arrays: depth 63
        ("not", 256, "invalid_json"),
        ("and", 128, "invalid_json"),
    ],
)
def test_server_refuses_a_deep_filter_and_keeps_the_connection(
    user: User, names: Names, op: str, depth: int, code: str
) -> None:
    conn = user(names.tenant(), names.user())
    channel = names.channel()
    message = {"type": "subscribe", "id": "f1", "channel": channel, "filter": _filter(op, depth)}
    if code == "invalid_json":
        _invalid_json(conn, json.dumps(message), f"{op} {depth} deep")
    else:
        reply = conn.request(message)
        assert reply["type"] == "error", f"{op} {depth} deep: expected {code}, got {reply}"
        assert reply["code"] == code, f"{op} {depth} deep: expected {code}, got {reply}"
        _ping(conn)
    _serves(user, names)


@pytest.mark.requirement("UNI-TR-29", "UNI-ERR-10", "UNI-PUB-14")
def test_server_delivers_data_at_the_nesting_limit_and_refuses_deeper_data(
    user: User, names: Names
) -> None:
    tenant, channel = names.tenant(), names.channel()
    conn = user(tenant, names.user())
    conn.subscribe(channel)
    data = _nested(MAX_NESTING - 1)  # inside the publish object: depth 64 at the innermost
    conn.publish(channel, "deep.data", data)
    event = conn.wait_events(lambda f: f.get("channel") == channel)[0]
    assert event["data"] == data, "data at the nesting limit was not delivered unchanged"
    for depth in (MAX_NESTING, 979, 980, 981):
        message = conn.publish_message(channel, "deep.data", "DATA")
        text = json.dumps(message).replace('"DATA"', "[" * depth + "0" + "]" * depth)
        conn.send(text)  # built as text: a recursive encoder could not write it
        error = conn.expect(None, where=lambda f: f.get("type") in ("ack", "error"))
        assert error.get("code") == "invalid_json", (
            f"data {depth} deep: expected invalid_json (a refusal that repeats on every retry "
            f"is never unavailable), got {error}"
        )
    conn.assert_no_frame(
        "event",
        lambda: conn.publish(channel, "fence", {}),
        where=lambda f: f.get("event") == "deep.data" and f.get("data") != data,
    )
    _serves(user, names)


@pytest.mark.requirement("UNI-SUB-20")
@pytest.mark.parametrize(
    ("node", "delivered"),
    [
        ({"eq": ["n", 9007199254740992]}, True),
        ({"gt": ["n", 9007199254740992]}, False),
        ({"lte": ["n", 9007199254740992]}, True),
        ({"in": ["n", [9007199254740992]]}, True),
        ({"ne": ["n", 9007199254740992]}, False),
    ],
    ids=["eq", "gt", "lte", "in", "ne"],
)
def test_server_compares_filter_numbers_as_binary64(
    user: User, names: Names, node: Frame, delivered: bool
) -> None:
    """9007199254740993 is 2**53 as binary64 (section 5.5.2), whatever the exact integer."""
    tenant, channel, fence = names.tenant(), names.channel(), names.channel()
    reader = user(tenant, names.user(1))
    reader.subscribe(channel, filter=node)
    reader.subscribe(fence)
    writer = user(tenant, names.user(2))
    writer.publish(channel, "num.test", {}, attrs={"n": 9007199254740993})
    writer.publish(fence, "fence", {})
    reader.wait_events(lambda f: f.get("channel") == fence)
    got = reader.events(channel)
    assert bool(got) is delivered, (
        f"filter {json.dumps(node)} on attrs n=9007199254740993: "
        f"{'delivered' if got else 'not delivered'}, expected "
        f"{'delivery' if delivered else 'none'} (numbers compare as binary64)"
    )


# --- a seeded stream of hostile messages, derived from the schemas and the grammars ----------


def _reply_to(ident: str | None) -> Callable[[Frame], bool]:
    """The reply echoing ``ident``; with None, the next ``error`` that carries no ``id``."""
    if ident is None:
        return lambda f: f.get("type") == "error" and "id" not in f
    return lambda f: f.get("id") == ident and f.get("type") != "ping"


def _stream(user: User, names: Names, deployment: Deployment, profile: str, category: str) -> None:
    """Send the category's cases one by one; each gets exactly its required answer, the
    connection stays open throughout, and a fresh connection is served afterwards."""
    count = 15 if profile == "quick" else 60
    conn = user(names.tenant(), names.user())
    for case in stream(deployment.seed, category, count):
        conn.send(case.text)
        reply = conn.expect(None, where=_reply_to(case.echo))
        wanted = sorted(case.codes) or ["pong"]
        got = reply.get("code", reply.get("type"))
        assert got in wanted, (
            f"{category} (seed {deployment.seed}): {case.text[:160]!r} got {reply}, "
            f"expected {' or '.join(wanted)}"
        )
        if case.echo is None:
            assert "id" not in reply, f"{category}: no id is readable, yet {reply} has one"
    _ping(conn)
    _serves(user, names)


@pytest.mark.requirement("UNI-TR-16", "UNI-TR-25", "UNI-ERR-5")
def test_server_answers_a_seeded_stream_of_truncated_messages(
    user: User, names: Names, deployment: Deployment, profile: str
) -> None:
    _stream(user, names, deployment, profile, "truncated")


@pytest.mark.requirement("UNI-TR-29", "UNI-TR-30", "UNI-TR-31", "UNI-TR-25")
def test_server_answers_a_seeded_stream_of_values_beyond_the_json_limits(
    user: User, names: Names, deployment: Deployment, profile: str
) -> None:
    _stream(user, names, deployment, profile, "limits")


@pytest.mark.requirement("UNI-TR-17", "UNI-TR-25")
def test_server_answers_a_seeded_stream_of_non_object_messages(
    user: User, names: Names, deployment: Deployment, profile: str
) -> None:
    _stream(user, names, deployment, profile, "not-object")


@pytest.mark.requirement("UNI-TR-18", "UNI-TR-25")
def test_server_answers_a_seeded_stream_of_unknown_types(
    user: User, names: Names, deployment: Deployment, profile: str
) -> None:
    _stream(user, names, deployment, profile, "unknown-type")


@pytest.mark.requirement("UNI-TR-19", "UNI-TR-26", "UNI-PUB-39", "UNI-ERR-1")
def test_server_answers_a_seeded_stream_of_schema_violations(
    user: User, names: Names, deployment: Deployment, profile: str
) -> None:
    _stream(user, names, deployment, profile, "schema")


@pytest.mark.requirement("UNI-CH-3", "UNI-PUB-2", "UNI-TR-26")
def test_server_answers_a_seeded_stream_of_channels_outside_the_grammar(
    user: User, names: Names, deployment: Deployment, profile: str
) -> None:
    _stream(user, names, deployment, profile, "channel")


@pytest.mark.requirement("UNI-SUB-17", "UNI-SUB-18", "UNI-TR-26")
def test_server_answers_a_seeded_stream_of_filters_outside_the_grammar(
    user: User, names: Names, deployment: Deployment, profile: str
) -> None:
    _stream(user, names, deployment, profile, "filter")


@pytest.mark.requirement("UNI-TR-20")
def test_server_ignores_a_seeded_stream_of_unknown_members(
    user: User, names: Names, deployment: Deployment, profile: str
) -> None:
    _stream(user, names, deployment, profile, "unknown-member")
