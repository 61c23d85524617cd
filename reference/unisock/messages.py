"""Wire messages as frozen dataclasses, the client-message parser and the encoders (UNI-TR).

Every message type is a frozen dataclass that checks its cheap invariants when built; the
parser turns text into one of them or raises one of the :mod:`unisock.errors` request errors
(never anything else). :func:`encode` writes compact JSON. The ``event`` frame has its own
fast path, :func:`encode_event_frame`, used once per sequenced event (encode once per fan-out).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, ClassVar

from jsonschema.exceptions import ValidationError

from unisock import jsonlimits
from unisock._version import PROTOCOL_TOKEN, SPEC_VERSION
from unisock.broker import GAP_REASONS, Position, PublishRecord
from unisock.channels import ChannelError, parse_channel, parse_pattern
from unisock.errors import (
    InvalidChannel,
    InvalidFilter,
    InvalidJson,
    InvalidMessage,
    InvalidPosition,
    MessageInvariantError,
    RequestError,
    UnknownType,
)
from unisock.filters import MAX_NODES, FilterError, compile_filter
from unisock.schemas import SERVER_MESSAGE_TYPES, check_for, validator_for

__all__ = [
    "CLIENT_TYPES",
    "Ack",
    "ClientMessage",
    "Drain",
    "Error",
    "Event",
    "Gap",
    "Hello",
    "Message",
    "Ping",
    "Pong",
    "Publish",
    "Refresh",
    "Refreshed",
    "ServerMessage",
    "SessionInfo",
    "Subscribe",
    "Subscribed",
    "TokenExpiring",
    "Unsubscribe",
    "Unsubscribed",
    "Welcome",
    "add_coalesced",
    "encode",
    "encode_ack",
    "encode_event_frame",
    "parse_client_message",
    "readable_id",
]

_MAX_ID = 64
_MAX_REASON_CHARS = 200
_RETRY_CODES = frozenset({"rate_limited", "unavailable"})
_UNSUBSCRIBE_REASONS = frozenset({"requested", "revoked"})


def _fail(text: str) -> MessageInvariantError:
    return MessageInvariantError(text)


def _check_id(value: object, *, required: bool) -> None:
    """UNI-TR: a request id is a string of 1..64 characters."""
    if value is None and not required:
        return
    if not isinstance(value, str) or not 1 <= len(value) <= _MAX_ID:
        raise _fail("id must be a string of 1..64 characters")


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise _fail(f"{name} must be a non-empty string")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(f"{name} must be an integer >= {minimum}")


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    """Optional fields are omitted when absent, never sent as null."""
    if value is not None:
        out[key] = value


# --- client messages --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """First client message: authenticates with a bearer token (UNI-LC, UNI-AUTH)."""

    TYPE: ClassVar[str] = "hello"
    token: str
    client: Mapping[str, Any] | None = None
    id: str | None = None

    def __post_init__(self) -> None:
        _check_text("token", self.token)
        _check_id(self.id, required=False)

    def __repr__(self) -> str:
        # UNI-SEC: tokens never reach logs, not even through a repr.
        return f"Hello(token=<redacted>, client={self.client!r}, id={self.id!r})"

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE}
        _put(out, "id", self.id)
        out["token"] = self.token
        _put(out, "client", None if self.client is None else dict(self.client))
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Refresh:
    """In-band token refresh (UNI-AUTH)."""

    TYPE: ClassVar[str] = "refresh"
    id: str
    token: str

    def __post_init__(self) -> None:
        _check_id(self.id, required=True)
        _check_text("token", self.token)

    def __repr__(self) -> str:
        return f"Refresh(id={self.id!r}, token=<redacted>)"

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "id": self.id, "token": self.token}


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscribe:
    """Subscribe to a pattern, optionally filtered and resuming (UNI-SUB, UNI-DEL)."""

    TYPE: ClassVar[str] = "subscribe"
    id: str
    channel: str
    filter: Any = None
    from_: Mapping[str, Position] | None = None
    since: int | None = None

    def __post_init__(self) -> None:
        _check_id(self.id, required=True)
        _check_text("channel", self.channel)
        if self.since is not None:
            _check_int("since", self.since, 0)
        for position in (self.from_ or {}).values():
            _check_int("offset", position.offset, 0)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE, "id": self.id, "channel": self.channel}
        _put(out, "filter", self.filter)
        if self.from_ is not None:
            out["from"] = {
                name: {"epoch": pos.epoch, "offset": pos.offset} for name, pos in self.from_.items()
            }
        _put(out, "since", self.since)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Unsubscribe:
    """Remove a subscription by its exact pattern string (UNI-SUB)."""

    TYPE: ClassVar[str] = "unsubscribe"
    id: str
    channel: str

    def __post_init__(self) -> None:
        _check_id(self.id, required=True)
        _check_text("channel", self.channel)

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "id": self.id, "channel": self.channel}


@dataclass(frozen=True, slots=True, kw_only=True)
class Publish:
    """Publish one event to a concrete channel (UNI-PUB)."""

    TYPE: ClassVar[str] = "publish"
    id: str
    channel: str
    event: str
    data: Any
    message_id: str
    attrs: Mapping[str, Any] | None = None
    to: tuple[str, ...] | None = None
    exclude: tuple[str, ...] | None = None
    exclude_self: bool = False
    key: str | None = None
    user: str | None = None

    def __post_init__(self) -> None:
        _check_id(self.id, required=True)
        _check_text("channel", self.channel)
        _check_text("event", self.event)
        _check_text("message_id", self.message_id)
        if not isinstance(self.exclude_self, bool):
            raise _fail("exclude_self must be a boolean")
        for name, targets in (("to", self.to), ("exclude", self.exclude)):
            if targets is not None and not targets:
                raise _fail(f"{name} must list at least one user")

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.TYPE,
            "id": self.id,
            "channel": self.channel,
            "event": self.event,
            "data": self.data,
            "message_id": self.message_id,
        }
        _put(out, "attrs", None if self.attrs is None else dict(self.attrs))
        _put(out, "to", None if self.to is None else list(self.to))
        _put(out, "exclude", None if self.exclude is None else list(self.exclude))
        if self.exclude_self:
            out["exclude_self"] = True
        _put(out, "key", self.key)
        _put(out, "user", self.user)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    """Application-level heartbeat, sent by either side (UNI-HB)."""

    TYPE: ClassVar[str] = "ping"
    id: str | None = None
    nonce: str | None = None

    def __post_init__(self) -> None:
        _check_id(self.id, required=False)
        if self.nonce is not None and (not isinstance(self.nonce, str) or len(self.nonce) > 64):
            raise _fail("nonce must be a string of at most 64 characters")

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE}
        _put(out, "id", self.id)
        _put(out, "nonce", self.nonce)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    """Answer to a ping, echoing its nonce and id (UNI-HB)."""

    TYPE: ClassVar[str] = "pong"
    id: str | None = None
    nonce: str | None = None

    def __post_init__(self) -> None:
        _check_id(self.id, required=False)
        if self.nonce is not None and (not isinstance(self.nonce, str) or len(self.nonce) > 64):
            raise _fail("nonce must be a string of at most 64 characters")

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE}
        _put(out, "id", self.id)
        _put(out, "nonce", self.nonce)
        return out


# --- server messages --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionInfo:
    """The ``session`` object of ``welcome``: identity from the verified token (UNI-AUTH)."""

    tenant: str
    sub: str
    role: str
    expires_at: int
    sid: str | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tenant": self.tenant, "sub": self.sub}
        _put(out, "sid", self.sid)
        out["role"] = self.role
        out["expires_at"] = self.expires_at
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    """Reply to a valid hello; announces every parameter the server enforces (UNI-LC, UNI-LIM).

    ``settings`` holds the announced parameters (see ``ServerConfig.welcome_payload``).
    """

    TYPE: ClassVar[str] = "welcome"
    connection_id: str
    session: SessionInfo
    settings: Mapping[str, Any]
    protocol: str = PROTOCOL_TOKEN
    spec_version: str = SPEC_VERSION

    def __post_init__(self) -> None:
        _check_text("connection_id", self.connection_id)
        if self.protocol != PROTOCOL_TOKEN:
            raise _fail(f"protocol must be {PROTOCOL_TOKEN}")

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.TYPE,
            "protocol": self.protocol,
            "spec_version": self.spec_version,
            "connection_id": self.connection_id,
            "session": self.session.to_wire(),
        }
        out.update(self.settings)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Refreshed:
    TYPE: ClassVar[str] = "refreshed"
    id: str
    expires_at: int

    def __post_init__(self) -> None:
        _check_id(self.id, required=True)
        _check_int("expires_at", self.expires_at, 0)

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "id": self.id, "expires_at": self.expires_at}


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscribed:
    """``position`` is the head, only for a pattern without wildcards (UNI-SUB)."""

    TYPE: ClassVar[str] = "subscribed"
    id: str
    channel: str
    ts: int
    position: Position | None = None

    def __post_init__(self) -> None:
        _check_id(self.id, required=True)
        _check_text("channel", self.channel)
        _check_int("ts", self.ts, 0)
        if self.position is not None:
            _check_int("offset", self.position.offset, 0)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.TYPE,
            "id": self.id,
            "channel": self.channel,
            "ts": self.ts,
        }
        if self.position is not None:
            out["position"] = {"epoch": self.position.epoch, "offset": self.position.offset}
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Unsubscribed:
    """``requested`` answers an unsubscribe; ``revoked`` (no id) follows a refresh (UNI-AUTH)."""

    TYPE: ClassVar[str] = "unsubscribed"
    channel: str
    reason: str
    id: str | None = None

    def __post_init__(self) -> None:
        _check_id(self.id, required=False)
        _check_text("channel", self.channel)
        if self.reason not in _UNSUBSCRIBE_REASONS:
            raise _fail("reason must be 'requested' or 'revoked'")
        if self.reason == "revoked" and self.id is not None:
            raise _fail("a revoked subscription answers no request: no id")

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE}
        _put(out, "id", self.id)
        out["channel"] = self.channel
        out["reason"] = self.reason
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    """An ack means sequenced and stored; a duplicate repeats the original position (UNI-PUB)."""

    TYPE: ClassVar[str] = "ack"
    id: str
    channel: str
    message_id: str
    epoch: str
    offset: int
    duplicate: bool = False

    def __post_init__(self) -> None:
        _check_id(self.id, required=True)
        _check_text("epoch", self.epoch)
        _check_int("offset", self.offset, 1)

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "id": self.id,
            "channel": self.channel,
            "message_id": self.message_id,
            "epoch": self.epoch,
            "offset": self.offset,
            "duplicate": self.duplicate,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """A delivered event. Servers encode it with :func:`encode_event_frame` (same bytes)."""

    TYPE: ClassVar[str] = "event"
    channel: str
    epoch: str
    offset: int
    event: str
    data: Any
    message_id: str
    ts: int
    attrs: Mapping[str, Any] | None = None
    publisher: str | None = None
    coalesced: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _check_text("epoch", self.epoch)
        _check_int("offset", self.offset, 1)
        _check_int("ts", self.ts, 0)
        if self.coalesced is not None:
            # UNI-DEL coalescing: ascending offsets, all before this event's own.
            steps = (*self.coalesced, self.offset)
            if not self.coalesced or any(a >= b for a, b in pairwise(steps)):
                raise _fail("coalesced must list ascending offsets below the event's offset")

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.TYPE,
            "channel": self.channel,
            "epoch": self.epoch,
            "offset": self.offset,
            "event": self.event,
            "data": self.data,
            "message_id": self.message_id,
            "ts": self.ts,
        }
        _put(out, "attrs", None if self.attrs is None else dict(self.attrs))
        _put(out, "publisher", self.publisher)
        _put(out, "coalesced", None if self.coalesced is None else list(self.coalesced))
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Gap:
    """Resume could not replay: the client resyncs from ``offset`` (UNI-DEL: no silent loss)."""

    TYPE: ClassVar[str] = "gap"
    channel: str
    epoch: str
    offset: int
    reason: str

    def __post_init__(self) -> None:
        _check_text("channel", self.channel)
        _check_text("epoch", self.epoch)
        _check_int("offset", self.offset, 0)
        if self.reason not in GAP_REASONS:
            raise _fail(f"reason must be one of {sorted(GAP_REASONS)}")

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "channel": self.channel,
            "epoch": self.epoch,
            "offset": self.offset,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Error:
    """A refused request; the connection survives (UNI-ERR)."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    id: str | None = None
    retry_after_ms: int | None = None
    details: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        _check_id(self.id, required=False)
        _check_text("code", self.code)
        if self.retry_after_ms is not None:
            if self.code not in _RETRY_CODES:
                raise _fail("retry_after_ms is only for rate_limited and unavailable")
            _check_int("retry_after_ms", self.retry_after_ms, 0)
        elif self.code == "rate_limited":
            raise _fail("rate_limited needs retry_after_ms")

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Error:
        """Build from the dict an error class produces (``ReplyError.to_message``)."""
        return cls(
            code=obj["code"],
            message=obj["message"],
            id=obj.get("id"),
            retry_after_ms=obj.get("retry_after_ms"),
            details=obj.get("details"),
        )

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE}
        _put(out, "id", self.id)
        out["code"] = self.code
        out["message"] = self.message
        _put(out, "retry_after_ms", self.retry_after_ms)
        _put(out, "details", None if self.details is None else dict(self.details))
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenExpiring:
    """Sent once per token, ``refresh_warning_ms`` before ``exp`` (UNI-AUTH)."""

    TYPE: ClassVar[str] = "token_expiring"
    expires_at: int

    def __post_init__(self) -> None:
        _check_int("expires_at", self.expires_at, 0)

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "expires_at": self.expires_at}


@dataclass(frozen=True, slots=True, kw_only=True)
class Drain:
    """The node is draining: reconnect at a random time within ``window_ms`` (UNI-CLOSE)."""

    TYPE: ClassVar[str] = "drain"
    window_ms: int
    reason: str | None = None

    def __post_init__(self) -> None:
        _check_int("window_ms", self.window_ms, 0)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE, "window_ms": self.window_ms}
        _put(out, "reason", self.reason)
        return out


ClientMessage = Hello | Refresh | Subscribe | Unsubscribe | Publish | Ping | Pong
ServerMessage = (
    Welcome
    | Refreshed
    | Subscribed
    | Unsubscribed
    | Ack
    | Event
    | Gap
    | Error
    | TokenExpiring
    | Drain
    | Ping
    | Pong
)
Message = ClientMessage | ServerMessage

CLIENT_TYPES = frozenset(
    klass.TYPE for klass in (Hello, Refresh, Subscribe, Unsubscribe, Publish, Ping, Pong)
)


# --- encoding ---------------------------------------------------------------------------------

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def encode(message: Message) -> str:
    """Compact JSON text of ``message``; absent optional fields are omitted."""
    return _dumps(message.to_wire())


def encode_event_frame(record: PublishRecord, epoch: str, offset: int, ts: int) -> str:
    """The ``event`` frame for one sequenced event, built once (encode once per fan-out).

    ``channel`` is the name as written on the wire, so ``$me`` channels keep their ``$me`` form.
    Field order matches :meth:`Event.to_wire`, so both produce identical bytes.
    """
    frame: dict[str, Any] = {
        "type": "event",
        "channel": record.key.name,
        "epoch": epoch,
        "offset": offset,
        "event": record.event_type,
        "data": record.data,
        "message_id": record.message_id,
        "ts": ts,
    }
    if record.attrs is not None:  # UNI-PUB-14: copied when the publish carried it, even {}
        frame["attrs"] = dict(record.attrs)
    frame["publisher"] = record.publisher_sub
    return _dumps(frame)


def encode_ack(
    request_id: str, channel: str, message_id: str, epoch: str, offset: int, duplicate: bool
) -> str:
    """The ``ack`` of one publish, as :func:`encode` writes :class:`Ack` (same bytes).

    Once per publish: the fields come from a parsed publish and the broker's position, which
    satisfy :class:`Ack`'s invariants already, so no message object is built to check them.
    """
    return _dumps(
        {
            "type": "ack",
            "id": request_id,
            "channel": channel,
            "message_id": message_id,
            "epoch": epoch,
            "offset": offset,
            "duplicate": duplicate,
        }
    )


def add_coalesced(frame: str, offsets: tuple[int, ...] | list[int]) -> str:
    """Append ``coalesced`` to an encoded event frame without decoding it (UNI-DEL coalescing)."""
    if not offsets:
        return frame
    return f'{frame[:-1]},"coalesced":[{",".join(str(int(o)) for o in offsets)}]}}'


# --- parsing ----------------------------------------------------------------------------------


def readable_id(obj: Mapping[str, Any]) -> str | None:
    """The message's ``id`` if it is a valid request id, else ``None`` (UNI-ERR echo rule)."""
    value = obj.get("id")
    if isinstance(value, str) and 1 <= len(value) <= _MAX_ID:
        return value
    return None


def _precheck(kind: str, obj: Mapping[str, Any], rid: str | None, max_filter_nodes: int) -> None:
    """Fields with their own error code are checked before the schema (UNI-CH, UNI-SUB).

    The schema would report a bad channel as ``invalid_message``; the spec wants
    ``invalid_channel``, ``invalid_filter`` or ``invalid_position``.
    """
    channel = obj.get("channel")
    if isinstance(channel, str):
        try:
            if kind == "publish":
                try:
                    parse_channel(channel)
                except ChannelError:
                    parse_pattern(channel)
                    raise ChannelError("publish needs a channel name, not a pattern") from None
            elif kind in ("subscribe", "unsubscribe"):
                parse_pattern(channel)
        except ChannelError as exc:
            raise InvalidChannel(str(exc), request_id=rid) from None
    if kind != "subscribe":
        return
    if "filter" in obj:
        try:
            compile_filter(obj["filter"], max_nodes=max_filter_nodes)
        except FilterError as exc:
            pointer = f"/filter{exc.pointer or ''}"  # UNI-SUB-19
            raise InvalidFilter(str(exc), request_id=rid, details={"pointer": pointer}) from None
    positions = obj.get("from")
    if isinstance(positions, dict):
        for name in positions:
            try:
                parse_channel(name)
            except ChannelError as exc:
                raise InvalidPosition(f"from: {exc}", request_id=rid) from None


_OWN_CODE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "channel": str,
    "filter": object,  # any JSON value that is not a valid filter is invalid_filter
    "from": dict,
}


def _has_own_code(obj: Mapping[str, Any], error: ValidationError) -> bool:
    """Whether a schema error concerns a field checked later with its own error code.

    A ``channel`` string, a ``filter`` object and the keys of a ``from`` object are judged by
    ``invalid_channel``, ``invalid_filter`` and ``invalid_position`` (section 1.5 step 5); a
    ``channel`` or ``from`` of the wrong JSON type, or a malformed position value, stays
    ``invalid_message``.
    """
    path = list(error.absolute_path)
    if not path or path[0] not in _OWN_CODE_FIELDS:
        return False
    name = str(path[0])
    if not isinstance(obj.get(name), _OWN_CODE_FIELDS[name]):
        return False
    if name == "from":
        return len(path) == 1 and "propertyNames" in error.schema_path
    return True


def _describe(errors: list[ValidationError]) -> list[str]:
    return sorted({f"{_error_pointer(e) or '/'}: {e.message}" for e in errors})


def _error_pointer(error: ValidationError) -> str:
    return "".join(f"/{str(p).replace('~', '~0').replace('/', '~1')}" for p in error.path)


def _schema_reason(kind: str, problems: list[str]) -> str:
    if kind in ("hello", "refresh"):
        # The validator may quote the token; UNI-SEC: tokens never appear in messages.
        return f"{kind} does not match its schema"
    text = f"{kind}: {problems[0]}"
    if len(text) > _MAX_REASON_CHARS:
        text = text[: _MAX_REASON_CHARS - 3] + "..."
    return text


def _targets(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


def _build(kind: str, obj: Mapping[str, Any]) -> ClientMessage:
    if kind == "hello":
        return Hello(token=obj["token"], client=obj.get("client"), id=obj.get("id"))
    if kind == "refresh":
        return Refresh(id=obj["id"], token=obj["token"])
    if kind == "subscribe":
        positions = obj.get("from")
        return Subscribe(
            id=obj["id"],
            channel=obj["channel"],
            filter=obj.get("filter"),
            from_=None
            if positions is None
            else {name: Position(p["epoch"], p["offset"]) for name, p in positions.items()},
            since=obj.get("since"),
        )
    if kind == "unsubscribe":
        return Unsubscribe(id=obj["id"], channel=obj["channel"])
    if kind == "publish":
        return Publish(
            id=obj["id"],
            channel=obj["channel"],
            event=obj["event"],
            data=obj["data"],
            message_id=obj["message_id"],
            attrs=obj.get("attrs"),
            to=_targets(obj.get("to")),
            exclude=_targets(obj.get("exclude")),
            exclude_self=obj.get("exclude_self", False),
            key=obj.get("key"),
            user=obj.get("user"),
        )
    if kind == "ping":
        return Ping(id=obj.get("id"), nonce=obj.get("nonce"))
    return Pong(id=obj.get("id"), nonce=obj.get("nonce"))


def parse_client_message(
    text: str, *, max_filter_nodes: int = MAX_NODES, decoded: dict[str, Any] | None = None
) -> ClientMessage:
    """Parse one client frame (UNI-TR, UNI-ERR).

    Order: JSON (``invalid_json``) -> object with a string ``type`` (``invalid_message``) ->
    known type (``unknown_type``) -> fields with their own code -> schema (``invalid_message``).
    Raises only ``RequestError`` subclasses, carrying the ``id`` when it was readable.
    ``decoded`` is ``text`` already decoded by :func:`jsonlimits.loads`, not decoded again.
    """
    try:
        # UNI-TR-29..31: nesting, number range and lone surrogates are judged here, once, so
        # no later stage (schema, filter, encoding the reply or the event) meets them.
        obj = decoded if decoded is not None else jsonlimits.loads(text)
    except jsonlimits.JsonLimitError:
        raise InvalidJson("the frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise InvalidMessage("a message must be a JSON object")
    rid = readable_id(obj)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise InvalidMessage("a message needs a string 'type'", request_id=rid)
    if kind not in CLIENT_TYPES:
        if kind in SERVER_MESSAGE_TYPES:
            # UNI-TR-19 (section 1.5 step 3): a server message type is known; it fails step 4.
            raise InvalidMessage(f"{kind} is not a client message", request_id=rid)
        raise UnknownType("unknown message type", request_id=rid)
    try:
        # Section 1.5: the schema (step 4) decides first, leaving aside the fields that have
        # their own codes (step 5); the per-type schema gives sharper reasons than the oneOf.
        validator = validator_for(f"messages/{kind}")
        valid = check_for(f"messages/{kind}")  # a fast yes; errors only when it says no
        if kind == "subscribe" and "filter" in obj:
            # Filter errors all have their own code; the schema sees the filter only after the
            # compiler bounded its depth, so validation never recurses through a deep one.
            rest = {name: value for name, value in obj.items() if name != "filter"}
            errors = [] if valid(rest) else list(validator.iter_errors(rest))
        else:
            errors = [] if valid(obj) else list(validator.iter_errors(obj))
        hard = [error for error in errors if not _has_own_code(obj, error)]
        if hard:
            raise InvalidMessage(_schema_reason(kind, _describe(hard)), request_id=rid)
        _precheck(kind, obj, rid, max_filter_nodes)
        if kind == "subscribe" and "filter" in obj:
            errors = [] if valid(obj) else list(validator.iter_errors(obj))
        if errors:
            raise InvalidMessage(_schema_reason(kind, _describe(errors)), request_id=rid)
        try:
            return _build(kind, obj)
        except (MessageInvariantError, KeyError, TypeError):
            raise InvalidMessage(f"{kind} is malformed", request_id=rid) from None
    except RequestError as exc:
        exc.message_type = kind
        raise
