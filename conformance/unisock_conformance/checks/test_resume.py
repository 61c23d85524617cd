"""Section 7.5-7.7: resume by position and by time, gaps, history retention.

Every check publishes on fresh channels, so the history of each channel is exactly what the
check put there and the expected replay can be computed from the acks.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from unisock_conformance.checks.conftest import User
from unisock_conformance.deployment import Deployment, Names, ServerInfo, not_run
from unisock_conformance.timing import require_time
from unisock_conformance.wire import Conn

Frame = dict[str, Any]
NEVER_USED_EPOCH = "e-never-used-by-any-server-0"


# The largest history.max_count a check fills past its end, per profile (publishes are
# spread over connections, one burst each, so the rate limit does not slow them down).
HISTORY_LIMIT = {"quick": 1100, "full": 10_000}


def _history_to_exceed(server_info: ServerInfo, profile: str) -> int:
    """The announced ``history.max_count``; not run when the profile cannot exceed it."""
    max_count = int(server_info.history.get("max_count", 0))
    limit = HISTORY_LIMIT.get(profile, HISTORY_LIMIT["quick"])
    if max_count <= 0:
        not_run(f"the server announces no usable history.max_count ({max_count})")
    if max_count > limit:
        hint = (
            f"; --profile full exceeds up to {HISTORY_LIMIT['full']}"
            if profile != "full" and max_count <= HISTORY_LIMIT["full"]
            else ""
        )
        not_run(
            f"history.max_count {max_count} is more than the {profile} profile publishes to "
            f"exceed it (at most {limit}){hint}"
        )
    return max_count


def _publish_many(
    user: User, tenant: str, channel: str, count: int, burst: int, first: int = 0
) -> list[Frame]:
    """``count`` acks on ``channel``, spreading the publishes over connections by rate burst
    (publishers and payloads numbered from ``first``)."""
    acks: list[Frame] = []
    per_conn = max(1, burst - 2)
    publisher: Conn | None = None
    for i in range(first, first + count):
        if (i - first) % per_conn == 0:
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
    user: User, names: Names, server_info: ServerInfo, profile: str
) -> None:
    max_count = _history_to_exceed(server_info, profile)
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
    user: User, names: Names, server_info: ServerInfo, profile: str
) -> None:
    max_count = _history_to_exceed(server_info, profile)
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


# -- edges of the table in 7.5 ----------------------------------------------------------------


@pytest.mark.requirement("UNI-DEL-15", "UNI-DEL-16")
@pytest.mark.parametrize("step", [-1, 0, 1], ids=["head-minus-1", "head", "head-plus-1"])
def test_server_treats_a_from_offset_up_to_the_head_as_valid_and_one_past_it_as_invalid(
    user: User, names: Names, step: int
) -> None:
    tenant, base = names.tenant(), names.channel()
    channel = f"{base}.x"
    alice = user(tenant, names.user(0))
    acks = [alice.publish(channel) for _ in range(3)]
    head = acks[-1]["offset"]
    bob = user(tenant, names.user(1))
    bob.subscribe(f"{base}.*", from_={channel: _position(acks[-1], head + step)})
    live = alice.publish(channel)
    frames = _channel_frames(bob, channel, live["offset"])
    got = [(f["type"], f["offset"], f.get("reason")) for f in frames]
    if step > 0:
        want = [("gap", head, "position_invalid"), ("event", live["offset"], None)]
        assert got == want, f"offset {head + step} is past the head {head}: {got}"
        assert frames[0]["epoch"] == acks[-1]["epoch"], frames[0]
    else:
        want = [("event", n, None) for n in range(head + step + 1, live["offset"] + 1)]
        assert got == want, f"offset {head + step} with the head at {head}: {got}"


# -- replay applies the delivery predicate ----------------------------------------------------


def _targeted_history(user: User, names: Names, tenant: str, channel: str) -> list[int]:
    """Publish events that the filter ``{"eq": ["k", "yes"]}`` and targeting sort for
    ``names.user(1)``; returns the offsets that user may receive (UNI-DEL-11)."""
    bob, carol = names.user(1), names.user(2)
    alice = user(tenant, names.user(0))
    bob_publisher = user(tenant, bob)
    yes, no = {"k": "yes"}, {"k": "no"}
    wanted: list[int] = []

    def publish(conn: Conn, delivered: bool, **extra: Any) -> None:
        ack = conn.publish(channel, **extra)
        if delivered:
            wanted.append(ack["offset"])

    publish(alice, True, attrs=yes)
    publish(alice, False, attrs=no)
    publish(alice, False)  # no attrs: the filter's key is absent
    publish(alice, True, attrs=yes, to=[bob])
    publish(alice, False, attrs=yes, to=[carol])
    publish(alice, False, attrs=yes, exclude=[bob])
    publish(alice, True, attrs=yes, exclude=[carol])
    publish(alice, False, attrs=no, to=[bob])
    # exclude_self names the publishing connection, not its user: another connection of
    # the same user receives the event, by replay as live.
    publish(bob_publisher, True, attrs=yes, exclude_self=True)
    return wanted


@pytest.mark.requirement("UNI-DEL-11", "UNI-DEL-36", "UNI-DEL-15", "UNI-DEL-17", "UNI-SUB-20")
@pytest.mark.parametrize("resume", ["from", "since"])
@pytest.mark.parametrize("wildcard", [False, True], ids=["exact", "wildcard"])
def test_server_replays_only_events_the_predicate_delivers(
    user: User, names: Names, resume: str, wildcard: bool
) -> None:
    tenant, base = names.tenant(), names.channel()
    channel = f"{base}.x"
    witness = user(tenant, names.user(3))
    witness.subscribe(channel)
    wanted = _targeted_history(user, names, tenant, channel)
    first = witness.wait_events(lambda e: e["channel"] == channel and e["offset"] == 1)[0]
    bob = user(tenant, names.user(1))
    bob.subscribe(
        f"{base}.*" if wildcard else channel,
        filter={"eq": ["k", "yes"]},
        from_={channel: {"epoch": first["epoch"], "offset": 0}} if resume == "from" else None,
        since=first["ts"] if resume == "since" else None,
    )
    live = user(tenant, names.user(4)).publish(channel, attrs={"k": "yes"})
    frames = _channel_frames(bob, channel, live["offset"])
    got = [(f["type"], f["offset"]) for f in frames]
    want = [("event", n) for n in [*wanted, live["offset"]]]
    assert got == want, f"replay by {resume} must apply filter and targeting: {got}, want {want}"


# -- from and since in one subscribe ----------------------------------------------------------


@pytest.mark.requirement("UNI-DEL-15", "UNI-DEL-17", "UNI-SUB-10")
@pytest.mark.parametrize("wildcard", [False, True], ids=["exact", "wildcard"])
def test_server_resumes_from_entries_by_position_and_the_other_channels_by_since(
    user: User, names: Names, wildcard: bool
) -> None:
    tenant, base = names.tenant(), names.channel()
    a, b = f"{base}.a", f"{base}.b"
    alice, witness = user(tenant, names.user(0)), user(tenant, names.user(1))
    witness.subscribe(f"{base}.>")
    order = [a, a, b, a, b, a, b]
    for i, channel in enumerate(order):
        alice.publish(channel, data={"i": i})
    seen = witness.wait_events(lambda e: e["channel"] in (a, b), len(order))
    on_a = [e for e in seen if e["channel"] == a]
    on_b = [e for e in seen if e["channel"] == b]
    since = on_b[0]["ts"]  # earlier than the third event of a, which the position passes
    bob = user(tenant, names.user(2))
    bob.subscribe(
        f"{base}.*" if wildcard else a,
        from_={a: {"epoch": on_a[2]["epoch"], "offset": on_a[2]["offset"]}},
        since=since,
    )
    fence_a = alice.publish(a)
    got_a = [(f["type"], f["offset"]) for f in _channel_frames(bob, a, fence_a["offset"])]
    assert got_a == [("event", on_a[3]["offset"]), ("event", fence_a["offset"])], (
        f"{a} has a from entry: its replay starts after that position, whatever since says; "
        f"got {got_a}"
    )
    if wildcard:
        fence_b = alice.publish(b)
        got_b = [(f["type"], f["offset"]) for f in _channel_frames(bob, b, fence_b["offset"])]
        want_b = [("event", e["offset"]) for e in on_b if e["ts"] >= since]
        assert got_b == [*want_b, ("event", fence_b["offset"])], (
            f"{b} has no from entry: since {since} replays it; got {got_b}"
        )


# -- the boundary of a since gap ----------------------------------------------------------------


@pytest.mark.requirement("UNI-DEL-17", "UNI-DEL-22", "UNI-DEL-23")
@pytest.mark.parametrize("edge", ["evicted", "retained"])
def test_server_gaps_a_since_that_reaches_an_evicted_event_and_never_replays_part(
    user: User, names: Names, server_info: ServerInfo, edge: str
) -> None:
    """``since`` equal to the ``ts`` of an event the history may have dropped: the server
    replays every event with ``ts >= since`` or sends a gap, never the retained part only;
    ``since`` after every such event: the guaranteed history is replayed (or gapped)."""
    max_count = int(server_info.history.get("max_count", 0))
    if not 0 < max_count <= 300:
        not_run(f"history.max_count {max_count} is too large to exceed quickly (at most 300)")
    burst = int(server_info.limits.get("publish_rate", {}).get("burst", 100))
    tenant, base = names.tenant(), names.channel()
    channel = f"{base}.x"
    witness = user(tenant, names.user(1))
    witness.subscribe(channel)
    # The first three offsets are past the guarantee; the rest are within it. Two
    # milliseconds between them give the first kept event a later ts than the last droppable
    # one (ts counts milliseconds), so a since between the two exists.
    acks = _publish_many(user, tenant, channel, 3, burst)
    witness.closed.wait(0.002)
    acks += _publish_many(user, tenant, channel, max_count, burst, first=3)
    seen = witness.wait_events(lambda e: e["channel"] == channel, len(acks))
    dropped, kept = seen[2], seen[3]
    if edge == "retained" and kept["ts"] == dropped["ts"]:
        not_run("the last droppable and the first guaranteed event share a millisecond")
    since = dropped["ts"] if edge == "evicted" else dropped["ts"] + 1
    bob = user(tenant, names.user(2))
    bob.subscribe(f"{base}.*", since=since)
    live = user(tenant, names.user(3)).publish(channel)
    frames = _channel_frames(bob, channel, live["offset"])
    if frames[0]["type"] == "gap":
        assert frames[0]["reason"] == "window_exceeded", frames[0]
        assert frames[0]["offset"] == acks[-1]["offset"], frames[0]
        assert [f["offset"] for f in frames[1:]] == [live["offset"]], frames[:3]
        return
    got = [f["offset"] for f in frames if f["type"] == "event"]
    want = [e["offset"] for e in seen if e["ts"] >= since] + [live["offset"]]
    assert got == want, (
        f"UNI-DEL-17: since {since} replayed offsets {got[:3]}..{got[-2:]} without a gap; "
        f"every event with ts >= since is {want[:3]}..{want[-2:]}"
    )


@pytest.mark.requirement("UNI-DEL-22", "UNI-DEL-15", "UNI-DEL-17")
@pytest.mark.timing
@pytest.mark.parametrize("resume", ["from", "since"])
def test_server_retains_events_until_history_max_age_ms(
    user: User, deployment: Deployment, server_info: ServerInfo, names: Names, resume: str
) -> None:
    """Events younger than ``history.max_age_ms`` (less the timer tolerance) are replayed."""
    max_age_s = int(server_info.history.get("max_age_ms", 0)) / 1000
    tolerance = deployment.timeout(0.25)
    if max_age_s <= 2 * tolerance:
        not_run(f"history.max_age_ms {max_age_s * 1000:.0f} leaves no room for the tolerance")
    require_time(deployment, max_age_s, "history.max_age_ms")
    tenant, base = names.tenant(), names.channel()
    channel = f"{base}.x"
    witness = user(tenant, names.user(0))
    witness.subscribe(channel)
    alice = user(tenant, names.user(1))
    started = time.monotonic()  # no later than the first event is sequenced
    acks = [alice.publish(channel, data={"i": i}) for i in range(3)]
    first = witness.wait_events(lambda e: e["channel"] == channel and e["offset"] == 1)[0]
    alice.closed.wait(max(0.0, max_age_s - tolerance - (time.monotonic() - started)))
    bob = user(tenant, names.user(2))
    bob.subscribe(
        f"{base}.*",
        from_={channel: {"epoch": first["epoch"], "offset": 0}} if resume == "from" else None,
        since=first["ts"] if resume == "since" else None,
    )
    live = alice.publish(channel)
    frames = _channel_frames(bob, channel, live["offset"])
    got = [(f["type"], f["offset"]) for f in frames]
    want = [("event", a["offset"]) for a in [*acks, live]]
    assert got == want, (
        f"events {time.monotonic() - started:.2f} s old, younger than history.max_age_ms "
        f"{max_age_s * 1000:.0f}, were not all replayed: {got}"
    )


@pytest.mark.requirement("UNI-DEL-17", "UNI-DEL-15", "UNI-CH-13")
@pytest.mark.parametrize(
    "namespace", [pytest.param("$sys", marks=pytest.mark.feature("system_namespace")), "$me"]
)
def test_server_resumes_a_pattern_of_another_namespace_by_since_and_by_position(
    user: User, names: Names, namespace: str
) -> None:
    """Resume by time and by position works in the ``$sys`` and ``$me`` namespaces as in
    the tenant's: the matched channels of that namespace are replayed."""
    tenant, base = names.tenant(), names.channel()
    prefix = f"{namespace}.{base}"
    a, b = f"{prefix}.a", f"{prefix}.b"
    if namespace == "$sys":
        publisher = user(tenant, names.user(0), publish=("$sys.>",), broadcaster=True)
        grants: tuple[str, ...] = ("$sys.>",)
        owner: dict[str, Any] = {}
    else:
        publisher = user(tenant, names.user(0), publish=("$me.>",), broadcaster=True)
        grants = ("$me.>",)
        owner = {"user": names.user(1)}
    acks = [publisher.publish(ch, data={"i": i}, **owner) for i, ch in enumerate([a, b, a, b])]
    witness = user(
        names.tenant(1) if namespace == "$sys" else tenant, names.user(1), subscribe=grants
    )
    witness.subscribe(f"{prefix}.*", from_={a: {"epoch": acks[0]["epoch"], "offset": 0}})
    fence = publisher.publish(a, **owner)
    got_a = [(f["type"], f["offset"]) for f in _channel_frames(witness, a, fence["offset"])]
    assert got_a == [("event", 1), ("event", 2), ("event", fence["offset"])], got_a
    since = min(e["ts"] for e in witness.events(a))
    bob = user(tenant, names.user(1), subscribe=grants)
    bob.subscribe(f"{prefix}.*", since=since)
    fence_b = publisher.publish(b, **owner)
    got_b = [(f["type"], f["offset"]) for f in _channel_frames(bob, b, fence_b["offset"])]
    assert got_b == [("event", 1), ("event", 2), ("event", fence_b["offset"])], (
        f"since {since} on {prefix}.* replays {b}: {got_b}"
    )
