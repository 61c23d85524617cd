"""Section 7: the event frame, offsets, the delivery predicate, order and expiry.

The stateful model (test_model.py) checks the predicate over random programs; these are the
named cases a reader looks for first, each with its fence.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from typing import Any

import pytest

from unisock_conformance.checks.conftest import User, subscription_cap
from unisock_conformance.deployment import Deployment, Names, ServerInfo
from unisock_conformance.wire import Conn

Frame = dict[str, Any]
REQUIRED = ("channel", "epoch", "offset", "event", "data", "message_id", "ts")
PER_RECIPIENT = ("to", "exclude", "exclude_self", "user", "tenant", "owner")


def _delivered(receiver: Conn, message_id: str) -> Frame:
    return receiver.expect("event", where=lambda frame: frame.get("message_id") == message_id)


def _not_delivered(receiver: Conn, publisher: Conn, fence_channel: str, message_id: str) -> None:
    receiver.assert_no_frame(
        "event",
        fence=lambda: publisher.publish(fence_channel, "fence.event"),
        where=lambda frame: frame.get("message_id") == message_id,
    )


def _bytes(frame: Frame) -> str:
    """The frame re-encoded with its key order: equal for byte-identical text frames."""
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


@pytest.mark.requirement("UNI-DEL-1", "UNI-DEL-2")
def test_server_event_frames_carry_every_field_and_nothing_per_recipient(
    user: User, names: Names
) -> None:
    tenant, channel = names.tenant(), names.channel()
    alice = user(tenant, names.user(0))
    bob = user(tenant, names.user(1))
    bob.subscribe(channel)
    ack = alice.publish(
        channel, data={"x": 1}, to=[names.user(1)], exclude=[names.user(2)], exclude_self=True
    )
    frame = _delivered(bob, ack["message_id"])
    missing = [name for name in REQUIRED if name not in frame]
    assert missing == [], f"event frame lacks {missing}: {frame}"
    leaked = [name for name in PER_RECIPIENT if name in frame]
    assert leaked == [], f"event frame carries per-recipient fields {leaked}: {frame}"
    assert "coalesced" not in frame


@pytest.mark.requirement("UNI-DEL-4")
def test_server_sends_identical_frames_to_every_live_recipient(user: User, names: Names) -> None:
    tenant, base = names.tenant(), names.channel()
    channel = f"{base}.x"
    alice = user(tenant, names.user(0))
    receivers = [user(tenant, names.user(i)) for i in (1, 2, 3)]
    receivers[0].subscribe(channel)
    receivers[1].subscribe(f"{base}.*")
    receivers[2].subscribe(">", filter={"eq": ["kind", "a"]})
    ack = alice.publish(channel, "test.event", {"k": [1, 2.5, "é"]}, attrs={"kind": "a"})
    frames = [_bytes(_delivered(r, ack["message_id"])) for r in receivers]
    assert len(set(frames)) == 1, "recipients got different frames:\n" + "\n".join(frames)


@pytest.mark.requirement("UNI-DEL-4", "UNI-CH-13")
@pytest.mark.feature("system_namespace")
def test_server_sends_identical_sys_frames_to_recipients_of_every_tenant(
    user: User, names: Names
) -> None:
    channel = f"$sys.{names.channel()}"
    backend = user(names.tenant(0), names.user(0), publish=("$sys.>",), broadcaster=True)
    receivers = [user(names.tenant(i), names.user(i), subscribe=("$sys.>",)) for i in (1, 2)]
    for receiver in receivers:
        receiver.subscribe(channel)
    ack = backend.publish(channel)
    frames = [_bytes(_delivered(r, ack["message_id"])) for r in receivers]
    assert frames[0] == frames[1], frames


@pytest.mark.requirement("UNI-DEL-5")
def test_server_replays_an_event_with_the_bytes_of_its_live_frame(user: User, names: Names) -> None:
    tenant, base = names.tenant(), names.channel()
    channel = f"{base}.x"
    alice, live = user(tenant, names.user(0)), user(tenant, names.user(1))
    live.subscribe(channel)
    ack = alice.publish(channel, data={"a": [1, {"b": None}]}, attrs={"p": 1})
    live_frame = _delivered(live, ack["message_id"])
    later = user(tenant, names.user(2))
    later.subscribe(f"{base}.*", from_={channel: {"epoch": ack["epoch"], "offset": 0}})
    replayed = _delivered(later, ack["message_id"])
    assert _bytes(replayed) == _bytes(live_frame)


@pytest.mark.requirement("UNI-DEL-6", "UNI-DEL-7")
def test_server_keeps_a_separate_offset_sequence_per_tenant(user: User, names: Names) -> None:
    channel = names.channel()
    one, two = user(names.tenant(0), names.user()), user(names.tenant(1), names.user())
    offsets = [one.publish(channel)["offset"], two.publish(channel)["offset"]]
    offsets += [one.publish(channel)["offset"], two.publish(channel)["offset"]]
    assert offsets == [1, 1, 2, 2]


@pytest.mark.requirement("UNI-DEL-6")
@pytest.mark.feature("system_namespace")
def test_server_shares_one_offset_sequence_per_sys_channel_across_tenants(
    user: User, names: Names
) -> None:
    channel = f"$sys.{names.channel()}"
    backends = [
        user(names.tenant(i), names.user(i), publish=("$sys.>",), broadcaster=True) for i in (0, 1)
    ]
    offsets = [backends[i % 2].publish(channel)["offset"] for i in range(4)]
    assert offsets == [1, 2, 3, 4]


@pytest.mark.requirement("UNI-DEL-11", "UNI-CH-2")
def test_server_never_delivers_a_tenant_event_to_another_tenant(user: User, names: Names) -> None:
    channel = names.channel()
    alice = user(names.tenant(0), names.user(0))
    mallory = user(names.tenant(1), names.user(0))
    mallory.subscribe(">")
    mallory.subscribe(channel)
    ack = alice.publish(channel)
    fence_peer = user(names.tenant(1), names.user(1))
    _not_delivered(mallory, fence_peer, channel, ack["message_id"])


@pytest.mark.requirement("UNI-DEL-11", "UNI-SUB-20")
def test_server_delivers_only_events_whose_attributes_pass_the_filter(
    user: User, names: Names
) -> None:
    tenant, channel = names.tenant(), names.channel()
    alice, bob = user(tenant, names.user(0)), user(tenant, names.user(1))
    bob.subscribe(channel, filter={"and": [{"gte": ["prio", 2]}, {"ne": ["kind", "x"]}]})
    cases: list[tuple[dict[str, Any] | None, bool]] = [
        ({"prio": 2}, True),
        ({"prio": 3, "kind": "x"}, False),
        ({"prio": 1}, False),
        ({"prio": "2"}, False),
        ({"prio": 2.5, "kind": None}, True),
        (None, False),
    ]
    acks = [(alice.publish(channel, attrs=attrs), expected) for attrs, expected in cases]
    last = alice.publish(channel, attrs={"prio": 9})
    _delivered(bob, last["message_id"])
    got = {e["message_id"] for e in bob.events(channel)}
    for ack, expected in acks:
        assert (ack["message_id"] in got) == expected, (ack, expected, got)


@pytest.mark.requirement("UNI-DEL-13")
def test_server_delivers_an_event_once_despite_overlapping_subscriptions(
    user: User, names: Names
) -> None:
    tenant, base = names.tenant(), names.channel()
    channel = f"{base}.x"
    alice, bob = user(tenant, names.user(0)), user(tenant, names.user(1))
    cap = subscription_cap(bob, 2, "overlapping subscriptions")
    for pattern in (channel, f"{base}.*", f"{base}.>", ">")[:cap]:
        bob.subscribe(pattern)
    first = alice.publish(channel)
    second = alice.publish(channel)
    _delivered(bob, second["message_id"])
    ids = [e["message_id"] for e in bob.events(channel)]
    assert ids == [first["message_id"], second["message_id"]], ids


@pytest.mark.requirement("UNI-DEL-14", "UNI-DEL-7")
def test_server_orders_events_per_channel_under_concurrent_publishers(
    user: User, names: Names, server_info: ServerInfo
) -> None:
    tenant, channel = names.tenant(), names.channel()
    burst = int(server_info.limits.get("publish_rate", {}).get("burst", 100))
    per_publisher = max(5, min(40, burst - 5))
    publishers = [user(tenant, names.user(i)) for i in range(3)]
    reader = user(tenant, names.user(9))
    reader.subscribe(channel)
    acks: list[list[Frame]] = [[] for _ in publishers]
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            for i in range(per_publisher):
                acks[index].append(publishers[index].publish(channel, data={"p": index, "i": i}))
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(publishers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    total = per_publisher * len(publishers)
    offsets = sorted(a["offset"] for batch in acks for a in batch)
    assert offsets == list(range(1, total + 1)), "acked offsets are not contiguous"
    events = reader.wait_events(lambda e: e["channel"] == channel, total)
    got = [e["offset"] for e in events]
    assert got == list(range(1, total + 1)), f"out of order or missing: {got}"
    for batch in acks:
        mine = [
            e["data"]["i"] for e in events if e["message_id"] in {a["message_id"] for a in batch}
        ]
        assert mine == sorted(mine), "one publisher's events were reordered"


@pytest.mark.requirement("UNI-DEL-18")
def test_server_delivers_only_events_sequenced_after_the_subscription(
    user: User, names: Names
) -> None:
    tenant, channel = names.tenant(), names.channel()
    alice, bob = user(tenant, names.user(0)), user(tenant, names.user(1))
    before = alice.publish(channel)
    subscribed = bob.subscribe(channel)
    assert subscribed["position"]["offset"] == before["offset"]
    after = [alice.publish(channel) for _ in range(3)]
    events = bob.wait_events(lambda e: e["channel"] == channel, 3)
    assert [e["offset"] for e in events] == [a["offset"] for a in after]
    assert before["message_id"] not in {e["message_id"] for e in bob.events()}


def _reply_to(message: Frame) -> Callable[[Frame], bool]:
    return lambda frame: frame.get("id") == message["id"]


@pytest.mark.requirement("UNI-DEL-18")
def test_server_delivers_events_sequenced_while_a_first_subscription_is_set_up(
    user: User, names: Names, server_info: ServerInfo
) -> None:
    """A subscription is set up between reading the channel's head and becoming active; on a
    broker that yields (a network round trip), events are sequenced in between, and they are
    owed like any later one. Connections that subscribe to nothing else all ask during a
    burst from another connection, so that their set-ups overlap its publishes."""
    tenant, channel = names.tenant(), names.channel()
    burst = int(server_info.limits.get("publish_rate", {}).get("burst", 100))
    publisher = user(tenant, names.user(0))
    joiners = [user(tenant, names.user(1 + index)) for index in range(16)]
    messages = [
        publisher.publish_message(channel, data={"i": index})
        for index in range(max(8, min(40, burst - 5)))
    ]

    def send_all() -> None:
        for message in messages:
            publisher.send(message)

    sender = threading.Thread(target=send_all)
    sender.start()
    # Two waves: once the first ack is back, and again halfway, the rest of the burst is being
    # sequenced, and a wave's joiners all ask at once, so that their set-ups overlap it.
    waves = {0: joiners[:8], len(messages) // 2: joiners[8:]}
    acks: list[Frame] = []
    requests: list[Frame] = []
    for index, message in enumerate(messages):
        acks.append(publisher.expect("ack", where=_reply_to(message)))
        for joiner in waves.get(index, []):
            requests.append({"type": "subscribe", "id": joiner.next_id("s"), "channel": channel})
            joiner.send(requests[-1])
    sender.join()
    heads = [
        joiner.expect("subscribed", where=_reply_to(request))["position"]
        for joiner, request in zip(joiners, requests, strict=True)
    ]
    last = max(ack["offset"] for ack in acks)
    for index, (joiner, head) in enumerate(zip(joiners, heads, strict=True)):
        owed = list(range(int(head["offset"]) + 1, last + 1))
        events = joiner.wait_events(lambda e: e["channel"] == channel, len(owed)) if owed else []
        got = [e["offset"] for e in events]
        assert got == owed, (
            f"joiner {index} subscribed at offset {head['offset']} and got {got}, "
            f"not every offset up to {last}"
        )


@pytest.mark.requirement("UNI-DEL-12", "UNI-DEL-11")
@pytest.mark.timing
def test_server_writes_no_event_sequenced_after_the_token_expired(
    user: User, deployment: Deployment, names: Names
) -> None:
    tenant, channel = names.tenant(), names.channel()
    alice = user(tenant, names.user(0))
    short = user(tenant, names.user(1), ttl_s=max(2, math.ceil(deployment.timeout(1.0)) + 1))
    assert short.welcome is not None
    expires_ms = int(short.welcome["session"]["expires_at"]) * 1000
    short.subscribe(channel)
    deadline = short.default_timeout + 3.0
    published = 0
    while not short.closed.is_set() and published < 400:
        alice.publish(channel, data={"n": published})
        published += 1
        short.closed.wait(0.03)  # paces the publisher below the rate limit
    assert short.closed.wait(deadline), "the expired connection stayed open"
    late = [e for e in short.events(channel) if e["ts"] >= expires_ms]
    assert short.events(channel), "no event reached the connection before it expired"
    assert late == [], f"events sequenced at or after expires_at were written: {late[:3]}"
