"""A reference server in its own process, measured from outside: RSS, open file descriptors,
and the delivery latency other clients see while an attack runs.

The server runs as ``python -m tests.broken_servers.serve none`` (exactly ``unisock serve``)
so that its memory and descriptors are its own, not the test's. Latency is measured by a
probe: one client publishes on a channel, another receives, and the time from send to
receipt is recorded per event. Timings are printed, never asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from unisock._version import PROTOCOL_TOKEN
from unisock.auth import mint_token

__all__ = ["LIMIT", "SECRET", "Probe", "ServerProcess", "p99", "server_process"]

ROOT = Path(__file__).resolve().parents[2]
SCALE = float(os.environ.get("UNISOCK_TIME_SCALE", "1.0"))
LIMIT = 5.0 * SCALE
SECRET = "resource-test-secret-0123456789abcdef"


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    host: str
    port: int
    config: dict[str, Any]

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def settled_fds(self, baseline: int, slack: int = 2) -> int:
        """The descriptor count once it is back within ``slack`` of ``baseline``, or the
        count when ``LIMIT * 4`` has passed (connections end asynchronously)."""
        deadline = time.monotonic() + LIMIT * 4
        count = self.fds()
        while count > baseline + slack and time.monotonic() < deadline:
            time.sleep(0.05)
            count = self.fds()
        return count

    def token(self, sub: str, tenant: str = "res", **claims: Any) -> str:
        claims.setdefault("subscribe", [">"])
        claims.setdefault("publish", [">"])
        return mint_token(SECRET, tenant, sub, **claims)

    async def client(self, sub: str, **kwargs: Any) -> ClientConnection:
        """A connection after ``welcome``, with a token for ``sub`` granting everything."""
        return await self.client_with_token(self.token(sub), **kwargs)

    async def client_with_token(self, token: str, **kwargs: Any) -> ClientConnection:
        ws = await connect(
            self.url,
            subprotocols=[PROTOCOL_TOKEN],  # type: ignore[list-item]
            compression=None,
            open_timeout=LIMIT,
            close_timeout=LIMIT,
            ping_interval=None,
            max_size=None,
            **kwargs,
        )
        await ws.send(json.dumps({"type": "hello", "token": token}))
        welcome = json.loads(await asyncio.wait_for(ws.recv(), LIMIT))
        assert welcome["type"] == "welcome", welcome
        return ws


def _toml(config: dict[str, Any]) -> str:
    lines = ["[server]"]
    for key, value in config.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


@contextmanager
def server_process(**config: Any) -> Iterator[ServerProcess]:
    """Start the server with ``[server]`` settings ``config``; stop it (SIGINT) at the end."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "server.toml"
        path.write_text(_toml(config), encoding="utf-8")
        cmd = [
            sys.executable,
            "-m",
            "tests.broken_servers.serve",
            "none",
            "--config",
            str(path),
        ]
        cmd += ["--secret", SECRET, "--port", "0"]
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        try:
            assert proc.stdout is not None
            with selectors.DefaultSelector() as selector:
                selector.register(proc.stdout, selectors.EVENT_READ)
                assert selector.select(LIMIT * 4), "the server did not start"
            line = proc.stdout.readline()
            url = line.rsplit(" on ", 1)[1].strip().removeprefix("ws://").rstrip("/")
            host, port = url.rsplit(":", 1)
            yield ServerProcess(proc, host, int(port), config)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=LIMIT * 2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def p99(samples: list[float]) -> float:
    if not samples:
        return float("nan")
    if len(samples) < 2:
        return samples[0]
    return statistics.quantiles(samples, n=100)[98]


class Probe:
    """Publish ``count`` events at ``rate``/s on one connection, receive them on another;
    the per-event delivery latency in milliseconds."""

    def __init__(self, server: ServerProcess, name: str = "probe") -> None:
        self.server = server
        self.name = name

    async def run(self, count: int, rate: float) -> list[float]:
        reader = await self.server.client(f"{self.name}-r")
        writer = await self.server.client(f"{self.name}-w")
        channel = f"{self.name}.lat"
        await reader.send(json.dumps({"type": "subscribe", "id": "s", "channel": channel}))
        while json.loads(await asyncio.wait_for(reader.recv(), LIMIT)).get("id") != "s":
            pass
        sent: dict[str, float] = {}
        latencies: list[float] = []

        async def receive() -> None:
            while len(latencies) < count:
                frame = json.loads(await asyncio.wait_for(reader.recv(), LIMIT * 2))
                if frame.get("type") == "ping":
                    await reader.send(json.dumps({"type": "pong", "nonce": frame.get("nonce")}))
                elif frame.get("type") == "event" and frame["message_id"] in sent:
                    latencies.append((time.perf_counter() - sent[frame["message_id"]]) * 1000)

        async def drain_writer() -> None:
            while True:
                frame = json.loads(await writer.recv())
                if frame.get("type") == "ping":
                    await writer.send(json.dumps({"type": "pong", "nonce": frame.get("nonce")}))

        receiving = asyncio.create_task(receive())
        draining = asyncio.create_task(drain_writer())
        try:
            for index in range(count):
                message_id = f"{self.name}-{index}-{time.time_ns()}"
                sent[message_id] = time.perf_counter()
                await writer.send(
                    json.dumps(
                        {
                            "type": "publish",
                            "id": f"p{index}",
                            "channel": channel,
                            "event": "lat",
                            "data": index,
                            "message_id": message_id,
                        }
                    )
                )
                await asyncio.sleep(1 / rate)
            await asyncio.wait_for(receiving, LIMIT * 4)
        finally:
            receiving.cancel()
            draining.cancel()
            await reader.close()
            await writer.close()
        return latencies
