"""The benchmarks run end to end at a tiny size and write their results files.

Only the shape of the output is checked (files, scenarios, fields, counts), never a timing or
a memory figure: those depend on the machine and belong in ``bench/results``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from redis_support import require_redis_server

BENCH = Path(__file__).resolve().parents[1] / "bench"
MACHINE_FIELDS = {"cpu_model", "python", "websockets", "unisock"}


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
def test_fanout_benchmark_writes_cpu_per_delivery_for_every_scenario(tmp_path: Path) -> None:
    data = _run("fanout.py", tmp_path, "--subscribers", "4", "--events", "12", "--warmup", "2")
    assert data["benchmark"] == "fanout"
    assert set(data["machine"]) >= MACHINE_FIELDS
    assert data["parameters"]["subscribers"] == 4
    assert data["parameters"]["deliveries"] == 48
    assert set(data["scenarios"]) == {"bare", "floor", "unisock", "unisock-inproc"}
    for scenario in data["scenarios"].values():
        assert "median_cpu_s_per_million" in scenario
        (run,) = scenario["runs"]
        assert run["deliveries"] == 48
        assert {"server_cpu_s", "server_user_s", "server_sys_s", "wall_s"} <= set(run)
    assert {"floor/bare", "unisock/bare", "unisock-inproc/bare"} <= set(data["ratios"])
    assert {"max_ratio_to_bare", "ratio", "met"} <= set(data["target"])
    assert "| `unisock` |" in (tmp_path / "fanout.md").read_text()


@pytest.mark.slow
def test_memory_benchmark_writes_kib_per_idle_connection(tmp_path: Path) -> None:
    data = _run("memory.py", tmp_path, "--connections", "6", "--warmup", "2")
    assert data["benchmark"] == "memory"
    assert set(data["machine"]) >= MACHINE_FIELDS
    assert data["parameters"]["connections"] == 6
    assert len(data["parameters"]["subscriptions"]) == 2
    assert set(data["scenarios"]) == {"bare", "unisock"}
    for scenario in data["scenarios"].values():
        assert "median_kib_per_connection" in scenario
        (run,) = scenario["runs"]
        assert {"rss_0_kib", "rss_n_kib", "kib_per_connection"} <= set(run)
    assert {"max_kib_per_connection", "kib_per_connection", "met"} <= set(data["target"])
    assert "| `unisock` |" in (tmp_path / "memory.md").read_text()


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
