"""Section 7.5-7.7: resume by position and by time, gaps, history retention.

Every check publishes on fresh channels, so the history of each channel is exactly what the
check put there and the expected replay can be computed from the acks.
"""

from __future__ import annotations

from typing import Any

import pytest

from unisock_conformance.checks.conftest import User
from unisock_conformance.deployment import Names, ServerInfo, not_run
from unisock_conformance.wire import Conn

Frame = dict[str, Any]
NEVER_USED_EPOCH = "e-never-used-by-any-server-0"


def _publish_many(user: User, tenant: str, channel: str, count: int, burst: int) -> list[Frame]:
    """``count`` acks on ``channel``, spreading the publishes over connections by rate burst."""
    acks: list[Frame] = []
    per_conn = max(1, burst - 2)
    publisher: Conn | None = None
    for i in range(count):
        if i % per_conn == 0:
            if publisher is not None:
                publisher.close()
            publisher = user(tenant, f"pub-{i}")
        assert publisher is not None
        acks.append(publisher.publish(channel, data={"i": i}))
    return acks


def _position(ack: Frame, offset: int | None = None) -> dict[str, Any]:
    return {"epoch": ack["epoch"], "offset": ack["offset"] if offset is None else offset}


def _channel_frames(conn: Conn, channel: str, until: int) -> list[Frame]:
    """Events and gaps of ``channel`` up to the one at offset ``until`` (a live fence)."""
    conn.expect(
        None,
        where=lambda f: (
            f.get("channel") == channel and f.get("type") == "event" and f.get("offset") == until
        ),
    )
    return [f for f in conn.frames if f.get("channel") == channel and f["type"] in ("event", "gap")]


@pytest.mark.requirement("UNI-DEL-15", "UNI-DEL-23", "UNI-SUB-10")
@pytest.mark.parametrize("wildcard", [False, True], ids=["exact", "wildcard"])
def test_server_replays_the_whole_range_after_a_from_position(
    user: User, names: Names, wildcard: bool
) -> None:
    tenant, base = names.tenant(), names.channel()
    channel = f"{base}.x"
    alice = user(tenant, names.user(0))
    acks = [alice.publish(channel, data={"i": i}) for i in range(6)]
    bob = user(tenant, names.user(1))
    bob.subscribe(f"{base}.*" if wildcard else channel, from_={channel: _position(acks[1])})
    live = alice.publish(channel)
    frames = _channel_frames(bob, channel, live["offset"])
    got = [(f["type"], f["offset"]) for f in frames]
    assert got == [("event", n) for n in range(3, 8)], f"expected offsets 3..7, got {got}"


@pytest.mark.requirement("UNI-DEL-15", "UNI-DEL-16")
def test_server_sends_position_invalid_for_an_offset_beyond_the_head(
    user: User, names: Names
) -> None:
    tenant, base = names.tenant(), names.channel()
    channel = f"{base}.x"
    alice = user(tenant, names.user(0))
    acks = [alice.publish(channel) for _ in range(3)]
    bob = user(tenant, names.user(1))
    bob.subscribe(f"{base}.>", from_={channel: _position(acks[-1], 10)})
    gap = bob.expect("gap")
    assert gap == {**gap, "channel": channel, "reason": "position_invalid", **_position(acks[-1])}
    live = alice.publish(channel)
    frames = _channel_frames(bob, channel, live["offset"])
    assert [f["type"] for f in frames] == ["gap", "event"], frames


@pytest.mark.requirement("UNI-DEL-15", "UNI-DEL-16")
def test_server_sends_epoch_changed_for_a_position_of_another_epoch(
    user: User, names: Names
) -> None:
    tenant, base = names.tenant(), names.channel()
    channel = f"{base}.x"
    alice = user(tenant, names.user(0))
    acks = [alice.publish(channel) for _ in range(2)]
    bob = user(tenant, names.user(1))
    bob.subscribe(f"{base}.*", from_={channel: {"epoch": NEVER_USED_EPOCH, "offset": 1}})
    gap = bob.expect("gap")
    assert gap == {**gap, "channel": channel, "reason": "epoch_changed", **_position(acks[-1])}
    live = alice.publish(channel)
    frames = _channel_frames(bob, channel, live["offset"])
    assert [(f["type"], f["offset"]) for f in frames] == [("gap", 2), ("event", 3)], frames


@pytest.mark.requirement("UNI-DEL-15", "UNI-DEL-16", "UNI-DEL-23")
def test_server_sends_window_exceeded_when_history_no_longer_reaches_the_position(
    user: User, names: Names, server_info: ServerInfo
) -> None:
    max_count = int(server_info.history.get("max_count", 0))
    if not 0 < max_count <= 300:
        not_run(f"history.max_count {max_count} is too large to exceed quickly (at most 300)")
    burst = int(server_info.limits.get("publish_rate", {}).get("burst", 100))
    tenant, base = names.tenant(), names.channel()
    channel = f"{base}.x"
    acks = _publish_many(user, tenant, channel, max_count + 3, burst)
    bob = user(tenant, names.user(1))
    bob.subscribe(f"{base}.*", from_={channel: _position(acks[0])})
    gap = bob.expect("gap")
    assert gap == {**gap, "channel": channel, "reason": "window_exceeded", **_position(acks[-1])}
    live = user(tenant, names.user(2)).publish(channel)
    frames = _channel_frames(bob, channel, live["offset"])
    assert [(f["type"], f["offset"]) for f in frames] == [
        ("gap", acks[-1]["offset"]),
        ("event", live["offset"]),
    ], "UNI-DEL-15: a partial replay instead of a gap"


@pytest.mark.requirement("UNI-DEL-22", "UNI-DEL-15")
def test_server_retains_the_announced_history_for_replay(
    user: User, names: Names, server_info: ServerInfo
) -> None:
    max_count = int(server_info.history.get("max_count", 0))
    burst = int(server_info.limits.get("publish_rate", {}).get("burst", 100))
    count = min(max_count, 300)
    tenant, base = names.tenant(), names.channel()
    channel = f"{base}.x"
    acks = _publish_many(user, tenant, channel, count + 2, burst)
    bob = user(tenant, names.user(1))
    start = acks[1]  # every offset after it is among the max_count most recent
    bob.subscribe(f"{base}.*", from_={channel: _position(start)})
    frames = _channel_frames(bob, channel, acks[-1]["offset"])
    got = [(f["type"], f["offset"]) for f in frames]
    want = [("event", a["offset"]) for a in acks[2:]]
    assert got == want, f"replay of the last {len(want)} events: got {got[:5]}..."


@pytest.mark.requirement("UNI-DEL-17")
def test_server_replays_events_since_a_time_on_every_matched_channel(
    user: User, names: Names
) -> None:
    tenant, base = names.tenant(), names.channel()
    alice, witness = user(tenant, names.user(0)), user(tenant, names.user(1))
    witness.subscribe(f"{base}.>")
    acks = [alice.publish(f"{base}.{leaf}", data={"i": i}) for i, leaf in enumerate("abab")]
    seen = witness.wait_events(lambda e: e["channel"].startswith(base + "."), len(acks))
    since = seen[1]["ts"]
    expected = sorted(
        ((e["channel"], e["offset"]) for e in seen if e["ts"] >= since), key=lambda x: x
    )
    bob = user(tenant, names.user(2))
    bob.subscribe(f"{base}.*", since=since)
    fence = alice.publish(f"{base}.a")
    bob.expect("event", where=lambda f: f["message_id"] == fence["message_id"])
    gaps = [f for f in bob.frames if f["type"] == "gap"]
    assert gaps == [], f"history holds every event since {since}; no gap is due: {gaps}"
    got = sorted(
        (e["channel"], e["offset"]) for e in bob.events() if e["message_id"] != fence["message_id"]
    )
    assert got == expected, f"since {since}: expected {expected}, got {got}"


@pytest.mark.requirement("UNI-DEL-17", "UNI-DEL-23")
def test_server_replays_or_gaps_since_a_time_older_than_the_history(
    user: User, names: Names, server_info: ServerInfo
) -> None:
    max_count = int(server_info.history.get("max_count", 0))
    if not 0 < max_count <= 300:
        not_run(f"history.max_count {max_count} is too large to exceed quickly (at most 300)")
    burst = int(server_info.limits.get("publish_rate", {}).get("burst", 100))
    tenant, base = names.tenant(), names.channel()
    channel = f"{base}.x"
    witness = user(tenant, names.user(1))
    witness.subscribe(channel)
    acks = _publish_many(user, tenant, channel, max_count + 3, burst)
    first = witness.wait_events(lambda e: e["channel"] == channel, 1)[0]
    bob = user(tenant, names.user(2))
    bob.subscribe(f"{base}.*", since=first["ts"])
    live = user(tenant, names.user(3)).publish(channel)
    frames = _channel_frames(bob, channel, live["offset"])
    assert frames[0]["type"] == "gap", f"UNI-DEL-17: evicted events silently skipped: {frames[:2]}"
    assert frames[0]["reason"] == "window_exceeded" and frames[0]["offset"] == acks[-1]["offset"]
    assert [f["offset"] for f in frames[1:]] == [live["offset"]]


@pytest.mark.requirement("UNI-DEL-13", "UNI-DEL-14")
def test_server_skips_replayed_offsets_the_connection_already_received(
    user: User, names: Names
) -> None:
    tenant, base = names.tenant(), names.channel()
    channel = f"{base}.x"
    alice, bob = user(tenant, names.user(0)), user(tenant, names.user(1))
    bob.subscribe(channel)
    acks = [alice.publish(channel) for _ in range(4)]
    bob.wait_events(lambda e: e["channel"] == channel, 4)
    bob.subscribe(f"{base}.*", from_={channel: _position(acks[0])})
    live = alice.publish(channel)
    frames = _channel_frames(bob, channel, live["offset"])
    offsets = [f["offset"] for f in frames if f["type"] == "event"]
    assert offsets == [1, 2, 3, 4, 5], f"duplicates or disorder across replay: {offsets}"


@pytest.mark.requirement("UNI-DEL-36", "UNI-SUB-20", "UNI-DEL-11")
def test_server_replays_with_the_resuming_subscriptions_own_filter(
    user: User, names: Names
) -> None:
    """Another active subscription whose filter accepts an event never widens a replay."""
    tenant, base = names.tenant(), names.channel()
    channel = f"{base}.x"
    alice, bob = user(tenant, names.user(0)), user(tenant, names.user(1))
    acks = [alice.publish(channel, attrs={"priority": 1 + i % 2}) for i in range(4)]
    bob.subscribe(f"{base}.*", filter={"eq": ["priority", 1]})
    start = {"epoch": acks[0]["epoch"], "offset": 0}
    bob.subscribe(channel, filter={"eq": ["priority", 2]}, from_={channel: start})
    live = alice.publish(channel, attrs={"priority": 2})
    frames = _channel_frames(bob, channel, live["offset"])
    got = [(f["type"], f["offset"]) for f in frames]
    wanted = [("event", a["offset"]) for a in acks if a["offset"] % 2 == 0]
    assert got == [*wanted, ("event", live["offset"])], (
        f"replay under the filter priority == 2 gave {got}; events with priority 1 at odd "
        f"offsets match only the other subscription, which was not resuming"
    )
