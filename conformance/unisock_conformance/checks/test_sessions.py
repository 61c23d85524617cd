"""Sessions and connection caps (spec section 10): supersede by ``sid``, the per-user cap,
tenant separation and the broadcaster exemption.

A superseded connection is closed with 4001 no later than ``heartbeat.timeout_ms`` after the
newer connection's ``welcome`` (UNI-SESS-9). To show that a connection was *not* closed, a
check waits that long and then proves the connection still answers; these checks are timing
checks (:mod:`unisock_conformance.timing`), run alongside the others.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from unisock_conformance.checks.conftest import Connect, User
from unisock_conformance.deployment import Deployment, Names
from unisock_conformance.timing import require_time
from unisock_conformance.wire import Conn

pytestmark = [pytest.mark.timing]


def _grace_s(timeout_ms: int, deployment: Deployment) -> float:
    timeout_s = timeout_ms / 1000
    return deployment.timeout(timeout_s + max(0.3, 0.25 * timeout_s))


def _grace(conn: Conn, deployment: Deployment) -> float:
    """How long the server may take to close a superseded connection, plus scheduling."""
    assert conn.welcome is not None
    return _grace_s(int(conn.welcome["heartbeat"]["timeout_ms"]), deployment)


def _settle(conns: Sequence[Conn], deployment: Deployment) -> None:
    """Wait out the supersede deadline (UNI-SESS-9), then prove each is still open."""
    newest = conns[-1]
    wait = _grace(newest, deployment)
    require_time(deployment, wait, "the supersede deadline (heartbeat.timeout_ms)")
    newest.closed.wait(wait)
    for conn in conns:
        assert not conn.closed.is_set(), (
            f"{conn.name} was closed with {conn.close_code} {conn.close_reason!r}"
        )
        assert conn.request({"type": "ping", "id": "open"})["type"] == "pong"


def _superseded(conn: Conn, deployment: Deployment, grace: float) -> None:
    code, reason = conn.expect_close(timeout=grace)
    assert (code, reason) == (4001, "superseded"), f"{conn.name}: closed with {code} {reason!r}"


# -- 10.3 supersede by session ---------------------------------------------------------------------


@pytest.mark.requirement("UNI-SESS-6", "UNI-SESS-9", "UNI-CLOSE-9")
def test_server_supersedes_older_connection_of_the_same_session(
    user: User, deployment: Deployment, names: Names
) -> None:
    tenant, sub, channel = names.tenant(), names.user(), names.channel()
    older = user(tenant, sub, sid="tab-1")
    newer = user(tenant, sub, sid="tab-1")
    welcomed = time.monotonic()
    _superseded(older, deployment, _grace(newer, deployment))
    assert time.monotonic() - welcomed <= _grace(newer, deployment)
    newer.subscribe(channel)
    ack = newer.publish(channel)
    newer.wait_events(lambda e: e["offset"] == ack["offset"] and e["channel"] == channel)


@pytest.mark.requirement("UNI-SESS-7")
@pytest.mark.parametrize(
    "sids",
    [(None, None), ("tab-1", None), (None, "tab-1"), ("tab-1", "tab-2")],
    ids=["neither", "older-only", "newer-only", "different"],
)
def test_server_does_not_supersede_without_a_shared_sid(
    user: User, deployment: Deployment, names: Names, sids: tuple[str | None, str | None]
) -> None:
    tenant, sub = names.tenant(), names.user()
    conns = [user(tenant, sub, sid=sid) for sid in sids]
    assert conns[0].welcome is not None
    if int(conns[0].welcome["limits"]["max_connections_per_user"]) < 2:
        pytest.skip("not-run: max_connections_per_user below 2 closes the older connection")
    _settle(conns, deployment)


@pytest.mark.requirement("UNI-SESS-2", "UNI-SESS-1")
def test_server_never_supersedes_or_counts_across_tenants(
    user: User, deployment: Deployment, names: Names
) -> None:
    first = user(names.tenant(0), "alice", sid="tab-1")
    assert first.welcome is not None
    cap = int(first.welcome["limits"]["max_connections_per_user"])
    others = [user(names.tenant(1), "alice", sid="tab-1")]
    others += [user(names.tenant(1), "alice") for _ in range(cap)]
    _settle([first, others[-1]], deployment)


@pytest.mark.requirement("UNI-SESS-1", "UNI-TR-20")
def test_server_takes_session_identity_only_from_the_token(
    connect: Connect, user: User, deployment: Deployment, names: Names
) -> None:
    tenant, sub = names.tenant(), names.user()
    older = user(tenant, sub, sid="tab-1")
    newer = connect(hello=False)
    newer.hello(deployment.mint(tenant, sub, sid="tab-2"), sid="tab-1", sub=sub, tenant=tenant)
    _settle([older, newer], deployment)


@pytest.mark.requirement("UNI-SESS-8")
@pytest.mark.parametrize("kind", ["forged-token", "invalid-hello"])
def test_refused_hello_never_supersedes_or_counts(
    connect: Connect, user: User, deployment: Deployment, names: Names, kind: str
) -> None:
    tenant, sub = names.tenant(), names.user()
    first = user(tenant, sub, sid="tab-1")
    assert first.welcome is not None
    cap = int(first.welcome["limits"]["max_connections_per_user"])
    conns = [first] + [user(tenant, sub) for _ in range(cap - 1)]
    token = deployment.mint(tenant, sub, sid="tab-1")
    header, payload, signature = token.split(".")
    for _ in range(2):
        bad = connect(hello=False)
        if kind == "forged-token":
            bad.send({"type": "hello", "token": f"{header}.{payload}.{signature[::-1]}"})
        else:
            bad.send({"type": "hello", "token": token, "id": ""})
        code, _reason = bad.expect_close()
        assert code in (4100, 4000), code
    _settle(conns, deployment)


@pytest.mark.requirement("UNI-SESS-10", "UNI-SESS-6")
def test_concurrent_hellos_of_one_session_leave_exactly_one_connection(
    connect: Connect, deployment: Deployment, names: Names
) -> None:
    tenant, sub = names.tenant(), names.user()
    conns = [connect(hello=False) for _ in range(4)]
    tokens = [deployment.mint(tenant, sub, sid="tab-1") for _ in conns]
    for conn, token in zip(conns, tokens, strict=True):
        conn.send({"type": "hello", "token": token})
    for conn in conns:
        frame = conn.expect(None, skip=())
        assert frame["type"] == "welcome", frame
        conn.set_welcome(frame)
    grace = _grace(conns[0], deployment)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and sum(not c.closed.is_set() for c in conns) > 1:
        conns[0].closed.wait(0.02)
    survivors = [c for c in conns if not c.closed.is_set()]
    assert len(survivors) == 1, f"{len(survivors)} connections of one session stayed open"
    for conn in conns:
        if conn is not survivors[0]:
            assert (conn.close_code, conn.close_reason) == (4001, "superseded"), conn.close_code
    assert survivors[0].request({"type": "ping", "id": "alive"})["type"] == "pong"


# -- 10.4 connections per user ---------------------------------------------------------------------


@pytest.mark.requirement("UNI-SESS-11", "UNI-SESS-12", "UNI-LC-12")
def test_server_closes_the_oldest_connections_beyond_the_per_user_cap(
    user: User, deployment: Deployment, names: Names
) -> None:
    tenant, sub = names.tenant(), names.user()
    first = user(tenant, sub)
    assert first.welcome is not None
    cap = int(first.welcome["limits"]["max_connections_per_user"])
    conns = [first] + [user(tenant, sub) for _ in range(cap - 1)]
    extra = user(tenant, sub)
    _superseded(conns[0], deployment, _grace(extra, deployment))
    another = user(tenant, sub)
    _superseded(conns[1] if cap > 1 else extra, deployment, _grace(another, deployment))
    remaining = ([*conns[2:], extra, another]) if cap > 1 else [another]
    _settle(remaining, deployment)


@pytest.mark.requirement("UNI-SESS-13", "UNI-SESS-11")
def test_server_applies_the_session_rule_before_the_cap(
    user: User, deployment: Deployment, names: Names
) -> None:
    tenant, sub = names.tenant(), names.user()
    first = user(tenant, sub)
    assert first.welcome is not None
    cap = int(first.welcome["limits"]["max_connections_per_user"])
    if cap < 2:
        pytest.skip("not-run: the rule order is observable only with a cap of 2 or more")
    conns = [first] + [user(tenant, sub) for _ in range(cap - 2)]
    session = user(tenant, sub, sid="tab-1")
    again = user(tenant, sub, sid="tab-1")
    _superseded(session, deployment, _grace(again, deployment))
    _settle([*conns, again], deployment)


# -- 10.6 broadcasters -----------------------------------------------------------------------------


@pytest.mark.requirement("UNI-SESS-15", "UNI-SESS-16")
def test_broadcaster_connections_are_never_superseded_or_counted(
    user: User, deployment: Deployment, names: Names
) -> None:
    tenant, sub = names.tenant(), names.user()
    probe = user(tenant, names.user(9))
    assert probe.welcome is not None
    cap = int(probe.welcome["limits"]["max_connections_per_user"])
    users = [user(tenant, sub, sid="tab-1")] + [user(tenant, sub) for _ in range(cap - 1)]
    casters = [user(tenant, sub, sid="tab-1", broadcaster=True) for _ in range(cap + 1)]
    casters += [user(tenant, sub, broadcaster=True) for _ in range(2)]
    _settle(users + casters, deployment)
