"""The five scenarios against every peer: processes, measurement, validity.

Each measured run starts a fresh server process pinned to a core of its own; its CPU time
(user + system, all threads) and resident memory are read from ``/proc/<pid>`` by the driver,
so the figure is the operating system's account of the server process and nothing else. The
load generators run in other processes on the other cores; their own CPU time is read the same
way, and a run in which they were busy for 90% of the time they had is marked invalid: then
the load generator, not the server, set the pace.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import _harness as h
from bench import load

ROOT = Path(__file__).resolve().parent
NODE_DIR = ROOT / "node"
SATURATED = 0.9
STORM_DOWN_SHARE = 0.05
"""Scenario 5's drop has shown once at most this share of the subscribers is connected."""
"""Share of their cores' time above which the load generators, not the server, set the pace."""
HEARTBEAT_OFF = {"heartbeat_interval_ms": 3_600_000}
UNISOCK_BASE: dict[str, Any] = {
    **HEARTBEAT_OFF,
    # One publisher connection injects every event; the per-connection publish rate limit
    # (UNI-LIM) would otherwise be what is measured.
    "publish_rate_per_second": 1_000_000,
    "publish_rate_burst": 1_000_000,
    "max_subscriptions": 100,
}
ORDER_SCHEMA = {
    "type": "object",
    "required": ["t", "qty", "sku", "text"],
    "properties": {
        "t": {"type": "integer", "minimum": 0},
        "qty": {"type": "integer", "minimum": 1, "maximum": 1000},
        "sku": {"type": "string", "maxLength": 32},
        "text": {"type": "string"},
    },
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Peer:
    name: str
    wire: str
    what: str
    command: Callable[[dict[str, Any]], list[str]]
    unisock: bool = False
    redis: bool = False
    cost: float = 1.0
    """Relative CPU per delivery, to keep every peer's run about as long."""
    needs: str = ""
    """Why the peer cannot run here, or empty."""


def _python(kind: str) -> Callable[[dict[str, Any]], list[str]]:
    def command(config: dict[str, Any]) -> list[str]:
        import json

        return [sys.executable, "-m", "bench.servers", kind, json.dumps(config)]

    return command


def _node(kind: str) -> Callable[[dict[str, Any]], list[str]]:
    return lambda _config: ["node", str(NODE_DIR / "server.js"), kind]


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def peers() -> dict[str, Peer]:
    node_ready = (NODE_DIR / "node_modules" / "socket.io").is_dir() and shutil.which("node")
    node_missing = "" if node_ready else "the Node peers are not installed: python -m bench setup"
    return {
        p.name: p
        for p in (
            Peer(
                "bare", "raw", "websockets server, websockets.broadcast per event", _python("bare")
            ),
            Peer(
                "floor",
                "raw",
                "websockets server, one pre-built frame written to every transport",
                _python("floor"),
            ),
            Peer(
                "socketio",
                "sio",
                "Node socket.io 4 server, io.to(room).emit",
                _node("socketio"),
                needs=node_missing,
            ),
            Peer(
                "ws",
                "raw",
                "Node ws 8 server, a loop of send over the room",
                _node("ws"),
                needs=node_missing,
            ),
            Peer(
                "pysio",
                "sio",
                "python-socketio 5 on aiohttp, emit to a room",
                _python("pysio"),
                cost=8.0,
                needs=""
                if _importable("socketio") and _importable("aiohttp")
                else "pip install '.[bench]'",
            ),
            Peer(
                "unisock",
                "unisock",
                "Unisock reference server, in-memory broker",
                _python("unisock"),
                unisock=True,
            ),
            Peer(
                "unisock-uvloop",
                "unisock",
                "Unisock reference server, in-memory broker, uvloop",
                _python("unisock"),
                unisock=True,
                needs="" if _importable("uvloop") else "pip install '.[speed]'",
            ),
            Peer(
                "unisock-redis",
                "unisock",
                "Unisock reference server, Redis broker (private redis-server)",
                _python("unisock"),
                unisock=True,
                redis=True,
                cost=1.5,
                needs="" if shutil.which("redis-server") else "redis-server is not on PATH",
            ),
        )
    }


# --- processes ---------------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Redis:
    """A private redis-server on a free port (no persistence), for one run."""

    def __init__(self, cores: set[int]) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="unisock-bench-redis-")
        binary = shutil.which("redis-server") or "redis-server"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=lambda: h.pin(cores),
        )
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Server:
    """One peer's server process, pinned to the server core."""

    def __init__(self, peer: Peer, config: dict[str, Any], env: Env) -> None:
        self.redis: Redis | None = None
        config = dict(config) if peer.unisock else {}
        if peer.redis:
            self.redis = Redis(env.client_cores)
            config["broker"] = f"redis://127.0.0.1:{self.redis.port}/0"
        if peer.name == "unisock-uvloop":
            config["_loop"] = "uvloop"
        cores = env.server_cores
        self.process = subprocess.Popen(
            peer.command(config),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT.parent,
            preexec_fn=lambda: (h.pin(cores), h.raise_fd_limit()),
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            self.close()
            raise RuntimeError(f"{peer.name} server did not start")
        self.port = int(line.split()[1])
        self.pid = self.process.pid

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def rss_kib(self) -> int:
        return proc_rss_kib(self.pid)

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        if self.redis is not None:
            self.redis.close()


@dataclass
class Env:
    server_cores: set[int]
    client_cores: set[int]
    client_procs: int
    load_loop: str = "asyncio"
    """The load generators' event loop (``uvloop`` or ``asyncio``)."""
    ctx: Any = field(default_factory=lambda: multiprocessing.get_context("spawn"))


class Clients:
    """Subscriber processes sharing ``specs``; the driver waits for and reads them."""

    def __init__(
        self,
        env: Env,
        port: int,
        wire: str,
        mode: str,
        specs: list[load.Spec],
        probe_every: int = 1,
    ) -> None:
        procs = max(1, min(env.client_procs, len(specs)))
        self.shared = load.Shared(env.ctx, procs)
        self.pipes = []
        self.processes = []
        for slot in range(procs):
            mine = specs[slot::procs]
            parent, child = env.ctx.Pipe()
            process = env.ctx.Process(
                target=load.client_main,
                args=(
                    port,
                    wire,
                    mode,
                    mine,
                    probe_every,
                    slot,
                    self.shared,
                    child,
                    env.client_cores,
                    env.load_loop,
                ),
                daemon=True,
            )
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)

    def wait_ready(self, timeout: float) -> None:
        h.wait_until(lambda: all(self.shared.ready), timeout, "subscribers to be set up", 0.005)
        if any(flag < 0 for flag in self.shared.ready):
            raise RuntimeError("a client process failed to set up its subscribers")

    def received(self) -> int:
        return sum(self.shared.counts)

    def connected(self) -> int:
        return sum(self.shared.connected)

    def cpu(self) -> float:
        return sum(proc_cpu(p.pid) for p in self.processes if p.pid is not None)

    def ramp_seconds(self) -> float:
        ramp = list(self.shared.ramp)
        return max(ramp[1::2]) - min(ramp[0::2])

    def stop(self) -> list[dict[str, Any]]:
        self.shared.control[0] = 1
        reports = [pipe.recv() if pipe.poll(30) else {} for pipe in self.pipes]
        self.close()
        return reports

    def close(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.join(10)


class Publisher:
    """A paced publisher process (scenarios 2, 3 and 5)."""

    def __init__(self, env: Env, port: int, wire: str, plan: dict[str, Any]) -> None:
        self.flags = env.ctx.RawArray("q", 2)  # [stop, sent so far]
        self.pipe, child = env.ctx.Pipe()
        self.process = env.ctx.Process(
            target=load.publisher_main,
            args=(port, wire, plan, self.flags, child, env.client_cores, env.load_loop),
            daemon=True,
        )
        self.process.start()

    def sent(self) -> int:
        return int(self.flags[1])

    def finish(self, timeout: float = 60) -> dict[str, Any]:
        """Stop if still running; what it published."""
        self.flags[0] = 1
        if not self.pipe.poll(timeout):
            raise RuntimeError("publisher did not report")
        report: dict[str, Any] = self.pipe.recv()
        return report

    def cpu(self) -> float:
        return proc_cpu(self.process.pid) if self.process.pid else 0.0

    def close(self) -> None:
        self.flags[0] = 1
        self.process.terminate()
        self.process.join(10)


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _client_util(cpu: float, wall: float, env: Env) -> float:
    return round(cpu / (wall * len(env.client_cores)), 3) if wall > 0 else 0.0


def _room(peer: Peer) -> str:
    return h.CHANNEL


# --- scenario 1: fan-out -----------------------------------------------------------------------


def fanout(
    peer: Peer,
    env: Env,
    size: dict[str, Any],
    subscribers: int,
    profile: Path | None = None,
    window: int = 32,
) -> dict[str, Any]:
    """Windowed injection of 256-byte events to one room; CPU per delivery and rate.

    With ``profile``, py-spy samples the server process over the measured phase and writes
    its collapsed stacks there (the run's figures then include the sampler's overhead).
    """
    events = max(20, int(size["s1_deliveries"] / subscribers / peer.cost))
    # ``window`` events in flight, injected 8 at a time: a server may handle several in one
    # loop turn. With a window of 1 every event is alone: no batching of any kind is possible.
    warmup, chunk = 20, min(8, window)
    room = _room(peer)
    specs = [(h.TENANT, f"u{i}", [(room, None)]) for i in range(subscribers)]
    server = Server(peer, UNISOCK_BASE, env)
    clients: Clients | None = None
    publisher: load.BlockingPublisher | None = None
    try:
        clients = Clients(env, server.port, peer.wire, "count", specs)
        clients.wait_ready(600)
        publisher = load.BlockingPublisher(server.port, peer.wire, [room])
        pad = load.pad_for(peer.wire, room, size["event_bytes"])
        data = load.payload(10 ** (load.T_WIDTH - 1), pad)
        total = warmup + events
        frames = [
            h.masked_frame(load.publish_text(peer.wire, room, data, i).encode())
            for i in range(1, total + 1)
        ]
        received = clients.received

        def inject(start: int, n: int) -> None:
            assert publisher is not None
            publisher.send_frames(b"".join(frames[start - 1 : start - 1 + n]))
            publisher.discard_incoming()

        inject(1, warmup)
        h.wait_until(lambda: received() >= warmup * subscribers, 120, "warm-up")
        spy = _spy(server.pid, profile) if profile is not None else None
        cpu0, ccpu0, wall0 = server.cpu(), clients.cpu(), time.perf_counter()
        sent = warmup
        while sent < total:
            n = min(chunk, total - sent)
            behind = (sent + n - window) * subscribers
            h.wait_until(lambda b=behind: received() >= b, 120, "catching up")
            inject(sent + 1, n)
            sent += n
        h.wait_until(lambda: received() >= total * subscribers, 120, "every frame")
        wall = time.perf_counter() - wall0
        cpu, ccpu = server.cpu() - cpu0, clients.cpu() - ccpu0
        if spy is not None:
            spy.send_signal(2)
            spy.wait(60)
        publisher.discard_incoming()
        if received() != total * subscribers:
            raise RuntimeError(f"received {received()} frames, expected {total * subscribers}")
    finally:
        if publisher is not None:
            publisher.close()
        if clients is not None:
            clients.close()
        server.close()
    deliveries = events * subscribers
    util = _client_util(ccpu, wall, env)
    server_util = round(cpu / (wall * len(env.server_cores)), 3) if wall > 0 else 0.0
    return {
        "deliveries": deliveries,
        "server_cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "cpu_s_per_million": round(cpu / deliveries * 1e6, 3),
        "deliveries_per_s": round(deliveries / wall),
        "load_util": util,
        "server_util": server_util,
        "in_flight": window,
        "valid": not held_back_by_load(util, server_util),
    }


def held_back_by_load(load_util: float, server_util: float) -> bool:
    """Whether the load generators, not the server, set the pace of a fan-out run.

    Busy generators alone do not say so: a generator that keeps up reads each frame as it
    comes, so the faster it is, the more reads it makes, until its core is full. Only while
    the server has time to spare (below the same share of its own core) were they what it
    waited for; a server that kept its core busy was measured at its own pace.
    """
    return load_util >= SATURATED and server_util < SATURATED


def _spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    spy = subprocess.Popen(
        [
            shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy",
            "record",
            "--pid",
            str(pid),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # attached before the measured phase begins
    return spy


# --- scenario 2: multi-tenant filtered fan-out -------------------------------------------------


def tenants_layout(size: dict[str, Any]) -> tuple[list[load.Spec], list[tuple[str, str]]]:
    """Every connection: 3 channels of its tenant, 20% of the subscriptions filtered."""
    rng = random.Random(12)
    tenants, per, conns = size["s2_tenants"], size["s2_channels"], size["s2_connections"]
    channels = [(f"t{t}", f"t{t}.c{c}") for t in range(tenants) for c in range(per)]
    specs: list[load.Spec] = []
    for i in range(conns):
        tenant = f"t{i % tenants}"
        picked = rng.sample(range(per), 3)
        subs = [
            (f"{tenant}.c{c}", {"eq": ["prio", "high"]} if rng.random() < 0.2 else None)
            for c in picked
        ]
        specs.append((tenant, f"u{i}", subs))
    return specs, channels


def rooms_layout(size: dict[str, Any]) -> tuple[list[load.Spec], list[tuple[str, str]]]:
    """Scenario 2's connections in the same rooms, every subscription unfiltered: its shape
    (many small rooms, each delivery alone) without what only Unisock does."""
    specs, channels = tenants_layout(size)
    return [(tenant, sub, [(c, None) for c, _ in subs]) for tenant, sub, subs in specs], channels


def expected_deliveries(specs: list[load.Spec], published: dict[str, int]) -> int:
    """Deliveries owed for ``published``: counts per ``channel|prio`` (typed events, whose
    ``prio`` the filters match) or per ``channel`` (untyped, which only unfiltered
    subscriptions receive). Each subscription counts only its own room."""
    total = 0
    for _, _, subs in specs:
        for channel, flt in subs:
            total += published.get(f"{channel}|high", 0)
            if flt is None:
                total += published.get(f"{channel}|low", 0) + published.get(channel, 0)
    return total


def filtered(
    peer: Peer, env: Env, size: dict[str, Any], profile: Path | None = None
) -> dict[str, Any]:
    specs, channels = tenants_layout(size)
    config = {
        **UNISOCK_BASE,
        "event_types": {"bench.order": ORDER_SCHEMA},
        "registry_mode": "strict",
        "max_connections_per_user": 10,
    }
    rate, seconds = size["s2_rate"], size["s2_seconds"]
    return _paced(peer, env, size, specs, channels, config, rate, seconds, True, 1, profile=profile)


def rooms(
    peer: Peer, env: Env, size: dict[str, Any], profile: Path | None = None
) -> dict[str, Any]:
    """Scenario 2's shape for every peer: the same rooms, rate and probes, untyped events
    published round-robin over the rooms, no filters."""
    specs, channels = rooms_layout(size)
    config = {**UNISOCK_BASE, "max_connections_per_user": 10}
    rate, seconds = size["s2_rate"], size["s2_seconds"]
    return _paced(
        peer, env, size, specs, channels, config, rate, seconds, False, 1, profile=profile
    )


# --- scenario 3: latency under load ------------------------------------------------------------


def latency(peer: Peer, env: Env, size: dict[str, Any]) -> dict[str, Any]:
    room = _room(peer)
    specs = [(h.TENANT, f"u{i}", [(room, None)]) for i in range(size["s3_subscribers"])]
    return _paced(
        peer,
        env,
        size,
        specs,
        [(h.TENANT, room)],
        UNISOCK_BASE,
        size["s3_rate"],
        size["s3_seconds"],
        typed=False,
        probe_every=size["s3_probe_every"],
    )


def _paced(
    peer: Peer,
    env: Env,
    size: dict[str, Any],
    specs: list[load.Spec],
    channels: list[tuple[str, str]],
    config: dict[str, Any],
    rate: float,
    seconds: float,
    typed: bool,
    probe_every: int,
    profile: Path | None = None,
) -> dict[str, Any]:
    server = Server(peer, config, env)
    clients: Clients | None = None
    publisher: Publisher | None = None
    try:
        clients = Clients(env, server.port, peer.wire, "probe", specs, probe_every)
        clients.wait_ready(900)
        plan = {"channels": channels, "size": size["event_bytes"], "rate": rate, "typed": typed}
        publisher = Publisher(env, server.port, peer.wire, plan)
        warm = max(1, int(rate * 0.5))
        h.wait_until(lambda: publisher.sent() >= warm, 60, "warm-up publishes", 0.002)
        spy = _spy(server.pid, profile) if profile is not None else None
        cpu0, ccpu0, got0, wall0 = (
            server.cpu(),
            clients.cpu(),
            clients.received(),
            time.perf_counter(),
        )
        sent0 = publisher.sent()
        pcpu0 = publisher.cpu()
        time.sleep(seconds)
        cpu, ccpu = server.cpu() - cpu0, clients.cpu() - ccpu0
        pcpu = publisher.cpu() - pcpu0
        if spy is not None:
            spy.send_signal(2)
            spy.wait(60)
        got, wall = clients.received() - got0, time.perf_counter() - wall0
        achieved = (publisher.sent() - sent0) / wall
        report = publisher.finish()
        expected = expected_deliveries(specs, report["published"])
        with contextlib.suppress(TimeoutError):  # a shortfall is reported, not raised
            h.wait_until(lambda: clients.received() >= expected, 15, "every delivery", 0.01)
        time.sleep(0.2)
        total = clients.received()
        reports = clients.stop()
        clients = None
    finally:
        if publisher is not None:
            publisher.close()
        if clients is not None:
            clients.close()
        server.close()
    samples = [s / 1e6 for r in reports for s in r.get("samples", [])]
    util = max(_client_util(ccpu, wall, env), _client_util(pcpu, wall, env))
    pace_ok = achieved >= 0.95 * rate
    return {
        "publishes_per_s": round(achieved, 1),
        "deliveries": got,
        "expected_deliveries": expected,
        "delivered_total": total,
        "refused_publishes": report.get("refused", {}),
        # A Socket.IO event names no room: nothing to check the tenant against.
        "cross_tenant": None
        if peer.wire == "sio"
        else sum(r.get("cross_tenant", 0) for r in reports),
        "connections_lost": sum(r.get("lost", 0) for r in reports),
        "server_cpu_s": round(cpu, 3),
        "cpu_s_per_million": round(cpu / got * 1e6, 3) if got else None,
        "server_cpu_share": round(cpu / wall, 3),
        "deliveries_per_s": round(got / wall),
        "pace_ok": pace_ok,
        "latency_ms": {
            "samples": len(samples),
            "p50": round(percentile(samples, 50), 3),
            "p99": round(percentile(samples, 99), 3),
            "p99.9": round(percentile(samples, 99.9), 3),
        },
        "load_util": util,
        "valid": util < SATURATED and pace_ok and total == expected,
    }


# --- scenario 4: idle capacity -----------------------------------------------------------------


def idle(peer: Peer, env: Env, size: dict[str, Any]) -> dict[str, Any]:
    n = size["s4_connections"]
    second = h.SECOND_PATTERN if peer.unisock else "alerts"
    specs = [(h.TENANT, f"u{i}", [(h.CHANNEL, None), (second, None)]) for i in range(n)]
    server = Server(peer, UNISOCK_BASE, env)
    clients: Clients | None = None
    try:
        warm = Clients(env, server.port, peer.wire, "idle", specs[: size["s4_warmup"]])
        warm.wait_ready(120)
        warm.stop()
        time.sleep(size["s4_settle_s"])
        rss0 = server.rss_kib()
        cpu0 = server.cpu()
        clients = Clients(env, server.port, peer.wire, "idle", specs)
        clients.wait_ready(900)
        ramp = clients.ramp_seconds()
        cpu = server.cpu() - cpu0
        time.sleep(size["s4_settle_s"])
        rss1 = server.rss_kib()
        connected = clients.connected()
    finally:
        if clients is not None:
            clients.close()
        server.close()
    return {
        "connections": connected,
        "rss_0_kib": rss0,
        "rss_n_kib": rss1,
        "kib_per_connection": round((rss1 - rss0) / n, 3),
        "accepted_per_s": round(n / ramp, 1),
        "ramp_s": round(ramp, 3),
        "server_cpu_ms_per_connection": round(cpu / n * 1000, 4),
        "valid": connected == n,
    }


# --- scenario 5: reconnect storm ---------------------------------------------------------------


def storm(peer: Peer, env: Env, size: dict[str, Any]) -> dict[str, Any]:
    n, nch = size["s5_subscribers"], size["s5_channels"]
    channels = [(h.TENANT, f"bench.storm{c}") for c in range(nch)]
    specs = [(h.TENANT, f"u{i}", [(channels[i % nch][1], None)]) for i in range(n)]
    config = {**UNISOCK_BASE, "max_connections_per_user": 10}
    server = Server(peer, config, env)
    clients: Clients | None = None
    publisher: Publisher | None = None
    curve: list[tuple[float, int]] = []
    try:
        clients = Clients(env, server.port, "unisock", "storm", specs)
        clients.wait_ready(900)
        plan = {"channels": channels, "size": size["event_bytes"], "rate": size["s5_rate"]}
        publisher = Publisher(env, server.port, "unisock", plan)
        h.wait_until(lambda: publisher.sent() >= size["s5_rate"], 60, "publishing", 0.01)
        drop = time.monotonic()
        clients.shared.control[1] = 1
        # Times count from the drop, but "back" only once the drop has shown: until the load
        # generators have aborted their connections the count still reads as all up.
        down_at = back_95 = back_100 = None
        while time.monotonic() - drop < size["s5_observe_s"]:
            t, up = time.monotonic() - drop, clients.connected()
            curve.append((round(t, 3), up))
            if down_at is None:
                if up <= STORM_DOWN_SHARE * n:
                    down_at = t
                time.sleep(0.01)
                continue
            if back_95 is None and up >= 0.95 * n:
                back_95 = t
            if up >= n and back_100 is None:
                back_100 = t
            if back_100 is not None and t > back_100 + size["s5_after_s"]:
                break
            time.sleep(0.01)
        report = publisher.finish()
        expected = sum(report["published"].get(c, 0) for _, c in channels) * (n // nch)
        with contextlib.suppress(TimeoutError):
            h.wait_until(lambda: clients.received() >= expected, 60, "resumed deliveries", 0.01)
        received = clients.received()
        reports = clients.stop()
        clients = None
    finally:
        if publisher is not None:
            publisher.close()
        if clients is not None:
            clients.close()
        server.close()
    first_back = low = None  # the first reconnection: the count rising from its lowest
    for t, up in curve:
        if down_at is None or t < down_at:
            continue
        if low is None or up <= low:
            low = up
        else:
            first_back = t
            break
    return {
        "subscribers": n,
        "published": sum(report["published"].values()),
        "sent": report["sent"],
        "refused_publishes": report.get("refused", {}),
        "unanswered_publishes": report.get("unanswered", 0),
        "expected_deliveries": expected,
        "unique_deliveries": received,
        "delivered_fraction": round(received / expected, 6) if expected else None,
        "duplicates_after_dedup": sum(r.get("duplicates", 0) for r in reports),
        "duplicate_frames_dropped_by_dedup": sum(r.get("raw_duplicates", 0) for r in reports),
        "gaps": sum(r.get("gaps", 0) for r in reports),
        "first_back_s": first_back,
        "back_95_s": None if back_95 is None else round(back_95, 3),
        "back_100_s": None if back_100 is None else round(back_100, 3),
        "down_s": down_at,
        "curve": _thin(curve),
        "valid": down_at is not None and back_100 is not None,
    }


def _thin(curve: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """Keep the points where the count changes (and the ends): the plot's shape, smaller."""
    out: list[tuple[float, int]] = []
    for index, point in enumerate(curve):
        if index in (0, len(curve) - 1) or point[1] != curve[index - 1][1]:
            out.append(point)
    return out


# --- summaries ---------------------------------------------------------------------------------


def summarise(
    runs: list[dict[str, Any]], key: Callable[[dict[str, Any]], float | None]
) -> dict[str, Any]:
    """Median over the valid runs (all runs when none is valid), with min and max."""
    valid = [r for r in runs if r.get("valid")]
    values = [v for v in (key(r) for r in (valid or runs)) if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "valid_runs": len(valid)}
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "valid_runs": len(valid),
    }
