"""Sessions across nodes (spec 10.5): supersede and the per-user cap see every node.

The suite reaches further nodes of the deployment only when the operator names them
(``--node-url``, repeatable); the nodes must share one broker. Without one the checks are
not run.
"""

from __future__ import annotations

import pytest

from unisock_conformance.checks.conftest import User
from unisock_conformance.deployment import NOT_RUN_PREFIX, Deployment, Names, ServerInfo
from unisock_conformance.wire import Conn

# A cap above this would need too many connections for one check.
MAX_CAP = 32


@pytest.fixture
def nodes(deployment: Deployment) -> tuple[str, ...]:
    """Every node URL of the deployment, the main URL first."""
    if not deployment.node_urls:
        pytest.skip(f"{NOT_RUN_PREFIX} needs --node-url (a second node sharing the broker)")
    return (deployment.url, *deployment.node_urls)


def _assert_open(conn: Conn) -> None:
    reply = conn.request({"type": "ping", "id": conn.next_id("alive")})
    assert reply.get("type") == "pong", f"{conn.name} did not answer: {reply}"


@pytest.mark.requirement("UNI-SESS-14")
def test_server_supersedes_a_session_opened_again_on_another_node(
    user: User, names: Names, nodes: tuple[str, ...]
) -> None:
    tenant, sub = names.tenant(), names.user()
    for index, later in enumerate(nodes[1:]):
        sid = f"tab-{index}"
        first = user(tenant, sub, sid=sid, url=nodes[0])
        second = user(tenant, sub, sid=sid, url=later)
        code, reason = first.expect_close()
        assert code == 4001, f"session {sid} on {nodes[0]} closed with {code} {reason!r}"
        _assert_open(second)
        # And back: the node of the older connection does not matter.
        third = user(tenant, sub, sid=sid, url=nodes[0])
        code, reason = second.expect_close()
        assert code == 4001, f"session {sid} on {later} closed with {code} {reason!r}"
        _assert_open(third)


@pytest.mark.requirement("UNI-SESS-14")
def test_server_counts_the_per_user_cap_over_every_node(
    user: User, names: Names, nodes: tuple[str, ...], server_info: ServerInfo
) -> None:
    cap = int(server_info.limits["max_connections_per_user"])
    if cap > MAX_CAP:
        pytest.skip(f"{NOT_RUN_PREFIX} max_connections_per_user {cap} needs too many connections")
    tenant, sub = names.tenant(), names.user()
    conns = [user(tenant, sub, url=nodes[index % len(nodes)]) for index in range(cap)]
    # The connection over the cap arrives on a node other than the oldest one's.
    newest = user(tenant, sub, url=nodes[1])
    code, reason = conns[0].expect_close()
    assert code == 4001, f"the oldest connection closed with {code} {reason!r}, expected 4001"
    for conn in [*conns[1:], newest]:
        _assert_open(conn)
