"""The benchmarks run end to end at a tiny size and write their results files.

Only the shape of the output is checked (files, scenarios, fields, counts), never a timing or
a memory figure: those depend on the machine and belong in ``bench/results``.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from redis_support import require_redis_server

BENCH = Path(__file__).resolve().parents[1] / "bench"
MACHINE_FIELDS = {"cpu_model", "python", "websockets", "unisock"}


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """``bench`` lives beside ``tests/`` and is not installed: imported from this checkout."""
    if str(BENCH.parent) not in sys.path:
        sys.path.insert(0, str(BENCH.parent))
    importlib.import_module("bench.load")
    return importlib.import_module("bench.suite")


def test_expected_deliveries_owe_each_subscription_its_own_rooms_events(bench: ModuleType) -> None:
    """Untyped publishes are counted per room: a connection in some rooms is owed their events
    only, not every event published (scenario 2's rooms, where no one is in every room)."""
    specs = [
        ("t0", "u0", [("t0.c0", None), ("t0.c1", None)]),
        ("t0", "u1", [("t0.c1", None), ("t0.c2", None)]),
        ("t1", "u2", [("t1.c0", None)]),
    ]
    published = {"t0.c0": 3, "t0.c1": 5, "t0.c2": 7, "t1.c0": 11, "t1.c1": 13}
    assert bench.expected_deliveries(specs, published) == (3 + 5) + (5 + 7) + 11
    # One room, everyone in it (scenario 3): every event at every subscriber.
    one = [("bench", f"u{i}", [("bench.room", None)]) for i in range(4)]
    assert bench.expected_deliveries(one, {"bench.room": 9}) == 4 * 9


def test_expected_deliveries_of_typed_events_leave_low_priority_to_unfiltered(
    bench: ModuleType,
) -> None:
    specs = [("t0", "u0", [("t0.c0", {"eq": ["prio", "high"]}), ("t0.c1", None)])]
    published = {"t0.c0|high": 2, "t0.c0|low": 3, "t0.c1|high": 5, "t0.c1|low": 7}
    assert bench.expected_deliveries(specs, published) == 2 + 5 + 7


def test_rooms_layout_is_scenario_2s_rooms_without_filters(bench: ModuleType) -> None:
    size = {"s2_tenants": 3, "s2_channels": 10, "s2_connections": 60}
    filtered, channels = bench.tenants_layout(size)
    rooms, same = bench.rooms_layout(size)
    assert same == channels
    assert [(t, s, [c for c, _ in subs]) for t, s, subs in rooms] == [
        (t, s, [c for c, _ in subs]) for t, s, subs in filtered
    ]
    assert any(f is not None for _, _, subs in filtered for _, f in subs)
    assert all(f is None for _, _, subs in rooms for _, f in subs)
    published = {channel: n + 1 for n, (_, channel) in enumerate(channels)}
    owed = sum(published[c] for _, _, subs in rooms for c, _ in subs)
    assert bench.expected_deliveries(rooms, published) == owed < sum(published.values()) * 60


def test_probes_check_the_tenant_of_raw_room_events(bench: ModuleType) -> None:
    """A raw event names its room, which starts with the tenant: the check applies."""
    load, h = sys.modules["bench.load"], sys.modules["bench._harness"]
    probe = load._Probe(h.Tally(lambda _count: None))
    on_payload = probe.handler(b"t1.")
    for room in ("t1.c0", "t10.c0", "t1.c9"):
        on_payload(load._raw_event(room, load.payload(5, 0)).encode(), 12)
    assert probe.cross_tenant == 1 and probe.samples == [7, 7, 7]


def _run(script: str, out: Path, *args: str) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, str(BENCH / script), "--repeat", "1", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    data: dict[str, Any] = json.loads((out / script.replace(".py", ".json")).read_text())
    return data


@pytest.mark.slow
def test_a_fanout_run_is_held_back_only_by_busy_generators_beside_a_server_with_time_to_spare(
    bench: ModuleType,
) -> None:
    assert bench.held_back_by_load(0.95, 0.40)
    # the server kept its core busy: it set the pace, however busy the generators were
    assert not bench.held_back_by_load(0.95, 0.97)
    assert not bench.held_back_by_load(0.50, 0.40)


def test_one_scenarios_cpu_over_anothers_is_given_for_each_peer_that_measured_both(
    bench: ModuleType,
) -> None:
    report = importlib.import_module("bench.report")

    def cpu(median: float) -> dict[str, Any]:
        return {"cpu_s_per_million": {"median": median}}

    figs = {
        "s1-1000": {"floor": cpu(4.0), "unisock": cpu(2.0), "ws": cpu(0.0)},
        "s2-rooms": {"floor": cpu(8.0), "unisock": cpu(5.0), "ws": cpu(6.0)},
        "s2": {"unisock": cpu(6.0)},
    }
    rat = report.ratios({}, figs)
    assert rat["s2-rooms/s1-1000 floor"] == 2.0
    assert rat["s2-rooms/s1-1000 unisock"] == 2.5
    assert rat["s2/s1-1000 unisock"] == 3.0
    assert rat["s2/s2-rooms unisock"] == 1.2
    # A tiny run can use less CPU than one clock tick: no ratio over a zero.
    assert "s2-rooms/s1-1000 ws" not in rat
    summary = "\n".join(report.over_lines(rat))
    assert "Scenario 2's rooms over scenario 1" in summary
    assert "over `s1-1000`: floor 2.00x, unisock 2.50x." in summary
    assert "Scenario 2 over its rooms" in summary and "over `s2-rooms`: unisock 1.20x." in summary


def test_a_run_of_the_one_in_flight_fan_out_alone_is_judged_as_such(bench: ModuleType) -> None:
    report = importlib.import_module("bench.report")
    cell = {"cpu_s_per_million": {"median": 5.0, "valid_runs": 3}}
    floor = {"cpu_s_per_million": {"median": 4.0, "valid_runs": 3}}
    figs = {"s1-1000-1": {"floor": floor, "unisock": cell}}
    rows = {row[0]: row for row in report.targets(figs, report.ratios({}, figs))}
    assert rows["S1 (1000 subscribers, one event in flight) vs floor"][2:] == (1.25, False)
    # not mistaken for the batched runs, which this run did not measure
    assert not any(label.startswith("S1 (1000-1") for label in rows)
    assert "S1 (1000 subscribers) CPU/delivery vs floor" not in rows


def test_suite_runs_every_scenario_and_writes_results_summary_and_plots(tmp_path: Path) -> None:
    """The tiny size, on the peers that need no extra install: every scenario's code path."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--out",
            str(tmp_path),
            "--client-procs",
            "1",
            "run",
            "--size",
            "tiny",
            "--peers",
            "floor,unisock",
        ],
        cwd=BENCH.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    data = json.loads((tmp_path / "suite.json").read_text())
    assert data["size"] == "tiny"
    assert set(data["machine"]) >= MACHINE_FIELDS
    assert list(data["scenarios"]) == ["s1-4", "s1-4-1", "s2", "s2-rooms", "s3", "s4", "s5"]
    assert set(data["scenarios"]["s1-4"]["peers"]) == {"floor", "unisock"}
    # Filters, tenants and resumption are Unisock's: only Unisock runs scenarios 2 and 5.
    assert set(data["scenarios"]["s2"]["peers"]) == {"unisock"}
    assert set(data["scenarios"]["s2-rooms"]["peers"]) == {"floor", "unisock"}
    assert set(data["scenarios"]["s5"]["peers"]) == {"unisock"}
    for key, scenario in data["scenarios"].items():
        for peer, runs in scenario["peers"].items():
            (run,) = runs
            assert "error" not in run, (key, peer, run)
            assert 0.0 <= run["other_work_share"] <= 1.0, (key, peer, run)
            assert run["speed_probe_ms"] > 0, (key, peer, run)
    assert len(data["speed_probe_ms"]) == sum(
        len(runs) for scenario in data["scenarios"].values() for runs in scenario["peers"].values()
    )
    assert "A fixed pure-Python loop" in (tmp_path / "summary.md").read_text("utf-8")
    (s1,) = data["scenarios"]["s1-4"]["peers"]["unisock"]
    assert s1["deliveries"] == 4 * 50 and s1["server_cpu_s"] >= 0
    assert s1["server_util"] >= 0.0 and s1["load_util"] >= 0.0
    (s2,) = data["scenarios"]["s2"]["peers"]["unisock"]
    # Counts, not timings: every filtered delivery arrived, none crossed a tenant.
    assert s2["delivered_total"] == s2["expected_deliveries"] > 0
    assert s2["cross_tenant"] == 0
    for peer in ("floor", "unisock"):
        (rooms,) = data["scenarios"]["s2-rooms"]["peers"][peer]
        # Each connection is in 3 of its tenant's rooms: owed exactly those rooms' events.
        assert rooms["delivered_total"] == rooms["expected_deliveries"] > 0, peer
        assert rooms["cross_tenant"] == 0, peer
    (s4,) = data["scenarios"]["s4"]["peers"]["unisock"]
    assert s4["connections"] == 6
    (s5,) = data["scenarios"]["s5"]["peers"]["unisock"]
    assert s5["delivered_fraction"] == 1.0 and s5["duplicates_after_dedup"] == 0
    # what must arrive is what the server acknowledged; every publish was answered
    assert s5["published"] == s5["sent"] - sum(s5["refused_publishes"].values())
    assert s5["unanswered_publishes"] == 0
    assert s5["curve"] and s5["back_100_s"] is not None
    # Whether the run is valid rests on CPU shares of a few milliseconds, counted in clock
    # ticks here: only that the figure says how many runs it rests on.
    assert data["figures"]["s1-4"]["unisock"]["cpu_s_per_million"]["valid_runs"] in (0, 1)
    summary = (tmp_path / "summary.md").read_text()
    assert "TINY SIZE" in summary and "| `unisock` |" in summary and "## Targets" in summary
    assert "other programs used at most" in summary
    assert "## Scenario 2's rooms, every peer" in summary


@pytest.mark.slow
def test_broker_benchmark_writes_latency_cpu_and_redis_work_per_publish(tmp_path: Path) -> None:
    require_redis_server()
    data = _run(
        "broker.py",
        tmp_path,
        "--subscribers",
        "4",
        "--events",
        "12",
        "--warmup",
        "2",
        "--samples",
        "5",
        "--monitored",
        "3",
    )
    assert data["benchmark"] == "broker"
    assert set(data["scenarios"]) == {"memory", "redis"}
    for scenario in data["scenarios"].values():
        (run,) = scenario["runs"]
        assert run["deliveries"] == 48
        assert run["latency_ms"]["samples"] == 5
    redis = data["redis_per_publish"]
    assert redis["monitored_publishes"] == 3
    # The measured count, not a timing: a publish is one EVALSHA whatever the machine.
    assert redis["round_trips_per_publish"] == 1.0
    assert redis["script_commands_per_publish"]["xadd"] == 2.0
    assert set(data["target"]) == {"latency_p50_added_ms", "round_trips_per_publish", "cpu_ratio"}
    assert "| `redis` |" in (tmp_path / "broker.md").read_text()
