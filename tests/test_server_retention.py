"""Idle channel state (UNI-SEC-14) over real sockets: the server's sweep discards it.

The server's clock is shifted by the test instead of waiting out ``history_max_age_ms``,
and the sweep is run directly, so nothing here sleeps.
"""

from __future__ import annotations

from server_harness import asynctest, running_server, token
from unisock.server import now_ms

AGE_MS = 60_000


class ShiftedClock:
    """Wall-clock milliseconds plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return now_ms() + self.offset


@asynctest
async def test_server_discards_idle_unsubscribed_channel_state_for_a_new_epoch() -> None:
    """UNI-SEC-14, UNI-DEL-8: after the sweep the channel restarts in a new epoch."""
    clock = ShiftedClock()
    async with running_server(clock=clock, history_max_age_ms=AGE_MS) as h:
        assert h.server.sweeper.running
        alice = await h.connect()
        ack = await alice.publish("tasks.1", {"n": 1})
        clock.offset += AGE_MS + 1
        assert h.server.sweeper.sweep() == 1
        bob = await h.connect(token(sub="bob"))
        position = (await bob.subscribe("tasks.1"))["position"]
        assert position["offset"] == 0 and position["epoch"] != ack["epoch"]


@asynctest
async def test_server_keeps_channels_a_subscription_on_the_node_matches() -> None:
    """UNI-SEC-14: state is discarded only without an active subscription."""
    clock = ShiftedClock()
    async with running_server(clock=clock, history_max_age_ms=AGE_MS) as h:
        bob = await h.connect(token(sub="bob"))
        await bob.subscribe("tasks.*")
        alice = await h.connect()
        ack = await alice.publish("tasks.1", {"n": 1})
        await bob.events(1)
        clock.offset += AGE_MS + 1
        assert h.server.sweeper.sweep() == 0
        await bob.unsubscribe("tasks.*")
        assert h.server.sweeper.sweep() == 1
        carol = await h.connect(token(sub="carol"))
        position = (await carol.subscribe("tasks.1"))["position"]
        assert position["epoch"] != ack["epoch"]


@asynctest
async def test_server_sends_a_gap_to_a_resume_by_time_over_discarded_state() -> None:
    """UNI-DEL-17, UNI-DEL-23: discarded events are reported, never silently skipped."""
    clock = ShiftedClock()
    async with running_server(clock=clock, history_max_age_ms=AGE_MS) as h:
        alice = await h.connect()
        await alice.subscribe("tasks.1")
        await alice.publish("tasks.1", {"n": 1})
        [event] = await alice.events(1)
        await alice.unsubscribe("tasks.1")
        clock.offset += AGE_MS + 1
        assert h.server.sweeper.sweep() == 1
        bob = await h.connect(token(sub="bob"))
        await bob.subscribe("tasks.>", since=event["ts"])
        gap = await bob.expect("gap")
        assert (gap["channel"], gap["reason"], gap["offset"]) == ("tasks.1", "epoch_changed", 0)
        assert gap["epoch"] != event["epoch"]


@asynctest
async def test_server_without_discarding_keeps_idle_channel_state() -> None:
    """``discard_idle_channels = false`` turns the sweep off."""
    async with running_server(history_max_age_ms=AGE_MS, discard_idle_channels=False) as h:
        assert not h.server.sweeper.running
        alice = await h.connect()
        ack = await alice.publish("tasks.1", {"n": 1})
        bob = await h.connect(token(sub="bob"))
        position = (await bob.subscribe("tasks.1"))["position"]
        assert position == {"epoch": ack["epoch"], "offset": 1}
