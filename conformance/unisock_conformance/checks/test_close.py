"""Close codes (spec section 9, server side): close reasons and announced backoff parameters.

Each server-initiated close the suite can provoke is checked against the close-reason
grammar and the close-code registry (``schemas/v1/registries/close-codes.json``), and so is,
after every other check, each close the server started during the run (supersede, heartbeat
and auth timeouts, revocation, slow consumers, drain...).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from unisock_conformance.checks.conftest import Connect, User
from unisock_conformance.closes import SERVER_CLOSES, reason_problem
from unisock_conformance.deployment import NOT_RUN_PREFIX, Deployment, Names, ServerInfo
from unisock_conformance.wire import Conn


def _trigger(
    kind: str, connect: Connect, user: User, deployment: Deployment, names: Names, limit: int
) -> Conn:
    tenant, sub = names.tenant(), names.user()
    if kind == "superseded":
        older = user(tenant, sub, sid="tab-1")
        user(tenant, sub, sid="tab-1")
        return older
    conn = connect(hello=False)
    actions: dict[str, Callable[[], None]] = {
        "protocol_violation": lambda: conn.send({"type": "ping"}),
        "auth_failed": lambda: conn.send({"type": "hello", "token": "e30.e30.c2ln"}),
        "unsupported_data": lambda: conn.send_bytes(b"\x00"),
        "invalid_payload": lambda: conn.ws.send(b'{"type":"hello","token":"\xff"}', text=True),
        "message_too_big": lambda: conn.send("x" * (limit + 1)),
    }
    actions[kind]()
    return conn


@pytest.mark.requirement("UNI-CLOSE-9")
@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("protocol_violation", 4000),
        ("auth_failed", 4100),
        ("unsupported_data", 1003),
        ("invalid_payload", 1007),
        ("message_too_big", 1009),
        ("superseded", 4001),
    ],
)
def test_server_close_reason_follows_the_grammar_and_names_the_code(
    connect: Connect,
    user: User,
    deployment: Deployment,
    server_info: ServerInfo,
    names: Names,
    kind: str,
    code: int,
) -> None:
    limit = int(server_info.limits["max_message_bytes"])
    conn = _trigger(kind, connect, user, deployment, names, limit)
    got, reason = conn.expect_close(timeout=deployment.timeout(5.0))
    assert got == code, f"{kind}: closed with {got} {reason!r}, expected {code}"
    problem = reason_problem(code, reason)
    assert problem is None, f"{kind}: {problem}"


@pytest.mark.requirement("UNI-CLOSE-18", "UNI-LC-9")
def test_server_announces_backoff_base_and_floor_within_cap(user: User, names: Names) -> None:
    for index in range(2):
        conn = user(names.tenant(index), names.user(index))
        assert conn.welcome is not None
        backoff = conn.welcome["backoff"]
        assert backoff["base_ms"] <= backoff["cap_ms"], backoff
        assert backoff["floor_ms"] <= backoff["cap_ms"], backoff
        assert min(backoff.values()) >= 0, backoff


@pytest.mark.requirement("UNI-CLOSE-9")
@pytest.mark.observer
def test_every_close_the_server_started_in_the_run_follows_the_grammar() -> None:
    """UNI-CLOSE-9 binds every close, not only those provoked above: the closes that other
    checks met on their way (timeouts, supersede, revocation, limits, drain) are judged here,
    after all of them, with the check each came in."""
    seen = SERVER_CLOSES.seen()
    if not seen:
        pytest.skip(f"{NOT_RUN_PREFIX} no check of this run saw the server close a connection")
    problems = SERVER_CLOSES.problems()
    shown = "\n".join(problems[:10])
    more = f"\n... and {len(problems) - 10} more" if len(problems) > 10 else ""
    assert not problems, f"{len(problems)} of {len(seen)} server closes:\n{shown}{more}"
