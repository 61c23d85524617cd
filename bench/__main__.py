"""``python -m bench setup|run|report|profile``: the peer benchmarks in one command.

- ``setup`` installs the Node peers (``npm ci`` in ``bench/node``) and checks the Python ones
  (the ``bench`` extra: python-socketio, aiohttp, matplotlib, py-spy, uvloop);
- ``run`` runs the scenarios against every peer that is installed, interleaving the repeats,
  and writes ``bench/results/suite.json``, the plots and ``summary.md``;
- ``report`` rewrites the summary and plots from ``suite.json``;
- ``profile`` samples the reference server with py-spy during scenario 1, 2 or ``s2-rooms``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import _harness as h
from bench import report, suite

RESULTS = Path(__file__).resolve().parent / "results"

SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "event_bytes": 256,
        "repeat": 3,
        "repeats": {"s1-1000-1": 2, "s1-5000": 2, "s3": 2, "s4": 2, "s5": 2},
        "skip": {
            "s1-1000-1": ["unisock-uvloop"],
            "s1-5000": ["unisock-uvloop"],
            "s2-rooms": ["unisock-uvloop"],
            "s4": ["unisock-uvloop"],
        },
        "s1_subscribers": [1000, 5000],
        "s1_deliveries": 500_000,
        "s2_tenants": 100,
        "s2_channels": 10,
        "s2_connections": 5000,
        "s2_rate": 500,
        "s2_seconds": 6,
        "s3_subscribers": 1000,
        "s3_rate": 20,
        "s3_seconds": 5,
        "s3_probe_every": 5,
        "s4_connections": 10000,
        "s5_subscribers": 2000,
        "s5_channels": 20,
        "s5_rate": 100,
        "s5_observe_s": 20,
        "s5_after_s": 1.0,
        "s4_warmup": 50,
        "s4_settle_s": 2.0,
    },
    "quick": {
        "event_bytes": 256,
        "repeat": 1,
        "s1_subscribers": [200],
        "s1_deliveries": 100_000,
        "s2_tenants": 10,
        "s2_channels": 10,
        "s2_connections": 300,
        "s2_rate": 100,
        "s2_seconds": 2,
        "s3_subscribers": 200,
        "s3_rate": 20,
        "s3_seconds": 2,
        "s3_probe_every": 5,
        "s4_connections": 500,
        "s5_subscribers": 200,
        "s5_channels": 20,
        "s5_rate": 100,
        "s5_observe_s": 10,
        "s5_after_s": 1.0,
        "s4_warmup": 50,
        "s4_settle_s": 1.0,
    },
    "tiny": {  # the smoke test: every code path, seconds
        "event_bytes": 256,
        "repeat": 1,
        "s1_subscribers": [4],
        "s1_deliveries": 200,
        "s2_tenants": 2,
        "s2_channels": 3,
        "s2_connections": 6,
        "s2_rate": 50,
        "s2_seconds": 0.5,
        "s3_subscribers": 4,
        "s3_rate": 20,
        "s3_seconds": 0.5,
        "s3_probe_every": 1,
        "s4_connections": 6,
        "s5_subscribers": 4,
        "s5_channels": 2,
        "s5_rate": 50,
        "s5_observe_s": 10,
        "s5_after_s": 0.2,
        "s4_warmup": 2,
        "s4_settle_s": 0.0,
    },
}
SCENARIOS = ("s1", "s2", "s2-rooms", "s3", "s4", "s5")
UNISOCK_ONLY = {"s2", "s5"}
"""Filters, tenants, typed events and resumption are Unisock's: the peers have no equivalent.
``s2-rooms``, scenario 2's rooms without them, runs on every peer."""


def cmd_setup(_args: argparse.Namespace) -> int:
    node = suite.NODE_DIR
    if shutil.which("npm") is None:
        print("npm is not on PATH: the Node peers will be skipped")
    else:
        subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=node,
            check=True,
        )
    missing = [p.name + ": " + p.needs for p in suite.peers().values() if p.needs]
    for line in missing:
        print("not available:", line)
    return 0


def _peer_names(args: argparse.Namespace, scenario: str) -> list[str]:
    available = {n: p for n, p in suite.peers().items() if not p.needs}
    names = args.peers.split(",") if args.peers else list(available)
    names = [n for n in names if n in available]
    if scenario in UNISOCK_ONLY:
        names = [n for n in names if available[n].unisock and n != "unisock-uvloop"]
    return names


def cmd_run(args: argparse.Namespace) -> int:
    size_name = "quick" if args.quick else args.size
    size = dict(SIZES[size_name])
    if args.repeat:
        size["repeat"] = args.repeat
    if args.s1_subscribers:
        size["s1_subscribers"] = [int(n) for n in args.s1_subscribers.split(",")]
    keys = _keys(args.scenarios.split(",") if args.scenarios else list(SCENARIOS), size)
    stop_at = _deadline(args.stop_at)
    machine = report.machine()  # before pinning: it counts the usable cores
    server_cores, client_cores = h.core_layout()
    h.raise_fd_limit()
    h.pin(client_cores)
    env = suite.Env(server_cores, client_cores, args.client_procs, args.load_loop)
    all_peers = suite.peers()
    skipped = {n: p.needs for n, p in all_peers.items() if p.needs}
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "benchmark": "suite",
        "size": size_name,
        "date": h.now_iso(),
        "machine": machine,
        "parameters": size,
        "server_cores": sorted(server_cores),
        "client_cores": sorted(client_cores),
        "load_loop": args.load_loop,
        "skipped_peers": skipped,
        "not_run": [],
        "truncated": [],
        "load_average": [],
        "other_work": [],
        "speed_probe_ms": [],
        "scenarios": {},
    }
    started = time.monotonic()
    for key in keys:
        scenario = report.kind(key)
        shape = key.split("-")[1:] if scenario == "s1" else []
        subscribers = int(shape[0]) if shape else 0
        window = int(shape[1]) if len(shape) > 1 else 32
        names = [
            n for n in _peer_names(args, scenario) if n not in size.get("skip", {}).get(key, ())
        ]
        repeat = size.get("repeats", {}).get(key, size["repeat"])
        if args.repeat:
            repeat = args.repeat
        if stop_at is not None and time.time() > stop_at:
            data["not_run"].append(key)  # out of time: said in the summary, not hidden
            continue
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for index in range(repeat):
            if index and stop_at is not None and time.time() > stop_at:
                data["truncated"].append(key)  # fewer repeats than asked: said in the summary
                break
            for name in names:
                peer = all_peers[name]
                load = h.load_average()
                data["load_average"].append(load)
                speed = h.speed_probe_ms()
                data["speed_probe_ms"].append(speed)
                other = h.OtherWork()
                try:
                    result = _one(scenario, peer, env, size, subscribers, window)
                except Exception as error:  # a failed run is recorded, not hidden
                    result = {"valid": False, "error": f"{type(error).__name__}: {error}"}
                result["load_average_before"] = load
                result["other_work_share"] = round(other.share(), 4)
                result["speed_probe_ms"] = speed
                data["other_work"].append(result["other_work_share"])
                runs[name].append(result)
                print(
                    f"[{time.monotonic() - started:6.0f}s] {key} {index + 1}/{repeat}"
                    f" {name:14s} {report.one_line(scenario, result)}",
                    flush=True,
                )
        data["scenarios"][key] = {"peers": runs, "repeat": repeat}
        report.write(out, data)
    data["elapsed_s"] = round(time.monotonic() - started, 1)
    report.write(out, data)
    print(f"wrote {out / 'suite.json'}, {out / 'summary.md'} and the plots")
    return 0


def _keys(names: list[str], size: dict[str, Any]) -> list[str]:
    """Scenario keys in the order asked: ``s1`` stands for every size of scenario 1 and the
    first size again with one event in flight at a time (``s1-N-1``: nothing to batch)."""
    keys: list[str] = []
    for name in names:
        if name == "s1":
            keys += [f"s1-{n}" for n in size["s1_subscribers"]]
            keys.append(f"s1-{size['s1_subscribers'][0]}-1")
        elif name in SCENARIOS or name.startswith("s1-"):
            keys.append(name)
        else:
            raise SystemExit(f"unknown scenario {name!r}")
    return keys


def _deadline(text: str) -> float | None:
    """``HH:MM`` (UTC, today) after which no further scenario starts."""
    if not text:
        return None
    hour, minute = (int(part) for part in text.split(":"))
    now = datetime.now(UTC)
    return now.replace(hour=hour, minute=minute, second=0, microsecond=0).timestamp()


def _one(
    scenario: str,
    peer: suite.Peer,
    env: suite.Env,
    size: dict[str, Any],
    subscribers: int,
    window: int = 32,
) -> dict[str, Any]:
    if scenario == "s1":
        return suite.fanout(peer, env, size, subscribers, window=window)
    if scenario == "s2":
        return suite.filtered(peer, env, size)
    if scenario == "s2-rooms":
        return suite.rooms(peer, env, size)
    if scenario == "s3":
        return suite.latency(peer, env, size)
    if scenario == "s4":
        return suite.idle(peer, env, size)
    return suite.storm(peer, env, size)


def cmd_report(args: argparse.Namespace) -> int:
    data = json.loads((args.out / "suite.json").read_text(encoding="utf-8"))
    report.write(args.out, data)
    print(f"wrote {args.out / 'summary.md'} and the plots")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    size = dict(SIZES["quick" if args.quick else "full"])
    size["s1_deliveries"] = args.deliveries
    server_cores, client_cores = h.core_layout()
    h.raise_fd_limit()
    h.pin(client_cores)
    env = suite.Env(server_cores, client_cores, args.client_procs, args.load_loop)
    peer = suite.peers()[args.peer]
    raw = args.out / f"profile-{args.label}.collapsed"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.scenario in ("s2", "s2-rooms"):
        run = suite.filtered if args.scenario == "s2" else suite.rooms
        result = run(peer, env, size, profile=raw)
        name = "scenario 2" if args.scenario == "s2" else "scenario 2's rooms (s2-rooms)"
        what = f"{name} ({size['s2_connections']} connections, {size['s2_rate']} publishes/s)"
    else:
        result = suite.fanout(peer, env, size, args.subscribers, profile=raw, window=args.window)
        flight = "one event" if args.window == 1 else f"{args.window} events"
        what = f"scenario 1 ({args.subscribers} subscribers, {flight} in flight)"
    top = report.profile_top(raw, args.top)
    path = args.out / f"profile-{args.label}.txt"
    path.write_text(
        f"py-spy samples of the {args.peer} server over {what}: {result['deliveries']:,} "
        f"deliveries, {result['server_cpu_s']:.2f} s CPU under the sampler, "
        f"{result['cpu_s_per_million']} s CPU per 1M deliveries; {h.now_iso()}\n\n{top}",
        encoding="utf-8",
    )
    print(top)
    print(f"wrote {raw} and {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument(
        "--load-loop",
        choices=h.LOOPS,
        default=h.default_loop(),
        help="the load generators' event loop (default: uvloop where installed)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="install the Node peers")
    run = sub.add_parser("run", help="run the scenarios")
    run.add_argument("--quick", action="store_true", help="the development size")
    run.add_argument("--size", choices=sorted(SIZES), default="full")
    run.add_argument(
        "--scenarios", default="", help="comma-separated subset of " + ",".join(SCENARIOS)
    )
    run.add_argument("--peers", default="", help="comma-separated subset of the peers")
    run.add_argument("--repeat", type=int, default=0, help="override the size's repeats")
    run.add_argument("--s1-subscribers", default="", help="override scenario 1's sizes: 1000,5000")
    run.add_argument("--stop-at", default="", help="HH:MM UTC: start no scenario after it")
    sub.add_parser("report", help="rewrite summary.md and the plots from suite.json")
    prof = sub.add_parser("profile", help="py-spy over scenario 1 of one peer")
    prof.add_argument("--peer", default="unisock")
    prof.add_argument("--scenario", choices=("s1", "s2", "s2-rooms"), default="s1")
    prof.add_argument("--subscribers", type=int, default=1000)
    prof.add_argument("--deliveries", type=int, default=1_000_000)
    prof.add_argument("--window", type=int, default=32, help="scenario 1's events in flight")
    prof.add_argument("--label", default="unisock")
    prof.add_argument("--top", type=int, default=30)
    prof.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    commands = {"setup": cmd_setup, "run": cmd_run, "report": cmd_report, "profile": cmd_profile}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
