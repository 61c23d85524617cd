"""Fan-out cost: server CPU seconds per million deliveries, Unisock against bare ``websockets``.

One channel, N subscribers, events of about 256 bytes. Every scenario runs in the same
invocation on the same machine, each in a fresh server process pinned to a core of its own:

- ``bare``: a plain ``websockets`` server calling ``websockets.broadcast`` per event;
- ``floor``: the same server writing one pre-built frame to every transport (the cheapest
  correct delivery: server frames are unmasked and identical for all recipients);
- ``unisock``: the reference server, events published over the protocol by a publisher
  connection (parse, grants, sequencing, ack: the path a real backend takes);
- ``unisock-inproc``: the reference server, events handed to its broker inside the server
  process (the same fan-out without the publisher's inbound frame).

The bare servers receive the very frames Unisock sends (same JSON, same size) from their
publisher connection. Scenarios interleave across repeats and the median is reported; the
ratios compare medians of the same run. Usage::

    python bench/fanout.py [--subscribers N] [--events N] [--repeat N] [--out bench/results]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _harness as h

SCENARIOS: dict[str, tuple[str, str]] = {
    "bare": ("bare", "plain websockets server, websockets.broadcast(subscribers, frame) per event"),
    "floor": ("floor", "plain websockets server, one pre-built frame written to every transport"),
    "unisock": ("unisock", "Unisock reference server, publish over the protocol"),
    "unisock-inproc": ("unisock", "Unisock reference server, publish through its in-memory broker"),
}
TARGET_RATIO = 1.0
"""Unisock's CPU per delivery may be at most this multiple of the bare broadcast's."""
SERVER_OVERRIDES: dict[str, Any] = {
    # No ping/pong traffic inside the measured phase: heartbeats cost per connection per
    # interval, not per delivery.
    "heartbeat_interval_ms": 3_600_000,
    # One publisher connection injects every event; the per-connection publish rate limit
    # (UNI-LIM) would otherwise be what is measured.
    "publish_rate_per_second": 1_000_000,
    "publish_rate_burst": 1_000_000,
}


def run_scenario(name: str, args: argparse.Namespace, profile: bool = False) -> dict[str, Any]:
    """One measured run of ``name``; returns CPU, wall time and delivery counts."""
    kind = SCENARIOS[name][0]
    load = h.load_average()
    ctx = multiprocessing.get_context("spawn")
    ctl, child_ctl = ctx.Pipe()
    server = ctx.Process(
        target=h.server_main,
        args=(kind, SERVER_OVERRIDES, child_ctl, args.server_cores),
        daemon=True,
    )
    server.start()
    if not ctl.poll(60):
        raise RuntimeError("server process did not start")
    port = ctl.recv()
    procs = max(1, min(args.client_procs, args.subscribers))
    ready = ctx.RawArray("i", procs)
    counts = ctx.RawArray("q", procs)
    clients = []
    first = 0
    for slot in range(procs):
        share = args.subscribers // procs + (1 if slot < args.subscribers % procs else 0)
        client = ctx.Process(
            target=h.client_main,
            args=(
                port,
                kind,
                first,
                share,
                [h.CHANNEL],
                slot,
                ready,
                counts,
                False,
                args.client_cores,
            ),
            daemon=True,
        )
        client.start()
        clients.append(client)
        first += share
    publisher: h.Publisher | None = None
    try:
        h.wait_until(lambda: all(ready), 300, "subscribers to be set up")
        if any(flag < 0 for flag in ready):
            raise RuntimeError("a client process failed to set up its subscribers")
        ctl.send(("connections",))
        if ctl.recv() != args.subscribers:
            raise RuntimeError("the server does not see every subscriber")

        subscribers = args.subscribers
        data = h.event_data(args.event_bytes)
        total_events = args.warmup + args.events
        inproc = name == "unisock-inproc"
        frames: list[bytes] = []
        if not inproc:
            publisher = h.Publisher(port, kind)
            for index in range(1, total_events + 1):
                text = (
                    h.publish_message(index, data)
                    if kind == "unisock"
                    else h.event_frame(index, data)
                )
                frames.append(h.masked_frame(text.encode()))

        def received() -> int:
            return sum(counts)

        def caught_up(frames: int) -> Callable[[], bool]:
            return lambda: received() >= frames

        def inject(start: int, n: int) -> None:
            if publisher is None:
                ctl.send(("publish", start, n, data))
            else:
                publisher.send_frames(b"".join(frames[start - 1 : start - 1 + n]))
                publisher.discard_incoming()

        # Warm-up: first-use costs (imports, caches) stay out of the measured phase.
        inject(1, args.warmup)
        h.wait_until(lambda: received() >= args.warmup * subscribers, 120, "warm-up")

        if profile:
            ctl.send(("profile_start",))
            ctl.recv()
        ctl.send(("cpu",))
        user0, sys0 = ctl.recv()
        wall0 = time.perf_counter()
        sent = args.warmup
        while sent < total_events:
            n = min(args.chunk, total_events - sent)
            # Keep at most `window` events in flight so every client keeps up and no frame
            # waits in a server-side queue (that would measure slow consumers, not fan-out).
            h.wait_until(caught_up((sent + n - args.window) * subscribers), 120, "catching up")
            inject(sent + 1, n)
            sent += n
        expected = total_events * subscribers
        h.wait_until(lambda: received() >= expected, 120, "every frame to arrive")
        wall = time.perf_counter() - wall0
        ctl.send(("cpu",))
        user1, sys1 = ctl.recv()
        report = ""
        if profile:
            ctl.send(("profile_stop", 45))
            report = ctl.recv()
        if publisher is not None:
            publisher.discard_incoming()
        if received() != expected:
            raise RuntimeError(f"received {received()} frames, expected {expected}")
    finally:
        if publisher is not None:
            publisher.close()
        for client in clients:
            client.terminate()
        for client in clients:
            client.join(10)
        if server.is_alive():
            ctl.send(("exit",))
            server.join(10)
    deliveries = args.events * subscribers
    cpu = (user1 - user0) + (sys1 - sys0)
    result: dict[str, Any] = {
        "server_cpu_s": round(cpu, 4),
        "server_user_s": round(user1 - user0, 4),
        "server_sys_s": round(sys1 - sys0, 4),
        "wall_s": round(wall, 4),
        "deliveries": deliveries,
        "cpu_s_per_million_deliveries": round(cpu / deliveries * 1e6, 4),
        "deliveries_per_wall_second": round(deliveries / wall),
        "load_average_before": load,
    }
    if profile:
        result["profile"] = report
    return result


def markdown(data: dict[str, Any]) -> str:
    params = data["parameters"]
    machine = data["machine"]
    lines = [
        "# Fan-out: server CPU per million deliveries",
        "",
        f"Measured {data['date']} on {machine['cpu_model']} ({machine['usable_cores']} cores), "
        f"Python {machine['python']}, websockets {machine['websockets']}, "
        f"unisock {machine['unisock']}.",
        "",
        f"One channel, {params['subscribers']:,} subscribers, {params['events']:,} events of "
        f"{params['event_bytes']} bytes ({params['deliveries']:,} deliveries per run), "
        f"median of {params['repeat']} runs. Server CPU is user + system time of the server "
        "process over the measured phase; lower is better. One-minute load average before "
        f"the runs: {data['load_average_range'][0]:.2f} to {data['load_average_range'][1]:.2f} "
        "(other work on the machine inflates CPU time; the ratios compare runs interleaved in "
        "the same invocation).",
        "",
        "| scenario | what | CPU s / 1M deliveries (median) | min | runs | vs bare |",
        "|---|---|---:|---:|---|---:|",
    ]
    bare = data["scenarios"].get("bare", {}).get("median_cpu_s_per_million")
    for name, scenario in data["scenarios"].items():
        med = scenario["median_cpu_s_per_million"]
        runs = ", ".join(f"{r['cpu_s_per_million_deliveries']:.2f}" for r in scenario["runs"])
        ratio = f"{med / bare:.2f}x" if bare else "n/a"
        low = scenario["min_cpu_s_per_million"]
        lines.append(
            f"| `{name}` | {scenario['description']} | {med:.2f} | {low:.2f} | {runs} | {ratio} |"
        )
    lines.append("")
    target = data["target"]
    if target.get("met") is not None:
        verdict = "met" if target["met"] else "NOT met"
        lines.append(
            f"Target: `unisock` at most {target['max_ratio_to_bare']:.1f}x `bare` in the same "
            f"run: {verdict} ({target['ratio']:.2f}x)."
        )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=2000, help="measured events per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--event-bytes", type=int, default=256, help="size of the event frame")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured events first")
    parser.add_argument("--window", type=int, default=32, help="max events in flight")
    parser.add_argument("--chunk", type=int, default=8, help="events injected at once")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated subset to run"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the runs, profile one unisock run with cProfile (not counted)",
    )
    args = parser.parse_args(argv)
    args.chunk = max(1, min(args.chunk, args.window))
    names, machine = h.prepare_run(parser, args, SCENARIOS)
    runs = h.repeat_scenarios(
        names,
        args.repeat,
        lambda name: run_scenario(name, args),
        lambda result: (
            f"{result['cpu_s_per_million_deliveries']:8.3f} s CPU / 1M deliveries "
            f"({result['server_cpu_s']:.2f} s CPU, {result['wall_s']:.2f} s wall)"
        ),
    )
    scenarios: dict[str, dict[str, Any]] = {
        name: {
            "description": SCENARIOS[name][1],
            "median_cpu_s_per_million": round(
                h.median([r["cpu_s_per_million_deliveries"] for r in runs[name]]), 4
            ),
            "min_cpu_s_per_million": min(r["cpu_s_per_million_deliveries"] for r in runs[name]),
            "runs": runs[name],
        }
        for name in names
    }
    ratios: dict[str, float] = {}
    if "bare" in scenarios:
        bare = scenarios["bare"]["median_cpu_s_per_million"]
        for name in names:
            if name != "bare":
                ratios[f"{name}/bare"] = round(
                    scenarios[name]["median_cpu_s_per_million"] / bare, 4
                )
    if "floor" in scenarios:
        floor = scenarios["floor"]["median_cpu_s_per_million"]
        for name in ("unisock", "unisock-inproc"):
            if name in scenarios:
                ratios[f"{name}/floor"] = round(
                    scenarios[name]["median_cpu_s_per_million"] / floor, 4
                )
    ratio = ratios.get("unisock/bare")
    data: dict[str, Any] = {
        "benchmark": "fanout",
        "date": h.now_iso(),
        "machine": machine,
        "parameters": {
            "subscribers": args.subscribers,
            "events": args.events,
            "event_bytes": args.event_bytes,
            "deliveries": args.subscribers * args.events,
            "repeat": args.repeat,
            "warmup_events": args.warmup,
            "window_events": args.window,
            "chunk_events": args.chunk,
            "client_processes": args.client_procs,
            "server_config_overrides": SERVER_OVERRIDES,
            "server_cores": sorted(args.server_cores),
            "client_cores": sorted(args.client_cores),
        },
        "load_average_range": [
            min(r["load_average_before"] for rs in runs.values() for r in rs),
            max(r["load_average_before"] for rs in runs.values() for r in rs),
        ],
        "scenarios": scenarios,
        "ratios": ratios,
        "target": {
            "max_ratio_to_bare": TARGET_RATIO,
            "ratio": ratio,
            "met": None if ratio is None else ratio <= TARGET_RATIO,
        },
    }
    json_path, md_path = h.write_results(args.out, "fanout", data, markdown(data))
    print(f"wrote {json_path} and {md_path}")
    for key, value in ratios.items():
        print(f"{key}: {value:.3f}")
    if args.profile:
        result = run_scenario("unisock", args, profile=True)
        path = args.out / "fanout-profile.txt"
        header = (
            f"cProfile of the unisock server process over the measured phase of one run "
            f"({result['deliveries']:,} deliveries, {result['server_cpu_s']:.2f} s CPU under "
            "the profiler; not a timing figure)\n\n"
        )
        path.write_text(header + result["profile"], encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
