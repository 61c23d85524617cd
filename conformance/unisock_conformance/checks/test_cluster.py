"""Deployments with several nodes (spec 7.10 and 10.5): one offset sequence, history and
dedup per channel for every node, and supersede and the per-user cap across nodes.

The suite reaches further nodes of the deployment only when the operator names them
(``--node-url``, repeatable); the nodes must share one broker. Without one the checks are
not run.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from unisock_conformance.checks.conftest import User
from unisock_conformance.deployment import NOT_RUN_PREFIX, Deployment, Names, ServerInfo
from unisock_conformance.wire import Conn

Frame = dict[str, Any]
# A cap above this would need too many connections for one check.
MAX_CAP = 32
# Publishes per node in the ordering check: enough to interleave, within any publish burst.
PER_PUBLISHER = 8


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


def _position(frame: Frame) -> dict[str, Any]:
    return {"epoch": frame["epoch"], "offset": frame["offset"]}


def _with_id(message_id: str) -> Callable[[Frame], bool]:
    return lambda event: bool(event["message_id"] == message_id)


def _on(channel: str) -> Callable[[Frame], bool]:
    return lambda event: bool(event["channel"] == channel)


@pytest.mark.requirement("UNI-DEL-34", "UNI-DEL-15")
def test_server_resumes_on_another_node_from_a_position_obtained_on_the_first(
    user: User, names: Names, nodes: tuple[str, ...]
) -> None:
    tenant, channel = names.tenant(), names.channel()
    publisher = user(tenant, names.user(0), url=nodes[-1])
    for index, later in enumerate(nodes[1:], start=1):
        reader = user(tenant, names.user(index), url=nodes[0])
        reader.subscribe(channel)
        seen = publisher.publish(channel)
        reader.wait_events(_with_id(seen["message_id"]))
        reader.close()
        missed = [publisher.publish(channel) for _ in range(3)]
        resumed = user(tenant, names.user(index), url=later)
        resumed.subscribe(channel, from_={channel: _position(seen)})
        live = publisher.publish(channel)
        got = resumed.wait_events(_on(channel), count=4)
        assert [e["message_id"] for e in got] == [a["message_id"] for a in [*missed, live]], (
            f"resuming on {later} from {seen['offset']} gave offsets "
            f"{[e['offset'] for e in got]}, expected {[a['offset'] for a in [*missed, live]]}"
        )
        gaps = [f for f in resumed.frames if f.get("type") == "gap"]
        assert gaps == [], f"resuming on {later} within the history window gave {gaps}"


@pytest.mark.requirement("UNI-DEL-34", "UNI-DEL-7", "UNI-DEL-14")
def test_server_keeps_one_order_per_channel_for_publishers_on_different_nodes(
    user: User, names: Names, nodes: tuple[str, ...]
) -> None:
    tenant, channel = names.tenant(), names.channel()
    readers = [user(tenant, names.user(100 + i), url=url) for i, url in enumerate(nodes)]
    for reader in readers:
        reader.subscribe(channel)
    writers = [user(tenant, names.user(i), url=url) for i, url in enumerate(nodes)]

    def burst(writer: Conn) -> list[Frame]:
        return [writer.publish(channel) for _ in range(PER_PUBLISHER)]

    with ThreadPoolExecutor(len(writers)) as pool:
        acks_per_writer = list(pool.map(burst, writers))
    for acks in acks_per_writer:
        offsets = [a["offset"] for a in acks]
        assert offsets == sorted(offsets), f"one publisher's acks went backwards: {offsets}"
    acks = sorted((a for acks in acks_per_writer for a in acks), key=lambda a: a["offset"])
    total = len(acks)
    first = acks[0]["offset"]
    assert [a["offset"] for a in acks] == list(range(first, first + total)), (
        f"acks from {len(nodes)} nodes did not take contiguous offsets: "
        f"{[a['offset'] for a in acks]}"
    )
    assert len({a["epoch"] for a in acks}) == 1, "acks of one channel carry several epochs"
    expected = [(a["offset"], a["message_id"]) for a in acks]
    for reader, url in zip(readers, nodes, strict=True):
        got = reader.wait_events(_on(channel), count=total)
        assert [(e["offset"], e["message_id"]) for e in got] == expected, (
            f"a subscriber on {url} saw another order than the acks"
        )


@pytest.mark.requirement("UNI-PUB-22", "UNI-DEL-34")
def test_server_recognises_a_duplicate_sent_to_another_node(
    user: User, names: Names, nodes: tuple[str, ...]
) -> None:
    tenant, channel, mid = names.tenant(), names.channel(), names.message_id()
    first = user(tenant, names.user(0), url=nodes[0]).publish(channel, message_id=mid)
    for index, url in enumerate(nodes[1:], start=1):
        retry = user(tenant, names.user(index), url=url).publish(channel, message_id=mid)
        assert retry["duplicate"] is True, f"the retry on {url} was not a duplicate: {retry}"
        assert _position(retry) == _position(first), retry
