"""The embedded in-memory broker: one process, no dependencies (``unisock serve`` default).

Everything lives in dictionaries owned by one event loop; every method finishes without awaiting,
so sequencing, storing and fan-out of one publish cannot interleave with another. That is what
makes listener calls come out in offset order per channel (UNI-DEL ordering) without locks.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from itertools import islice

from unisock.broker import (
    GAP_EPOCH_CHANGED,
    GAP_POSITION_INVALID,
    GAP_WINDOW_EXCEEDED,
    ChannelKey,
    EventListener,
    FrameEncoder,
    LossListener,
    Position,
    PublishRecord,
    PublishResult,
    Replay,
    StoredEvent,
    SupersedeListener,
    dedup_tenant,
)

__all__ = ["MemoryBroker", "default_clock", "random_epoch"]

_log = logging.getLogger(__name__)

_NAMESPACES = frozenset({"tenant", "$me", "$sys"})

_DedupKey = tuple[ChannelKey, str | None, str]  # key, $sys publisher tenant, message_id
_Scope = tuple[str, str | None, str | None]


def default_clock() -> int:
    """Wall-clock milliseconds since the Unix epoch (the unit of event ``ts``)."""
    return time.time_ns() // 1_000_000


def random_epoch() -> str:
    """A fresh epoch: a restarted broker has lost its history, so its epoch must differ."""
    return "m-" + secrets.token_hex(6)


def _default_encoder() -> FrameEncoder:
    # Imported lazily: the wire encoder belongs to the protocol core, not to the broker.
    from unisock.messages import encode_event_frame

    return encode_event_frame


def _scope_of(key: ChannelKey) -> _Scope:
    if key.tenant is None:
        return ("$sys", None, None)
    if key.owner is not None:
        return ("$me", key.tenant, key.owner)
    return ("tenant", key.tenant, None)


class _Channel:
    """Sequence and retained history of one :class:`ChannelKey`.

    History holds contiguous offsets ``evicted_offset + 1 .. head``; remembering the last evicted
    offset and ts is enough to tell whether a replay would skip something (never silent loss).
    ``replaced_ts`` is the ts of the last event of an earlier epoch of the key whose state was
    discarded (UNI-SEC-14): a resume by time from before it must get a gap.
    """

    __slots__ = (
        "epoch",
        "evicted_offset",
        "evicted_ts",
        "head",
        "history",
        "last_ts",
        "replaced_ts",
        "touched",
    )

    def __init__(self, epoch: str, now: int, replaced_ts: int | None = None) -> None:
        self.epoch = epoch
        self.head = 0
        self.last_ts = 0
        self.touched = now
        self.history: deque[StoredEvent] = deque()
        self.evicted_offset = 0
        self.evicted_ts: int | None = None
        self.replaced_ts = replaced_ts

    def evict_one(self) -> None:
        gone = self.history.popleft()
        self.evicted_offset = gone.offset
        self.evicted_ts = gone.ts


class MemoryBroker:
    """A :class:`~unisock.broker.Broker` for a single node, keeping everything in memory.

    ``publish`` costs O(listeners) plus amortised O(1) for eviction and dedup expiry.
    """

    def __init__(
        self,
        *,
        history_max_count: int = 1000,
        history_max_age_ms: int = 300_000,
        dedup_window_ms: int = 120_000,
        clock: Callable[[], int] = default_clock,
        encode_frame: FrameEncoder | None = None,
        epoch_factory: Callable[[], str] = random_epoch,
    ) -> None:
        if history_max_count < 0 or history_max_age_ms < 0 or dedup_window_ms < 0:
            raise ValueError("history and dedup limits must not be negative")
        self._max_count = history_max_count
        self._max_age = history_max_age_ms
        self._dedup_window = dedup_window_ms
        self._clock = clock
        self._encode = encode_frame if encode_frame is not None else _default_encoder()
        # One epoch per instance and per reset: a new instance (a restart) or a reset starts
        # with nothing, which clients must learn as epoch_changed (UNI-DEL-8).
        self._epoch_factory = epoch_factory
        self._epoch = epoch_factory()
        self._used_epochs = {self._epoch}
        # Incremented whenever idle channel state is discarded (UNI-SEC-14): a channel created
        # afterwards gets an epoch no discarded channel of its scope ever had (UNI-DEL-8).
        self._generation = 0
        self._tombstones: dict[_Scope, dict[ChannelKey, int]] = {}
        self._channels: dict[ChannelKey, _Channel] = {}
        self._scopes: dict[_Scope, dict[ChannelKey, _Channel]] = {}
        self._dedup: dict[_DedupKey, tuple[StoredEvent, int]] = {}
        self._dedup_expiry: deque[tuple[int, _DedupKey]] = deque()
        self._listeners: tuple[EventListener, ...] = ()
        self._supersede_listeners: tuple[SupersedeListener, ...] = ()
        self._sessions: dict[tuple[str, str], list[tuple[str, str | None]]] = {}
        self._closed = False

    @property
    def epoch(self) -> str:
        """The epoch of every channel of this instance, until idle state is first discarded."""
        return self._epoch

    def _fresh_epoch(self) -> str:
        return self._epoch if self._generation == 0 else f"{self._epoch}.{self._generation}"

    def _channel(self, key: ChannelKey, now: int) -> _Channel:
        """The state of ``key``, created (in the current fresh epoch) when it has none."""
        channel = self._channels.get(key)
        if channel is None:
            tombstones = self._tombstones.get(_scope_of(key), {})
            channel = _Channel(self._fresh_epoch(), now, tombstones.pop(key, None))
            self._channels[key] = channel
            self._scopes.setdefault(_scope_of(key), {})[key] = channel
        return channel

    def discard_idle(self, in_use: Callable[[ChannelKey], bool]) -> int:
        """Discard the state of channels idle for longer than the history's age bound and not
        ``in_use`` (UNI-SEC-14); return how many. A discarded channel that had events leaves a
        tombstone (its name and last ts) so that a resume by time reports the loss."""
        now = self._clock()
        idle = [
            (key, channel)
            for key, channel in self._channels.items()
            if now - max(channel.last_ts, channel.touched) > self._max_age and not in_use(key)
        ]
        for key, channel in idle:
            del self._channels[key]
            scope = self._scopes.get(_scope_of(key))
            if scope is not None:
                scope.pop(key, None)
                if not scope:
                    del self._scopes[_scope_of(key)]
            last = channel.last_ts if channel.head else channel.replaced_ts
            if last is not None:
                self._tombstones.setdefault(_scope_of(key), {})[key] = last
        if idle:
            self._generation += 1
            _log.info("discarded the state of %d idle channels", len(idle))
        return len(idle)

    def reset(self) -> str:
        """Discard all history, offsets and dedup records; return the new epoch (UNI-DEL-8).

        Offsets restart at 1 under an epoch this instance never used, so every resume position
        from before the reset is answered with ``epoch_changed`` instead of being misread.
        """
        epoch = self._epoch_factory()
        while epoch in self._used_epochs:
            epoch = self._epoch_factory()
        self._used_epochs.add(epoch)
        self._epoch = epoch
        self._generation = 0
        self._tombstones.clear()
        self._channels.clear()
        self._scopes.clear()
        self._dedup.clear()
        self._dedup_expiry.clear()
        _log.info("history reset; new epoch %s", epoch)
        return epoch

    async def start(self) -> None:
        """Nothing to connect to; present for the :class:`Broker` interface."""

    async def close(self) -> None:
        """Stop accepting publishes; listeners are never called afterwards."""
        self._closed = True

    # -- publishing -------------------------------------------------------------------------

    async def publish(self, record: PublishRecord) -> PublishResult:
        """Sequence, store and fan out ``record`` (UNI-DEL offsets).

        Returning means the event is stored, so the caller may ack (UNI-PUB-26); a duplicate
        returns the original event and notifies nobody (UNI-PUB-21).
        """
        if self._closed:
            raise RuntimeError("broker is closed")
        now = self._clock()
        dedup_key = (record.key, record.dedup_tenant, record.message_id)  # UNI-SEC-11/19
        self._expire_dedup(now)
        seen = self._dedup.get(dedup_key)
        if seen is not None and now < seen[1]:
            # A retry within the window: the ack repeats the original position, nobody is
            # notified again (one delivery per message id).
            return PublishResult(seen[0], duplicate=True)

        channel = self._channel(record.key, now)
        offset = channel.head + 1
        # ts never goes backwards on a channel even if the wall clock does, so "since" replay
        # and age eviction can rely on history being sorted by ts.
        ts = max(now, channel.last_ts)
        frame = self._encode(record, channel.epoch, offset, ts)
        event = StoredEvent(record, channel.epoch, offset, ts, frame)
        channel.head = offset
        channel.last_ts = ts
        channel.history.append(event)
        self._evict(channel, now)
        expires = now + self._dedup_window
        self._dedup[dedup_key] = (event, expires)
        self._dedup_expiry.append((expires, dedup_key))

        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                # One faulty consumer must not cost the others their events or the publisher
                # its ack: the event is already sequenced and stored.
                _log.exception(
                    "event listener failed for %s offset %d", record.key.name, event.offset
                )
        return PublishResult(event, duplicate=False)

    async def find_duplicate(
        self, key: ChannelKey, message_id: str, publisher_tenant: str | None = None
    ) -> StoredEvent | None:
        """The original event of ``message_id`` on ``key`` while its dedup record lives."""
        now = self._clock()
        self._expire_dedup(now)
        seen = self._dedup.get((key, dedup_tenant(key, publisher_tenant), message_id))
        if seen is not None and now < seen[1]:
            return seen[0]
        return None

    def _expire_dedup(self, now: int) -> None:
        expiry = self._dedup_expiry
        while expiry and expiry[0][0] <= now:
            _, key = expiry.popleft()
            entry = self._dedup.get(key)
            if entry is not None and entry[1] <= now:
                del self._dedup[key]

    def _evict(self, channel: _Channel, now: int) -> None:
        while len(channel.history) > self._max_count:
            channel.evict_one()
        oldest_kept = now - self._max_age
        while channel.history and channel.history[0].ts <= oldest_kept:
            channel.evict_one()

    # -- reading ----------------------------------------------------------------------------

    async def head(self, key: ChannelKey) -> Position:
        """The last assigned position; offset 0 for a key never published to.

        Asking holds the key's state (its epoch): an exact subscription announces this
        position, and the first event published later continues the same epoch.
        """
        channel = self._channel(key, self._clock())
        return Position(channel.epoch, channel.head)

    async def replay(self, key: ChannelKey, after: Position) -> Replay:
        """Events in (after.offset, head], or the gap that forbids it (UNI-DEL resume).

        Like :meth:`head`, asking holds the key's state, so that the epoch a gap announces is
        the one the next event continues.
        """
        channel = self._channel(key, self._clock())
        head_offset = channel.head
        head = Position(channel.epoch, head_offset)
        if after.epoch != head.epoch:
            return Replay(head, (), GAP_EPOCH_CHANGED)
        if after.offset > head_offset or after.offset < 0:
            return Replay(head, (), GAP_POSITION_INVALID)
        self._evict(channel, self._clock())
        if after.offset < channel.evicted_offset:
            return Replay(head, (), GAP_WINDOW_EXCEEDED)
        start = after.offset - channel.evicted_offset
        return Replay(head, tuple(islice(channel.history, start, None)), None)

    async def replay_since(self, key: ChannelKey, since_ts: int) -> Replay:
        """Retained events with ts >= since_ts; a gap if an evicted one also qualified, or if
        the state of an earlier epoch with such events was discarded (UNI-SEC-14)."""
        channel = self._channels.get(key)
        if channel is None:
            if key not in self._tombstones.get(_scope_of(key), {}):
                return Replay(Position(self._fresh_epoch(), 0), (), None)
            channel = self._channel(key, self._clock())  # held, as in :meth:`head`
        self._evict(channel, self._clock())
        head = Position(channel.epoch, channel.head)
        if channel.replaced_ts is not None and channel.replaced_ts >= since_ts:
            return Replay(head, (), GAP_EPOCH_CHANGED)
        if channel.evicted_ts is not None and channel.evicted_ts >= since_ts:
            return Replay(head, (), GAP_WINDOW_EXCEEDED)
        return Replay(head, tuple(e for e in channel.history if e.ts >= since_ts), None)

    async def channels(
        self, tenant: str | None, owner: str | None, namespace: str
    ) -> list[ChannelKey]:
        """Keys with retained history in one scope, sorted by name."""
        if namespace not in _NAMESPACES:
            raise ValueError(f"unknown namespace {namespace!r}")
        if namespace == "$sys":
            scope: _Scope = ("$sys", None, None)
        elif namespace == "$me":
            scope = ("$me", tenant, owner)
        else:
            scope = ("tenant", tenant, None)
        now = self._clock()
        found: list[ChannelKey] = []
        for key, channel in self._scopes.get(scope, {}).items():
            self._evict(channel, now)
            if channel.history or channel.replaced_ts is not None:
                found.append(key)
        # Channels whose state was discarded still owe a resume by time their gap.
        found += list(self._tombstones.get(scope, {}))
        found.sort(key=lambda k: k.name)
        return found

    def add_listener(self, listener: EventListener) -> None:
        """Receive every event, synchronously inside ``publish``, in offset order per channel."""
        self._listeners = (*self._listeners, listener)

    def add_loss_listener(self, listener: LossListener) -> None:
        """Never called: listeners get every event inside ``publish``, nothing can be missed."""

    def reachable(self) -> bool:
        """Always: the history lives in this process."""
        return not self._closed

    # -- sessions ---------------------------------------------------------------------------

    async def register_connection(
        self, tenant: str, sub: str, sid: str | None, connection_id: str, max_per_user: int
    ) -> list[str]:
        """Add a connection; return (and announce) the older ones it supersedes.

        Older connections with the same ``sid`` go first (UNI-SESS-6, never without a sid:
        UNI-SESS-7), then the oldest while the user has more than ``max_per_user``
        (UNI-SESS-11, counted after the session rule: UNI-SESS-13). The new connection itself is
        never superseded (UNI-SESS-12).
        """
        entries = [e for e in self._sessions.get((tenant, sub), []) if e[0] != connection_id]
        superseded: list[str] = []
        if sid is not None:
            superseded = [cid for cid, s in entries if s == sid]
            entries = [e for e in entries if e[1] != sid]
        overflow = len(entries) + 1 - max(max_per_user, 1)
        if overflow > 0:
            superseded.extend(cid for cid, _ in entries[:overflow])
            entries = entries[overflow:]
        entries.append((connection_id, sid))
        self._sessions[(tenant, sub)] = entries
        for cid in superseded:
            self._announce_supersede(cid)
        return superseded

    async def unregister_connection(self, tenant: str, sub: str, connection_id: str) -> None:
        """Forget a closed connection; unknown ids are ignored (superseded ones already are)."""
        entries = self._sessions.get((tenant, sub))
        if entries is None:
            return
        remaining = [e for e in entries if e[0] != connection_id]
        if remaining:
            self._sessions[(tenant, sub)] = remaining
        else:
            del self._sessions[(tenant, sub)]

    def add_supersede_listener(self, listener: SupersedeListener) -> None:
        """Receive ids of connections to close with 4001."""
        self._supersede_listeners = (*self._supersede_listeners, listener)

    def _announce_supersede(self, connection_id: str) -> None:
        for listener in self._supersede_listeners:
            try:
                listener(connection_id)
            except Exception:
                _log.exception("supersede listener failed for %s", connection_id)
