"""A randomized fault run against two nodes on one Redis, judged by the history checker.

Reference clients connect through a TCP load balancer (no affinity: each connection goes to
the next live node). Subscribers of two tenants follow two channels with the same names;
publishers publish with unique message ids and retry each until acknowledged. Meanwhile a
seeded schedule injects faults: a node SIGKILLed (and started again), a node drained, Redis
frozen (unreachable), Redis restarted without its data, Redis flushed. Afterwards everything is
healed, every publisher publishes a final event per channel, and once every subscriber has
caught up the recorded history goes to :func:`history.check`.

``python tests/chaos.py --duration 120 --seed 7`` (``make chaos``) runs a larger campaign;
``tests/test_chaos.py`` runs a short one in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from history import Delivery, History, Publish, Verdict, check
from redis_support import SCALE, NodeProcess, PrivateRedis, free_port
from unisock import errors
from unisock.auth import mint_token
from unisock.client import Client, Event, Gap

SECRET = "chaos-run-secret-0123456789abcdef0123456789"
CONFIG = """\
[server]
heartbeat_interval_ms = 1000
heartbeat_timeout_ms = 1000
backoff_base_ms = 100
backoff_cap_ms = 1000
backoff_floor_ms = 100
backoff_reset_after_ms = 2000
max_connections_per_user = 50
publish_rate_per_second = 500
publish_rate_burst = 500
history_max_count = 100000
drain_window_ms = 500
"""
TENANTS = ("acme", "globex")
CHANNELS = ("chaos.a", "chaos.b")
FAULTS = ("kill_node", "drain_node", "freeze_redis", "restart_redis", "flush_redis")


class Balancer:
    """A TCP load balancer: each new connection goes to the next backend that accepts it."""

    def __init__(self, backends: list[tuple[str, int]]) -> None:
        self.backends = backends
        self._next = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(len(self.backends)):
            host, port = self.backends[self._next % len(self.backends)]
            self._next += 1
            try:
                up_reader, up_writer = await asyncio.open_connection(host, port)
            except OSError:
                continue
            for source, sink in ((reader, up_writer), (up_reader, writer)):
                task = asyncio.get_running_loop().create_task(self._pipe(source, sink))
                self._pipes.add(task)
                task.add_done_callback(self._pipes.discard)
            return
        writer.close()

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                sink.close()


@dataclass
class Cluster:
    """Two ``unisock serve`` nodes on fixed ports and one private ``redis-server``."""

    workdir: Path
    redis: PrivateRedis = field(default_factory=PrivateRedis)
    ports: list[int] = field(default_factory=lambda: [free_port(), free_port()])
    nodes: list[NodeProcess | None] = field(default_factory=lambda: [None, None])
    starts: int = 0

    def start(self) -> None:
        self.redis.start()
        (self.workdir / "cluster.toml").write_text(CONFIG)
        for index in range(len(self.ports)):
            self.start_node(index)

    def start_node(self, index: int) -> None:
        self.starts += 1
        self.nodes[index] = NodeProcess(
            "--config",
            str(self.workdir / "cluster.toml"),
            "--broker",
            self.redis.url,
            port=self.ports[index],
            secret=SECRET,
            log=self.workdir / f"node{index}-{self.starts}.log",
        )

    def live(self) -> list[int]:
        return [i for i, node in enumerate(self.nodes) if node is not None and node.running()]

    def close(self) -> None:
        for node in self.nodes:
            if node is not None:
                node.stop()
        self.redis.close()


@dataclass
class Run:
    """One fault run: its history, what was injected and how the clients fared."""

    seed: int
    duration: float
    history: History = field(default_factory=History)
    faults: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    """Publish attempts that had to be repeated, by why."""
    reconnects: Counter[str] = field(default_factory=Counter)
    verdict: Verdict | None = None


async def _subscriber(run: Run, url: str, name: str, tenant: str) -> Client:
    token = mint_token(SECRET, tenant, name, subscribe=["chaos.>"], publish=[])

    def state(new: object) -> None:
        if str(getattr(new, "value", new)) == "connecting":
            run.reconnects[name] += 1

    client = Client(url, token, on_state_change=state, time_scale=SCALE)
    await client.connect()
    for channel in CHANNELS:
        await client.subscribe(channel)
    run.history.subscribers[name] = tenant
    run.history.channels[name] = list(CHANNELS)

    async def record() -> None:
        async for item in client.events():
            now = time.monotonic()
            if isinstance(item, Event):
                run.history.deliveries.append(
                    Delivery(
                        name,
                        tenant,
                        item.channel,
                        "event",
                        item.epoch,
                        item.offset,
                        item.message_id,
                        at=now,
                    )
                )
            elif isinstance(item, Gap):
                run.history.deliveries.append(
                    Delivery(
                        name,
                        tenant,
                        item.channel,
                        "gap",
                        item.epoch,
                        item.offset,
                        reason=item.reason,
                        at=now,
                    )
                )

    task = asyncio.get_running_loop().create_task(record())
    client._chaos_recorder = task  # type: ignore[attr-defined]
    return client


async def _publish_until_acked(
    run: Run, client: Client, tenant: str, channel: str, message_id: str, stop: asyncio.Event
) -> Publish:
    """Publish ``message_id`` (retrying the same id) until acked or the run ends."""
    while True:
        try:
            ack = await client.publish(
                channel, "chaos.tick", {"id": message_id}, message_id=message_id, timeout=3.0
            )
        except errors.Unavailable as refused:
            run.retries["publish attempts refused (unavailable)"] += 1
            await asyncio.sleep((refused.retry_after_ms or 100) / 1000)
        except (TimeoutError, errors.UnisockError, ConnectionError):
            run.retries["publish attempts without a reply"] += 1
            await asyncio.sleep(0.05)
        else:
            return Publish(
                tenant, channel, message_id, True, ack.epoch, ack.offset, time.monotonic()
            )
        if stop.is_set():
            return Publish(tenant, channel, message_id, False, at=time.monotonic())


async def _publisher(
    run: Run, url: str, name: str, tenant: str, stop: asyncio.Event, rate: float
) -> Client:
    token = mint_token(SECRET, tenant, name, subscribe=[], publish=["chaos.>"])
    client = Client(url, token, time_scale=SCALE)
    await client.connect()

    async def loop() -> None:
        n = 0
        while not stop.is_set():
            channel = CHANNELS[n % len(CHANNELS)]
            message_id = f"{tenant}-{name}-{n}"
            run.history.publishes.append(
                await _publish_until_acked(run, client, tenant, channel, message_id, stop)
            )
            n += 1
            await asyncio.sleep(1 / rate)

    client._chaos_loop = asyncio.get_running_loop().create_task(loop())  # type: ignore[attr-defined]
    return client


async def _faults(
    run: Run,
    cluster: Cluster,
    rng: random.Random,
    stop: asyncio.Event,
    kinds: tuple[str, ...],
) -> None:
    """Inject a random fault of ``kinds`` every 1-2.5 s until ``stop``.

    A killed or drained node comes back in the background while other faults go on; a node is
    taken down only while both are up, so clients always have somewhere to go.
    """
    loop = asyncio.get_running_loop()
    restarts: set[asyncio.Task[None]] = set()

    async def restart(index: int, node: NodeProcess, kill: bool) -> None:
        if kill:
            node.kill()  # SIGKILL mid-traffic: no close frames, no drain
        else:
            await loop.run_in_executor(None, node.drain)
        await asyncio.sleep(rng.uniform(0.2, 1.0))
        await loop.run_in_executor(None, cluster.start_node, index)

    # Every kind once, in a seeded order, then at random: a short run still covers them all.
    planned = rng.sample(kinds, len(kinds))
    while not stop.is_set():
        await asyncio.sleep(rng.uniform(1.0, 2.5))
        if stop.is_set():
            break
        fault = planned.pop(0) if planned else rng.choice(kinds)
        if fault in ("kill_node", "drain_node"):
            while restarts or len(cluster.live()) < len(cluster.nodes):
                await asyncio.sleep(0.05)  # both nodes up before one goes down
            index = rng.choice(cluster.live())
            node = cluster.nodes[index]
            assert node is not None
            task = loop.create_task(restart(index, node, fault == "kill_node"))
            restarts.add(task)
            task.add_done_callback(restarts.discard)
        elif fault == "freeze_redis":
            cluster.redis.freeze()
            await asyncio.sleep(rng.uniform(0.5, 2.5))
            cluster.redis.resume()
        elif fault == "restart_redis":
            await loop.run_in_executor(None, cluster.redis.restart)
        else:
            await loop.run_in_executor(None, cluster.redis.flush)
        run.faults[fault] += 1
    await asyncio.gather(*restarts)


async def _caught_up(run: Run, finals: list[Publish], timeout: float) -> None:
    """Wait until every subscriber has an event or gap at or after each final publish."""

    def done() -> bool:
        latest: dict[tuple[str, str], list[Delivery]] = {}
        for d in run.history.deliveries:
            latest.setdefault((d.subscriber, d.channel), []).append(d)
        for name, tenant in run.history.subscribers.items():
            for p in finals:
                if p.tenant != tenant or not p.acked:
                    continue
                stream = latest.get((name, p.channel), [])
                if not any(d.epoch == p.epoch and d.offset >= (p.offset or 0) for d in stream):
                    return False
        return True

    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return  # the checker will say what is missing
        await asyncio.sleep(0.05)


async def fault_run(
    seed: int,
    duration: float,
    *,
    subscribers: int = 3,
    publishers: int = 2,
    rate: float = 20.0,
    faults: tuple[str, ...] = FAULTS,
    workdir: Path | None = None,
) -> Run:
    """Run the workload for ``duration`` seconds under random faults; check the history."""
    rng = random.Random(seed)
    run = Run(seed, duration)
    with contextlib.ExitStack() as stack:
        base = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        cluster = Cluster(base)
        stack.callback(cluster.close)
        cluster.start()
        balancer = Balancer([("127.0.0.1", port) for port in cluster.ports])
        await balancer.start()
        url = f"ws://127.0.0.1:{balancer.port}/"
        stop = asyncio.Event()
        clients: list[Client] = []
        try:
            for tenant in TENANTS:
                for i in range(subscribers):
                    clients.append(await _subscriber(run, url, f"{tenant}-s{i}", tenant))
            for tenant in TENANTS:
                for i in range(publishers):
                    clients.append(await _publisher(run, url, f"{tenant}-p{i}", tenant, stop, rate))
            injector = _faults(run, cluster, rng, stop, faults)
            injecting = asyncio.get_running_loop().create_task(injector)
            await asyncio.sleep(duration)
            stop.set()
            await injecting
            await _heal(cluster)
            for client in clients:
                loop_task = getattr(client, "_chaos_loop", None)
                if loop_task is not None:
                    await loop_task
            finals = await _finals(run, url)
            await _caught_up(run, finals, 30 * SCALE)
        finally:
            stop.set()
            for client in clients:
                await _close(client)
            await balancer.close()
    run.verdict = check(run.history)
    run.verdict.counts.update({f"faults: {name}": count for name, count in run.faults.items()})
    run.verdict.counts.update(run.retries)
    run.verdict.counts["client reconnects"] = sum(run.reconnects.values())
    return run


async def _heal(cluster: Cluster) -> None:
    cluster.redis.resume()
    for index, node in enumerate(cluster.nodes):
        if node is None or not node.running():
            await asyncio.get_running_loop().run_in_executor(None, cluster.start_node, index)


async def _finals(run: Run, url: str) -> list[Publish]:
    """One last event per tenant and channel, after the faults: everyone must get it."""
    finals = []
    stop = asyncio.Event()
    for tenant in TENANTS:
        token = mint_token(SECRET, tenant, "final", subscribe=[], publish=["chaos.>"])
        client = Client(url, token, time_scale=SCALE)
        await client.connect()
        try:
            for channel in CHANNELS:
                stop.clear()
                publish = _publish_until_acked(
                    run, client, tenant, channel, f"{tenant}-final-{channel}", stop
                )
                final = await asyncio.wait_for(publish, 30 * SCALE)
                run.history.publishes.append(final)
                finals.append(final)
        finally:
            await client.close()
    return finals


async def _close(client: Client) -> None:
    for name in ("_chaos_loop", "_chaos_recorder"):
        task = getattr(client, name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), 5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of faults")
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault schedule")
    parser.add_argument("--subscribers", type=int, default=4, help="per tenant")
    parser.add_argument("--publishers", type=int, default=3, help="per tenant")
    parser.add_argument("--rate", type=float, default=20.0, help="publishes/s per publisher")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    run = asyncio.run(
        fault_run(
            seed,
            args.duration,
            subscribers=args.subscribers,
            publishers=args.publishers,
            rate=args.rate,
        )
    )
    assert run.verdict is not None
    print(f"fault run: seed {seed}, {args.duration:.0f} s of faults")
    print(run.verdict.report())
    return 0 if run.verdict.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
