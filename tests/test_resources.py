"""Resource bounds under attack, measured on a server process (RSS, descriptors, latency).

Each test runs one bounded attack while a probe measures the delivery latency other clients
see, then asserts what the attack may cost: RSS growth within a bound, every descriptor
returned once the attackers are gone, and the attack's own outcome (a close code, free
subscription slots). Latency is printed against a quiet run, never asserted: timing belongs
to ``bench/``; ``python tests/resources/long.py`` runs larger attacks.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from resources import attacks
from resources.harness import LIMIT, Probe, ServerProcess, p99, server_process

CONFIG: dict[str, Any] = {
    "publish_rate_per_second": 100_000,
    "publish_rate_burst": 100_000,
    "max_queue": 256,
    "history_max_count": 100,  # RSS growth then measures per-connection state, not history
}
PROBE = (120, 60.0)  # events, per second: about two seconds of traffic beside each attack
N = int(os.environ.get("UNISOCK_ATTACK_SCALE", "1"))
"""Multiplies every attack's size: ``UNISOCK_ATTACK_SCALE=10 pytest tests/test_resources.py``
is the long version."""


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with server_process(**CONFIG) as running:
        yield running


@pytest.fixture(scope="module")
def quiet(server: ServerProcess) -> float:
    """p99 delivery latency (ms) with no attack running."""
    asyncio.run(Probe(server, "warmup").run(30, 100.0))
    return p99(asyncio.run(Probe(server, "quiet").run(*PROBE)))


def _under_attack(
    server: ServerProcess,
    quiet: float,
    capsys: pytest.CaptureFixture[str],
    name: str,
    attack: Callable[[], Awaitable[dict[str, Any]]],
    rss_bound_mb: float,
) -> dict[str, Any]:
    rss_before, fds_before = server.rss_mb(), server.fds()

    async def run() -> tuple[dict[str, Any], list[float]]:
        probe = asyncio.create_task(Probe(server, f"p-{name}").run(*PROBE))
        outcome = await attack()
        return outcome, await probe

    outcome, latencies = asyncio.run(asyncio.wait_for(run(), LIMIT * 24))
    grown = server.rss_mb() - rss_before
    fds_after = server.settled_fds(fds_before)
    with capsys.disabled():
        print(
            f"\nresources {name}: RSS +{grown:.1f} MB (bound {rss_bound_mb} MB), fds "
            f"{fds_before} -> {outcome.get('peak_fds', '-')} -> {fds_after}, others' p99 "
            f"{quiet:.1f} ms quiet / {p99(latencies):.1f} ms under attack; {outcome}"
        )
    assert grown < rss_bound_mb, f"{name}: RSS grew {grown:.1f} MB"
    assert fds_after <= fds_before + 2, f"{name}: {fds_after - fds_before} descriptors leaked"
    assert len(latencies) == PROBE[0], f"{name}: other clients lost events"
    return outcome


def test_slowloris_and_half_open_handshakes_are_bounded(
    server: ServerProcess, quiet: float, capsys: pytest.CaptureFixture[str]
) -> None:
    _under_attack(
        server,
        quiet,
        capsys,
        "slowloris",
        lambda: attacks.slowloris(server, 150 * N, 2.0 * N),
        48,
    )


def test_a_client_that_never_reads_is_closed_4200_with_bounded_memory(
    server: ServerProcess, quiet: float, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = _under_attack(
        server,
        quiet,
        capsys,
        "never-reading",
        lambda: attacks.never_reading(server, 1500 * N, 16384),
        # the queue (max_queue 256 x 16 KB), history (100 x 16 KB, twice: record and frame),
        # 24 MB of publishes passing through, and what the allocator keeps of them
        96,
    )
    assert outcome["close"] == 4200, outcome  # before any heartbeat timeout (4201)


def test_fragment_floods_up_to_max_message_bytes_are_bounded(
    server: ServerProcess, quiet: float, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = _under_attack(
        server,
        quiet,
        capsys,
        "fragment-flood",
        lambda: attacks.fragment_flood(server, 20 * N),
        48,
    )
    assert outcome["over_limit_close"] == 1009, outcome


def test_ping_floods_are_bounded(
    server: ServerProcess, quiet: float, capsys: pytest.CaptureFixture[str]
) -> None:
    _under_attack(
        server, quiet, capsys, "ping-flood", lambda: attacks.ping_flood(server, 2.0 * N), 32
    )


def test_subscribe_churn_frees_every_slot(
    server: ServerProcess, quiet: float, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = _under_attack(
        server,
        quiet,
        capsys,
        "subscribe-churn",
        lambda: attacks.subscribe_churn(server, 1500 * N),
        24,
    )
    assert outcome["refused_after"] == 0, outcome


def test_connection_churn_leaks_no_descriptor(
    server: ServerProcess, quiet: float, capsys: pytest.CaptureFixture[str]
) -> None:
    _under_attack(
        server,
        quiet,
        capsys,
        "connection-churn",
        lambda: attacks.connection_churn(server, 200 * N),
        32,
    )


def test_permessage_deflate_is_never_negotiated(
    server: ServerProcess, quiet: float, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = _under_attack(
        server,
        quiet,
        capsys,
        "deflate-offered",
        lambda: attacks.deflate_offered(server),
        16,
    )
    assert outcome == {"negotiated": False, "rsv1_close": 1002}, outcome


def test_tokens_at_the_size_cap_with_hundreds_of_grants(
    server: ServerProcess, quiet: float, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = _under_attack(
        server, quiet, capsys, "huge-token", lambda: attacks.huge_token(server), 16
    )
    assert outcome["grants"] > 500, outcome  # the 8192-character cap bounds grants to ~700
    assert outcome["over_cap_close"] == 4000, outcome


def test_filters_at_every_limit_on_every_subscription(
    server: ServerProcess, quiet: float, capsys: pytest.CaptureFixture[str]
) -> None:
    outcome = _under_attack(
        server,
        quiet,
        capsys,
        "filters-at-limits",
        lambda: attacks.filters_at_limits(server, 300 * N),
        24,
    )
    assert outcome["delivered"] == 0, outcome  # every filter walked to its false leaf
