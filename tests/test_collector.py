"""The server's garbage collector policy: connection state frozen, full collections on churn."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
import weakref
from collections.abc import Iterator

import pytest

from server_harness import LIMIT, asynctest, running_server, settings
from unisock.collector import Collector
from unisock.server import run_server
from unisock.session import SessionCore


class _Node:
    """A container the collector tracks, with a slot for a cycle and a weak reference."""

    def __init__(self) -> None:
        self.other: object = None


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    """Each test starts and ends with nothing frozen, as the rest of the suite expects."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def _unfrozen_ids() -> set[int]:
    return {id(obj) for obj in gc.get_objects()}


def _counter() -> tuple[list[int], Collector]:
    closed = [0]
    return closed, Collector(lambda: 0, lambda: closed[0], churn_floor=4)


def test_collector_freezes_what_survives_a_settle() -> None:
    """Objects alive at a settle leave every generation that collections walk."""
    _, collector = _counter()
    node = _Node()
    assert id(node) in _unfrozen_ids()
    assert collector.settle() is False
    assert id(node) not in _unfrozen_ids()
    assert gc.get_freeze_count() > 0


def test_collector_collects_frozen_cycles_once_connections_churned() -> None:
    """A cycle that became garbage while frozen is freed at the first settle after churn."""
    closed, collector = _counter()
    first, second = _Node(), _Node()
    first.other, second.other = second, first
    gone = weakref.ref(first)
    collector.settle()
    del first, second
    closed[0] = 3  # below the floor: the frozen garbage waits
    assert collector.settle() is False
    assert gone() is not None
    closed[0] = 4
    assert collector.settle() is True
    assert gone() is None
    assert collector.settle() is False  # churn is counted from the last full collection


def test_collector_churn_scales_with_open_connections() -> None:
    """Half of the open connections must have closed, when that is more than the floor."""
    closed = [0]
    collector = Collector(lambda: 100, lambda: closed[0], churn_floor=4)
    closed[0] = 49
    assert collector.settle() is False
    closed[0] = 50
    assert collector.settle() is True


def test_collector_collects_frozen_cycles_after_the_full_interval_without_churn() -> None:
    """Garbage that no closed connection accounts for is freed within the full interval."""
    now = [0.0]
    collector = Collector(lambda: 10, lambda: 0, full_interval_s=600, clock=lambda: now[0])
    first, second = _Node(), _Node()
    first.other, second.other = second, first
    gone = weakref.ref(first)
    collector.settle()
    del first, second
    now[0] = 599.9
    assert collector.settle() is False
    assert gone() is not None
    now[0] = 600.0
    assert collector.settle() is True
    assert gone() is None
    assert collector.settle() is False  # the interval counts from the last full collection


@asynctest
async def test_server_connection_state_leaves_the_collected_generations() -> None:
    """An open connection's session is frozen by the next settle; its close is counted."""
    async with running_server() as h:
        collector = Collector(
            lambda: len(h.server.conns), lambda: h.server.closed_connections, interval_s=0.01
        )
        collector.start()
        try:
            client = await h.connect()
            await client.subscribe("tasks.1")
            deadline = time.monotonic() + LIMIT
            while any(isinstance(obj, SessionCore) for obj in gc.get_objects()):
                assert time.monotonic() < deadline, "the session was never frozen"
                await asyncio.sleep(0.01)
            assert len(h.server.conns) == 1
            assert h.server.closed_connections == 0
            await client.ws.close()
            while h.server.conns:
                assert time.monotonic() < deadline, "the server kept the closed connection"
                await asyncio.sleep(0.01)
            assert h.server.closed_connections == 1
        finally:
            await collector.stop()


@asynctest
async def test_run_server_freezes_start_up_and_settles_until_stopped() -> None:
    """``unisock serve`` freezes what start-up built and runs the collector while serving."""
    ready = asyncio.Event()

    def settling() -> bool:
        return any(
            getattr(task.get_coro(), "__qualname__", "") == "Collector._run"
            for task in asyncio.all_tasks()
        )

    served = asyncio.create_task(
        run_server(settings(), "127.0.0.1", 0, on_ready=lambda *_: ready.set())
    )
    await asyncio.wait_for(ready.wait(), LIMIT)
    assert gc.get_freeze_count() > 0
    assert settling()
    os.kill(os.getpid(), signal.SIGINT)  # run_server's own handler: stop
    await asyncio.wait_for(served, LIMIT)
    assert not settling()
