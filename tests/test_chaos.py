"""Fault runs against two nodes on one Redis, judged by the history checker (``history.py``).

CI runs them at a small size; ``make chaos`` runs a longer campaign with more clients. The
verdict and the counts are printed either way.
"""

from __future__ import annotations

import asyncio

import pytest

from chaos import FAULTS, Run, fault_run
from redis_support import require_redis_server


def _report(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    assert run.verdict is not None
    with capsys.disabled():
        print(f"\nfault run (seed {run.seed}, {run.duration:.0f} s):\n{run.verdict.report()}")


@pytest.mark.slow
def test_no_acked_event_is_lost_or_duplicated_under_random_faults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    require_redis_server()
    run = asyncio.run(fault_run(20251206, 20.0, subscribers=2, publishers=2))
    _report(run, capsys)
    assert run.verdict is not None and run.verdict.ok, run.verdict.report()
    counts = run.verdict.counts
    assert all(counts[f"faults: {kind}"] >= 1 for kind in FAULTS), counts
    assert counts["publishes acked"] >= 100
    assert counts["acked events delivered"] > 0 and counts["cross-tenant deliveries"] == 0


@pytest.mark.slow
def test_clients_of_a_killed_node_resume_on_the_other_with_every_acked_event(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Redis keeps its history here: every acked event is delivered, none needs a gap."""
    require_redis_server()
    run = asyncio.run(fault_run(7, 8.0, subscribers=2, publishers=2, faults=("kill_node",)))
    _report(run, capsys)
    assert run.verdict is not None and run.verdict.ok, run.verdict.report()
    counts = run.verdict.counts
    assert counts["faults: kill_node"] >= 2
    assert counts["client reconnects"] >= 1
    assert [name for name in counts if name.startswith("gaps")] == []
    # Each acked event reaches both subscribers of its tenant exactly once.
    assert counts["acked events delivered"] == 2 * counts["publishes acked"]
