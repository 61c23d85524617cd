"""Where the Redis broker keeps things, and how a publish record travels through Redis.

Pure functions only, so the layout can be read (and tested) without a Redis. Tenants, owners
and channel names are percent-encoded into channel ids, so no tenant or owner can produce a
key or id of another scope whatever characters it contains (UNI-DEL-6, tenancy).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final
from urllib.parse import quote, unquote

from unisock.broker import ChannelKey, PublishRecord

__all__ = [
    "KeyLayout",
    "channel_id",
    "decode_record",
    "encode_record",
    "parse_channel_id",
    "scope_id",
]

_KIND_TENANT: Final = "t"
_KIND_ME: Final = "m"
_KIND_SYS: Final = "s"


def _q(text: str) -> str:
    return quote(text, safe="")


@lru_cache(maxsize=65_536)
def channel_id(key: ChannelKey) -> str:
    """``t/<tenant>/<name>``, ``m/<tenant>/<owner>/<name>`` or ``s/<name>``, each part encoded."""
    if key.tenant is None:
        return f"{_KIND_SYS}/{_q(key.name)}"
    if key.owner is not None:
        return f"{_KIND_ME}/{_q(key.tenant)}/{_q(key.owner)}/{_q(key.name)}"
    return f"{_KIND_TENANT}/{_q(key.tenant)}/{_q(key.name)}"


@lru_cache(maxsize=65_536)
def parse_channel_id(cid: str) -> ChannelKey:
    """The inverse of :func:`channel_id`; a malformed id raises ``ValueError``."""
    kind, *parts = cid.split("/")
    names = [unquote(part) for part in parts]
    if kind == _KIND_SYS and len(names) == 1:
        return ChannelKey(None, None, names[0])
    if kind == _KIND_ME and len(names) == 3:
        return ChannelKey(names[0], names[1], names[2])
    if kind == _KIND_TENANT and len(names) == 2:
        return ChannelKey(names[0], None, names[1])
    raise ValueError(f"not a channel id: {cid!r}")


def scope_id(tenant: str | None, owner: str | None, namespace: str) -> str:
    """The scope of ``Broker.channels``: one id per (tenant), (tenant, owner) and ``$sys``."""
    if namespace == "$sys":
        return _KIND_SYS
    if tenant is None:
        raise ValueError(f"namespace {namespace!r} needs a tenant")
    if namespace == "$me":
        if owner is None:
            raise ValueError("namespace '$me' needs an owner")
        return f"{_KIND_ME}/{_q(tenant)}/{_q(owner)}"
    if namespace == "tenant":
        return f"{_KIND_TENANT}/{_q(tenant)}"
    raise ValueError(f"unknown namespace {namespace!r}")


def scope_of(key: ChannelKey) -> str:
    """The scope id a channel is listed under."""
    if key.tenant is None:
        return _KIND_SYS
    if key.owner is not None:
        return scope_id(key.tenant, key.owner, "$me")
    return scope_id(key.tenant, None, "tenant")


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """The key names under one prefix; several deployments share a Redis by prefix."""

    prefix: str

    @property
    def generation(self) -> str:
        return self.prefix + "gen"

    @property
    def sequence(self) -> str:
        return self.prefix + "seq"

    @property
    def fanout(self) -> str:
        return self.prefix + "fan"

    @property
    def node_prefix(self) -> str:
        return self.prefix + "node:"

    def node(self, node_id: str) -> str:
        return self.node_prefix + node_id

    def meta(self, cid: str) -> str:
        return f"{self.prefix}c:{cid}:m"

    def history(self, cid: str) -> str:
        return f"{self.prefix}c:{cid}:h"

    def dedup(self, cid: str, message_id: str, tenant: str | None = None) -> str:
        """The dedup record of ``message_id``; on ``$sys`` per publisher ``tenant`` (UNI-SEC-19).

        A ``$sys`` record names the encoded tenant (empty for none) before a ``/``, which no
        encoded tenant contains, so records of two tenants never share a key.
        """
        if cid.startswith(f"{_KIND_SYS}/"):
            return f"{self.prefix}c:{cid}:d:{_q(tenant or '')}/{message_id}"
        return f"{self.prefix}c:{cid}:d:{message_id}"

    def scope(self, sid: str) -> str:
        return f"{self.prefix}s:{sid}"

    def tombstones(self, sid: str) -> str:
        return f"{self.prefix}x:{sid}"

    @property
    def idle(self) -> str:
        return self.prefix + "idle"

    def user(self, tenant: str, sub: str) -> str:
        return f"{self.prefix}u:{_q(tenant)}:{_q(sub)}"


def _frozen(values: list[str] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(values)


def encode_record(record: PublishRecord) -> str:
    """Everything of ``record`` but its key (the channel id carries that), as compact JSON.

    Targeting fields and the origin travel with the event, so that every node and every replay
    applies the same delivery predicate (UNI-DEL-11).
    """
    fields: list[Any] = [
        record.event_type,
        record.data,
        record.message_id,
        None if record.attrs is None else dict(record.attrs),
        None if record.to is None else sorted(record.to),
        None if record.exclude is None else sorted(record.exclude),
        1 if record.exclude_self else 0,
        record.coalesce_key,
        record.publisher_sub,
        record.publisher_connection,
        record.publisher_tenant,
    ]
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def decode_record(key: ChannelKey, text: str) -> PublishRecord:
    """The inverse of :func:`encode_record` for the channel ``key``."""
    fields = json.loads(text)
    (
        event_type,
        data,
        message_id,
        attrs,
        to,
        exclude,
        exclude_self,
        coalesce_key,
        publisher_sub,
        publisher_connection,
    ) = fields[:10]
    publisher_tenant = fields[10] if len(fields) > 10 else None  # records of older versions
    return PublishRecord(
        key=key,
        event_type=event_type,
        data=data,
        message_id=message_id,
        attrs=attrs,
        to=_frozen(to),
        exclude=_frozen(exclude),
        exclude_self=bool(exclude_self),
        coalesce_key=coalesce_key,
        publisher_sub=publisher_sub,
        publisher_connection=publisher_connection,
        publisher_tenant=publisher_tenant,
    )
