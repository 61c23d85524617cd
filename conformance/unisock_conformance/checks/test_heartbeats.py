"""Heartbeats (spec section 8): server pings, pong replies, and the silence bound.

Timing checks wait for the announced interval and timeout whenever the run's time budget
affords it (:mod:`unisock_conformance.timing`), on threads of their own. Liveness is judged
on Unisock messages only: the test connections never send WebSocket control frames.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from unisock_conformance.checks.conftest import User
from unisock_conformance.deployment import Deployment, Names, ServerInfo
from unisock_conformance.timing import require_time
from unisock_conformance.wire import Conn, Periodic

Frame = dict[str, Any]
PINGS = 2


def _timing(conn: Conn) -> tuple[float, float]:
    assert conn.welcome is not None
    heartbeat = conn.welcome["heartbeat"]
    return heartbeat["interval_ms"] / 1000, heartbeat["timeout_ms"] / 1000


def _late(deployment: Deployment, seconds: float) -> float:
    return deployment.timeout(max(0.3, 0.25 * seconds))


# -- 8.3 server rules ------------------------------------------------------------------------------


@pytest.mark.requirement("UNI-HB-1", "UNI-HB-7", "UNI-LC-12")
@pytest.mark.timing
def test_server_pings_every_interval_regardless_of_traffic(
    user: User, deployment: Deployment, server_info: ServerInfo, names: Names
) -> None:
    interval = server_info.heartbeat["interval_ms"] / 1000
    require_time(
        deployment,
        PINGS * interval + _late(deployment, interval),
        f"{PINGS} heartbeat intervals",
    )
    welcomed = time.monotonic()  # no later than the server's first interval starts
    conn = user(names.tenant(), names.user())
    interval, _timeout = _timing(conn)
    # Client pings keep traffic flowing in both directions; server pings must not pause.
    chatter = Periodic(lambda: conn.send({"type": "ping"}), interval / 4)
    try:
        arrivals = []
        for _ in range(PINGS):
            ping = conn.expect("ping", timeout=interval + _late(deployment, interval))
            arrivals.append(time.monotonic())
            nonce = ping.get("nonce")
            assert nonce is None or (isinstance(nonce, str) and len(nonce) <= 64), ping
    finally:
        chatter.close()
    early, late = deployment.timeout(0.1), _late(deployment, interval)
    gaps = [arrivals[0] - welcomed] + [b - a for a, b in itertools.pairwise(arrivals)]
    shown = f"server ping gaps {[round(g, 3) for g in gaps]} s for an interval of {interval} s"
    # Too early is judged against the schedule since welcome: ping k is due no sooner than
    # k intervals after it, however the server schedules. The suite can only notice an
    # arrival late, and a gap after a late noticing is short although the server kept time.
    for k, arrived in enumerate(arrivals, start=1):
        assert arrived - welcomed >= k * interval - early, f"ping {k} early: {shown}"
    # Too late is judged on every gap: a client's silence bound runs from the last ping.
    assert max(gaps) <= interval + late, shown


@pytest.mark.requirement("UNI-HB-2", "UNI-TR-25")
@pytest.mark.parametrize(
    "ping",
    [
        {"type": "ping"},
        {"type": "ping", "nonce": "n-1"},
        {"type": "ping", "id": "k1"},
        {"type": "ping", "id": "rtt-3", "nonce": "1764120000456"},
        {"type": "ping", "id": "k2", "nonce": ""},
        {"type": "ping", "id": "k3", "nonce": "x" * 64},
    ],
    ids=["bare", "nonce", "id", "id-and-nonce", "empty-nonce", "64-char-nonce"],
)
def test_server_answers_client_ping_with_pong_echoing_nonce_and_id(
    user: User, names: Names, ping: Frame
) -> None:
    conn = user(names.tenant(), names.user())
    conn.send(ping)
    pong = conn.expect("pong")
    assert pong.get("id") == ping.get("id") and pong.get("nonce") == ping.get("nonce"), pong
    assert ("id" in pong) == ("id" in ping) and ("nonce" in pong) == ("nonce" in ping), pong


@pytest.mark.requirement("UNI-HB-3", "UNI-CLOSE-9", "UNI-LC-12")
@pytest.mark.timing
def test_server_closes_4201_after_silence_bound(
    user: User, deployment: Deployment, server_info: ServerInfo, names: Names
) -> None:
    heartbeat = server_info.heartbeat
    announced = (heartbeat["interval_ms"] + heartbeat["timeout_ms"]) / 1000
    require_time(
        deployment, announced + _late(deployment, announced), "the heartbeat silence bound"
    )
    last_sent = time.monotonic()  # no later than the hello, the last message it will get
    conn = user(names.tenant(), names.user())
    conn.auto_pong = False
    interval, timeout = _timing(conn)
    bound = interval + timeout
    code, reason = conn.expect_close(timeout=bound + _late(deployment, bound))
    elapsed = time.monotonic() - last_sent
    assert (code, reason.split(";")[0]) == (4201, "heartbeat_timeout"), (code, reason)
    assert elapsed >= bound - deployment.timeout(0.1), (
        f"closed after {elapsed:.3f} s of silence, before the bound of {bound:.3f} s"
    )


@pytest.mark.requirement("UNI-HB-4", "UNI-HB-5", "UNI-HB-6")
@pytest.mark.parametrize(
    "message",
    [{"type": "pong", "nonce": "unsolicited", "id": "x"}, "not json"],
    ids=["unsolicited-pong", "invalid-json"],
)
@pytest.mark.timing
def test_server_keeps_connection_alive_on_any_client_message(
    user: User, deployment: Deployment, server_info: ServerInfo, names: Names, message: Frame | str
) -> None:
    """Any message resets the silence timer, even an unsolicited pong or an invalid one;
    the connection sends no WebSocket control frames and never answers pings itself."""
    heartbeat = server_info.heartbeat
    announced = (heartbeat["interval_ms"] + heartbeat["timeout_ms"]) / 1000
    require_time(deployment, 1.5 * announced, "1.5 heartbeat silence bounds")
    conn = user(names.tenant(), names.user())
    conn.auto_pong = False
    interval, timeout = _timing(conn)
    bound = interval + timeout
    chatter = Periodic(lambda: conn.send(message), bound / 4)
    try:
        assert not conn.closed.wait(1.5 * bound), (
            f"closed with {conn.close_code} {conn.close_reason!r} although a message "
            f"arrived every {bound / 4:.3f} s"
        )
    finally:
        chatter.close()
    assert conn.request({"type": "ping", "id": "alive"})["type"] == "pong"
    errors = [f for f in conn.frames if f.get("type") == "error"]
    if isinstance(message, dict) and message["type"] == "pong":
        assert errors == [], f"an unsolicited pong was answered with an error: {errors}"
