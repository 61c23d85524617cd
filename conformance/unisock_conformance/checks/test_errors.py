"""Errors (spec section 12): every error uses a registered code, carries a message, keeps the
connection open, has no effect, and reveals neither internals nor tokens.

One check provokes every request-level error the suite can trigger from outside and holds
each reply to the rules of section 12.2; the others check the "no effect" rule in detail.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from unisock.schemas import SCHEMA_ROOT
from unisock_conformance.checks.conftest import User
from unisock_conformance.deployment import Deployment, Names
from unisock_conformance.wire import Conn

Frame = dict[str, Any]

REGISTRY = json.loads((SCHEMA_ROOT / "registries" / "error-codes.json").read_text("utf-8"))
CODES = frozenset(entry["code"] for entry in REGISTRY["codes"])
RETRY_CODES = frozenset({"rate_limited", "unavailable"})
INTERNALS = re.compile(
    r"Traceback|File \"|\.py\b|\b[A-Z][A-Za-z]*(Error|Exception)\b|<[a-z_.]+ object at"
    r"|0x[0-9a-f]{6,}|\bself\.|jsonschema|asyncio|websockets\.|redis|HGET|XADD|ZADD|stack"
    r"|unisock\.",
)


def _forged(token: str) -> str:
    header, payload, signature = token.split(".")
    return f"{header}.{payload}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"


def _pointer_resolves(message: Any, pointer: str) -> bool:
    if pointer == "":
        return True
    if not pointer.startswith("/"):
        return False
    node = message
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return False
    return True


def _check_error(
    error: Frame, sent: Frame | str, secrets: list[str], *, allow_pointer_outside: bool = False
) -> None:
    """UNI-ERR-1, -2, -3, -7, -8 and -9 for one error reply."""
    assert error.get("code") in CODES, f"unregistered error code: {error}"
    assert isinstance(error.get("message"), str) and error["message"].strip(), error
    if error["code"] not in RETRY_CODES:
        assert "retry_after_ms" not in error, f"retry_after_ms on {error['code']}: {error}"
    text = json.dumps({"message": error.get("message"), "details": error.get("details")})
    found = INTERNALS.search(text)
    assert found is None, f"error reveals internals ({found.group(0)!r}): {error}"
    for secret in secrets:
        for i in range(0, max(1, len(secret) - 15), 8):
            piece = secret[i : i + 16]
            assert piece not in text, f"error carries part of a token or secret: {error}"
    details = error.get("details")
    if isinstance(details, dict) and "pointer" in details and not allow_pointer_outside:
        pointer = details["pointer"]
        assert isinstance(pointer, str), details
        if isinstance(sent, dict):
            assert _pointer_resolves(sent, pointer), f"pointer {pointer!r} not in {sent}"


@pytest.mark.requirement(
    "UNI-ERR-1",
    "UNI-ERR-2",
    "UNI-ERR-3",
    "UNI-ERR-5",
    "UNI-ERR-7",
    "UNI-ERR-8",
    "UNI-ERR-9",
    "UNI-SEC-6",
)
def test_every_error_uses_a_registered_code_and_reveals_nothing(
    user: User, deployment: Deployment, names: Names
) -> None:
    tenant, other = names.tenant(0), names.tenant(1)
    ok = names.channel("ok")
    conn = user(tenant, names.user(0), subscribe=(f"{ok}.>",), publish=(f"{ok}.>",))
    conn.subscribe(f"{ok}.held")
    user(other, names.user(0)).publish("secret.plans", data={"tenant": other})
    token = deployment.mint(tenant, names.user(0), subscribe=(f"{ok}.>",))
    secrets = [part for part in token.split(".") if len(part) >= 16]
    secrets += [deployment.secret] if deployment.secret else []
    forged = _forged(token)
    other_token = deployment.mint(tenant, names.user(1))
    secrets += [part for t in (forged, other_token) for part in t.split(".") if len(part) >= 16]
    position = {"epoch": "e", "offset": 1}
    probes: list[tuple[str, Frame | str]] = [
        ("invalid_json", '{"type":"subscribe","id":"e1",'),
        ("invalid_message", {"type": "subscribe", "id": "e2"}),
        ("invalid_message", {"type": "publish", "id": "e2b", "channel": f"{ok}.a"}),
        ("unknown_type", {"type": "presence", "id": "e3"}),
        ("already_authenticated", {"type": "hello", "id": "e4", "token": token}),
        ("invalid_channel", {"type": "subscribe", "id": "e5", "channel": "Bad..Name"}),
        (
            "invalid_filter",
            {
                "type": "subscribe",
                "id": "e6",
                "channel": f"{ok}.f",
                "filter": {"and": [{"eq": ["a", 1]}, {"nope": 1}]},
            },
        ),
        (
            "invalid_position",
            {
                "type": "subscribe",
                "id": "e7",
                "channel": f"{ok}.*",
                "from": {"secret.plans": position},
            },
        ),
        ("forbidden", {"type": "subscribe", "id": "e8", "channel": "secret.plans"}),
        ("forbidden", conn.publish_message("secret.plans", id="e9")),
        ("already_subscribed", {"type": "subscribe", "id": "e10", "channel": f"{ok}.held"}),
        ("not_subscribed", {"type": "unsubscribe", "id": "e11", "channel": f"{ok}.never"}),
        ("token_invalid", {"type": "refresh", "id": "e12", "token": forged}),
        ("token_mismatch", {"type": "refresh", "id": "e13", "token": other_token}),
        ("invalid_message", conn.publish_message(f"{ok}.a", id="e14", attrs={"Bad-Name": 1})),
    ]
    for _code, message in probes:
        conn.send(message)
        conn.send({"type": "ping", "id": "between"})
    seen = []
    for code, message in probes:
        error = conn.expect("error")
        assert error["code"] == code, f"{message!r}: expected {code}, got {error}"
        _check_error(error, message, secrets)
        assert other not in json.dumps(error), f"another tenant's data in {error}"
        pong = conn.expect("pong", where=lambda f: f.get("id") == "between")
        assert pong["type"] == "pong"  # the connection kept processing (UNI-ERR-5)
        seen.append(error["code"])
    assert conn.request({"type": "ping", "id": "end"})["type"] == "pong"
    assert len(seen) == len(probes)


@pytest.mark.requirement("UNI-ERR-1", "UNI-ERR-2", "UNI-ERR-3", "UNI-ERR-5", "UNI-SUB-5")
def test_limit_errors_follow_the_error_rules(user: User, names: Names) -> None:
    tenant, channel = names.tenant(), names.channel()
    conn = user(tenant, names.user())
    assert conn.welcome is not None
    limits = conn.welcome["limits"]
    for i in range(int(limits["max_subscriptions"])):
        conn.subscribe(f"{channel}.{i}")
    error = conn.request({"type": "subscribe", "id": "cap", "channel": f"{channel}.over"})
    assert error.get("code") == "subscription_limit", error
    _check_error(error, {}, [])
    burst = int(limits["publish_rate"]["burst"])
    conn.pace = False  # the flood must outrun the bucket
    messages = [conn.publish_message(channel, id=f"r{i}") for i in range(2 * burst + 5)]
    for message in messages:
        conn.send(message)
    replies = [_reply(conn, m["id"]) for m in messages]
    limited = [r for r in replies if r["type"] == "error"]
    for error in limited:
        assert error["code"] == "rate_limited", error
        assert isinstance(error.get("retry_after_ms"), int) and error["retry_after_ms"] >= 1
        _check_error(error, {}, [])
    assert conn.request({"type": "ping", "id": "open"})["type"] == "pong"


def _reply(conn: Conn, ident: str, type_: str | None = None) -> Frame:
    """The reply to the request ``ident`` (``type_`` None: any type)."""
    return conn.expect(type_, where=lambda frame: frame.get("id") == ident)


def _arrived(conn: Conn, channel: str, offset: int) -> list[Frame]:
    """Wait until the event at ``offset`` on ``channel`` has reached ``conn``."""
    return conn.wait_events(lambda e: e["channel"] == channel and e["offset"] == offset)


def _offsets(conn: Conn, channel: str) -> list[int]:
    return [int(e["offset"]) for e in conn.events(channel)]


@pytest.mark.requirement("UNI-ERR-6", "UNI-PUB-23", "UNI-PUB-27")
def test_refused_publish_sequences_nothing_and_records_no_message_id(
    user: User, names: Names
) -> None:
    tenant, channel = names.tenant(), names.channel()
    conn = user(tenant, names.user(0), publish=(channel,))
    sub = user(tenant, names.user(1))
    sub.subscribe(channel)
    first = conn.publish(channel)
    reused = names.message_id()
    refusals: list[Callable[[], Frame]] = [
        lambda: conn.publish_message(channel, message_id=reused, attrs={"Bad": 1}),
        lambda: conn.publish_message(channel, message_id=reused, event="Not A Type"),
        lambda: conn.publish_message(channel, message_id=reused, user="someone-else"),
        lambda: conn.publish_message(channel, message_id=reused, to=[]),
        lambda: conn.publish_message(f"{channel}.other", message_id=reused),
    ]
    for make in refusals:
        reply = conn.request(make())
        assert reply["type"] == "error", f"expected a refusal, got {reply}"
    again = conn.publish(channel, message_id=reused)
    assert again["duplicate"] is False, f"refused publish recorded its message_id: {again}"
    assert again["offset"] == first["offset"] + 1, "a refused publish took an offset"
    sub.wait_events(lambda e: e["channel"] == channel and e["offset"] == again["offset"])
    assert _offsets(sub, channel) == [first["offset"], again["offset"]], sub.events(channel)


@pytest.mark.requirement("UNI-ERR-6", "UNI-SUB-13", "UNI-SUB-6")
def test_refused_subscribe_and_unsubscribe_change_no_subscription(user: User, names: Names) -> None:
    tenant, channel = names.tenant(), names.channel()
    conn = user(tenant, names.user(0))
    pub = user(tenant, names.user(1))
    conn.subscribe(channel, filter={"eq": ["$event", "keep.me"]})
    refused: list[Frame] = [
        {"type": "unsubscribe", "id": "x1", "channel": f"{channel}.*"},
        {"type": "unsubscribe", "id": "x2", "channel": "Bad"},
        {"type": "subscribe", "id": "x3", "channel": channel},
        {"type": "subscribe", "id": "x4", "channel": channel, "filter": {"bad": 1}},
        {"type": "unsubscribe", "id": "x5"},
    ]
    for message in refused:
        assert conn.request(message)["type"] == "error", message
    skipped = pub.publish(channel, "drop.me")
    kept = pub.publish(channel, "keep.me")
    conn.wait_events(lambda e: e["channel"] == channel and e["offset"] == kept["offset"])
    assert _offsets(conn, channel) == [kept["offset"]], (skipped, conn.events(channel))
