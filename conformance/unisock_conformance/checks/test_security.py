"""Security considerations (spec section 13): origins, injective keys, per-tenant
idempotency, leakage through errors, and hostile input that must leave the server serving.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from unisock_conformance.checks.conftest import Connect, User
from unisock_conformance.deployment import (
    Deployment,
    Names,
    ServerInfo,
    not_applicable,
    not_run,
)
from unisock_conformance.timing import require_time
from unisock_conformance.wire import Conn, ConnGroup, HandshakeRefused, open_conn

Frame = dict[str, Any]
FOREIGN_ORIGIN = "https://unisock-conformance.invalid"


def _serves(user: User, names: Names) -> None:
    fresh = user(names.tenant(90), names.user(90))
    assert fresh.request({"type": "ping", "id": "alive"})["type"] == "pong"


def _handshake(
    deployment: Deployment, group: ConnGroup, origin: str | None, **kwargs: Any
) -> Conn | HandshakeRefused:
    try:
        return open_conn(
            deployment.url,
            name="origin",
            origin=origin,
            headers=deployment.headers,
            timeout=deployment.timeout(),
            group=group,
            **kwargs,
        )
    except HandshakeRefused as refused:
        return refused


# -- 13.2 origins ----------------------------------------------------------------------------------


def _near_misses(origin: str | None) -> list[str]:
    misses = [FOREIGN_ORIGIN, "null", "https://evil.example", "file://"]
    if origin:
        misses += [
            origin + ".evil.test",
            origin + "/",
            origin.upper(),
            origin.replace("://", "://evil."),
            origin + ":1",
            "http://" + origin.split("://", 1)[-1]
            if origin.startswith("https://")
            else "https://" + origin.split("://", 1)[-1],
        ]
    return [m for m in misses if m != origin]


def _allowlist_declared_or_observed(deployment: Deployment, group: ConnGroup) -> None:
    """The Origin checks bind a deployment with an allowlist (UNI-SEC-1): declared with
    ``--origin``, or seen when a foreign Origin is refused; ``--any-origin`` says none."""
    if deployment.any_origin:
        not_applicable("the deployment declares no Origin allowlist (--any-origin)")
    if deployment.origin is not None:
        return
    probe = _handshake(deployment, group, FOREIGN_ORIGIN)
    if isinstance(probe, Conn):
        probe.close()
        not_run(
            f"the deployment accepted Origin {FOREIGN_ORIGIN}: give --origin O (an origin its "
            "allowlist contains) to check its allowlist, or --any-origin if it has none"
        )


@pytest.mark.requirement("UNI-SEC-1", "UNI-SEC-3")
def test_server_refuses_origins_outside_the_allowlist_with_403(
    deployment: Deployment, conn_group: ConnGroup
) -> None:
    _allowlist_declared_or_observed(deployment, conn_group)
    for origin in _near_misses(deployment.origin):
        result = _handshake(deployment, conn_group, origin)
        if isinstance(result, Conn):
            result.close()
            pytest.fail(f"handshake with Origin {origin!r} was upgraded; expected HTTP 403")
        assert result.status == 403, f"Origin {origin!r}: HTTP {result.status}, expected 403"


@pytest.mark.requirement("UNI-SEC-3")
def test_server_accepts_the_exact_allowed_origin(
    deployment: Deployment, conn_group: ConnGroup, names: Names
) -> None:
    if deployment.any_origin:
        not_applicable("the deployment declares no Origin allowlist (--any-origin)")
    if not deployment.origin:
        not_run("needs --origin O, an origin the deployment's allowlist contains")
    result = _handshake(deployment, conn_group, deployment.origin)
    assert isinstance(result, Conn), f"allowed Origin refused: HTTP {result.status}"
    assert result.hello(deployment.mint(names.tenant(), names.user()))["type"] == "welcome"


@pytest.mark.requirement("UNI-SEC-2")
def test_server_handles_handshake_without_origin(
    deployment: Deployment, conn_group: ConnGroup, names: Names
) -> None:
    result = _handshake(deployment, conn_group, None)
    if isinstance(result, HandshakeRefused):
        assert result.status == 403, f"refused without Origin with HTTP {result.status}"
        return
    assert result.hello(deployment.mint(names.tenant(), names.user()))["type"] == "welcome"


@pytest.mark.requirement("UNI-SEC-16")
def test_server_does_not_negotiate_compression_by_default(
    deployment: Deployment, conn_group: ConnGroup
) -> None:
    from websockets.sync.client import connect

    with connect(
        deployment.url,
        subprotocols=["unisock.v1"],  # type: ignore[list-item]
        origin=deployment.origin,  # type: ignore[arg-type]
        additional_headers=list(deployment.headers) or None,
        compression="deflate",
        open_timeout=deployment.timeout(),
    ) as ws:
        assert ws.response is not None
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
    assert "permessage-deflate" not in extensions, f"compression negotiated: {extensions!r}"


# -- 13.3 tokens -----------------------------------------------------------------------------------


@pytest.mark.requirement("UNI-SEC-6", "UNI-ERR-8", "UNI-SEC-18")
def test_close_reasons_and_errors_never_carry_the_token(
    connect: Connect, user: User, deployment: Deployment, names: Names
) -> None:
    tenant = names.tenant()
    token = deployment.mint(tenant, names.user(0))
    header, payload, signature = token.split(".")
    forged = f"{header}.{payload}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"
    conn = connect(hello=False)
    conn.send({"type": "hello", "token": forged})
    code, reason = conn.expect_close()
    assert code == 4100
    for part in (payload, signature[1:], forged):
        assert part[:16] not in reason, f"close reason carries the token: {reason!r}"
    live = user(tenant, names.user(0))
    for message in (
        {"type": "hello", "id": "a", "token": token},
        {"type": "refresh", "id": "b", "token": forged},
        {"type": "refresh", "id": "c", "token": deployment.mint(tenant, names.user(1))},
    ):
        error = live.request(message)
        text = json.dumps(error)
        for part in (payload, signature, forged.split(".")[2]):
            assert part[:16] not in text and part[-16:] not in text, f"token in {error}"


# -- 13.4 isolation --------------------------------------------------------------------------------


def _collisions(base: str) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """(tenant, channel) pairs that a key made by joining with a separator would merge."""
    return [
        ((base, "k_c"), (f"{base}_k", "c")),
        ((base, "k-c"), (f"{base}-k", "c")),
        ((base, "kc"), (f"{base}k", "c")),
        ((base, "k.c"), (f"{base}k", "c")),
    ]


@pytest.mark.requirement("UNI-SEC-10", "UNI-CH-2")
@pytest.mark.parametrize("case", range(4), ids=["underscore", "dash", "concat", "dot"])
def test_server_keys_tenant_channels_injectively(user: User, names: Names, case: int) -> None:
    (tenant_a, channel_a), (tenant_b, channel_b) = _collisions(names.tenant())[case]
    sub_b = user(tenant_b, names.user(1))
    sub_b.subscribe(channel_b)
    position = sub_b.subscribe(f"{channel_b}.x")
    assert "position" in position
    pub_a = user(tenant_a, names.user(0))
    first_a = pub_a.publish(channel_a)
    second_a = pub_a.publish(channel_a)
    assert second_a["offset"] == first_a["offset"] + 1
    head = user(tenant_b, names.user(2)).subscribe(channel_b)["position"]
    assert head["offset"] == 0, (
        f"({tenant_b}, {channel_b}) shares state with ({tenant_a}, {channel_a}): head {head}"
    )
    first_b = user(tenant_b, names.user(3)).publish(channel_b)
    assert first_b["offset"] == 1, f"offsets shared across tenants: {first_b}"
    sub_b.wait_events(lambda e: e["channel"] == channel_b and e["offset"] == first_b["offset"])
    assert len(sub_b.events(channel_b)) == 1, sub_b.events(channel_b)


@pytest.mark.requirement("UNI-SEC-10", "UNI-CH-10")
@pytest.mark.parametrize(
    ("owner_a", "channel_a", "owner_b", "channel_b"),
    [
        ("u.a", "$me.b", "u", "$me.a.b"),
        ("u:a", "$me.b", "u", "$me"),
        ("u/a", "$me.b", "u", "$me.a.b"),
        ("u", "$me.x", "u.me", "$me.x"),
    ],
    ids=["dot-in-sub", "colon-in-sub", "slash-in-sub", "me-suffix"],
)
def test_server_keys_private_channels_injectively(
    user: User,
    names: Names,
    owner_a: str,
    channel_a: str,
    owner_b: str,
    channel_b: str,
) -> None:
    tenant = names.tenant()
    prefix = names.user()
    a, b = f"{prefix}{owner_a}", f"{prefix}{owner_b}"
    conn_b = user(tenant, b, publish=("$me", "$me.>"))
    head = conn_b.subscribe(channel_b)["position"]
    assert head["offset"] == 0
    conn_a = user(tenant, a, publish=("$me", "$me.>"))
    conn_a.publish(channel_a)
    conn_a.publish(channel_a)
    own = conn_b.publish(channel_b)
    assert own["offset"] == 1, f"private channels of {a!r} and {b!r} share offsets: {own}"
    conn_b.wait_events(lambda e: e["channel"] == channel_b and e["offset"] == 1)
    assert len(conn_b.events(channel_b)) == 1, conn_b.events(channel_b)


@pytest.mark.requirement("UNI-SEC-11", "UNI-SEC-10")
def test_server_keeps_idempotency_records_per_tenant_and_owner(user: User, names: Names) -> None:
    message_id, channel = names.message_id(), names.channel()
    pubs = [user(names.tenant(i), "alice", publish=(">", "$me.>")) for i in range(2)]
    bob = user(names.tenant(0), "bob", publish=(">", "$me.>"))
    for conn in pubs:
        ack = conn.publish(channel, message_id=message_id)
        assert ack["duplicate"] is False, f"duplicate across tenants: {ack}"
        assert ack["offset"] == 1, ack
    for conn in (pubs[0], bob):
        ack = conn.publish("$me.inbox", message_id=message_id)
        assert ack["duplicate"] is False, f"duplicate across private channels: {ack}"
    again = pubs[0].publish(channel, message_id=message_id)
    assert again["duplicate"] is True and again["offset"] == 1, again


@pytest.mark.requirement("UNI-SEC-19", "UNI-PUB-21")
@pytest.mark.feature("system_namespace")
def test_server_keeps_sys_idempotency_records_per_publisher_tenant(
    user: User, names: Names
) -> None:
    """A broadcaster learns nothing of another tenant's $sys message ids, and suppresses none."""
    channel, message_id = f"$sys.{names.channel()}", names.message_id()
    watcher = user(names.tenant(2), names.user(2), subscribe=("$sys.>",))
    watcher.subscribe(channel)
    a, b = (
        user(names.tenant(i), names.user(i), publish=("$sys.>",), broadcaster=True)
        for i in range(2)
    )
    first = a.publish(channel, message_id=message_id)
    other = b.publish(channel, message_id=message_id)
    assert other["duplicate"] is False, (
        f"a publish of tenant {names.tenant(1)} was acknowledged as a duplicate of tenant "
        f"{names.tenant(0)}'s event: {other}"
    )
    assert other["offset"] == first["offset"] + 1, (first, other)
    retry = a.publish(channel, message_id=message_id)
    assert retry["duplicate"] is True and retry["offset"] == first["offset"], retry
    events = watcher.wait_events(lambda e: e["channel"] == channel, 2)
    assert [e["offset"] for e in events[:2]] == [first["offset"], other["offset"]], events


# -- 13.6 resource exhaustion ----------------------------------------------------------------------


def _hostile() -> list[tuple[str, str]]:
    deep_array = "[" * 5000 + "]" * 5000
    deep_data = (
        '{"type":"publish","id":"d1","channel":"deep","event":"a.b","message_id":"m1",'
        '"data":' + '{"a":' * 3000 + "1" + "}" * 3000 + "}"
    )
    return [
        ("deep-array", deep_array),
        ("deep-data", deep_data),
        (
            "deep-filter",
            '{"type":"subscribe","id":"d2","channel":"x","filter":'
            + '{"not":' * 3000
            + '{"exists":"a"}'
            + "}" * 3000
            + "}",
        ),
        ("huge-number", '{"type":"subscribe","id":"d3","channel":"x","since":1e999}'),
        ("huge-integer", '{"type":"subscribe","id":"d4","channel":"x","since":' + "9" * 4000 + "}"),
        (
            "huge-offset",
            '{"type":"subscribe","id":"d5","channel":"x","from":{"x":{"epoch":"e",'
            '"offset":18446744073709551617}}}',
        ),
        (
            "negative-offset",
            '{"type":"subscribe","id":"d6","channel":"x","from":{"x":{"epoch":"e","offset":-1}}}',
        ),
        ("lone-surrogate-id", '{"type":"ping","id":"\\ud800","nonce":"\\udfff"}'),
        ("nul-in-channel", '{"type":"subscribe","id":"d7","channel":"x\\u0000y"}'),
        ("duplicate-keys", '{"type":"ping","type":"subscribe","id":"d8","channel":"x"}'),
        (
            "many-members",
            "{" + ",".join(f'"k{i}":{i}' for i in range(2000)) + ',"type":"ping","id":"d9"}',
        ),
        ("bom-prefix", '\ufeff{"type":"ping","id":"d10"}'),
    ]


_HOSTILE_IDS = [name for name, _ in _hostile()]


@pytest.mark.requirement("UNI-SEC-13", "UNI-ERR-5", "UNI-ERR-10", "UNI-ERR-1")
@pytest.mark.parametrize("case", _HOSTILE_IDS)
def test_server_survives_hostile_json_and_keeps_serving(
    user: User, names: Names, server_info: ServerInfo, case: str
) -> None:
    text = dict(_hostile())[case]
    conn = user(names.tenant(), names.user())
    if len(text.encode("utf-8", "surrogatepass")) > int(server_info.limits["max_message_bytes"]):
        conn.send(text)
        code, _reason = conn.expect_close()
        assert code == 1009, f"{case}: oversized message closed with {code}"
    else:
        conn.send(text)
        conn.send({"type": "ping", "id": "after"})
        try:
            pong = conn.expect("pong", where=lambda f: f.get("id") == "after")
        except AssertionError:
            # RFC 8259 leaves strings with lone surrogates unpredictable: the server may also
            # refuse the text as an invalid payload (1007), but nothing else.
            if case != "lone-surrogate-id":
                raise
            code, reason = conn.expect_close()
            assert code == 1007, f"{case}: closed with {code} {reason!r}"
        else:
            assert pong["type"] == "pong"
        for error in [f for f in conn.frames if f.get("type") == "error"]:
            assert error["code"] != "internal_error" or "Error" not in error["message"], error
    _serves(user, names)


@pytest.mark.requirement("UNI-SEC-13")
def test_server_serves_others_while_a_peer_misbehaves(
    connect: Connect, user: User, deployment: Deployment, names: Names
) -> None:
    tenant, channel = names.tenant(), names.channel()
    sub = user(tenant, names.user(0))
    sub.subscribe(channel)
    pub = user(tenant, names.user(1))
    bad = [connect(hello=False) for _ in range(5)]
    bad[0].send("garbage")
    bad[1].send_bytes(b"\x00")
    bad[2].ws.send(b"\xff\xfe", text=True)
    bad[3].send({"type": "hello", "token": "x.y.z"})
    # bad[4] stays silent: an unauthenticated connection held open.
    for index in range(4):
        bad[index].expect_close()
    ack = pub.publish(channel)
    sub.wait_events(lambda e: e["channel"] == channel and e["offset"] == ack["offset"])
    assert bad[4].frames == []


@pytest.mark.requirement("UNI-SEC-14")
@pytest.mark.timing
def test_server_discards_idle_channel_state_after_history_max_age(
    user: User, deployment: Deployment, server_info: ServerInfo, names: Names
) -> None:
    max_age_s = int(server_info.history["max_age_ms"]) / 1000
    require_time(deployment, max_age_s * 1.5 + 0.5, "1.5 times history.max_age_ms")
    tenant, channel = names.tenant(), names.channel()
    conn = user(tenant, names.user())
    ack = conn.publish(channel)
    deadline = time.monotonic() + max_age_s * 1.5 + 0.5
    conn.closed.wait(max(0.0, deadline - time.monotonic()))
    head = conn.subscribe(channel)["position"]
    assert head != {"epoch": ack["epoch"], "offset": ack["offset"]}, (
        f"channel state kept {max_age_s:.1f} s after its last event with no subscriber"
    )
    assert head["offset"] == 0 and head["epoch"] != ack["epoch"], (
        f"UNI-DEL-8: after discarding {channel} the head is {head}, not offset 0 of a new epoch"
    )


@pytest.mark.requirement("UNI-DEL-35", "UNI-DEL-17", "UNI-DEL-23")
@pytest.mark.timing
def test_server_reports_discarded_channel_state_to_a_resume_by_time(
    user: User, deployment: Deployment, server_info: ServerInfo, names: Names
) -> None:
    max_age_s = int(server_info.history["max_age_ms"]) / 1000
    require_time(deployment, max_age_s * 1.5 + 0.5, "1.5 times history.max_age_ms")
    tenant, base = names.tenant(), names.channel()
    channel = f"{base}.x"
    witness = user(tenant, names.user(0))
    witness.subscribe(channel)
    publisher = user(tenant, names.user(1))
    ack = publisher.publish(channel)
    event = witness.expect("event", where=lambda f: f.get("message_id") == ack["message_id"])
    witness.close()  # no subscription left: the channel may go idle (UNI-SEC-14)
    deadline = time.monotonic() + max_age_s * 1.5 + 0.5
    publisher.closed.wait(max(0.0, deadline - time.monotonic()))
    resumer = user(tenant, names.user(2))
    resumer.subscribe(f"{base}.>", since=event["ts"])
    fence = publisher.publish(channel, "fence.event")
    resumer.expect("event", where=lambda f: f.get("message_id") == fence["message_id"])
    before = [f for f in resumer.frames if f.get("channel") == channel and f is not None]
    before = before[: next(i for i, f in enumerate(before) if f.get("type") == "event")]
    if fence["epoch"] == ack["epoch"]:
        not_applicable("the server kept the idle channel's state (UNI-SEC-14 not followed)")
    gaps = [f for f in before if f.get("type") == "gap"]
    assert gaps, (
        f"{channel} was discarded (new epoch {fence['epoch']}) and the resume since "
        f"{event['ts']} got no gap: silent loss of offset {ack['offset']}"
    )
    assert gaps[0]["reason"] == "epoch_changed", gaps[0]
    assert (gaps[0]["epoch"], gaps[0]["offset"]) == (fence["epoch"], fence["offset"] - 1), (
        f"the gap must carry the current epoch and head: {gaps[0]}, then {fence}"
    )


@pytest.mark.requirement("UNI-SEC-17")
def test_forbidden_subscribe_reveals_nothing_about_the_channel(user: User, names: Names) -> None:
    tenant = names.tenant()
    busy, unused = names.channel("busy"), names.channel("free")
    insider = user(tenant, names.user(0))
    insider.subscribe(busy)
    for _ in range(3):
        insider.publish(busy)
    outsider = user(tenant, names.user(1), subscribe=("other.>",))
    replies = {}
    for channel in (busy, unused):
        reply = outsider.request({"type": "subscribe", "id": "x", "channel": channel})
        assert reply.get("code") == "forbidden", reply
        replies[channel] = reply["message"].replace(channel, "<channel>")
    assert replies[busy] == replies[unused], replies
