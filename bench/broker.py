"""The Redis broker against the in-memory broker: delivery latency, server CPU per delivery,
and the Redis commands and round trips behind each publish.

Both scenarios run the same reference server process (pinned to one core, 1,000 subscribers
on one channel, events published over the protocol) and differ only in ``broker``: the
embedded in-memory broker, or a private ``redis-server`` started by this script on the client
cores. Scenarios are interleaved in every repeat, so the ratios compare like with like.

Per run:

- **CPU per delivery**: server-process CPU (user + system) over a measured phase, divided by
  the deliveries, exactly as ``fanout.py`` measures it;
- **latency**: one probe subscriber in the driver; one event in flight at a time, from the
  moment the publish leaves the publisher to the moment the probe has the whole event frame;
- **Redis work per publish** (Redis scenario): ``MONITOR`` of the private Redis over a few
  publishes sent one at a time, which tells the commands the node sent (each one round trip)
  from those the publish script ran inside Redis; and ``INFO commandstats`` and Redis CPU over
  the measured phase.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _harness as h
import redis

SCENARIOS: dict[str, str] = {
    "memory": "reference server, embedded in-memory broker (the default)",
    "redis": "reference server, Redis broker on a private redis-server (one node)",
}
SERVER_OVERRIDES: dict[str, Any] = {
    "heartbeat_interval_ms": 3_600_000,
    "publish_rate_per_second": 1_000_000,
    "publish_rate_burst": 1_000_000,
}
TARGETS = {"latency_p50_added_ms": 2.0, "round_trips_per_publish": 1.0, "cpu_ratio": 1.1}


class Redis:
    """A private redis-server on a free port, pinned to the client cores, no persistence."""

    def __init__(self, cores: set[int]) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis.py needs redis-server on PATH")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="unisock-bench-redis-")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", self.dir]
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=lambda: os.sched_setaffinity(0, cores),
        )
        try:
            self.client = redis.Redis(port=self.port, decode_responses=True)
            h.wait_until(self._up, 10, "redis-server to start", poll=0.01)
        except BaseException:
            self.close()
            raise

    def _up(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def reset_stats(self) -> None:
        self.client.config_resetstat()

    def stats(self) -> dict[str, Any]:
        commands = {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in self.client.info("commandstats").items()
        }
        cpu = self.client.info("cpu")
        return {"commands": commands, "cpu_s": cpu["used_cpu_user"] + cpu["used_cpu_sys"]}

    def monitor(self) -> Monitored:
        return Monitored(self.port)

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Monitored:
    """Every command Redis executes while open (MONITOR), told apart by who sent it: a
    client connection (one round trip each) or the script running inside Redis (``lua``)."""

    def __init__(self, port: int) -> None:
        self.client = redis.Redis(port=port, decode_responses=True)
        self.commands: list[tuple[str, str]] = []  # (source, command name)
        self._monitor = self.client.monitor().__enter__()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):
            while not self._stop.is_set():
                seen = self._monitor.next_command()
                if seen is None:
                    continue
                name = seen["command"].split(" ", 1)[0].lower()
                source = "lua" if seen["client_type"] == "lua" else seen["client_port"]
                self.commands.append((source, name))

    def close(self) -> list[tuple[str, str]]:
        self._stop.set()
        self.client.ping()  # one more command to wake the reader; it is not counted
        self._thread.join(timeout=5)
        self._monitor.__exit__()
        self.client.close()
        return [c for c in self.commands if c[1] != "ping"]


class Probe:
    """A subscriber in the driver that timestamps whole event frames as they arrive."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request, accept = h.handshake_request(port, "unisock.v1")
        self.sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += self.sock.recv(65536)
        end = data.index(b"\r\n\r\n") + 4
        h.check_handshake(data[:end], accept)
        self.buffer = data[end:]
        self.send({"type": "hello", "token": h.subscriber_token(999_999)})
        assert json.loads(self.next_frame())["type"] == "welcome"
        self.send({"type": "subscribe", "id": "probe", "channel": h.CHANNEL})
        assert json.loads(self.next_frame())["type"] == "subscribed"

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(h.masked_frame(json.dumps(message).encode()))

    def next_frame(self) -> str:
        while True:
            frames, self.buffer = h.split_frames(self.buffer)
            if frames:
                frame = frames[0][1]
                rest = b"".join(_reframe(f) for f in frames[1:])
                self.buffer = rest + self.buffer
                return frame.decode()
            self.buffer += self.sock.recv(65536)

    def close(self) -> None:
        self.sock.close()


def _reframe(frame: tuple[int, bytes]) -> bytes:
    """Put an unread server frame back in front of the buffer (unmasked, as it came)."""
    opcode, payload = frame
    length = len(payload)
    if length < 126:
        return bytes([0x80 | opcode, length]) + payload
    if length < 1 << 16:
        return bytes([0x80 | opcode, 126]) + length.to_bytes(2, "big") + payload
    return bytes([0x80 | opcode, 127]) + length.to_bytes(8, "big") + payload


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def run_scenario(name: str, args: argparse.Namespace, private: Redis) -> dict[str, Any]:
    """One run: CPU per delivery over ``--events``, then ``--samples`` latency samples."""
    overrides = dict(SERVER_OVERRIDES)
    if name == "redis":
        overrides["broker"] = private.url
        overrides["broker_key_prefix"] = f"bench-{time.monotonic_ns()}:"
    load = h.load_average()
    ctx = multiprocessing.get_context("spawn")
    ctl, child_ctl = ctx.Pipe()
    server = ctx.Process(
        target=h.server_main,
        args=("unisock", overrides, child_ctl, args.server_cores),
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
                "unisock",
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
    probe: Probe | None = None
    try:
        h.wait_until(lambda: all(ready), 300, "subscribers to be set up")
        if any(flag < 0 for flag in ready):
            raise RuntimeError("a client process failed to set up its subscribers")
        probe = Probe(port)
        publisher = h.Publisher(port, "unisock")
        data = h.event_data(args.event_bytes)
        total = args.warmup + args.events + args.samples + args.monitored
        frames = [h.masked_frame(h.publish_message(i, data).encode()) for i in range(1, total + 1)]

        def received() -> int:
            return sum(counts)

        def inject(start: int, n: int) -> None:
            assert publisher is not None
            publisher.send_frames(b"".join(frames[start - 1 : start - 1 + n]))
            publisher.discard_incoming()

        subscribers = args.subscribers
        inject(1, args.warmup)
        h.wait_until(lambda: received() >= args.warmup * subscribers, 120, "warm-up")
        for _ in range(args.warmup):
            probe.next_frame()
        if name == "redis":
            private.reset_stats()
        ctl.send(("cpu",))
        user0, sys0 = ctl.recv()
        wall0 = time.perf_counter()
        sent = args.warmup
        end = args.warmup + args.events
        while sent < end:
            n = min(args.chunk, end - sent)
            wanted = (sent + n - args.window) * subscribers
            h.wait_until(lambda wanted=wanted: received() >= wanted, 120, "catching up")
            inject(sent + 1, n)
            sent += n
        h.wait_until(lambda: received() >= end * subscribers, 120, "every frame to arrive")
        wall = time.perf_counter() - wall0
        ctl.send(("cpu",))
        user1, sys1 = ctl.recv()
        stats = private.stats() if name == "redis" else None
        for _ in range(args.events):
            probe.next_frame()
        latencies = []

        def one_at_a_time(index: int) -> float:
            assert publisher is not None and probe is not None
            started = time.perf_counter()
            publisher.send_frames(frames[index - 1])
            frame = probe.next_frame()
            took = (time.perf_counter() - started) * 1000
            if f'"message_id":"m{index}"' not in frame:
                raise RuntimeError(f"probe got another frame than event {index}")
            publisher.discard_incoming()
            time.sleep(args.pause_ms / 1000)
            return took

        sampled = end + args.samples
        for index in range(end + 1, sampled + 1):
            latencies.append(one_at_a_time(index))
        commands: list[tuple[str, str]] | None = None
        if name == "redis":
            # Not while measuring CPU or latency: MONITOR slows Redis down.
            monitored = private.monitor()
            try:
                for index in range(sampled + 1, total + 1):
                    one_at_a_time(index)
            finally:
                commands = monitored.close()
    finally:
        for closing in (publisher, probe):
            if closing is not None:
                closing.close()
        for client in clients:
            client.terminate()
        for client in clients:
            client.join(10)
        if server.is_alive():
            ctl.send(("exit",))
            server.join(10)
    deliveries = args.events * args.subscribers
    cpu = (user1 - user0) + (sys1 - sys0)
    result: dict[str, Any] = {
        "server_cpu_s": round(cpu, 4),
        "wall_s": round(wall, 4),
        "deliveries": deliveries,
        "cpu_us_per_delivery": round(cpu / deliveries * 1e6, 4),
        "latency_ms": {
            "p50": round(_percentile(latencies, 0.5), 3),
            "p99": round(_percentile(latencies, 0.99), 3),
            "max": round(max(latencies), 3),
            "samples": len(latencies),
        },
        "load_average_before": load,
    }
    if stats is not None and commands is not None:
        result["redis"] = _per_publish(stats, args.events, commands, args.monitored)
    return result


def _per_publish(
    stats: dict[str, Any], publishes: int, commands: list[tuple[str, str]], monitored: int
) -> dict[str, Any]:
    """Per publish: what nodes sent to Redis (MONITOR, one publish at a time), what the
    script ran inside Redis, and Redis CPU and commands over the measured phase."""
    sent: dict[str, int] = {}
    inside: dict[str, int] = {}
    for source, command in commands:
        table = inside if source == "lua" else sent
        table[command] = table.get(command, 0) + 1
    scripts = sent.get("evalsha", 0) + sent.get("eval", 0)
    executed = sum(stats["commands"].values())
    return {
        "monitored_publishes": monitored,
        "round_trips_per_publish": round(scripts / monitored, 4),
        "node_commands_per_publish": {k: round(v / monitored, 3) for k, v in sorted(sent.items())},
        "script_commands_per_publish": {
            k: round(v / monitored, 3) for k, v in sorted(inside.items())
        },
        "commands_executed_per_publish": round(executed / publishes, 3),
        "redis_cpu_us_per_publish": round(stats["cpu_s"] / publishes * 1e6, 2),
    }


def markdown(data: dict[str, Any]) -> str:
    params, machine, target = data["parameters"], data["machine"], data["target"]
    lines = [
        "# Redis broker against the in-memory broker",
        "",
        f"Measured {data['date']} on {machine['cpu_model']} ({machine['usable_cores']} cores), "
        f"Python {machine['python']}, unisock {machine['unisock']}, Redis "
        f"{data['redis_version']} on the client cores.",
        "",
        f"One node, {params['subscribers']:,} subscribers on one channel, {params['events']:,} "
        f"events of {params['event_bytes']} bytes per run for CPU, then {params['samples']} "
        "events one at a time for latency (publish sent to event frame received by one more "
        f"subscriber); median of {params['repeat']} interleaved runs. One-minute load average "
        f"before the runs: {data['load_average_range'][0]:.2f} to "
        f"{data['load_average_range'][1]:.2f}.",
        "",
        "| scenario | what | CPU µs / delivery | latency p50 ms | p99 ms |",
        "|---|---|---:|---:|---:|",
    ]
    for name, s in data["scenarios"].items():
        lines.append(
            f"| `{name}` | {s['description']} | {s['median_cpu_us_per_delivery']:.3f} | "
            f"{s['median_latency_p50_ms']:.3f} | {s['median_latency_p99_ms']:.3f} |"
        )
    redis = data["redis_per_publish"]
    lines += [
        "",
        "Redis work per publish (`INFO commandstats` over the measured phase, all runs):",
        "",
        f"- round trips on the publish path: **{redis['round_trips_per_publish']}** "
        "(`EVALSHA` calls per publish);",
        f"- commands the node sent, per publish (`MONITOR` over {redis['monitored_publishes']} "
        "publishes one at a time): "
        + ", ".join(f"`{k}` {v}" for k, v in redis["node_commands_per_publish"].items())
        + " (`xread` is the node's read of the fan-out stream: one per batch of events, here "
        "one event per batch);",
        "- commands the script ran inside Redis, per publish: "
        + ", ".join(f"`{k}` {v}" for k, v in redis["script_commands_per_publish"].items())
        + ";",
        f"- over the measured phase: {redis['commands_executed_per_publish']} commands "
        f"executed in Redis and {redis['redis_cpu_us_per_publish']} µs of Redis CPU per "
        "publish.",
        "",
        "Targets:",
        "",
    ]
    for key, label in (
        ("latency_p50_added_ms", "Redis adds at most {limit} ms at p50"),
        ("round_trips_per_publish", "exactly {limit:.0f} round trip per publish"),
        ("cpu_ratio", "CPU per delivery with Redis at most {limit}x the memory broker's"),
    ):
        entry = target[key]
        verdict = "met" if entry["met"] else "NOT met"
        lines.append(f"- {label.format(limit=entry['limit'])}: {verdict} ({entry['value']}).")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=2000, help="measured events per run")
    parser.add_argument("--samples", type=int, default=400, help="latency samples per run")
    parser.add_argument("--pause-ms", type=float, default=2.0, help="pause between samples")
    parser.add_argument("--monitored", type=int, default=50, help="publishes under MONITOR")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--event-bytes", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args(argv)
    args.chunk = max(1, min(args.chunk, args.window))
    names, machine = h.prepare_run(parser, args, SCENARIOS)
    private = Redis(args.client_cores)
    try:
        version = private.client.info("server")["redis_version"]
        runs = h.repeat_scenarios(
            names,
            args.repeat,
            lambda name: run_scenario(name, args, private),
            _describe,
        )
    finally:
        private.close()
    data = _summary(args, machine, version, runs)
    json_path, md_path = h.write_results(args.out, "broker", data, markdown(data))
    print(f"wrote {json_path} and {md_path}")
    for key, entry in data["target"].items():
        print(f"{key}: {entry['value']} (limit {entry['limit']}, met: {entry['met']})")
    return 0


def _describe(result: dict[str, Any]) -> str:
    latency = result["latency_ms"]
    return (
        f"{result['cpu_us_per_delivery']:7.3f} µs CPU / delivery, latency p50 "
        f"{latency['p50']:.3f} ms p99 {latency['p99']:.3f} ms"
    )


def _summary(
    args: argparse.Namespace,
    machine: dict[str, Any],
    version: str,
    runs: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    def med(name: str, get: Callable[[dict[str, Any]], float]) -> float:
        return round(h.median([get(r) for r in runs[name]]), 4)

    scenarios = {
        name: {
            "description": SCENARIOS[name],
            "median_cpu_us_per_delivery": med(name, lambda r: r["cpu_us_per_delivery"]),
            "median_latency_p50_ms": med(name, lambda r: r["latency_ms"]["p50"]),
            "median_latency_p99_ms": med(name, lambda r: r["latency_ms"]["p99"]),
            "runs": runs[name],
        }
        for name in runs
    }
    redis_runs = [r["redis"] for r in runs.get("redis", [])]
    per_publish: dict[str, Any] = {}
    if redis_runs:
        per_publish = {key: redis_runs[len(redis_runs) // 2][key] for key in redis_runs[0] if key}
        per_publish["round_trips_per_publish"] = max(
            r["round_trips_per_publish"] for r in redis_runs
        )
    target: dict[str, Any] = {}
    if {"memory", "redis"} <= set(scenarios):
        memory, redis = scenarios["memory"], scenarios["redis"]
        added = round(redis["median_latency_p50_ms"] - memory["median_latency_p50_ms"], 3)
        ratio = round(redis["median_cpu_us_per_delivery"] / memory["median_cpu_us_per_delivery"], 3)
        trips = per_publish["round_trips_per_publish"]
        target = {
            "latency_p50_added_ms": {
                "limit": TARGETS["latency_p50_added_ms"],
                "value": added,
                "met": added <= TARGETS["latency_p50_added_ms"],
            },
            "round_trips_per_publish": {
                "limit": TARGETS["round_trips_per_publish"],
                "value": trips,
                "met": trips == TARGETS["round_trips_per_publish"],
            },
            "cpu_ratio": {
                "limit": TARGETS["cpu_ratio"],
                "value": ratio,
                "met": ratio <= TARGETS["cpu_ratio"],
            },
        }
    all_runs = [r for rs in runs.values() for r in rs]
    return {
        "benchmark": "broker",
        "date": h.now_iso(),
        "machine": machine,
        "redis_version": version,
        "parameters": {
            "subscribers": args.subscribers,
            "events": args.events,
            "samples": args.samples,
            "event_bytes": args.event_bytes,
            "repeat": args.repeat,
            "warmup_events": args.warmup,
            "window_events": args.window,
            "server_config_overrides": SERVER_OVERRIDES,
            "server_cores": sorted(args.server_cores),
            "client_cores": sorted(args.client_cores),
        },
        "load_average_range": [
            min(r["load_average_before"] for r in all_runs),
            max(r["load_average_before"] for r in all_runs),
        ],
        "scenarios": scenarios,
        "redis_per_publish": per_publish,
        "target": target,
    }


if __name__ == "__main__":
    sys.exit(main())
