"""An independent oracle of the Unisock rules: who must receive what, in which order.

Written from spec/*.md alone, importing nothing from the reference server, so that the
conformance suite can catch the reference server's bugs as well as anyone else's.

Two layers:

- pure rules (channel and pattern grammar, ``match``, ``contains``, publish authorisation,
  filters, the delivery predicate), exposed as :class:`Rules` for the language-agnostic
  vectors (``unisock_conformance.vectors``);
- :class:`Model`, the expected world of a stateful check: connections with their active
  subscriptions, the events published and the positions acknowledged for them. Every frame a
  model connection receives is fed to :meth:`Model.on_frame` as it arrives; a frame the rules
  forbid is recorded as a :class:`Violation` at once, whatever test step is running.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "CLAUSE_REQUIREMENTS",
    "DEFAULT_MAX_FILTER_NODES",
    "ME",
    "SYS",
    "Model",
    "ModelConn",
    "ModelViolation",
    "Publish",
    "Rules",
    "Sub",
    "Violation",
    "channel_valid",
    "contains",
    "deliver",
    "filter_eval",
    "filter_valid",
    "json_equal",
    "matches",
    "namespace",
    "pattern_valid",
    "publish_allowed",
    "scalar_equal",
    "scope_of",
    "subscribe_allowed",
]

# -- grammar (section 4.2) ---------------------------------------------------------------

ME: Final = "$me"
SYS: Final = "$sys"
MAX_NAME_OCTETS: Final = 255
MAX_TOKENS: Final = 16
DEFAULT_MAX_FILTER_NODES: Final = 32
MAX_FILTER_DEPTH: Final = 8
_SEGMENT = re.compile(r"[a-z0-9_-]{1,64}")
_ATTR_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def _segment(token: str) -> bool:
    return _SEGMENT.fullmatch(token) is not None


def namespace(name: str) -> str:
    """``$me``, ``$sys`` or ``""`` (the tenant namespace) for a name or pattern."""
    first = name.split(".", 1)[0]
    return first if first in (ME, SYS) else ""


def _rest(name: str) -> list[str]:
    tokens = name.split(".")
    return tokens[1:] if namespace(name) else tokens


def _length_ok(text: str) -> bool:
    return len(text.encode("utf-8")) <= MAX_NAME_OCTETS


def channel_valid(name: str) -> bool:
    """A canonical channel name (UNI-CH-3, UNI-CH-4): tenant, ``$me`` or ``$sys`` form."""
    if not isinstance(name, str) or not name or not _length_ok(name):
        return False
    tokens = name.split(".")
    ns = namespace(name)
    rest = tokens[1:] if ns else tokens
    if ns == SYS and not rest:
        return False
    if ns == "" and not rest:
        return False
    return len(rest) <= MAX_TOKENS and all(_segment(t) for t in rest)


def pattern_valid(pattern: str) -> bool:
    """A valid pattern (UNI-CH-3): segments and ``*``, ``>`` only as the last token."""
    if not isinstance(pattern, str) or not pattern or not _length_ok(pattern):
        return False
    ns = namespace(pattern)
    rest = _rest(pattern)
    if ns == ME and not rest and pattern == ME:
        return True
    if not rest or len(rest) > MAX_TOKENS:
        return False
    for i, token in enumerate(rest):
        if token == ">":
            if i != len(rest) - 1:
                return False
        elif token != "*" and not _segment(token):
            return False
    return True


def matches(pattern: str, channel: str) -> bool:
    """``match(P, C)`` of section 4.3, token by token (UNI-CH-8, UNI-CH-9)."""
    if namespace(pattern) != namespace(channel):
        return False
    p, c = _rest(pattern), _rest(channel)
    i = 0
    while True:
        if i == len(p):
            return i == len(c)
        if p[i] == ">":
            return len(c) > i
        if i == len(c):
            return False
        if p[i] != "*" and p[i] != c[i]:
            return False
        i += 1


def contains(grant: str, pattern: str) -> bool:
    """``contains(G, S)`` of section 4.6: every channel S matches, G matches (UNI-CH-17)."""
    if namespace(grant) != namespace(pattern):
        return False
    g, s = _rest(grant), _rest(pattern)
    i = 0
    while True:
        if i == len(g):
            return i == len(s)
        if g[i] == ">":
            return len(s) > i
        if i == len(s):
            return False
        if s[i] == ">":
            return False
        if g[i] != "*" and s[i] != g[i]:
            return False
        i += 1


def subscribe_allowed(grants: Iterable[str], pattern: str) -> bool:
    """UNI-CH-11, UNI-CH-14, UNI-CH-17: ``$me`` is implicit, everything else needs a grant."""
    if namespace(pattern) == ME:
        return True
    return any(pattern_valid(g) and contains(g, pattern) for g in grants)


def publish_allowed(
    grants: Sequence[str], channel: str, role: str, sub: str, user: str | None
) -> bool:
    """Whether a publish passes the field rules and authorisation (UNI-PUB-2, -4 to -9)."""
    if not channel_valid(channel):
        return False
    ns = namespace(channel)
    if user is not None and ns != ME:
        return False  # UNI-PUB-6, UNI-PUB-7 (invalid_message)
    if ns == SYS and role != "broadcaster":
        return False  # UNI-PUB-5
    if ns == ME and role != "broadcaster" and user is not None and user != sub:
        return False  # UNI-PUB-9
    return any(pattern_valid(g) and matches(g, channel) for g in grants)  # UNI-PUB-4


# -- filters (section 5.5) ---------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    """A number JSON can carry in Unisock: its binary64 value is finite (UNI-TR-30)."""
    return _is_number(value) and math.isfinite(_as_float(value))  # type: ignore[arg-type]


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, str | bool) or _is_finite_number(value)


def _field_ok(value: object) -> bool:
    return isinstance(value, str) and (value == "$event" or _ATTR_NAME.fullmatch(value) is not None)


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def scalar_equal(a: object, b: object) -> bool:
    """JSON equality of scalars (section 5.5.2): same type; numbers by binary64 value."""
    if _is_number(a) and _is_number(b):
        return _as_float(a) == _as_float(b)  # type: ignore[arg-type]
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return False


def json_equal(a: object, b: object) -> bool:
    """JSON equality of any values (UNI-PUB-14): numbers by value, booleans apart."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict | list) or isinstance(b, dict | list):
        return False
    return scalar_equal(a, b)


def _filter_nodes(node: object, depth: int) -> int | None:
    """Node count of a grammatical filter, or None when it is not one (UNI-SUB-17, -18)."""
    if depth > MAX_FILTER_DEPTH or not isinstance(node, dict) or len(node) != 1:
        return None
    ((op, arg),) = node.items()
    if op in ("eq", "ne"):
        ok = isinstance(arg, list) and len(arg) == 2 and _field_ok(arg[0]) and _is_scalar(arg[1])
        return 1 if ok else None
    if op == "in":
        ok = (
            isinstance(arg, list)
            and len(arg) == 2
            and _field_ok(arg[0])
            and isinstance(arg[1], list)
            and 1 <= len(arg[1]) <= 32
            and all(_is_scalar(v) for v in arg[1])
        )
        return 1 if ok else None
    if op in ("lt", "lte", "gt", "gte"):
        ok = (
            isinstance(arg, list)
            and len(arg) == 2
            and _field_ok(arg[0])
            and _is_finite_number(arg[1])
        )
        return 1 if ok else None
    if op == "exists":
        return 1 if _field_ok(arg) else None
    if op in ("and", "or"):
        if not isinstance(arg, list) or not 1 <= len(arg) <= 16:
            return None
        total = 1
        for child in arg:
            count = _filter_nodes(child, depth + 1)
            if count is None:
                return None
            total += count
        return total
    if op == "not":
        count = _filter_nodes(arg, depth + 1)
        return None if count is None else 1 + count
    return None


def filter_valid(filter: object, max_nodes: int = DEFAULT_MAX_FILTER_NODES) -> bool:
    """Grammar, node count and depth of a filter (UNI-SUB-17, UNI-SUB-18)."""
    count = _filter_nodes(filter, 1)
    return count is not None and count <= max_nodes


def _field(name: str, event_type: str, attrs: Mapping[str, Any]) -> tuple[bool, Any]:
    if name == "$event":
        return True, event_type
    if name in attrs:
        return True, attrs[name]
    return False, None


def _compare(op: str, value: object, bound: object) -> bool:
    if not _is_number(value) or not _is_number(bound):
        return False
    a, b = _as_float(value), _as_float(bound)  # type: ignore[arg-type]
    return {"lt": a < b, "lte": a <= b, "gt": a > b, "gte": a >= b}[op]


def filter_eval(filter: Any, event: Mapping[str, Any]) -> bool:
    """Evaluate a valid filter over ``{"event": type, "attrs": {...}}`` (UNI-SUB-20)."""
    event_type = str(event.get("event", ""))
    attrs = event.get("attrs") or {}
    ((op, arg),) = filter.items()
    if op in ("eq", "ne"):
        present, value = _field(arg[0], event_type, attrs)
        equal = present and scalar_equal(value, arg[1])
        return equal if op == "eq" else not equal
    if op == "in":
        present, value = _field(arg[0], event_type, attrs)
        return present and any(scalar_equal(value, item) for item in arg[1])
    if op in ("lt", "lte", "gt", "gte"):
        present, value = _field(arg[0], event_type, attrs)
        return present and _compare(op, value, arg[1])
    if op == "exists":
        return _field(arg, event_type, attrs)[0]
    if op == "and":
        return all(filter_eval(child, event) for child in arg)
    if op == "or":
        return any(filter_eval(child, event) for child in arg)
    if op == "not":
        return not filter_eval(arg, event)
    raise ValueError(f"not a filter operator: {op!r}")


# -- the delivery predicate (section 7.3) --------------------------------------------------


def _predicate_failure(
    *,
    c_open: bool,
    c_expired: bool,
    c_tenant: str,
    c_sub: str,
    c_id: str,
    subscriptions: Iterable[tuple[str, Any]],
    e_tenant: str,
    e_channel: str,
    e_owner: str | None,
    e_event: str,
    e_attrs: Mapping[str, Any] | None,
    e_to: Sequence[str] | None,
    e_exclude: Sequence[str] | None,
    e_exclude_self: bool,
    e_origin: str | None,
) -> str | None:
    """The first clause of the delivery predicate that fails, or None when it holds."""
    ns = namespace(e_channel)
    if not c_open or c_expired:
        return "clause 1: the connection is not open or its token has expired"
    if ns != SYS and e_tenant != c_tenant:
        return f"clause 2: event of tenant {e_tenant!r}, connection of tenant {c_tenant!r}"
    if ns == ME and e_owner != c_sub:
        return f"clause 3: private channel of {e_owner!r}, connection of {c_sub!r}"
    view = {"event": e_event, "attrs": dict(e_attrs or {})}
    if not any(
        matches(pattern, e_channel) and (flt is None or filter_eval(flt, view))
        for pattern, flt in subscriptions
    ):
        return "clause 4: no active subscription matches it with a true filter"
    if e_to is not None and c_sub not in e_to:
        return f"clause 5: {c_sub!r} is not in to={list(e_to)}"
    if e_exclude is not None and c_sub in e_exclude:
        return f"clause 6: {c_sub!r} is in exclude={list(e_exclude)}"
    if e_exclude_self and e_origin is not None and e_origin == c_id:
        return "clause 7: exclude_self and this is the publishing connection"
    return None


def deliver(connection: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    """The delivery predicate over the vectors' connection and event shapes (UNI-DEL-11)."""
    subs = [(s["pattern"], s.get("filter")) for s in connection["subscriptions"]]
    failure = _predicate_failure(
        c_open=connection["state"] in ("open", "draining"),
        c_expired=bool(connection["expired"]),
        c_tenant=connection["tenant"],
        c_sub=connection["sub"],
        c_id=connection["connection"],
        subscriptions=subs,
        e_tenant=event["tenant"],
        e_channel=event["channel"],
        e_owner=event.get("owner"),
        e_event=event["event"],
        e_attrs=event.get("attrs"),
        e_to=event.get("to"),
        e_exclude=event.get("exclude"),
        e_exclude_self=bool(event.get("exclude_self", False)),
        e_origin=event.get("publisher_connection"),
    )
    return failure is None


class Rules:
    """The oracle's pure rules under the method names of ``vectors.RuleSet``."""

    def channel_valid(self, name: str) -> bool:
        return channel_valid(name)

    def pattern_valid(self, pattern: str) -> bool:
        return pattern_valid(pattern)

    def matches(self, pattern: str, channel: str) -> bool:
        return matches(pattern, channel)

    def contains(self, grant: str, pattern: str) -> bool:
        return contains(grant, pattern)

    def publish_allowed(
        self, grants: list[str], channel: str, role: str, sub: str, user: str | None
    ) -> bool:
        return publish_allowed(grants, channel, role, sub, user)

    def filter_valid(self, filter: Any) -> bool:
        return filter_valid(filter)

    def filter_eval(self, filter: Any, event: dict[str, Any]) -> bool:
        return filter_eval(filter, event)

    def deliver(self, connection: dict[str, Any], event: dict[str, Any]) -> bool:
        return deliver(connection, event)


# -- the model ---------------------------------------------------------------------------

Scope = tuple[str, ...]
Position = tuple[str, int]


def scope_of(tenant: str, channel: str, owner: str | None) -> Scope:
    """The offset scope of section 7.2: per tenant, per owner for ``$me``, shared for ``$sys``."""
    ns = namespace(channel)
    if ns == SYS:
        return ("sys", channel)
    if ns == ME:
        return ("me", tenant, owner or "", channel)
    return ("tenant", tenant, channel)


@dataclass
class Violation:
    """A rule the server broke, observed on one connection."""

    requirement: str
    conn: str
    text: str

    def __str__(self) -> str:
        return f"[{self.requirement}] on {self.conn}: {self.text}"


class ModelViolation(AssertionError):
    """A stateful check failed: ``requirements`` are the rules found broken, first first.

    The report attributes the failure to these rules only, not to every rule the model
    covers, so that one bug reads as one failed requirement (spec 14.2).
    """

    def __init__(self, requirements: Sequence[str], text: str) -> None:
        super().__init__(text)
        self.requirements = tuple(dict.fromkeys(requirements))


# The requirement each clause of the delivery predicate (section 7.3) states on its own: an
# event delivered although clause N fails breaks this rule first.
CLAUSE_REQUIREMENTS: Final = {
    "clause 1": "UNI-DEL-12",
    "clause 2": "UNI-CH-2",
    "clause 3": "UNI-CH-10",
    "clause 4": "UNI-DEL-11",
    "clause 5": "UNI-PUB-10",
    "clause 6": "UNI-PUB-11",
    "clause 7": "UNI-PUB-12",
}


@dataclass
class Publish:
    """One publish the model sent: what the server must sequence and whom it must reach."""

    seq: int
    message_id: str
    tenant: str
    channel: str
    owner: str | None
    event: str
    data: Any
    attrs: dict[str, Any] | None
    to: tuple[str, ...] | None
    exclude: tuple[str, ...] | None
    exclude_self: bool
    origin: str
    publisher_sub: str
    key: str | None = None
    sent_at: float = 0.0
    acked: bool = False
    epoch: str | None = None
    offset: int | None = None
    ts: int | None = None
    frames: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def scope(self) -> Scope:
        return scope_of(self.tenant, self.channel, self.owner)

    def describe(self) -> str:
        extra = []
        for name in ("attrs", "to", "exclude", "key"):
            value = getattr(self, name)
            if value is not None:
                extra.append(f"{name}={value}")
        if self.exclude_self:
            extra.append("exclude_self")
        if self.owner is not None:
            extra.append(f"user={self.owner}")
        where = f"{self.channel}@{self.epoch}:{self.offset}" if self.acked else self.channel
        return f"{self.event} {self.message_id} on {where} by {self.origin} {' '.join(extra)}"


@dataclass
class Sub:
    """A subscription of a model connection, active from its ``subscribed`` reply."""

    pattern: str
    filter: Any | None
    start_seq: int
    from_: dict[str, Position] = field(default_factory=dict)
    since: int | None = None
    request_id: str = ""
    ts: int | None = None
    active: bool = False


@dataclass
class ModelConn:
    """What the model knows of one connection: identity, subscriptions, receipts."""

    key: str
    tenant: str
    sub: str
    role: str = "user"
    open: bool = True
    expires_at_ms: int | None = None
    subs: dict[str, Sub] = field(default_factory=dict)
    pending: dict[str, Sub] = field(default_factory=dict)
    revoked: list[str] = field(default_factory=list)
    got: dict[str, dict[str, Any]] = field(default_factory=dict)
    last: dict[str, Position] = field(default_factory=dict)
    last_ts: int | None = None
    gaps: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    seen: set[tuple[str, str, int]] = field(default_factory=set)
    transcript: list[str] = field(default_factory=list)

    def active(self) -> list[Sub]:
        return [s for s in self.subs.values() if s.active]

    def covered_by_gap(self, p: Publish) -> bool:
        """A gap on the event's channel at or after it accounts for it (section 7.7)."""
        for gap in self.gaps.get(p.channel, ()):
            if gap["epoch"] != p.epoch or (p.offset is not None and p.offset <= gap["offset"]):
                return True
        return False


class Model:
    """The expected world of one stateful run; thread-safe, fed by ``Conn.on_frame`` hooks."""

    def __init__(
        self,
        *,
        max_count: int | None = None,
        max_age_ms: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.conns: dict[str, ModelConn] = {}
        self.publishes: dict[str, Publish] = {}
        self.by_position: dict[tuple[Scope, str, int], Publish] = {}
        self.heads: dict[Scope, Position] = {}
        self.violations: list[Violation] = []
        self.max_count = max_count
        self.max_age_ms = max_age_ms
        self.clock = clock
        self._seq = 0

    # -- registration (main thread) --

    def add_conn(self, conn: ModelConn) -> None:
        with self.lock:
            self.conns[conn.key] = conn

    def next_seq(self) -> int:
        with self.lock:
            self._seq += 1
            return self._seq

    def register_publish(self, p: Publish) -> Publish:
        """Record an intended publish before it is sent, so early frames can be judged."""
        with self.lock:
            p.sent_at = self.clock()
            self.publishes[p.message_id] = p
            return p

    def forget_publish(self, message_id: str) -> None:
        """A refused publish sequenced nothing (UNI-PUB-27): any frame of it is a leak."""
        with self.lock:
            p = self.publishes.get(message_id)
            if p is not None and not p.acked:
                for conn_key, frame in p.frames:
                    self.fail("UNI-PUB-27", conn_key, f"event of a refused publish: {frame}")
                p.seq = -1

    def register_subscribe(self, conn_key: str, sub: Sub) -> None:
        with self.lock:
            self.conns[conn_key].pending[sub.request_id] = sub

    def fail(self, requirement: str, conn_key: str, text: str) -> None:
        with self.lock:
            self.violations.append(Violation(requirement, conn_key, text))
            self.changed.notify_all()

    # -- acknowledgements (main thread) --

    def on_ack(self, p: Publish, ack: Mapping[str, Any]) -> None:
        """Check an ``ack`` of a new publish against the scope's offsets (UNI-DEL-6, -7)."""
        with self.lock:
            epoch, offset = str(ack.get("epoch")), ack.get("offset")
            if ack.get("duplicate") is not False:
                self.fail("UNI-PUB-28", p.origin, f"ack of a new publish: {ack}")
            if not isinstance(offset, int) or isinstance(offset, bool):
                self.fail("UNI-DEL-7", p.origin, f"ack without an integer offset: {ack}")
                return
            head = self.heads.get(p.scope)
            if head is not None and head[0] != epoch:
                self._adopt_epoch(p.scope, (epoch, 0), p.origin, f"ack of {p.message_id}")
                head = self.heads.get(p.scope)
            if head is not None and head[0] == epoch and offset != head[1] + 1:
                self.fail(
                    "UNI-DEL-7",
                    p.origin,
                    f"offset {offset} after head {head[1]} in epoch {epoch} of {p.channel}",
                )
            if (head is None or head[0] != epoch) and offset != 1:
                self.fail(
                    "UNI-DEL-7", p.origin, f"first publish of an epoch got offset {offset}: {ack}"
                )
            p.acked, p.epoch, p.offset = True, epoch, offset
            self.heads[p.scope] = (epoch, offset)
            self.by_position[(p.scope, epoch, offset)] = p
            for conn_key, frame in p.frames:
                self._check_position(conn_key, p, frame)
            self.changed.notify_all()

    def _adopt_epoch(self, scope: Scope, position: Position, conn_key: str, what: str) -> None:
        """The server shows a new epoch for ``scope``: allowed only when nothing was lost that
        UNI-DEL-22 obliges it to keep (UNI-SEC-14 discards idle state; a broker may lose it);
        the model then continues in the new epoch."""
        head = self.heads.get(scope)
        if head is None or head[0] == position[0]:
            return
        kept = [
            p
            for (where, epoch, _), p in self.by_position.items()
            if where == scope and epoch == head[0] and self.retained(p)
        ]
        if kept:
            self.fail(
                "UNI-DEL-22",
                conn_key,
                f"{what}: epoch {head[0]} of {scope[-1]} was replaced by {position[0]} although "
                f"{kept[-1].describe()} is within the announced history window",
            )
        self.heads[scope] = position

    def on_duplicate_ack(self, p: Publish, ack: Mapping[str, Any]) -> None:
        """A retry with the same ``message_id`` gets the original position (UNI-PUB-21)."""
        with self.lock:
            if ack.get("duplicate") is not True or (ack.get("epoch"), ack.get("offset")) != (
                p.epoch,
                p.offset,
            ):
                self.fail(
                    "UNI-PUB-21",
                    p.origin,
                    f"retry of {p.message_id} (original {p.epoch}:{p.offset}) got {ack}",
                )

    def _check_position(self, conn_key: str, p: Publish, frame: Mapping[str, Any]) -> None:
        if (frame.get("epoch"), frame.get("offset")) != (p.epoch, p.offset):
            self.fail(
                "UNI-PUB-26",
                conn_key,
                f"event {p.message_id} at {frame.get('epoch')}:{frame.get('offset')}, "
                f"acknowledged at {p.epoch}:{p.offset}",
            )

    # -- expectations (main thread) --

    def live_receivers(self, p: Publish) -> list[ModelConn]:
        """Connections the predicate selects for a just-acknowledged publish (UNI-DEL-18)."""
        with self.lock:
            return [c for c in self.conns.values() if c.open and self._why_not(p, c) is None]

    def _why_not(self, p: Publish, c: ModelConn, *, replay: bool = False) -> str | None:
        subs = [(s.pattern, s.filter) for s in c.active() if replay or self._live_covers(s, p)]
        expired = c.expires_at_ms is not None and p.ts is not None and p.ts >= c.expires_at_ms
        return _predicate_failure(
            c_open=c.open,
            c_expired=expired,
            c_tenant=c.tenant,
            c_sub=c.sub,
            c_id=c.key,
            subscriptions=subs,
            e_tenant=p.tenant,
            e_channel=p.channel,
            e_owner=p.owner,
            e_event=p.event,
            e_attrs=p.attrs,
            e_to=p.to,
            e_exclude=p.exclude,
            e_exclude_self=p.exclude_self,
            e_origin=p.origin,
        )

    @staticmethod
    def _live_covers(s: Sub, p: Publish) -> bool:
        return p.seq >= s.start_seq

    def replay_due(self, c: ModelConn, s: Sub) -> list[Publish]:
        """Events a resuming subscription must replay unless a gap covers them (UNI-DEL-15/17)."""
        with self.lock:
            due: list[Publish] = []
            for p in self.publishes.values():
                if not p.acked or p.seq < 0 or p.seq >= s.start_seq:
                    continue
                if not matches(s.pattern, p.channel):
                    continue
                position = s.from_.get(p.channel)
                if position is not None:
                    if p.epoch != position[0] or p.offset is None or p.offset <= position[1]:
                        continue
                elif s.since is None or p.ts is None or p.ts < s.since:
                    continue
                if self._replay_failure(p, c, s) is None:
                    due.append(p)
            return due

    def _replay_failure(self, p: Publish, c: ModelConn, s: Sub) -> str | None:
        return _predicate_failure(
            c_open=c.open,
            c_expired=False,
            c_tenant=c.tenant,
            c_sub=c.sub,
            c_id=c.key,
            subscriptions=[(s.pattern, s.filter)],
            e_tenant=p.tenant,
            e_channel=p.channel,
            e_owner=p.owner,
            e_event=p.event,
            e_attrs=p.attrs,
            e_to=p.to,
            e_exclude=p.exclude,
            e_exclude_self=p.exclude_self,
            e_origin=p.origin,
        )

    def wait(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Block until ``ready()`` or a violation; False on timeout. No sleeping."""
        deadline = self.clock() + timeout
        with self.changed:
            while not ready() and not self.violations:
                left = deadline - self.clock()
                if left <= 0:
                    return ready()
                self.changed.wait(left)
            return True

    def retained(self, p: Publish) -> bool:
        """Whether UNI-DEL-22 obliges the server to still hold ``p`` for replay."""
        with self.lock:
            if self.max_count is None or self.max_age_ms is None or p.offset is None:
                return False
            head = self.heads.get(p.scope)
            if head is None or head[0] != p.epoch:
                return False
            recent = head[1] - p.offset < self.max_count
            young = (self.clock() - p.sent_at) * 1000.0 < self.max_age_ms * 0.9
            return recent and young

    # -- frames (reader threads) --

    def on_frame(self, conn_key: str, frame: Mapping[str, Any]) -> None:
        """Judge one received frame at once (hook for ``Conn.on_frame``)."""
        with self.lock:
            c = self.conns.get(conn_key)
            if c is None:
                return
            kind = frame.get("type")
            try:
                if kind == "event":
                    self._on_event(c, frame)
                elif kind == "gap":
                    self._on_gap(c, frame)
                elif kind == "subscribed":
                    self._on_subscribed(c, frame)
                elif kind == "unsubscribed":
                    self._on_unsubscribed(c, frame)
                elif kind == "error":
                    sub = c.pending.pop(str(frame.get("id")), None)
                    if sub is not None:
                        c.transcript.append(f"subscribe {sub.pattern} refused: {frame}")
            finally:
                self.changed.notify_all()

    def _on_subscribed(self, c: ModelConn, frame: Mapping[str, Any]) -> None:
        sub = c.pending.pop(str(frame.get("id")), None)
        if sub is None:
            return
        sub.active = True
        sub.ts = frame.get("ts") if isinstance(frame.get("ts"), int) else None
        c.subs[sub.pattern] = sub
        if isinstance(sub.ts, int):
            c.last_ts = max(c.last_ts or 0, sub.ts)
        wildcard = "*" in sub.pattern.split(".") or ">" in sub.pattern.split(".")
        position = frame.get("position")
        if wildcard:
            if position is not None:
                self.fail("UNI-SUB-2", c.key, f"position on a wildcard subscription: {frame}")
            return
        if not isinstance(position, dict):
            self.fail("UNI-SUB-2", c.key, f"no position for {sub.pattern}: {frame}")
            return
        owner = c.sub if namespace(sub.pattern) == ME else None
        scope = scope_of(c.tenant, sub.pattern, owner)
        got = (position.get("epoch"), position.get("offset"))
        if isinstance(got[0], str) and isinstance(got[1], int):
            self._adopt_epoch(scope, (got[0], got[1]), c.key, f"subscribed {sub.pattern}")
        head = self.heads.get(scope)
        if head is None and got[1] != 0:
            self.fail("UNI-SUB-2", c.key, f"{sub.pattern} has no events, position {position}")
        if head is not None and got != head:
            self.fail("UNI-SUB-2", c.key, f"{sub.pattern} head is {head}, position {position}")
        fresh = sub.pattern not in c.last and not sub.from_ and sub.since is None
        if fresh and isinstance(got[0], str) and isinstance(got[1], int):
            c.last[sub.pattern] = (got[0], got[1])

    def _on_unsubscribed(self, c: ModelConn, frame: Mapping[str, Any]) -> None:
        pattern = str(frame.get("channel"))
        sub = c.subs.pop(pattern, None)
        if sub is None:
            self.fail("UNI-SUB-12", c.key, f"unsubscribed for no active subscription: {frame}")
            return
        sub.active = False
        if frame.get("reason") == "revoked":
            c.revoked.append(pattern)

    def _on_gap(self, c: ModelConn, frame: Mapping[str, Any]) -> None:
        channel = str(frame.get("channel"))
        epoch, offset, reason = frame.get("epoch"), frame.get("offset"), frame.get("reason")
        owner = c.sub if namespace(channel) == ME else None
        scope = scope_of(c.tenant, channel, owner)
        last = c.last.get(channel)
        if reason == "epoch_changed" and last is not None and last[0] != epoch:
            # UNI-DEL-19: a live subscription learns of a new epoch before its first event.
            if isinstance(epoch, str) and isinstance(offset, int):
                self._adopt_epoch(scope, (epoch, offset), c.key, f"gap on {channel}")
                c.last[channel] = (epoch, offset)
            c.gaps.setdefault(channel, []).append(dict(frame))
            c.transcript.append(f"gap {channel} {epoch}:{offset} {reason}")
            return
        resuming = [
            s
            for s in c.active()
            if matches(s.pattern, channel) and (s.from_ or s.since is not None)
        ]
        if not resuming:
            self.fail("UNI-SUB-9", c.key, f"gap without a resuming subscription: {frame}")
            return
        if reason == "epoch_changed" and isinstance(epoch, str) and isinstance(offset, int):
            self._adopt_epoch(scope, (epoch, offset), c.key, f"gap on {channel}")
        head = self.heads.get(scope)
        if head is not None and (epoch, offset) != head:
            self.fail("UNI-DEL-16", c.key, f"gap {frame} but the head of {channel} is {head}")
        froms = [s.from_[channel] for s in resuming if channel in s.from_]
        valid = head is not None and not any(e == head[0] and o > head[1] for e, o in froms)
        if reason == "position_invalid" and valid:
            self.fail("UNI-DEL-15", c.key, f"position_invalid for a valid position: {frame}")
        current = head is not None and bool(froms) and all(e == head[0] for e, _ in froms)
        if reason == "epoch_changed" and current:
            self.fail("UNI-DEL-15", c.key, f"epoch_changed with the current epoch: {frame}")
        if reason == "window_exceeded" and head is not None and froms:
            for e, o in froms:
                rng = [
                    self.by_position.get((scope_of(c.tenant, channel, owner), e, n))
                    for n in range(o + 1, head[1] + 1)
                ]
                if e == head[0] and o <= head[1] and all(p and self.retained(p) for p in rng):
                    self.fail(
                        "UNI-DEL-22",
                        c.key,
                        f"window_exceeded although ({o}, {head[1]}] is within the announced "
                        f"history window: {frame}",
                    )
        c.gaps.setdefault(channel, []).append(dict(frame))
        if isinstance(epoch, str) and isinstance(offset, int):
            c.last[channel] = (epoch, offset)
        c.transcript.append(f"gap {channel} {epoch}:{offset} {reason}")

    def _on_event(self, c: ModelConn, frame: Mapping[str, Any]) -> None:
        channel = str(frame.get("channel"))
        epoch, offset = str(frame.get("epoch")), frame.get("offset")
        mid = str(frame.get("message_id"))
        label = f"event {mid} on {channel}@{epoch}:{offset}"
        c.transcript.append(label)
        if not isinstance(offset, int):
            return  # schema violations are reported by the framework
        p = self.publishes.get(mid)
        if p is None or p.seq < 0:
            what = "refused publish" if p is not None else "message_id the model never published"
            self.fail("UNI-DEL-11", c.key, f"{label}: {what}")
            return
        if isinstance(frame.get("ts"), int):
            p.ts = p.ts if p.ts is not None else frame["ts"]
            c.last_ts = max(c.last_ts or 0, frame["ts"])
        self._check_content(c, p, frame)
        if p.acked:
            self._check_position(c.key, p, frame)
        else:
            p.frames.append((c.key, dict(frame)))
        marker = (channel, epoch, offset)
        if marker in c.seen:
            self.fail("UNI-DEL-13", c.key, f"{label} delivered twice")
            return
        if mid in c.got:
            first = c.got[mid]
            self.fail(
                "UNI-PUB-21",
                c.key,
                f"{label}: message_id already delivered at {first.get('epoch')}:"
                f"{first.get('offset')}, a duplicate publish was sequenced again",
            )
            return
        last = c.last.get(channel)
        if last is not None and last[0] == epoch and offset <= last[1]:
            self.fail("UNI-DEL-14", c.key, f"{label} after offset {last[1]} of the same epoch")
        announced = any(g["epoch"] == epoch for g in c.gaps.get(channel, ()))
        if last is not None and last[0] != epoch and not announced:
            self.fail("UNI-DEL-19", c.key, f"{label}: epoch {last[0]} -> {epoch}, no gap")
        why = self._unjustified(c, p, frame)
        if why is not None:
            requirement = CLAUSE_REQUIREMENTS.get(why.split(":", 1)[0], "UNI-DEL-11")
            if why.startswith("clause 4") and self._filtered_out(c, p):
                requirement = "UNI-SUB-20"
            self.fail(requirement, c.key, f"{label} ({p.describe()}) must not arrive: {why}")
        c.seen.add(marker)
        c.got[mid] = dict(frame)
        c.last[channel] = (epoch, offset)

    def _unjustified(self, c: ModelConn, p: Publish, frame: Mapping[str, Any]) -> str | None:
        """Why the predicate forbids this frame on ``c`` now, or None when it may arrive."""
        ts = frame.get("ts")
        if c.expires_at_ms is not None and isinstance(ts, int) and ts >= c.expires_at_ms:
            return "clause 1: sequenced at or after the token's expiry"
        base = self._why_not(p, c, replay=True)
        if base is not None:
            return base
        view = {"event": p.event, "attrs": dict(p.attrs or {})}
        for s in c.active():
            if not matches(s.pattern, p.channel):
                continue
            if s.filter is not None and not filter_eval(s.filter, view):
                continue
            if self._live_covers(s, p):
                return None
            position = s.from_.get(p.channel)
            if position is not None:
                if frame.get("epoch") == position[0] and frame["offset"] > position[1]:
                    return None
            elif s.since is not None and isinstance(ts, int) and ts >= s.since:
                return None
        return "clause 4: sequenced before every matching subscription became active"

    def _filtered_out(self, c: ModelConn, p: Publish) -> bool:
        """Some active subscription matches the channel, but every such filter is false."""
        matching = [s for s in c.active() if matches(s.pattern, p.channel)]
        view = {"event": p.event, "attrs": dict(p.attrs or {})}
        return bool(matching) and all(
            s.filter is not None and not filter_eval(s.filter, view) for s in matching
        )

    def _check_content(self, c: ModelConn, p: Publish, frame: Mapping[str, Any]) -> None:
        wrong = []
        if frame.get("channel") != p.channel:
            wrong.append(f"channel {frame.get('channel')!r} != {p.channel!r}")
        if frame.get("event") != p.event:
            wrong.append(f"event {frame.get('event')!r} != {p.event!r}")
        if not json_equal(frame.get("data"), p.data):
            wrong.append("data differs")
        # An empty ``attrs`` is held to UNI-PUB-14 by its own check (test_publish); here it
        # must not hide the delivery rules behind one formatting choice.
        if p.attrs and not json_equal(frame.get("attrs"), p.attrs):
            wrong.append(f"attrs {frame.get('attrs')!r} != {p.attrs!r}")
        if wrong:
            self.fail("UNI-PUB-14", c.key, f"event {p.message_id}: {'; '.join(wrong)}")
        if frame.get("publisher") != p.publisher_sub:
            self.fail(
                "UNI-PUB-15",
                c.key,
                f"event {p.message_id}: publisher {frame.get('publisher')!r} != "
                f"{p.publisher_sub!r}",
            )
        leaked = sorted({"to", "exclude", "exclude_self", "user", "tenant"} & set(frame))
        if leaked or ("coalesced" in frame and p.key is None):
            self.fail("UNI-DEL-2", c.key, f"event {p.message_id} carries {leaked or 'coalesced'}")

    # -- reporting --

    def check(self) -> None:
        """Raise :class:`ModelViolation` listing every violation seen so far, first first."""
        with self.lock:
            if self.violations:
                first = self.violations[0]
                lines = [str(v) for v in self.violations[:20]]
                raise ModelViolation(
                    [v.requirement for v in self.violations],
                    f"{first.requirement} violated: {first.text}\n"
                    "every violation seen (first first):\n  " + "\n  ".join(lines),
                )

    def dump(self) -> str:
        """A readable account of what each connection received (for failure messages)."""
        with self.lock:
            out = []
            for c in self.conns.values():
                subs = ", ".join(
                    s.pattern + (f" filter={json.dumps(s.filter)}" if s.filter else "")
                    for s in c.active()
                )
                out.append(f"{c.key} ({c.tenant}/{c.sub}) subs=[{subs}]")
                out.extend(f"    {line}" for line in c.transcript[-15:])
            return "\n".join(out)
