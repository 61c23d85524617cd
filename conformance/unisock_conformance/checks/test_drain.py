"""Drain (spec 2.5 and 9.5): one ``drain`` with ``window_ms``, service until the window ends,
then close 4300 no earlier than the window.

The suite cannot make a deployment drain through the protocol; the operator gives a shell
command that does (``--drain-command``). Draining stops the deployment from serving, so these
checks carry the ``drain`` marker and the plugin runs them after every other check. One drain
episode is observed once and graded by several checks. A new handshake made during the window
must be refused with HTTP 503 (UNI-LC-20); one that is upgraded and never drained or closed
reached another server of the deployment, and the check is not applicable.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from unisock_conformance.closes import REASON, reason_parameters, reason_problem
from unisock_conformance.deployment import NOT_RUN_PREFIX, Deployment, Names, not_applicable
from unisock_conformance.wire import Conn, ConnGroup, HandshakeRefused, open_conn

pytestmark = [pytest.mark.drain]

Frame = dict[str, Any]
# Timer granularity allowed below a lower bound, before scaling (as the task brief of 9.5).
EARLY_TOLERANCE_S = 0.050
# Events published on the draining publisher while the window is open (UNI-CLOSE-19).
DURING_WINDOW = 3


@dataclass
class Served:
    """One request made on a draining connection, and whether it was served."""

    what: str
    at: float
    problem: str | None


@dataclass
class Episode:
    """What two open connections observed while the deployment drained."""

    subscriber: Conn
    publisher: Conn
    channel: str
    drain_at: dict[str, float] = field(default_factory=dict)
    served: list[Served] = field(default_factory=list)
    window_ms: int | None = None
    close: dict[str, tuple[int, str, float] | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    late: Conn | HandshakeRefused | AssertionError | None = None
    """A connection attempted during the window: refused, upgraded, or upgraded then failed."""

    def conns(self) -> dict[str, Conn]:
        return {"subscriber": self.subscriber, "publisher": self.publisher}


def _record_drain(episode: Episode, role: str) -> Any:
    def hook(conn: Conn, frame: Frame) -> None:
        if frame.get("type") == "drain":
            episode.drain_at.setdefault(role, time.monotonic())

    return hook


def _serve(episode: Episode, what: str, action: Any) -> None:
    """Run one request on a draining connection; a refusal or close is recorded, not raised."""
    try:
        action()
    except AssertionError as error:
        episode.served.append(Served(what, time.monotonic(), str(error).splitlines()[0][:300]))
    else:
        episode.served.append(Served(what, time.monotonic(), None))


def _during_window(episode: Episode, names: Names) -> None:
    sub, pub, channel = episode.subscriber, episode.publisher, episode.channel
    acks: list[Frame] = []

    def publish() -> None:
        for index in range(DURING_WINDOW):
            acks.append(pub.publish(channel, "drain.window", {"i": index}))

    def delivered() -> None:
        wanted = {ack["offset"] for ack in acks}
        assert len(wanted) == DURING_WINDOW, f"only {len(acks)} publishes were acknowledged"
        sub.wait_events(lambda e: e["channel"] == channel and e["offset"] in wanted, DURING_WINDOW)

    def subscribe() -> None:
        sub.subscribe(names.channel())

    def ping() -> None:
        reply = sub.request({"type": "ping", "id": "drain-ping"})
        assert reply.get("type") == "pong", f"ping answered with {reply}"

    _serve(episode, "publish on the draining publisher connection", publish)
    _serve(episode, "delivery to the draining subscriber connection", delivered)
    _serve(episode, "subscribe on the draining subscriber connection", subscribe)
    _serve(episode, "ping on the draining subscriber connection", ping)


@pytest.fixture(scope="module")
def drained(deployment: Deployment) -> Iterator[Episode]:
    """Open a subscriber and a publisher, drain the deployment, use and watch both."""
    if deployment.drain_command is None:
        pytest.skip(f"{NOT_RUN_PREFIX} needs --drain-command")
    names = Names(deployment.seed, "checks/test_drain.py")
    tenant, channel = names.tenant(), names.channel()
    group = ConnGroup()

    def conn(sub: str) -> Conn:
        token = deployment.mint(tenant, sub, subscribe=(">",), publish=(">",))
        opened = open_conn(
            deployment.url,
            name=sub,
            origin=deployment.origin,
            headers=deployment.headers,
            timeout=deployment.timeout(),
            group=group,
            message_ids=names.message_id,
        )
        opened.hello(token)
        return opened

    try:
        episode = Episode(conn(names.user(0)), conn(names.user(1)), channel)
        for role, each in episode.conns().items():
            each.on_frame.append(_record_drain(episode, role))
        episode.subscriber.subscribe(channel)
        before = episode.publisher.publish(channel, "drain.before")
        episode.subscriber.wait_events(lambda e: e["offset"] == before["offset"])
        deployment.run_drain_command()
        drain = episode.subscriber.expect("drain", timeout=deployment.timeout())
        episode.window_ms = int(drain["window_ms"])
        _during_window(episode, names)
        try:
            episode.late = conn(names.user(2))
        except HandshakeRefused as refused:
            episode.late = refused
        except AssertionError as error:  # upgraded, then closed before or after hello
            episode.late = error
        wait = episode.window_ms / 1000 + deployment.timeout()
        for role, each in episode.conns().items():
            try:
                code, reason = each.expect_close(timeout=wait)
            except AssertionError as error:
                episode.problems.append(f"{role}: {error}")
                episode.close[role] = None
            else:
                assert each.closed_at is not None
                episode.close[role] = (code, reason, each.closed_at)
        yield episode
    finally:
        group.close_all()


def _drains(conn: Conn) -> list[Frame]:
    return [frame for frame in conn.frames if frame.get("type") == "drain"]


@pytest.mark.requirement("UNI-LC-17", "UNI-LC-18")
def test_server_sends_exactly_one_drain_with_window_ms_to_each_open_connection(
    drained: Episode,
) -> None:
    drained.subscriber.group.check()
    for role, conn in drained.conns().items():
        drains = _drains(conn)
        assert len(drains) == 1, f"{role} received {len(drains)} drain messages: {drains}"
        window = drains[0].get("window_ms")
        assert isinstance(window, int) and not isinstance(window, bool) and window >= 0, drains[0]


@pytest.mark.requirement("UNI-CLOSE-19")
def test_server_keeps_delivering_and_answering_on_a_draining_connection(
    drained: Episode, deployment: Deployment
) -> None:
    drained.subscriber.group.check()
    drain_at = drained.drain_at["subscriber"]
    assert drained.window_ms is not None
    window_end = drain_at + drained.window_ms / 1000
    failed = [s for s in drained.served if s.problem is not None]
    if failed and all(s.at >= window_end for s in failed):
        # The window ended before the requests were served: nothing is required then.
        pytest.skip(
            f"{NOT_RUN_PREFIX} window_ms {drained.window_ms} was too short to use the "
            "draining connections"
        )
    early = [f"{s.what}: {s.problem}" for s in failed if s.at < window_end]
    assert early == [], f"not served while draining (window {drained.window_ms} ms): {early}"


@pytest.mark.requirement("UNI-CLOSE-20", "UNI-CLOSE-21")
def test_server_closes_a_draining_connection_4300_no_earlier_than_window_ms(
    drained: Episode, deployment: Deployment
) -> None:
    drained.subscriber.group.check()
    assert drained.problems == [], drained.problems
    tolerance = EARLY_TOLERANCE_S * deployment.time_scale
    for role, close in drained.close.items():
        assert close is not None, f"{role} was not closed"
        code, reason, closed_at = close
        assert role in drained.drain_at, f"{role} received no drain before the close"
        window = int(_drains(drained.conns()[role])[0]["window_ms"])
        elapsed = closed_at - drained.drain_at[role]
        assert code == 4300, f"{role} closed with {code} {reason!r} instead of 4300 drain"
        assert elapsed >= window / 1000 - tolerance, (
            f"{role} closed {elapsed * 1000:.0f} ms after drain, before window_ms {window}"
        )


def _drain_closes(drained: Episode) -> dict[str, tuple[int, str]]:
    """Code and reason of each close of the episode made with 4300 ``drain``."""
    drained.subscriber.group.check()
    closes = {role: close for role, close in drained.close.items() if close is not None}
    found = {role: (code, reason) for role, (code, reason, _) in closes.items() if code == 4300}
    if not found:
        not_applicable("no connection of the episode was closed with 4300 (UNI-CLOSE-21 fails)")
    return found


@pytest.mark.requirement("UNI-CLOSE-9")
def test_server_drain_close_reason_follows_the_grammar_and_names_drain(drained: Episode) -> None:
    for role, (code, reason) in _drain_closes(drained).items():
        problem = reason_problem(code, reason)
        assert problem is None, f"{role}: {problem}"


@pytest.mark.requirement("UNI-CLOSE-11")
def test_server_names_window_ms_in_the_reason_of_a_drain_close(drained: Episode) -> None:
    for role, (_code, reason) in _drain_closes(drained).items():
        if REASON.fullmatch(reason) is None:
            not_applicable(f"{role}: the reason {reason!r} breaks the grammar (UNI-CLOSE-9)")
        window = reason_parameters(reason).get("window_ms")
        assert window is not None, f"{role}: 4300 close reason {reason!r} carries no window_ms"


@pytest.mark.requirement("UNI-LC-20")
def test_server_refuses_new_handshakes_with_503_once_draining(
    drained: Episode, deployment: Deployment
) -> None:
    late = drained.late
    if isinstance(late, HandshakeRefused):
        assert late.status == 503, f"a handshake during the drain was refused with {late}"
        return
    assert not isinstance(late, AssertionError), (
        f"a handshake made during the drain was upgraded, then failed: {late}"
    )
    assert late is not None
    drained_too = bool(_drains(late)) or late.closed.wait(deployment.timeout(1.0))
    if not drained_too:
        not_applicable("the handshake reached a server of the deployment that is not draining")
    pytest.fail(
        "a handshake made during the drain was upgraded by the draining server "
        f"(it then received {[f.get('type') for f in late.frames]} and "
        f"{'was closed' if late.closed.is_set() else 'stayed open'}); expected HTTP 503"
    )
