"""Real Redis for the tests: the machine's shared one, or a private ``redis-server`` per test.

Tests that only need a Redis use the shared one at 127.0.0.1:6379, in their own database
number and under a key prefix of their own, and delete their keys afterwards. Tests that stop,
freeze, flush or restart Redis start a private ``redis-server`` on a port the OS picked.

Without a Redis (or without the ``redis-server`` binary) these tests skip, unless
``UNISOCK_REQUIRE_REDIS=1`` (set by ``make test``) turns the skip into a failure, so that CI
never passes by skipping them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

__all__ = [
    "SHARED_URL",
    "NodeProcess",
    "PrivateRedis",
    "delete_prefix",
    "fresh_prefix",
    "require_redis",
    "require_redis_server",
]

SCALE = float(os.environ.get("UNISOCK_TIME_SCALE", "1.0"))
SHARED_URL = os.environ.get("UNISOCK_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
"""The shared Redis, database 11: no other user of the machine's Redis writes there."""


def _missing(reason: str) -> None:
    if os.environ.get("UNISOCK_REQUIRE_REDIS") == "1":
        pytest.fail(f"UNISOCK_REQUIRE_REDIS=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def require_redis(url: str = SHARED_URL) -> str:
    """``url`` when a Redis answers there; else skip (or fail under UNISOCK_REQUIRE_REDIS=1)."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2) as client:
            client.ping()
    except redis.RedisError as error:
        _missing(f"no Redis at {url}: {type(error).__name__}")
    return url


def require_redis_server() -> str:
    """The ``redis-server`` binary; else skip (or fail under UNISOCK_REQUIRE_REDIS=1)."""
    binary = shutil.which("redis-server")
    if binary is None:
        _missing("no redis-server binary on PATH")
        raise AssertionError("unreachable")
    return binary


def fresh_prefix(tag: str = "t") -> str:
    """A key prefix no other test uses."""
    return f"unisock-test:{tag}:{uuid.uuid4().hex[:12]}:"


def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (cleanup after a test on the shared Redis)."""
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        batch = list(client.scan_iter(match=prefix + "*", count=1000))
        while batch:
            client.delete(*batch[:1000])
            batch = batch[1000:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A ``redis-server`` of one test: no persistence unless asked, killed at the end.

    ``restart`` reuses the port, so brokers configured with :attr:`url` reconnect by
    themselves. With ``persist`` it saves to an RDB file on shutdown and loads it on start,
    which models a Redis that comes back with its data.
    """

    def __init__(self, *, persist: bool = False) -> None:
        self.binary = require_redis_server()
        self.port = free_port()
        self.persist = persist
        self.dir = Path(tempfile.mkdtemp(prefix="unisock-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.frozen = False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)

    def start(self) -> None:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--appendonly",
            "no",
            "--save",
            "",
            "--logfile",
            str(self.dir / "redis.log"),
            "--dbfilename",
            "dump.rdb",
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10 * SCALE
        while True:
            try:
                with self.client() as client:
                    client.ping()
                return
            except redis.RedisError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on {self.port}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Shut down: saving first when ``persist``, else losing everything."""
        if self.process is None:
            return
        self.resume()
        with contextlib.suppress(redis.RedisError), self.client() as client:
            client.shutdown(save=self.persist, nosave=not self.persist)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10 * SCALE)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (a network partition's look)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.frozen = True

    def resume(self) -> None:
        if self.process is not None and self.frozen:
            self.process.send_signal(signal.SIGCONT)
            self.frozen = False

    def flush(self) -> None:
        with self.client() as client:
            client.flushall()

    def close(self) -> None:
        if self.process is not None:
            self.resume()
            self.process.kill()
            self.process.wait()
            self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def private_redis(*, persist: bool = False) -> Iterator[PrivateRedis]:
    server = PrivateRedis(persist=persist)
    server.start()
    try:
        yield server
    finally:
        server.close()


class NodeProcess:
    """``unisock serve`` as a subprocess on a port the OS picks, as an operator runs a node."""

    def __init__(self, *args: str, secret: str, log: Path, port: int = 0) -> None:
        env = {**os.environ, "UNISOCK_SECRET": secret}
        argv = [sys.executable, "-m", "unisock.cli", "serve", "--port", str(port), *args]
        self.log = log.open("w", encoding="utf-8")  # a file: a full pipe would stall the node
        self.process = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=self.log, text=True
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline()  # "unisock X serving unisock.v1 on ws://H:P/"
        match = re.search(r"serving unisock\.v1 on (ws://\S+)", first)
        if match is None:
            self.stop()
            raise RuntimeError(f"unisock serve did not start: {first!r}, see {log}")
        self.url = match.group(1)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def drain(self) -> None:
        """SIGTERM: the node drains (clients move within the drain window) and exits."""
        if self.running():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30 * SCALE)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL: the node dies without closing anything, as a crashed host does."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10 * SCALE)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10 * SCALE)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.log.close()
