"""The Redis broker: several server nodes share channels, history, resume and sessions.

Every operation that must be atomic is one call of ``lua/broker.lua``; a publish in particular
is one round trip that assigns the offset, appends to history, records the dedup key and
appends the event to the fan-out stream that every node tails (see the layout in that file).

Each node reads the fan-out stream once, whatever its number of local subscribers, and frames
each event once: the first of the publish reply and the fan-out entry to arrive encodes the
frame, the other finds it in a small cache, and so does replay. Listeners are called only from
the fan-out stream, in its order, so events reach them in offset order per channel (UNI-DEL-14)
whichever node sequenced them.

A fan-out stream can be read again after a lost connection, unlike Redis pub/sub, so a node that
was cut off catches up on what it missed; if Redis trimmed entries before the node read them,
the loss listeners are told, and the server asks its clients to reconnect and resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any, Final

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from unisock.broker import (
    BrokerUnavailable,
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
from unisock.redis_keys import (
    KeyLayout,
    channel_id,
    decode_record,
    encode_record,
    parse_channel_id,
    scope_id,
    scope_of,
)
from unisock.retention import sweep_interval_ms
from unisock.skew import ClockSkew

__all__ = ["DEFAULT_PREFIX", "RedisBroker"]

_log = logging.getLogger(__name__)

DEFAULT_PREFIX: Final = "unisock:"
_LUA: Final = resources.files("unisock").joinpath("lua/broker.lua").read_text(encoding="utf-8")
_BLOCK_MS: Final = 1000
"""How long one fan-out read waits for entries; also how often reachability is re-checked."""
_READ_BATCH: Final = 500
_POOL_SIZE: Final = 32
"""Commands in flight to Redis from one node at most; more wait for a connection."""
_PUBLISH_BATCH: Final = 256
"""Publishes sent in one pipeline at most."""
_POOL_WAIT_S: Final = 5.0
"""How long a command may wait for a free connection during a burst before it fails."""
_SCRIPT_SLOTS: Final = _POOL_SIZE - 4
"""Script calls in flight at most: the pool keeps a few connections for liveness beats and
unregistering, so that a burst of publishes never delays the beat that keeps sessions."""
_SWEEP_BATCH: Final = 1000
_SWEEP_ROUNDS: Final = 20
"""Idle channels one sweep looks at, at most, per round and in all (the oldest first)."""
_HISTORY_GRACE_MS: Final = 60_000
"""An idle channel's history key outlives its age window by this much, then Redis drops it."""
_USER_TTL_MS: Final = 7 * 24 * 3600 * 1000
"""A user's connection list is dropped after a week without a new connection of that user."""
_NAMESPACES: Final = frozenset({"tenant", "$me", "$sys"})
_EXPIRED: Final = "UNISOCK expired"
_SHA: Final = hashlib.sha1(_LUA.encode(), usedforsecurity=False).hexdigest()
_Cached = tuple[str, str, int]


def _candidate() -> str:
    """A fresh generation name; 64 random bits make a repeat across restarts negligible."""
    return "r-" + os.urandom(8).hex()


def _default_encoder() -> FrameEncoder:
    from unisock.messages import encode_event_frame

    return encode_event_frame


def _settle(batch: Sequence[tuple[PublishRecord, asyncio.Future[Any]]], error: Exception) -> None:
    """Fail the publishes of ``batch`` that have no outcome yet."""
    for _, future in batch:
        if not future.done():
            future.set_exception(error)


def _reply_or_error(reply: Any) -> Any:
    """One pipelined script reply as :meth:`RedisBroker._script` would have judged it."""
    if isinstance(reply, NoScriptError):
        # Redis learnt the script again midway through the batch: the calls before that
        # moment were not applied, and those after were, so a retry would reorder them.
        return BrokerUnavailable("redis: script cache lost during a batch")
    if isinstance(reply, ResponseError) and str(reply).startswith(_EXPIRED):
        return BrokerUnavailable("redis: publish reached redis too late")  # UNI-ERR-6
    return reply


def _split_id(entry_id: str) -> tuple[int, int]:
    ts, offset = entry_id.split("-")
    return int(ts), int(offset)


class RedisBroker:
    """A :class:`~unisock.broker.Broker` on Redis (7.0 or newer, one primary).

    ``clock`` defaults to Redis's own clock, so every node stamps ``ts`` and ages history by one
    clock; tests inject a manual one.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        history_max_count: int = 1000,
        history_max_age_ms: int = 300_000,
        dedup_window_ms: int = 120_000,
        clock: Callable[[], int] | None = None,
        encode_frame: FrameEncoder | None = None,
        fanout_max_len: int = 100_000,
        node_ttl_ms: int = 10_000,
        timeout_ms: int = 2_000,
        event_cache_size: int = 10_000,
    ) -> None:
        if history_max_count < 0 or history_max_age_ms < 0 or dedup_window_ms < 0:
            raise ValueError("history and dedup limits must not be negative")
        if not prefix:
            raise ValueError("the key prefix must not be empty")
        self.url = url
        self.keys = KeyLayout(prefix)
        self.node_id = uuid.uuid4().hex[:16]
        self._max_count = history_max_count
        self._max_age = history_max_age_ms
        self._discard_grace = 2 * sweep_interval_ms(history_max_age_ms)
        self._dedup_window = dedup_window_ms
        self._clock = clock
        self._encode = encode_frame if encode_frame is not None else _default_encoder()
        self._fanout_max = fanout_max_len
        self._node_ttl = node_ttl_ms
        self._timeout_s = timeout_ms / 1000
        self._sha = _SHA
        self._cache_size = event_cache_size
        self._events: dict[_Cached, StoredEvent] = {}
        self._listeners: tuple[EventListener, ...] = ()
        self._supersede_listeners: tuple[SupersedeListener, ...] = ()
        self._loss_listeners: tuple[LossListener, ...] = ()
        # connection -> (tenant, sub, sid, stamp): what restores it should Redis lose it
        self._local: dict[str, tuple[str, str, str, str]] = {}
        self._caps: dict[str, int] = {}  # connection -> the per-user cap it registered under
        self._restore_pending = False
        self._unregistered: dict[str, int] = {}  # connection -> cap, registration to retry
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(_SCRIPT_SLOTS)
        self._outbox: list[tuple[PublishRecord, asyncio.Future[PublishResult]]] = []
        self._sender: asyncio.Task[None] | None = None
        self._cmd: Redis | None = None
        self._tail: Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_id: str | None = None
        self._skew = ClockSkew()  # Redis clock minus this node's, measured with TIME
        self._tail_id: int | None = None  # Redis client id of the fan-out reader's connection
        self._position: tuple[str, int] | None = None  # (generation, sequence) last read
        self._reachable = False
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------

    def _client(self, timeout_s: float, *, connections: int) -> Redis:
        # A bounded pool that waits for a free connection: a thousand clients subscribing at
        # once queue for Redis instead of failing (Redis runs one command at a time anyway).
        # One retry on a broken connection (a restarted Redis leaves dead pooled ones); a
        # retried publish that had in fact been applied comes back as a duplicate.
        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=connections,
            timeout=max(self._timeout_s, _POOL_WAIT_S),
            decode_responses=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=self._timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        client: Redis = Redis.from_pool(pool)
        return client

    async def start(self) -> None:
        """Connect, then tail the fan-out stream from its current end.

        A Redis that cannot be reached yet does not stop the node: it serves ``unavailable``
        until Redis answers, then carries on by itself.
        """
        self._cmd = self._client(self._timeout_s, connections=_POOL_SIZE)
        self._tail = self._client(self._timeout_s + _BLOCK_MS / 1000, connections=1)
        try:
            await self._heartbeat()
            # The first round trip also opened the connection: a few more bound the offset.
            await self._measure_skew(4)
            await self._baseline()
            self._answered()
        except (RedisError, OSError) as error:
            self._unreachable(error)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read_loop()), loop.create_task(self._liveness())]

    async def close(self) -> None:
        """Stop reading; listeners are never called afterwards."""
        self._closed = True
        _settle(self._outbox, RuntimeError("broker is closed"))
        self._outbox.clear()
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sender
        for task in self._tasks:
            task.cancel()
        if self._cmd is not None and self._tail_id is not None:
            # redis-py lets a blocked read run to its end despite the cancel; Redis ends it now.
            with contextlib.suppress(RedisError, OSError):
                await asyncio.wait_for(self._cmd.client_unblock(self._tail_id), 1.0)
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._cmd is not None:
            with contextlib.suppress(RedisError, OSError):
                await asyncio.wait_for(self._cmd.delete(self.keys.node(self.node_id)), 1.0)
            await self._cmd.aclose()
        if self._tail is not None:
            await self._tail.aclose()

    def reachable(self) -> bool:
        """Whether Redis answered the last command or fan-out read (health endpoint)."""
        return self._reachable and not self._closed

    def _unreachable(self, error: BaseException) -> None:
        if self._reachable:
            _log.warning("redis unreachable: %s", type(error).__name__)
        self._reachable = False

    def _answered(self) -> None:
        if not self._reachable:
            _log.info("redis reachable")
        self._reachable = True

    # -- the script -------------------------------------------------------------------------

    def _now(self) -> str:
        return "-1" if self._clock is None else str(self._clock())

    async def _call(self, op: str, keys: list[str], *args: str | int) -> Any:
        """One script call, waiting for a free slot (publishes go by :meth:`_pipelined`)."""
        if self._closed or self._cmd is None:
            raise RuntimeError("broker is closed")
        try:
            async with asyncio.timeout(_POOL_WAIT_S):
                await self._slots.acquire()
        except TimeoutError:
            # Redis answers, this node just has more to ask than connections: not an outage.
            raise BrokerUnavailable("redis: every connection busy") from None
        try:
            return await self._script(op, keys, args)
        finally:
            self._slots.release()

    async def _script(self, op: str, keys: list[str], args: tuple[str | int, ...]) -> Any:
        assert self._cmd is not None
        every = [self.keys.generation, *keys]
        argv = [op, self._now(), _candidate(), *args]
        try:
            try:
                reply = await self._cmd.evalsha(self._sha, len(every), *every, *argv)
            except NoScriptError:
                # A restarted Redis forgot the script: EVAL sends it along and caches it again.
                reply = await self._cmd.eval(_LUA, len(every), *every, *argv)
        except (RedisConnectionError, RedisTimeoutError, OSError) as error:
            self._unreachable(error)
            raise BrokerUnavailable(f"redis: {type(error).__name__}") from error
        self._answered()
        return reply

    def _deadline(self) -> int:
        """Redis time after which a publish sent now must not be applied: half the command
        timeout from now, so the script refuses it before this node gives up and answers
        ``unavailable`` (a publish stuck in a frozen Redis never lands late)."""
        now_ms = time.time_ns() / 1e6 + self._skew.offset_ms
        return int(now_ms) + int(self._timeout_s * 500)

    def _channel_keys(self, cid: str) -> list[str]:
        return [self.keys.meta(cid), self.keys.history(cid)]

    def _held_keys(self, key: ChannelKey, cid: str) -> list[str]:
        """The keys of an operation that holds the channel's state, making it if need be."""
        return [*self._channel_keys(cid), self.keys.idle, self.keys.tombstones(scope_of(key))]

    # -- events and the frame cache ---------------------------------------------------------

    def _event(
        self,
        cid: str,
        key: ChannelKey,
        record: PublishRecord | str,
        epoch: str,
        offset: int,
        ts: int,
    ) -> StoredEvent:
        """The one :class:`StoredEvent` of (channel, epoch, offset) on this node: encoded once."""
        cache_key = (cid, epoch, offset)
        event = self._events.get(cache_key)
        if event is not None:
            return event
        if isinstance(record, str):
            record = decode_record(key, record)
        event = StoredEvent(record, epoch, offset, ts, self._encode(record, epoch, offset, ts))
        events = self._events
        events[cache_key] = event
        if len(events) > self._cache_size:
            del events[next(iter(events))]  # oldest first: replay mostly wants recent events
        return event

    def _entries(self, cid: str, key: ChannelKey, epoch: str, entries: Any) -> list[StoredEvent]:
        events = []
        for entry_id, fields in entries:
            ts, offset = _split_id(entry_id)
            events.append(self._event(cid, key, fields[1], epoch, offset, ts))
        return events

    # -- publishing -------------------------------------------------------------------------

    async def publish(self, record: PublishRecord) -> PublishResult:
        """Sequence, store, dedup and announce ``record`` in one script call (UNI-PUB-26).

        Returning means Redis applied it, so the caller may ack; listeners hear of it from the
        fan-out stream, on every node alike. Publishes are queued as they start and sent
        together, in that order, on one connection (see :meth:`_send_publishes`), so Redis
        applies them in the order they started.
        """
        if self._closed or self._cmd is None:
            raise RuntimeError("broker is closed")
        future: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()
        self._outbox.append((record, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_publishes())
        return await future

    async def _send_publishes(self) -> None:
        """Send what is queued as one pipeline, wait for its replies, repeat while more came.

        One batch at a time: a second one on another connection could reach Redis first. A
        burst thus costs a round trip per batch rather than per publish, and its fan-out
        entries reach every node's reader together.
        """
        try:
            while self._outbox:
                batch = self._outbox[:_PUBLISH_BATCH]
                del self._outbox[:_PUBLISH_BATCH]
                waiting = [(record, future) for record, future in batch if not future.done()]
                if not waiting:
                    continue
                try:
                    await self._publish_batch(waiting)
                finally:
                    # Cancelled as the broker closes: nobody waits for an answer never coming.
                    _settle(waiting, BrokerUnavailable("redis: broker closed"))
        finally:
            self._sender = None

    async def _publish_batch(self, batch: list[tuple[PublishRecord, asyncio.Future[Any]]]) -> None:
        try:
            async with asyncio.timeout(_POOL_WAIT_S):
                await self._slots.acquire()
        except TimeoutError:
            # Redis answers, this node just has more to ask than connections: not an outage.
            _settle(batch, BrokerUnavailable("redis: every connection busy"))
            return
        try:
            replies = await self._pipelined([self._publish_call(record) for record, _ in batch])
            for (record, future), reply in zip(batch, replies, strict=True):
                if future.done():
                    continue
                if isinstance(reply, BaseException):
                    future.set_exception(reply)
                else:
                    future.set_result(self._published(record, reply))
        except Exception as error:
            # BrokerUnavailable, or a defect that every caller reports as internal_error.
            _settle(batch, error)
        finally:
            self._slots.release()

    def _publish_call(self, record: PublishRecord) -> tuple[list[str], list[str | int]]:
        key = record.key
        cid = channel_id(key)
        keys = [
            self.keys.generation,
            *self._channel_keys(cid),
            self.keys.dedup(cid, record.message_id, record.dedup_tenant),
            self.keys.sequence,
            self.keys.fanout,
            self.keys.scope(scope_of(key)),
            self.keys.idle,
            self.keys.tombstones(scope_of(key)),
        ]
        argv: list[str | int] = [
            "publish",
            self._now(),
            _candidate(),
            encode_record(record),
            self._max_count,
            self._max_age,
            self._dedup_window,
            self._fanout_max,
            cid,
            self._max_age + _HISTORY_GRACE_MS,
        ]
        return keys, argv

    async def _pipelined(
        self, calls: list[tuple[list[str], list[str | int]]], *, loaded: bool = False
    ) -> list[Any]:
        """Script calls in one round trip, in order; each reply, or the error of that call.

        The deadline is taken now, when the connection is this batch's.
        """
        assert self._cmd is not None
        deadline = self._deadline()
        pipe = self._cmd.pipeline(transaction=False)
        for keys, argv in calls:
            pipe.evalsha(self._sha, len(keys), *keys, *argv, deadline)
        try:
            replies: list[Any] = await pipe.execute(raise_on_error=False)
            missing = [isinstance(reply, NoScriptError) for reply in replies]
            if any(missing) and not loaded:
                # A restarted Redis forgot the script. Calls from the first that missed it on
                # were not applied, unless Redis learnt the script again meanwhile.
                first = missing.index(True)
                await self._cmd.script_load(_LUA)
                if all(missing[first:]):
                    retried = await self._pipelined(calls[first:], loaded=True)
                    return replies[:first] + retried
        except (RedisConnectionError, RedisTimeoutError, OSError) as error:
            self._unreachable(error)
            raise BrokerUnavailable(f"redis: {type(error).__name__}") from error
        self._answered()
        return [_reply_or_error(reply) for reply in replies]

    def _published(self, record: PublishRecord, reply: Any) -> PublishResult:
        key = record.key
        cid = channel_id(key)
        duplicate, epoch, offset, ts = bool(reply[0]), str(reply[1]), int(reply[2]), int(reply[3])
        if duplicate:
            # The original record when history still holds it; else this retry's, which has the
            # same channel and message id, all that the ack repeats (UNI-PUB-21).
            original = reply[4] if len(reply) > 4 and reply[4] else record
            return PublishResult(self._event(cid, key, original, epoch, offset, ts), True)
        return PublishResult(self._event(cid, key, record, epoch, offset, ts), False)

    async def find_duplicate(
        self, key: ChannelKey, message_id: str, publisher_tenant: str | None = None
    ) -> StoredEvent | None:
        """The event an earlier publish of ``message_id`` sequenced, inside the dedup window."""
        cid = channel_id(key)
        dedup = self.keys.dedup(cid, message_id, dedup_tenant(key, publisher_tenant))
        reply = await self._call("find", [*self._channel_keys(cid), dedup])
        if not reply:
            return None
        if not reply[4]:
            return None  # the original left history: nothing to repeat but the position
        return self._event(cid, key, reply[4], str(reply[1]), int(reply[2]), int(reply[3]))

    # -- reading ----------------------------------------------------------------------------

    async def head(self, key: ChannelKey) -> Position:
        """The last assigned position; a channel without events is at offset 0 of the current
        generation, which is the epoch its first event will carry."""
        cid = channel_id(key)
        reply = await self._call("head", self._held_keys(key, cid), cid)
        return Position(str(reply[0]), int(reply[1]))

    async def replay(self, key: ChannelKey, after: Position) -> Replay:
        """Events in (after.offset, head], or the gap that forbids it (UNI-DEL-15)."""
        cid = channel_id(key)
        reply = await self._call(
            "replay",
            self._held_keys(key, cid),
            after.epoch,
            after.offset,
            self._max_count,
            self._max_age,
            cid,
        )
        epoch, head = str(reply[0]), Position(str(reply[0]), int(reply[1]))
        if reply[2]:
            return Replay(head, (), str(reply[2]))
        events = self._entries(cid, key, epoch, reversed(reply[3]))
        return Replay(head, tuple(events), None)

    async def replay_since(self, key: ChannelKey, since_ts: int) -> Replay:
        """Retained events with ts >= since_ts, or ``window_exceeded`` if one was evicted."""
        cid = channel_id(key)
        reply = await self._call(
            "since", self._held_keys(key, cid), since_ts, self._max_count, self._max_age, cid
        )
        epoch, head = str(reply[0]), Position(str(reply[0]), int(reply[1]))
        if reply[2]:
            return Replay(head, (), str(reply[2]))
        return Replay(head, tuple(self._entries(cid, key, epoch, reply[3])), None)

    async def channels(
        self, tenant: str | None, owner: str | None, namespace: str
    ) -> list[ChannelKey]:
        """Channels of one scope with retained history or discarded state, sorted by name."""
        if namespace not in _NAMESPACES:
            raise ValueError(f"unknown namespace {namespace!r}")
        sid = scope_id(tenant, owner, namespace)
        reply = await self._call(
            "channels",
            [self.keys.scope(sid), self.keys.tombstones(sid)],
            self._max_age,
            self._max_count,
            self.keys.prefix,
        )
        found = [parse_channel_id(str(cid)) for cid in reply]
        found.sort(key=lambda k: k.name)
        return found

    async def discard_idle(self, in_use: Callable[[ChannelKey], bool]) -> int:
        """Discard the state of channels idle for longer than the history's age bound and not
        ``in_use`` on any node (UNI-SEC-14); return how many this call discarded.

        Every node's sweep marks the idle channels its own subscriptions match as active, and
        a channel goes only once it stayed idle for a grace of two sweep intervals longer, so
        that each node had its turn. One that had events leaves a tombstone (its name and last
        ts): a resume by time reports the loss, and its next state gets a new epoch.
        """
        total = 0
        for _ in range(_SWEEP_ROUNDS):
            candidates = await self._call("idle", [self.keys.idle], self._max_age, _SWEEP_BATCH)
            if not candidates:
                break
            used = [cid for cid in candidates if in_use(parse_channel_id(str(cid)))]
            unused = [cid for cid in candidates if cid not in used]
            count = int(
                await self._call(
                    "discard",
                    [self.keys.idle],
                    self._max_age,
                    self._discard_grace,
                    self.keys.prefix,
                    len(used),
                    *used,
                    *unused,
                )
            )
            total += count
            if count == 0 or len(candidates) < _SWEEP_BATCH:
                break
        if total:
            _log.info("discarded the state of %d idle channels", total)
        return total

    def add_listener(self, listener: EventListener) -> None:
        """Receive every event of every node, in fan-out order (offset order per channel)."""
        self._listeners = (*self._listeners, listener)

    def add_loss_listener(self, listener: LossListener) -> None:
        """Be told when this node may have missed events that Redis no longer holds for it."""
        self._loss_listeners = (*self._loss_listeners, listener)

    # -- the fan-out stream -----------------------------------------------------------------

    async def _baseline(self) -> None:
        """Start reading after the newest fan-out entry: a starting node has no subscribers."""
        assert self._cmd is not None
        newest: Any = await self._cmd.xrevrange(self.keys.fanout, "+", "-", count=1)
        if newest:
            entry_id, fields = newest[0]
            self._last_id = entry_id
            generation, sequence = self._sequence(fields)
            self._position = (generation, sequence)
        else:
            self._last_id = "0-0"
            self._position = None

    async def _read_loop(self) -> None:
        delay = 0.05
        while not self._closed:
            try:
                assert self._tail is not None
                if self._last_id is None:
                    await self._baseline()
                if self._tail_id is None:
                    self._tail_id = int(await self._tail.client_id())
                assert self._last_id is not None
                reply: Any = await self._tail.xread(
                    {self.keys.fanout: self._last_id}, count=_READ_BATCH, block=_BLOCK_MS
                )
            except (RedisError, OSError) as error:
                self._unreachable(error)
                self._tail_id = None  # a new connection, a new id
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.05
            self._answered()
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    if self._closed:
                        return
                    self._last_id = entry_id
                    self._dispatch(fields)

    @staticmethod
    def _sequence(fields: dict[str, str]) -> tuple[str, int]:
        parts = fields["p"].split(" ")
        return parts[1], int(parts[0])

    def _dispatch(self, fields: dict[str, str]) -> None:
        parts = fields["p"].split(" ")
        sequence, generation = int(parts[0]), parts[1]
        position = self._position
        if position is not None and position[0] == generation and sequence != position[1] + 1:
            # Entries between were trimmed before this node read them (it was cut off for
            # longer than the stream keeps): some events never reached local subscribers.
            _log.error("fan-out entries lost: %d to %d", position[1] + 1, sequence - 1)
            self._notify_loss()
        self._position = (generation, sequence)
        superseded = fields.get("s")
        if superseded is not None:
            for connection_id in superseded.split(" "):
                self._notify_supersede(connection_id)
            return
        cid = fields["k"]
        key = parse_channel_id(cid)
        epoch = parts[4] if len(parts) > 4 else generation
        event = self._event(cid, key, fields["r"], epoch, int(parts[2]), int(parts[3]))
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                _log.exception("event listener failed for %s offset %d", key.name, event.offset)

    def _notify_loss(self) -> None:
        for listener in self._loss_listeners:
            try:
                listener()
            except Exception:
                _log.exception("loss listener failed")

    def _notify_supersede(self, connection_id: str) -> None:
        for listener in self._supersede_listeners:
            try:
                listener(connection_id)
            except Exception:
                _log.exception("supersede listener failed for %s", connection_id)

    # -- sessions ---------------------------------------------------------------------------

    async def _heartbeat(self) -> bool:
        """Renew this node's liveness key and measure the clock skew to Redis; ``False`` when
        the key had expired (or Redis lost it)."""
        assert self._cmd is not None
        await self._measure_skew()
        previous = await self._cmd.set(
            self.keys.node(self.node_id), "1", px=self._node_ttl, get=True
        )
        return previous is not None

    async def _measure_skew(self, samples: int = 1) -> None:
        assert self._cmd is not None
        for _ in range(samples):
            sent = time.time_ns() / 1e6
            seconds, micros = await self._cmd.time()
            self._skew.sample(sent, seconds * 1000 + micros / 1000, time.time_ns() / 1e6)

    async def _liveness(self) -> None:
        """Keep this node's connections counted (UNI-SESS-14); restore them after an outage.

        Nothing but closing ends this loop: were it to stop, this node's connections would
        silently stop counting on every other node once its key expired.
        """
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._node_ttl / 3000)
            self._wake.clear()
            if self._closed:
                return
            try:
                await self.renew()
            except (BrokerUnavailable, RedisError, OSError) as error:
                self._unreachable(error)
            except Exception:
                _log.exception("renewing this node's registrations failed")

    async def renew(self) -> None:
        """Renew this node's liveness now; when Redis lost it (restarted, flushed, or this node
        was cut off past its key's expiry), register this node's connections again.

        A restore that fails is tried again on the next beat, whatever the key says by then.
        """
        if not await self._heartbeat():
            self._restore_pending = True
        if self._restore_pending:
            if self._local:
                _log.warning("node registration had lapsed; restoring %d", len(self._local))
            for connection_id in list(self._local):
                await self._register_again(connection_id, restore=True)
            self._restore_pending = False
        for connection_id in list(self._unregistered):
            await self._register_again(connection_id, restore=False)
        self._answered()

    async def _register_again(self, connection_id: str, *, restore: bool) -> None:
        """Register a connection of this node with the stamp it authenticated with: a restore
        (Redis lost it) or the registration that failed then (counted against the cap now)."""
        known = self._local.get(connection_id)
        if known is None:
            self._unregistered.pop(connection_id, None)
            return  # closed meanwhile
        tenant, sub, sid, stamp = known
        if restore and connection_id in self._unregistered:
            return  # never registered: registered as new below
        cap = self._caps.get(connection_id, 1)
        _, kept, _ = await self._register(tenant, sub, sid, connection_id, cap, stamp=stamp)
        self._unregistered.pop(connection_id, None)
        if connection_id in self._local:
            self._local[connection_id] = (tenant, sub, sid, kept)
        else:
            # It closed while being registered: take back what the script wrote.
            await self._forget(tenant, sub, connection_id, sid, kept)

    async def _register(
        self,
        tenant: str,
        sub: str,
        sid: str,
        connection_id: str,
        cap: int,
        *,
        stamp: str | None,
    ) -> tuple[bool, str, list[str]]:
        """One registration or restore of a connection authenticated at ``stamp`` (Redis time in
        microseconds; None: now); returns whether this node's key had lapsed, the stamp
        Redis kept, and the connections it supersedes."""
        reply = await self._call(
            "register",
            [self.keys.user(tenant, sub), self.keys.sequence, self.keys.fanout],
            connection_id,
            self.node_id,
            sid,
            cap,
            self.keys.node_prefix,
            _USER_TTL_MS,
            self._fanout_max,
            self._node_ttl,
            "-1" if stamp is None else stamp,
        )
        return bool(reply[0]), str(reply[1]), [str(cid) for cid in reply[2:]]

    async def register_connection(
        self, tenant: str, sub: str, sid: str | None, connection_id: str, max_per_user: int
    ) -> list[str]:
        """Append the connection to the user's list in Redis, in one script call, and return
        the connections it supersedes (UNI-SESS-6, -11, -13, -14); every node hears of them
        through the fan-out stream and closes those it holds."""
        encoded = "" if sid is None else "=" + sid
        # Authentication order decides which connection is the newer or the oldest, whatever
        # order the registrations of several nodes reach Redis in: Redis time, as this node
        # estimates it, now (Redis takes its own time if that is earlier).
        authenticated = str(int(time.time_ns() / 1000 + self._skew.offset_ms * 1000))
        self._caps[connection_id] = max_per_user
        try:
            lapsed, stamp, superseded = await self._register(
                tenant, sub, encoded, connection_id, max_per_user, stamp=authenticated
            )
        except BrokerUnavailable:
            # Redis did not answer: the connection is served all the same (UNI-ERR-16) and
            # registered at the next beat that reaches Redis, with the time it authenticated,
            # so that the session rule and the cap apply to it after all (UNI-SESS-14).
            self._local[connection_id] = (tenant, sub, encoded, authenticated)
            self._unregistered[connection_id] = max_per_user
            raise
        self._local[connection_id] = (tenant, sub, encoded, stamp)
        if lapsed:
            # Redis lost this node's key: its other connections are to be registered again.
            self._restore_pending = True
            self._wake.set()
        return superseded

    async def unregister_connection(self, tenant: str, sub: str, connection_id: str) -> None:
        """Forget a closed connection of this node; unknown ids are ignored."""
        known = self._local.pop(connection_id, None)
        self._unregistered.pop(connection_id, None)
        self._caps.pop(connection_id, None)
        if known is None or self._cmd is None:
            return
        await self._forget(known[0], known[1], connection_id, known[2], known[3])

    async def _forget(
        self, tenant: str, sub: str, connection_id: str, sid: str, stamp: str
    ) -> None:
        assert self._cmd is not None
        entry = f"{connection_id}\t{self.node_id}\t{stamp}\t{sid}"
        await self._cmd.lrem(self.keys.user(tenant, sub), 0, entry)

    def add_supersede_listener(self, listener: SupersedeListener) -> None:
        """Receive ids of connections to close with 4001, from every node's registrations."""
        self._supersede_listeners = (*self._supersede_listeners, listener)

    # -- operations -------------------------------------------------------------------------

    async def reset(self) -> str:
        """Discard every channel's history and offsets under a new epoch (UNI-DEL-8)."""
        reply = await self._call("reset", [])
        _log.info("history reset; new epoch %s", reply)
        return str(reply)
