"""Memory per idle connection: server RSS growth per authenticated connection.

Each connection holds two subscriptions (an exact channel and a wildcard pattern) and then
stays idle, answering the server's heartbeats. The server runs alone in its own process with
its default settings; its resident set size is read from ``/proc/self/status`` (after a
garbage collection) once warmed up with no connections and again with N connections, and
the growth is divided by N. A plain ``websockets`` server holding the same number of idle
connections is measured the same way for comparison. Usage::

    python bench/memory.py [--connections N] [--repeat N] [--out bench/results]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from pathlib import Path
from typing import Any

import _harness as h

SCENARIOS: dict[str, tuple[str, str]] = {
    "bare": ("bare", "plain websockets server holding idle connections"),
    "unisock": ("unisock", "Unisock reference server, authenticated, two subscriptions each"),
}
PATTERNS = (h.CHANNEL, h.SECOND_PATTERN)
TARGET_KIB = 24.0
"""Unisock may use at most this much server memory per idle connection."""


def _open_clients(
    ctx: Any, port: int, kind: str, first: int, total: int, args: argparse.Namespace
) -> tuple[list[Any], Any]:
    procs = max(1, min(args.client_procs, total))
    ready = ctx.RawArray("i", procs)
    counts = ctx.RawArray("q", procs)
    clients = []
    for slot in range(procs):
        share = total // procs + (1 if slot < total % procs else 0)
        client = ctx.Process(
            target=h.client_main,
            args=(port, kind, first, share, PATTERNS, slot, ready, counts, True, args.client_cores),
            daemon=True,
        )
        client.start()
        clients.append(client)
        first += share
    h.wait_until(lambda: all(ready), 300, "connections to be set up", poll=0.01)
    if any(flag < 0 for flag in ready):
        raise RuntimeError("a client process failed to set up its connections")
    return clients, ready


def _stop(clients: list[Any]) -> None:
    for client in clients:
        client.terminate()
    for client in clients:
        client.join(10)


def run_scenario(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement of ``name``: RSS with none and with N idle connections."""
    kind = SCENARIOS[name][0]
    ctx = multiprocessing.get_context("spawn")
    ctl, child_ctl = ctx.Pipe()
    server = ctx.Process(target=h.server_main, args=(kind, {}, child_ctl, args.server_cores))
    server.daemon = True
    server.start()
    if not ctl.poll(60):
        raise RuntimeError("server process did not start")
    port = ctl.recv()

    def connections() -> int:
        ctl.send(("connections",))
        count: int = ctl.recv()
        return count

    def rss() -> int:
        ctl.send(("rss",))
        value: int = ctl.recv()
        return value

    clients: list[Any] = []
    try:
        # Warm-up: the first connections pay for imports, compiled schemas and caches.
        if args.warmup:
            warm, _ = _open_clients(ctx, port, kind, 10**6, args.warmup, args)
            h.wait_until(lambda: connections() == args.warmup, 60, "warm-up", poll=0.01)
            _stop(warm)
            h.wait_until(lambda: connections() == 0, 60, "warm-up to close", poll=0.01)
        rss_0 = rss()
        clients, _ = _open_clients(ctx, port, kind, 0, args.connections, args)
        h.wait_until(lambda: connections() == args.connections, 60, "server to see all", poll=0.01)
        rss_n = rss()
    finally:
        _stop(clients)
        if server.is_alive():
            ctl.send(("exit",))
            server.join(10)
    return {
        "rss_0_kib": rss_0,
        "rss_n_kib": rss_n,
        "kib_per_connection": round((rss_n - rss_0) / args.connections, 3),
    }


def markdown(data: dict[str, Any]) -> str:
    params = data["parameters"]
    machine = data["machine"]
    lines = [
        "# Memory per idle connection",
        "",
        f"Measured {data['date']} on {machine['cpu_model']}, Python {machine['python']}, "
        f"websockets {machine['websockets']}, unisock {machine['unisock']}.",
        "",
        f"Server RSS growth from 0 to {params['connections']:,} idle connections, divided by "
        f"the number of connections; Unisock connections are authenticated and hold two "
        f"subscriptions ({', '.join(f'`{p}`' for p in params['subscriptions'])}). "
        f"Median of {params['repeat']} runs. Kernel socket buffers are not part of RSS.",
        "",
        "| scenario | what | KiB / connection (median) | runs | RSS at 0 / N (KiB, median) |",
        "|---|---|---:|---|---|",
    ]
    for name, scenario in data["scenarios"].items():
        runs = ", ".join(f"{r['kib_per_connection']:.1f}" for r in scenario["runs"])
        lines.append(
            f"| `{name}` | {scenario['description']} | "
            f"{scenario['median_kib_per_connection']:.1f} | {runs} | "
            f"{scenario['median_rss_0_kib']:,} / {scenario['median_rss_n_kib']:,} |"
        )
    lines.append("")
    target = data["target"]
    if target.get("met") is not None:
        verdict = "met" if target["met"] else "NOT met"
        lines.append(
            f"Target: `unisock` at most {target['max_kib_per_connection']:.0f} KiB per idle "
            f"connection: {verdict} ({target['kib_per_connection']:.1f} KiB)."
        )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--warmup", type=int, default=20, help="connections opened and closed")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated subset to run"
    )
    args = parser.parse_args(argv)
    names, machine = h.prepare_run(parser, args, SCENARIOS)
    runs = h.repeat_scenarios(
        names,
        args.repeat,
        lambda name: run_scenario(name, args),
        lambda result: (
            f"{result['kib_per_connection']:7.2f} KiB / connection "
            f"(RSS {result['rss_0_kib']} -> {result['rss_n_kib']} KiB)"
        ),
    )
    scenarios: dict[str, dict[str, Any]] = {
        name: {
            "description": SCENARIOS[name][1],
            "median_kib_per_connection": round(
                h.median([r["kib_per_connection"] for r in runs[name]]), 3
            ),
            "median_rss_0_kib": round(h.median([r["rss_0_kib"] for r in runs[name]])),
            "median_rss_n_kib": round(h.median([r["rss_n_kib"] for r in runs[name]])),
            "runs": runs[name],
        }
        for name in names
    }
    ratios: dict[str, float] = {}
    if "bare" in scenarios and "unisock" in scenarios:
        bare = scenarios["bare"]["median_kib_per_connection"]
        if bare > 0:
            ratios["unisock/bare"] = round(
                scenarios["unisock"]["median_kib_per_connection"] / bare, 4
            )
    kib = scenarios["unisock"]["median_kib_per_connection"] if "unisock" in scenarios else None
    data: dict[str, Any] = {
        "benchmark": "memory",
        "date": h.now_iso(),
        "machine": machine,
        "parameters": {
            "connections": args.connections,
            "subscriptions": list(PATTERNS),
            "repeat": args.repeat,
            "warmup_connections": args.warmup,
            "client_processes": args.client_procs,
            "server_cores": sorted(args.server_cores),
            "client_cores": sorted(args.client_cores),
        },
        "scenarios": scenarios,
        "ratios": ratios,
        "target": {
            "max_kib_per_connection": TARGET_KIB,
            "kib_per_connection": kib,
            "met": None if kib is None else kib <= TARGET_KIB,
        },
    }
    json_path, md_path = h.write_results(args.out, "memory", data, markdown(data))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
