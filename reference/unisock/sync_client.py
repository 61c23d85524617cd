"""A blocking wrapper around :class:`unisock.client.Client` for code without an event loop.

The asyncio client runs on its own event loop in a daemon thread; every method submits a
coroutine to it and waits for the result. Callbacks (``on_gap``, ``on_state_change``) and a
token provider run on that thread, so they must not block for long.

Typical use::

    with SyncClient("wss://rt.example.com/", token) as client:
        client.subscribe("tasks.>")
        for item in client.events(timeout=30):
            ...
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from unisock.client import (
    Ack,
    Client,
    ClientState,
    CloseInfo,
    Item,
    Position,
    Subscription,
    TokenProvider,
    Welcome,
)

__all__ = ["SyncClient"]

_T = TypeVar("_T")


class SyncClient:
    """The operations of :class:`~unisock.client.Client`, blocking, each with a timeout.

    ``timeout`` (seconds) bounds every call that does not pass its own; other keyword
    arguments go to :class:`~unisock.client.Client`.
    """

    def __init__(
        self, url: str, token: str | TokenProvider, *, timeout: float = 10.0, **options: Any
    ) -> None:
        self._timeout = timeout
        self._client = Client(url, token, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="unisock-sync-client", daemon=True
        )
        self._thread.start()
        self._items: queue.Queue[Item | None] = queue.Queue()
        self._pump: concurrent.futures.Future[None] | None = None

    @property
    def client(self) -> Client:
        """The wrapped asyncio client (use it only from its own thread)."""
        return self._client

    @property
    def state(self) -> ClientState:
        return self._client.state

    @property
    def last_close(self) -> CloseInfo | None:
        return self._client.last_close

    def positions(self) -> dict[str, Position]:
        return self._call(self._positions(), self._timeout)

    def connect(self, timeout: float | None = None) -> Welcome:
        """Connect and wait for ``welcome``; see :meth:`Client.connect`."""
        limit = self._timeout if timeout is None else timeout
        welcome = self._call(self._client.connect(limit), None)
        if self._pump is None or self._pump.done():
            # Keep unread items of an earlier run, but not its end marker.
            fresh: queue.Queue[Item | None] = queue.Queue()
            while not self._items.empty():
                item = self._items.get_nowait()
                if item is not None:
                    fresh.put(item)
            self._items = fresh
            self._pump = asyncio.run_coroutine_threadsafe(self._forward(), self._loop)
        return welcome

    def subscribe(
        self,
        channel: str,
        *,
        filter: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Subscription:
        limit = self._limit(timeout)
        return self._call(self._client.subscribe(channel, filter=filter, timeout=limit), None)

    def unsubscribe(self, channel: str, *, timeout: float | None = None) -> None:
        limit = self._limit(timeout)
        self._call(self._client.unsubscribe(channel, timeout=limit), None)

    def publish(
        self,
        channel: str,
        event: str,
        data: Any,
        *,
        message_id: str | None = None,
        attrs: Mapping[str, Any] | None = None,
        to: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        exclude_self: bool = False,
        key: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
    ) -> Ack:
        coro = self._client.publish(
            channel,
            event,
            data,
            message_id=message_id,
            attrs=attrs,
            to=to,
            exclude=exclude,
            exclude_self=exclude_self,
            key=key,
            user=user,
            timeout=self._limit(timeout),
        )
        return self._call(coro, None)

    def refresh(self, token: str | None = None, *, timeout: float | None = None) -> int:
        limit = self._limit(timeout)
        return self._call(self._client.refresh(token, timeout=limit), None)

    def events(self, timeout: float | None = None) -> Iterator[Item]:
        """Yield delivered items; stops when the client stops or ``timeout`` seconds pass
        without an item (``None`` waits for ever)."""
        while True:
            try:
                item = self._items.get(timeout=timeout)
            except queue.Empty:
                return
            if item is None:
                self._items.put(None)  # later calls stop at once too
                return
            yield item

    def wait_closed(self, timeout: float | None = None) -> CloseInfo | None:
        return self._call(self._client.wait_closed(), timeout)

    def close(self) -> None:
        """Close the client and stop its thread; safe to call twice."""
        if not self._loop.is_running():
            return
        try:
            self._call(self._client.close(), self._timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self._timeout)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> SyncClient:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _limit(self, timeout: float | None) -> float:
        return self._timeout if timeout is None else timeout

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float | None) -> _T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError("the client did not answer in time") from None

    async def _positions(self) -> dict[str, Position]:
        return self._client.positions()

    async def _forward(self) -> None:
        try:
            async for item in self._client.events():
                self._items.put(item)
        finally:
            self._items.put(None)
