"""Discarding idle channel state (UNI-SEC-14): a periodic sweep over the broker.

Channel names are created by whoever publishes; without a sweep their sequencing state
(epoch, head, history) would accumulate without bound. A channel whose last event is older
than ``history.max_age_ms`` has nothing left that UNI-DEL-22 obliges the server to keep, so
its state can go, unless a connection of this node still has a subscription that matches
it (its subscribers would only see a needless epoch change). A broker that supports it
offers ``discard_idle(in_use)``, returning a count or (a broker on a store such as Redis) an
awaitable of one; others are left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

from unisock.broker import BrokerUnavailable, ChannelKey
from unisock.channels import Pattern, matches, parse_channel, parse_pattern

__all__ = ["IdleSweeper", "sweep_interval_ms"]

_log = logging.getLogger(__name__)


@runtime_checkable
class _Discarding(Protocol):
    def discard_idle(self, in_use: Callable[[ChannelKey], bool]) -> int | Awaitable[int]: ...


class _Subscriber(Protocol):
    @property
    def index(self) -> Mapping[str, tuple[str, Any]]:
        """Pattern text -> ("exact", key) or ("scoped", scope), as the server indexes it."""
        ...


def sweep_interval_ms(max_age_ms: int) -> int:
    """Half the age bound (so state goes at most 1.5 times it after its last event), 60 s max."""
    return max(50, min(max_age_ms // 2, 60_000))


@lru_cache(maxsize=4096)
def _pattern(text: str) -> Pattern:
    return parse_pattern(text)


class IdleSweeper:
    """Runs ``broker.discard_idle`` every :func:`sweep_interval_ms` while started."""

    def __init__(
        self,
        broker: object,
        candidates: Callable[[ChannelKey], Iterable[_Subscriber]],
        max_age_ms: int,
    ) -> None:
        self._broker: _Discarding | None = broker if isinstance(broker, _Discarding) else None
        self._candidates = candidates
        self._interval_s = sweep_interval_ms(max_age_ms) / 1000
        self._task: asyncio.Task[None] | None = None

    def in_use(self, key: ChannelKey) -> bool:
        """Whether a connection of this node has a subscription that matches ``key``."""
        channel = parse_channel(key.name)
        for conn in self._candidates(key):
            for text, (kind, where) in list(conn.index.items()):
                if kind == "exact" and where == key:
                    return True
                if kind == "scoped" and matches(_pattern(text), channel):
                    return True
        return False

    def sweep(self) -> int:
        """One pass over a broker that discards synchronously; returns how many it discarded."""
        broker: _Discarding | None = self._broker
        if broker is None:
            return 0
        result = broker.discard_idle(self.in_use)
        if inspect.isawaitable(result):
            raise TypeError("this broker discards asynchronously: use sweep_async")
        return result

    async def sweep_async(self) -> int:
        """One pass over any broker; returns how many channels it discarded."""
        broker: _Discarding | None = self._broker
        if broker is None:
            return 0
        result = broker.discard_idle(self.in_use)
        return await result if inspect.isawaitable(result) else result

    @property
    def running(self) -> bool:
        """Whether the periodic sweep is on."""
        return self._task is not None

    def start(self) -> None:
        if self._broker is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.sweep_async()
            except BrokerUnavailable as error:  # an outage: the next sweep catches up
                _log.warning("discarding idle channel state postponed: %s", error)
            except Exception:  # a failing sweep must not stop the server; it retries
                _log.exception("discarding idle channel state failed")
