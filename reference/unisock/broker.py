"""The broker interface: sequencing, history, dedup, fan-out and sessions across nodes.

The session core never talks to a store directly; it hands a :class:`PublishRecord` to a
:class:`Broker` and receives :class:`StoredEvent` objects back through listeners. Keeping the
shared types here (and nothing else) lets the in-memory broker, the Redis broker and the session
core agree on one vocabulary without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

__all__ = [
    "GAP_EPOCH_CHANGED",
    "GAP_POSITION_INVALID",
    "GAP_REASONS",
    "GAP_WINDOW_EXCEEDED",
    "AttrValue",
    "Broker",
    "BrokerUnavailable",
    "ChannelKey",
    "EventListener",
    "FrameEncoder",
    "LossListener",
    "Position",
    "PublishRecord",
    "PublishResult",
    "Replay",
    "StoredEvent",
    "SupersedeListener",
    "dedup_tenant",
]

#: The gap reasons a replay can report (UNI-DEL resume rules); they are the wire values verbatim.
GAP_EPOCH_CHANGED: Final = "epoch_changed"
GAP_WINDOW_EXCEEDED: Final = "window_exceeded"
GAP_POSITION_INVALID: Final = "position_invalid"
GAP_REASONS: Final = frozenset({GAP_EPOCH_CHANGED, GAP_WINDOW_EXCEEDED, GAP_POSITION_INVALID})

AttrValue = str | int | float | bool | None


class BrokerUnavailable(Exception):
    """The backing store did not answer (in time); the operation took no effect.

    Servers answer ``unavailable`` (UNI-ERR-11) and log it without a stack trace: an outage
    is an operational state, not a defect.
    """


def _is_sys(name: str) -> bool:
    return name.startswith("$sys.")


def _is_me(name: str) -> bool:
    return name == "$me" or name.startswith("$me.")


@dataclass(frozen=True, slots=True)
class ChannelKey:
    """Where offsets live: (tenant, channel) / (tenant, owner, $me channel) / ($sys channel).

    Offsets are per tenant (UNI-CH tenancy), per owner for ``$me`` and global for ``$sys``
    (UNI-DEL offsets); making the key carry exactly those parts means two tenants can never share
    an offset space, even when their channel names are equal.
    """

    tenant: str | None  # None only for $sys channels
    owner: str | None  # the owning sub for $me channels, else None
    name: str  # the channel name as written on the wire ("tasks.42", "$me.inbox", "$sys.maint")

    def __post_init__(self) -> None:
        # A key that mixes scopes would silently merge or split offset spaces; refuse it early.
        if _is_sys(self.name) != (self.tenant is None):
            raise ValueError(f"tenant must be None exactly for $sys channels: {self!r}")
        if _is_me(self.name) != (self.owner is not None):
            raise ValueError(f"owner must be set exactly for $me channels: {self!r}")


@dataclass(frozen=True, slots=True)
class Position:
    """A point in a channel's sequence; the epoch changes whenever the sequence was reset."""

    epoch: str
    offset: int  # last assigned offset; 0 = nothing yet


@dataclass(frozen=True, slots=True)
class PublishRecord:
    """What a publisher asks to sequence: everything the delivery predicate and frame need."""

    key: ChannelKey
    event_type: str
    data: Any  # JSON value
    message_id: str
    attrs: Mapping[str, AttrValue] | None
    """``None`` when the publish carried no ``attrs``; ``{}`` is copied as ``{}`` (UNI-PUB-14)."""
    to: frozenset[str] | None
    exclude: frozenset[str] | None
    exclude_self: bool
    coalesce_key: str | None
    publisher_sub: str
    publisher_connection: str
    publisher_tenant: str | None = None
    """The publisher's tenant; on ``$sys`` it scopes the dedup record (UNI-SEC-19)."""

    @property
    def dedup_tenant(self) -> str | None:
        """The tenant part of the dedup scope beyond the offset scope (see :func:`dedup_tenant`)."""
        return dedup_tenant(self.key, self.publisher_tenant)


def dedup_tenant(key: ChannelKey, publisher_tenant: str | None) -> str | None:
    """``publisher_tenant`` on a ``$sys`` channel, else None (the key already has the tenant).

    A ``$sys`` channel shares its offsets across tenants but not its dedup records: a shared
    record would tell one tenant's broadcaster of another's message ids, and let it turn
    another tenant's publish into a duplicate of its own event (UNI-SEC-19).
    """
    return publisher_tenant if key.tenant is None else None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """A sequenced event, as kept in history and fanned out.

    ``frame`` is encoded once at sequencing so every recipient (and every replay) gets identical
    bytes without re-serialising per connection (encode once per fan-out).
    """

    record: PublishRecord
    epoch: str
    offset: int
    ts: int  # ms since the Unix epoch, non-decreasing per channel
    frame: str  # the encoded `event` wire frame

    @property
    def position(self) -> Position:
        """The position a client reports after receiving this event."""
        return Position(self.epoch, self.offset)


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Outcome of a publish; a duplicate carries the original event so the ack repeats it."""

    event: StoredEvent  # the original event when duplicate
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Replay:
    """History after a position: either events (ascending offsets) or a gap.

    ``head`` is always the current head, so after a gap the caller knows where live delivery
    resumes (UNI-DEL: never silent loss).
    """

    head: Position
    events: tuple[StoredEvent, ...]
    gap: str | None  # None | "epoch_changed" | "window_exceeded" | "position_invalid"


EventListener = Callable[[StoredEvent], None]
SupersedeListener = Callable[[str], None]
LossListener = Callable[[], None]
FrameEncoder = Callable[[PublishRecord, str, int, int], str]


class Broker(Protocol):
    """What every broker offers; the same contract tests run against each implementation."""

    async def start(self) -> None:
        """Connect to the backing store (if any); called once before use."""
        ...

    async def close(self) -> None:
        """Release resources; listeners are not called afterwards."""
        ...

    async def publish(self, record: PublishRecord) -> PublishResult:
        """Sequence, store and fan out one event.

        Assigns contiguous offsets from 1 per :class:`ChannelKey`, stores the event in history
        (count + age window), dedups (tenant, channel, owner, message_id) within the dedup window
        (on ``$sys``: the publisher's tenant, channel and message_id, UNI-SEC-19),
        then hands the event to every listener (all nodes) in offset order per channel. The ack
        may be sent once this returns (UNI-PUB: an ack means sequenced and stored).

        Publishes started without awaiting the earlier ones (the server pipelines a
        connection's burst) are applied in the order they started (UNI-TR-27).
        """
        ...

    async def find_duplicate(
        self, key: ChannelKey, message_id: str, publisher_tenant: str | None = None
    ) -> StoredEvent | None:
        """The event an earlier publish of ``message_id`` on ``key`` sequenced, inside the dedup
        window; ``None`` otherwise. Lets a refused retry still be acknowledged (UNI-PUB-24).
        ``publisher_tenant`` matters on ``$sys`` only (:func:`dedup_tenant`).
        """
        ...

    async def head(self, key: ChannelKey) -> Position:
        """The last assigned position; offset 0 for a channel never published to."""
        ...

    async def replay(self, key: ChannelKey, after: Position) -> Replay:
        """Events with offsets in (after.offset, head], or the gap that prevents it."""
        ...

    async def replay_since(self, key: ChannelKey, since_ts: int) -> Replay:
        """Retained events with ts >= since_ts, or ``window_exceeded`` if some were evicted."""
        ...

    async def channels(
        self, tenant: str | None, owner: str | None, namespace: str
    ) -> list[ChannelKey]:
        """Channels with retained history in that scope (for pattern + since resume).

        ``namespace`` is a ``channels.Namespace`` value: ``"tenant"`` (keys of ``tenant``),
        ``"$me"`` (keys of ``tenant`` owned by ``owner``) or ``"$sys"`` (tenant and owner ignored).
        """
        ...

    def add_listener(self, listener: EventListener) -> None:
        """Receive every sequenced event (from any node), in offset order per channel."""
        ...

    def add_loss_listener(self, listener: LossListener) -> None:
        """Be told when this node may have missed events it can no longer hand to listeners
        (a shared store dropped them before the node read them); never for one process."""
        ...

    def reachable(self) -> bool:
        """Whether the backing store answered recently (the health endpoint reports it)."""
        ...

    async def register_connection(
        self, tenant: str, sub: str, sid: str | None, connection_id: str, max_per_user: int
    ) -> list[str]:
        """Record an open user connection; return the connection ids it supersedes (UNI-SESS)."""
        ...

    async def unregister_connection(self, tenant: str, sub: str, connection_id: str) -> None:
        """Forget a closed connection so it no longer counts against the cap."""
        ...

    def add_supersede_listener(self, listener: SupersedeListener) -> None:
        """Receive connection ids that must be closed with 4001 (they may live on this node)."""
        ...
