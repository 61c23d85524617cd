"""The cyclic garbage collector of a long-running server: full collections follow churn.

CPython's full collection walks every container object of the process, and in a server that
is mostly the connections' state: some 70 tracked objects per idle connection (websockets'
connection, protocol and assembler, the asyncio transport, the handler's task and its
coroutines, the session core). With 1,000 connections a full collection takes about 30 ms,
and every event in flight waits for it. CPython runs one whenever the objects that survived
two young collections since the last one number a quarter of those it found then, so a ramp
of connections, or the retained history of a busy channel, sets one off while clients wait.

Nearly all of that state lives as long as its connection and is freed by reference counting.
So every :data:`SETTLE_INTERVAL_S` the node collects what it has not frozen yet (the objects
made since the last settle that are still alive: cheap) and freezes the survivors, which no
later collection walks again. An object freed by reference counting leaves the frozen set at
once; only a reference cycle that becomes garbage among frozen objects stays. A closed
connection leaves one (some 20 objects: websockets keeps its parser's last exception, whose
traceback refers back to the parser). Once the connections closed since the last full
collection number half of those open, and at least :data:`CHURN_FLOOR`, the node collects
everything once and freezes again: the long pause comes with connection churn (a
reconnection storm, a deploy), not with traffic. Cycles of other origins have no such count,
so a full collection also runs at least every :data:`FULL_INTERVAL_S`: whatever garbage
hides among frozen objects lives that long at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable

__all__ = ["CHURN_FLOOR", "FULL_INTERVAL_S", "SETTLE_INTERVAL_S", "Collector"]

SETTLE_INTERVAL_S = 0.1
"""How often survivors are frozen. A settle walks what was made since the last one that is
still alive; at 500 publishes a second, whose events stay in history, that is a millisecond
or two every tenth of a second, where settling every second paused for ten."""

CHURN_FLOOR = 500
"""Closed connections since the last full collection below which none is made, however few
are open: their garbage (a few KiB each) waits for more company."""


FULL_INTERVAL_S = 600.0
"""The longest time between two full collections, churn or not: one pause of some 30 ms per
1,000 connections every ten minutes bounds the memory that frozen garbage can hold."""


class Collector:
    """Freezes long-lived objects and collects them in full only after connection churn.

    ``open_connections`` and ``closed_connections`` are read at every settle: the number of
    connections now, and a running total of those closed since the node started.
    """

    def __init__(
        self,
        open_connections: Callable[[], int],
        closed_connections: Callable[[], int],
        *,
        interval_s: float = SETTLE_INTERVAL_S,
        churn_floor: int = CHURN_FLOOR,
        full_interval_s: float = FULL_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._open = open_connections
        self._closed = closed_connections
        self.interval_s = interval_s
        self.churn_floor = churn_floor
        self.full_interval_s = full_interval_s
        self._clock = clock
        self._closed_at_full = closed_connections()
        self._full_at = clock()
        self._task: asyncio.Task[None] | None = None

    def settle(self) -> bool:
        """Collect and freeze what survived since the last settle; returns ``True`` when churn
        or time asked for a full collection of the frozen objects too."""
        closed, now = self._closed(), self._clock()
        full = closed - self._closed_at_full >= max(self.churn_floor, self._open() // 2)
        if full or now - self._full_at >= self.full_interval_s:
            full = True
            gc.unfreeze()
            self._closed_at_full, self._full_at = closed, now
        gc.collect()
        gc.freeze()
        return full

    def start(self) -> None:
        """Settle every ``interval_s`` on the running loop until :meth:`stop`."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.settle()
