"""``python -m bench.memory_profile``: what the reference server holds per idle connection.

Scenario 4's connections (a hello with a token, then ``bench.room`` and ``alerts.>``), opened
over loopback by the benchmark's own client processes, against the reference server with the
in-memory broker running in this process. Two fresh processes measure, one after the other:

- ``rss``: ``VmRSS`` growth over a ramp to 10,000 connections, per connection, as scenario 4
  counts it (after a warm-up of 50 connections, closed again, and a settle), with nothing else
  switched on;
- ``trace``: ``tracemalloc`` over a ramp to 2,000, grouped by allocating line, by file, and by
  the innermost frame in the ``unisock`` package (the reference server's line that caused the
  allocation, whoever made it).

Client sockets live in the client processes, so every figure is the server's alone. Python's
free lists keep some objects freed during the ramp (tuples above all) allocated, so a few
lines show blocks that no connection holds.

    python -m bench.memory_profile [--connections 2000] [--rss-connections 10000] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import json
import platform
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

from bench import _harness as h
from bench import load, suite

SETTLE_S = 2.0
WARMUP = 50


def _specs(n: int) -> list[load.Spec]:
    subs = [(h.CHANNEL, None), (h.SECOND_PATTERN, None)]
    return [(h.TENANT, f"u{i}", subs) for i in range(n)]


async def _ready(clients: suite.Clients, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not all(clients.shared.ready):
        if time.monotonic() > deadline:
            raise TimeoutError("timed out waiting for the connections")
        if not all(process.is_alive() for process in clients.processes):
            raise RuntimeError("a client process ended before setting up its connections")
        await asyncio.sleep(0.02)
    if any(flag < 0 for flag in clients.shared.ready):
        raise RuntimeError("a client process failed to set up its connections")


async def _measure(n: int, trace: bool, depth: int) -> dict[str, Any]:
    from unisock.server import UnisockServer

    server_cores, client_cores = h.core_layout()
    h.pin(server_cores)
    env = suite.Env(server_cores, client_cores, client_procs=1)
    server = UnisockServer(h.bench_settings(**suite.UNISOCK_BASE))
    _, port = await server.start("127.0.0.1", 0)
    specs = _specs(n)
    warm = suite.Clients(env, port, "unisock", "idle", _specs(WARMUP))
    await _ready(warm)
    warm.stop()
    await asyncio.sleep(SETTLE_S)
    gc.collect()
    if trace:
        tracemalloc.start(depth)
    before = tracemalloc.take_snapshot() if trace else None
    rss0 = h.rss_kib()
    clients = suite.Clients(env, port, "unisock", "idle", specs)
    try:
        await _ready(clients)
        await asyncio.sleep(SETTLE_S)
        gc.collect()
        rss1 = h.rss_kib()
        connected = clients.connected()
        after = tracemalloc.take_snapshot() if trace else None
        tracemalloc.stop()
    finally:
        clients.close()
    if len(server.conns) != n or connected != n:
        raise RuntimeError(f"{connected} connected, the server holds {len(server.conns)}")
    result: dict[str, Any] = {"connections": n, "kib_per_connection": (rss1 - rss0) / n}
    if before is not None and after is not None:
        result.update(_statistics(before, after))
    await server.close()
    return result


def _statistics(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> dict[str, Any]:
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before, after = before.filter_traces(ignore), after.filter_traces(ignore)

    def rows(key: str) -> list[tuple[str, int, int]]:
        diff = after.compare_to(before, key)
        out = []
        for stat in diff:
            if stat.size_diff <= 0:
                continue
            frame = stat.traceback[0]
            where = _short(frame.filename) + (f":{frame.lineno}" if key == "lineno" else "")
            out.append((where, stat.size_diff, stat.count_diff))
        return sorted(out, key=lambda row: -row[1])

    # The innermost frame in the package: the server's own line behind each allocation.
    # Nearly nothing was traced before the ramp (tracing starts just before it), so the
    # traces of the second snapshot are the ramp's.
    import unisock

    package = str(Path(unisock.__file__).parent)
    by_caller: Counter[str] = Counter()
    blocks: Counter[str] = Counter()
    for item in after.traces:
        caller = "(no unisock frame: the event loop or websockets)"
        for frame in reversed(item.traceback):
            if frame.filename.startswith(package):
                caller = f"{_short(frame.filename)}:{frame.lineno}"
                break
        by_caller[caller] += item.size
        blocks[caller] += 1
    callers = [(where, size, blocks[where]) for where, size in by_caller.most_common()]
    total = sum(size for _, size, _ in rows("filename"))
    return {
        "traced_bytes": total,
        "by_line": rows("lineno"),
        "by_file": rows("filename"),
        "by_caller": callers,
    }


def _short(filename: str) -> str:
    for marker in ("site-packages/", "reference/", "lib/python3"):
        index = filename.rfind(marker)
        if index >= 0:
            return filename[index + len(marker) :].lstrip("/0123456789.")
    return filename


def _table(title: str, rows: list[list[Any]], n: int, top: int) -> list[str]:
    lines = [
        "",
        title,
        "",
        f"{'bytes/conn':>10} {'blocks/conn':>11}  where",
    ]
    for where, size, count in rows[:top]:
        lines.append(f"{size / n:10.1f} {count / n:11.2f}  {where}")
    rest = rows[top:]
    if rest:
        size = sum(row[1] for row in rest)
        count = sum(row[2] for row in rest)
        lines.append(f"{size / n:10.1f} {count / n:11.2f}  ({len(rest)} more)")
    return lines


def _phase(name: str, n: int, depth: int) -> dict[str, Any]:
    """One measurement in a fresh process: nothing allocated earlier is reused."""
    command = [sys.executable, "-m", "bench.memory_profile", "--phase", name]
    command += ["--connections", str(n), "--depth", str(depth)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {name} phase failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def report(n: int, rss_n: int, top: int, depth: int) -> str:
    load_before = h.load_average()
    rss = _phase("rss", rss_n, depth)
    trace = _phase("trace", n, depth)
    lines = [
        "Reference server, in-memory broker, idle connections with 2 subscriptions each"
        f" (scenario 4's); {h.now_iso()}",
        f"python {platform.python_version()}, websockets"
        f" {importlib.metadata.version('websockets')}; one-minute load average {load_before}",
        "",
        f"VmRSS growth per connection over {rss_n:,} connections (tracemalloc off):"
        f" {rss['kib_per_connection']:.2f} KiB",
        f"Python allocations alive per connection over {n:,} connections (tracemalloc):"
        f" {trace['traced_bytes'] / n / 1024:.2f} KiB",
    ]
    lines += _table(f"Top {top} allocating lines", trace["by_line"], n, top)
    lines += _table("By file", trace["by_file"], n, top)
    lines += _table(
        "By the innermost unisock frame (the server's line behind the allocation)",
        trace["by_caller"],
        n,
        top,
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory_profile", description=__doc__)
    parser.add_argument("--connections", type=int, default=2000, help="traced connections")
    parser.add_argument(
        "--rss-connections", type=int, default=10_000, help="connections for the VmRSS growth"
    )
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--depth", type=int, default=32, help="frames kept per allocation")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    parser.add_argument("--phase", choices=("rss", "trace"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    h.raise_fd_limit()
    if args.phase is not None:
        result = asyncio.run(_measure(args.connections, args.phase == "trace", args.depth))
        print(json.dumps(result))
        return 0
    text = report(args.connections, args.rss_connections, args.top, args.depth)
    print(text, end="")
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
