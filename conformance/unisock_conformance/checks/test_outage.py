"""Broker outages (spec 12.4): requests that need the broker are refused with ``unavailable``,
connections stay open and keep being served, and delivery resumes by itself afterwards.

No client can take a deployment's broker away; the operator gives two shell commands, one
that makes the broker unreachable and one that brings it back (``--outage-command`` and
``--recover-command``, e.g. ``kill -STOP``/``kill -CONT`` of a Redis process). One outage
episode is observed once and graded by several checks. With several nodes (``--node-url``)
the subscriber and the publisher sit on different nodes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from unisock_conformance.deployment import NOT_RUN_PREFIX, Deployment, Names, ServerInfo
from unisock_conformance.wire import Conn, ConnGroup, open_conn

pytestmark = [pytest.mark.outage]

Frame = dict[str, Any]
# How long an outage may take to show in replies, and the deployment to recover from it.
OUTAGE_WAIT_S = 15.0
RETRY_PAUSE_S = 0.1


@dataclass
class Episode:
    """What a subscriber and a publisher observed across one outage."""

    channel: str
    refused: Frame | None = None
    """The ``unavailable`` error of a publish sent during the outage."""
    refused_subscribe: Frame | None = None
    """The reply to a subscribe sent during the outage."""
    pongs: dict[str, bool] = field(default_factory=dict)
    """Whether each connection answered a ping during the outage."""
    after: Frame | None = None
    """The ack of the first publish after recovery (the refused publish's message_id)."""
    delivered: Frame | None = None
    """The subscriber's event of that publish, on its original connection."""
    closed: dict[str, tuple[int, str] | None] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)


def _pong(conn: Conn) -> bool:
    reply = conn.request({"type": "ping", "id": conn.next_id("alive")})
    return reply.get("type") == "pong"


def _refused_publish(conn: Conn, channel: str, message_id: str, deadline: float) -> Frame | None:
    """Publish ``message_id`` until a reply is an ``unavailable`` error (or the deadline).

    The outage command may return before the deployment notices; acks until then are fine,
    under fresh message ids, so the one refused publish keeps its id unused.
    """
    while time.monotonic() < deadline:
        message = conn.publish_message(channel, "outage.during", message_id=message_id)
        reply = conn.request(message, timeout=max(deadline - time.monotonic(), 0.1))
        if reply.get("type") == "error":
            return reply
        message_id = conn.next_id("m-outage-")
        time.sleep(RETRY_PAUSE_S)
    return None


@pytest.fixture(scope="module")
def outage_episode(deployment: Deployment, server_info: ServerInfo) -> Iterator[Episode]:
    """Subscribe, take the broker away, publish and ping, bring it back, publish again."""
    if deployment.outage_command is None or deployment.recover_command is None:
        pytest.skip(f"{NOT_RUN_PREFIX} needs --outage-command and --recover-command")
    names = Names(deployment.seed, "checks/test_outage.py")
    tenant, channel = names.tenant(), names.channel()
    group = ConnGroup()
    episode = Episode(channel)
    urls = (deployment.url, *deployment.node_urls)

    def conn(index: int, url: str) -> Conn:
        token = deployment.mint(tenant, names.user(index), subscribe=(">",), publish=(">",))
        opened = open_conn(
            url,
            name=f"user{index}",
            origin=deployment.origin,
            headers=deployment.headers,
            timeout=deployment.timeout(),
            group=group,
            message_ids=names.message_id,
        )
        opened.hello(token)
        return opened

    recovered = False
    try:
        subscriber, publisher = conn(0, urls[-1]), conn(1, urls[0])
        subscriber.subscribe(channel)
        before = publisher.publish(channel, "outage.before")
        subscriber.wait_events(lambda e: e["message_id"] == before["message_id"])
        mid = names.message_id()
        deployment.run_outage_command()
        try:
            deadline = time.monotonic() + deployment.timeout(OUTAGE_WAIT_S)
            episode.refused = _refused_publish(publisher, channel, mid, deadline)
            if episode.refused is None:
                episode.problems["outage"] = (
                    f"no publish was refused {deployment.timeout(OUTAGE_WAIT_S):.0f} s after "
                    "the outage command"
                )
            else:
                message = {"type": "subscribe", "id": "s-outage", "channel": names.channel()}
                episode.refused_subscribe = subscriber.request(message)
                episode.pongs = {"subscriber": _pong(subscriber), "publisher": _pong(publisher)}
        finally:
            deployment.run_recover_command()
            recovered = True
        if episode.refused is not None:
            _observe_recovery(episode, deployment, publisher, subscriber, mid)
        episode.closed = {
            "subscriber": _close_of(subscriber),
            "publisher": _close_of(publisher),
        }
        yield episode
    finally:
        if not recovered:
            deployment.run_recover_command()
        group.close_all()


def _close_of(conn: Conn) -> tuple[int, str] | None:
    if not conn.closed.is_set():
        return None
    return conn.close_code or 1006, conn.close_reason or ""


def _observe_recovery(
    episode: Episode, deployment: Deployment, publisher: Conn, subscriber: Conn, mid: str
) -> None:
    """Retry the refused publish (same message_id) until acked; the subscriber must get it."""
    deadline = time.monotonic() + deployment.timeout(OUTAGE_WAIT_S)
    channel = episode.channel
    while episode.after is None:
        message = publisher.publish_message(channel, "outage.after", message_id=mid)
        reply = publisher.request(message, timeout=max(deadline - time.monotonic(), 0.1))
        if reply.get("type") == "ack":
            episode.after = reply
        elif time.monotonic() >= deadline:
            episode.problems["recovery"] = f"publishes still refused after recovery: {reply}"
            return
        else:
            time.sleep(RETRY_PAUSE_S)
    try:
        found = subscriber.wait_events(lambda e: e["message_id"] == mid)
        episode.delivered = found[0]
    except AssertionError as error:
        episode.problems["delivery"] = str(error)


def _require_outage(episode: Episode) -> Frame:
    assert "outage" not in episode.problems, episode.problems["outage"]
    assert episode.refused is not None
    return episode.refused


@pytest.mark.requirement("UNI-ERR-11")
def test_server_refuses_publish_and_subscribe_with_unavailable_while_the_broker_is_down(
    outage_episode: Episode,
) -> None:
    refused = _require_outage(outage_episode)
    assert refused.get("code") == "unavailable", f"a publish during the outage got {refused}"
    subscribe = outage_episode.refused_subscribe
    assert subscribe is not None
    assert (subscribe.get("type"), subscribe.get("code")) == ("error", "unavailable"), (
        f"a subscribe during the outage got {subscribe}"
    )


@pytest.mark.requirement("UNI-ERR-4")
def test_server_tells_when_to_retry_a_request_refused_during_an_outage(
    outage_episode: Episode,
) -> None:
    refused = _require_outage(outage_episode)
    retry = refused.get("retry_after_ms")
    assert isinstance(retry, int) and retry > 0, f"no retry_after_ms in {refused}"


@pytest.mark.requirement("UNI-ERR-16", "UNI-ERR-5")
def test_server_keeps_connections_open_and_answering_during_a_broker_outage(
    outage_episode: Episode,
) -> None:
    _require_outage(outage_episode)
    assert outage_episode.pongs == {"subscriber": True, "publisher": True}, outage_episode.pongs
    assert outage_episode.closed == {"subscriber": None, "publisher": None}, (
        f"connections closed across the outage: {outage_episode.closed}"
    )


@pytest.mark.requirement("UNI-ERR-6", "UNI-PUB-23")
def test_server_gives_a_publish_refused_during_an_outage_no_effect(
    outage_episode: Episode,
) -> None:
    _require_outage(outage_episode)
    assert "recovery" not in outage_episode.problems, outage_episode.problems["recovery"]
    after = outage_episode.after
    assert after is not None
    assert after.get("duplicate") is False, (
        f"the retry of the refused publish was acknowledged as a duplicate: {after}; the "
        "refused publish had been sequenced after all"
    )


@pytest.mark.requirement("UNI-ERR-17")
def test_server_resumes_delivery_on_open_connections_after_a_broker_outage(
    outage_episode: Episode,
) -> None:
    _require_outage(outage_episode)
    assert "recovery" not in outage_episode.problems, outage_episode.problems["recovery"]
    assert "delivery" not in outage_episode.problems, outage_episode.problems["delivery"]
    delivered, after = outage_episode.delivered, outage_episode.after
    assert delivered is not None and after is not None
    assert (delivered["epoch"], delivered["offset"]) == (after["epoch"], after["offset"])
