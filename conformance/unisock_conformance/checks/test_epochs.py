"""Epochs (spec 7.2 and 7.6): a deployment that loses a channel's history and offsets starts a
new epoch, and tells connected subscribers with an ``epoch_changed`` gap before its first event:
one subscribed to the channel itself and one subscribed through a wildcard pattern, since a
server may keep the two apart.

No client can make a deployment lose its history; the operator gives a shell command that does
(``--reset-command``, e.g. ``kill -HUP <pid>`` for the reference server). A reset wipes history
other checks rely on, so these checks carry the ``reset`` marker and the plugin runs them after
every other check except the drain checks. One reset episode is observed once and graded by
two checks. A deployment that restarts to reset closes the open connections: the suite then
reconnects and grades only the resume part; the live part is not run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from unisock_conformance.deployment import NOT_RUN_PREFIX, Deployment, Names, ServerInfo
from unisock_conformance.wire import Conn, ConnGroup, open_conn

pytestmark = [pytest.mark.reset]

Frame = dict[str, Any]
# How long a reset may take to show, and a restarted deployment to accept connections again.
RESET_WAIT_S = 10.0
# Pause between reconnect attempts while a restarting deployment comes back.
RETRY_PAUSE_S = 0.1


@dataclass
class Episode:
    """What a subscriber and a resuming connection observed across one reset."""

    channel: str
    before: Frame | None = None
    """The ack of the event published before the reset."""
    after: Frame | None = None
    """The ack of the first event published in a new epoch."""
    subscriber_closed: bool = False
    """The reset closed the subscriber's connection (a restarting deployment)."""
    live: dict[str, list[Frame]] = field(default_factory=dict)
    """Per subscription (the channel, a wildcard pattern): the subscriber's events and gaps
    of the channel, up to the first new-epoch event."""
    resume_gap: Frame | None = None
    retry: Frame | None = None
    """The reply to a publish, in the new epoch, reusing the old-epoch event's message_id."""
    problems: dict[str, str] = field(default_factory=dict)
    """``"reset"``, ``"live"`` or ``"resume"``: what went wrong in that part."""


def _retrying(deployment: Deployment, deadline: float, what: str, action: Callable[[], Any]) -> Any:
    """``action()``, retried while a restarting deployment comes back (until ``deadline``)."""
    while True:
        try:
            return action()
        except (AssertionError, OSError) as error:
            if time.monotonic() + RETRY_PAUSE_S >= deadline:
                raise AssertionError(f"{what} failed until the deadline: {error}") from None
        time.sleep(RETRY_PAUSE_S * deployment.time_scale)


def _publish_pause(info: ServerInfo) -> float:
    """Seconds between probe publishes: half the announced publish rate, never above it."""
    rate = info.limits.get("publish_rate") or {}
    per_second = rate.get("per_second") if isinstance(rate, dict) else None
    if isinstance(per_second, (int, float)) and per_second > 0:
        return 2.0 / float(per_second)
    return 0.05


@pytest.fixture(scope="module")
def reset_episode(deployment: Deployment, server_info: ServerInfo) -> Iterator[Episode]:
    """Subscribe, publish, reset the deployment, publish again, then resume from before."""
    if deployment.reset_command is None:
        pytest.skip(f"{NOT_RUN_PREFIX} needs --reset-command")
    names = Names(deployment.seed, "checks/test_epochs.py")
    tenant, base = names.tenant(), names.channel()
    channel, pattern = f"{base}.x", f"{base}.*"
    group = ConnGroup()
    episode = Episode(channel)

    def conn(index: int) -> Conn:
        token = deployment.mint(tenant, names.user(index), subscribe=(">",), publish=(">",))
        opened = open_conn(
            deployment.url,
            name=f"user{index}",
            origin=deployment.origin,
            headers=deployment.headers,
            timeout=deployment.timeout(),
            group=group,
            message_ids=names.message_id,
        )
        opened.hello(token)
        return opened

    try:
        subscriber, publisher, wildcard = conn(0), conn(1), conn(3)
        subscriber.subscribe(channel)
        wildcard.subscribe(pattern)
        before = publisher.publish(channel, "epoch.before")
        episode.before = before
        for listener in (subscriber, wildcard):
            listener.wait_events(
                lambda e: e["channel"] == channel and e["offset"] == before["offset"]
            )
        deployment.run_reset_command()
        deadline = time.monotonic() + deployment.timeout(RESET_WAIT_S)
        pause = _publish_pause(server_info)
        # The command may return before the deployment has acted on it: publish until an ack
        # shows a new epoch (old-epoch events are ordinary events for the subscriber).
        while episode.after is None:
            try:
                ack = publisher.publish(channel, "epoch.after")
            except (AssertionError, OSError):
                if not publisher.closed.is_set():
                    raise
                publisher = _retrying(deployment, deadline, "reconnecting", lambda: conn(1))
                continue
            if ack["epoch"] != before["epoch"]:
                episode.after = ack
            elif time.monotonic() >= deadline:
                episode.problems["reset"] = (
                    f"acks still carry epoch {before['epoch']!r} "
                    f"{deployment.timeout(RESET_WAIT_S):.0f} s after the reset command"
                )
                break
            else:
                time.sleep(pause)
        after = episode.after
        if after is not None:
            _observe_live(episode, channel, subscriber, after)
            _observe_live(episode, pattern, wildcard, after)
            retry = publisher.publish_message(
                channel, "epoch.before", message_id=before["message_id"]
            )
            try:
                episode.retry = publisher.request(retry)
            except (AssertionError, OSError) as error:
                episode.problems["retry"] = str(error)
        _observe_resume(episode, deployment, deadline, lambda: conn(2), before)
        yield episode
    finally:
        group.close_all()


def _observe_live(episode: Episode, subscription: str, subscriber: Conn, after: Frame) -> None:
    channel = episode.channel
    try:
        subscriber.wait_events(
            lambda e: (
                e["channel"] == channel
                and e["epoch"] == after["epoch"]
                and e["offset"] == after["offset"]
            )
        )
    except AssertionError as error:
        if subscriber.closed.is_set():
            episode.subscriber_closed = True
        else:
            episode.problems["live"] = f"subscribed to {subscription}: {error}"
        return
    frames = [
        f
        for f in subscriber.frames
        if f.get("channel") == channel and f["type"] in ("event", "gap")
    ]
    end = next(
        i
        for i, f in enumerate(frames)
        if f["type"] == "event" and (f["epoch"], f["offset"]) == (after["epoch"], after["offset"])
    )
    episode.live[subscription] = frames[: end + 1]


def _observe_resume(
    episode: Episode,
    deployment: Deployment,
    deadline: float,
    connect: Callable[[], Conn],
    before: Frame,
) -> None:
    position = {"epoch": before["epoch"], "offset": before["offset"]}
    try:
        resumer = _retrying(deployment, deadline, "reconnecting", connect)
        resumer.subscribe(episode.channel, from_={episode.channel: position})
        episode.resume_gap = resumer.expect("gap", where=lambda f: f["channel"] == episode.channel)
    except AssertionError as error:
        episode.problems["resume"] = str(error)


@pytest.mark.requirement("UNI-DEL-8", "UNI-DEL-15")
def test_server_starts_a_new_epoch_when_it_loses_a_channels_history(
    reset_episode: Episode,
) -> None:
    episode = reset_episode
    assert "reset" not in episode.problems, episode.problems["reset"]
    assert episode.before is not None and episode.after is not None
    assert episode.after["epoch"] != episode.before["epoch"]
    assert "resume" not in episode.problems, episode.problems["resume"]
    gap = episode.resume_gap
    assert gap is not None
    assert gap.get("reason") == "epoch_changed", (
        f"resuming from {episode.before['epoch']}:{episode.before['offset']} after the reset "
        f"gave {gap}, not an epoch_changed gap"
    )
    assert gap.get("epoch") == episode.after["epoch"], (
        f"the gap names epoch {gap.get('epoch')!r}, the new epoch is {episode.after['epoch']!r}"
    )


@pytest.mark.requirement("UNI-DEL-19")
def test_server_sends_epoch_changed_gap_before_the_first_event_of_a_new_epoch(
    reset_episode: Episode,
) -> None:
    episode = reset_episode
    if "reset" in episode.problems:
        pytest.skip(f"{NOT_RUN_PREFIX} the reset started no new epoch (graded by UNI-DEL-8)")
    if episode.subscriber_closed:
        pytest.skip(f"{NOT_RUN_PREFIX} the reset closed the subscriber's connection")
    assert "live" not in episode.problems, episode.problems["live"]
    assert episode.before is not None and episode.after is not None
    new_epoch, first = episode.after["epoch"], episode.after["offset"]
    for subscription, live in episode.live.items():
        where = f"for the subscription {subscription}"
        *earlier, event = live
        gaps = [f for f in earlier if f["type"] == "gap" and f.get("epoch") == new_epoch]
        assert gaps, (
            f"no gap for epoch {new_epoch!r} before its event at offset {first} {where}; the "
            f"subscriber got {[(f['type'], f.get('epoch'), f.get('offset')) for f in live]}"
        )
        gap = gaps[-1]
        assert gap.get("reason") == "epoch_changed", f"the gap {where} was {gap}"
        assert gap["offset"] == first - 1, (
            f"the gap before offset {first} of the new epoch names offset {gap['offset']} "
            f"{where}, not the position just before that event ({first - 1})"
        )
        later = earlier[earlier.index(gap) + 1 :]
        assert later == [], f"frames of {episode.channel} between the gap and its event: {later}"
        assert event["epoch"] == new_epoch


@pytest.mark.requirement("UNI-PUB-21", "UNI-PUB-28", "UNI-DEL-8")
def test_server_sequences_a_retry_of_an_event_of_a_lost_epoch_as_a_new_event(
    reset_episode: Episode,
) -> None:
    """A duplicate is a repeat within the channel's current epoch (section 6.6): after the
    history was lost, a publish reusing an old event's ``message_id`` is a new event."""
    episode = reset_episode
    if "reset" in episode.problems or episode.after is None:
        pytest.skip(f"{NOT_RUN_PREFIX} the reset started no new epoch (graded by UNI-DEL-8)")
    assert "retry" not in episode.problems, episode.problems["retry"]
    retry, after = episode.retry, episode.after
    assert retry is not None
    assert retry.get("type") == "ack", f"the retry was refused: {retry}"
    assert retry["duplicate"] is False and retry["epoch"] == after["epoch"], (
        f"a publish reusing the message_id of an event of the lost epoch was taken for a "
        f"duplicate of it: {retry}"
    )
    assert retry["offset"] > after["offset"], retry
