"""Close codes and what a client does after each (spec section 9, UNI-CLOSE).

The policy lives in the close-code registry (``schemas/v1/registries/close-codes.json``);
this module reads it rather than repeating it, so the spec, the schemas and the reference
implementation cannot disagree. Codes not listed act by range, then by the default class.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, IntEnum
from functools import cache
from typing import Any

from unisock.resources import load_json

__all__ = [
    "MAX_REASON_BYTES",
    "CloseCode",
    "CloseReason",
    "ReconnectClass",
    "close_class",
    "close_name",
    "format_close_reason",
    "parse_close_reason",
]

MAX_REASON_BYTES = 123
"""RFC 6455 leaves 123 bytes for the reason in a close frame."""

_REGISTRY = "v1/registries/close-codes.json"
_PARAM = re.compile(r"([a-z_][a-z0-9_]*)=([0-9]+)")
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_KNOWN_PARAMS = ("retry_after_ms", "window_ms")


class ReconnectClass(Enum):
    """What the client does after a close (UNI-CLOSE)."""

    NEVER = "never"
    """Do not reconnect automatically; surface the close to the application."""
    NEW_TOKEN = "new_token"
    """Get a new token from the application, then reconnect with backoff (or stop)."""
    BACKOFF = "backoff"
    """Reconnect after the backoff delay."""
    NOW = "now"
    """Reconnect at a uniformly random time in the drain window, never below the floor."""


class CloseCode(IntEnum):
    """The close codes of the registry, for code that sends them."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    ABNORMAL = 1006
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    PROTOCOL_VIOLATION = 4000
    SUPERSEDED = 4001
    AUTH_FAILED = 4100
    TOKEN_EXPIRED = 4101
    AUTH_TIMEOUT = 4102
    SLOW_CONSUMER = 4200
    HEARTBEAT_TIMEOUT = 4201
    OVERLOADED = 4202
    DRAIN = 4300


@dataclass(frozen=True, slots=True)
class _Policy:
    codes: dict[int, tuple[str, ReconnectClass]]
    ranges: tuple[tuple[int, int, ReconnectClass], ...]
    default: ReconnectClass


@cache
def _policy() -> _Policy:
    registry: Any = load_json(_REGISTRY)
    codes = {
        int(entry["code"]): (str(entry["name"]), ReconnectClass(entry["class"]))
        for entry in registry["codes"]
    }
    ranges = tuple(
        (int(entry["from"]), int(entry["to"]), ReconnectClass(entry["class"]))
        for entry in registry["ranges"]
    )
    return _Policy(codes, ranges, ReconnectClass(registry["default_class"]))


def close_class(code: int) -> ReconnectClass:
    """The reconnect class of ``code``: listed code, else its range, else the default."""
    policy = _policy()
    listed = policy.codes.get(code)
    if listed is not None:
        return listed[1]
    for low, high, klass in policy.ranges:
        if low <= code <= high:
            return klass
    return policy.default


def close_name(code: int) -> str | None:
    """The registry name of ``code`` (``None`` for an unlisted code)."""
    listed = _policy().codes.get(code)
    return None if listed is None else listed[0]


@dataclass(frozen=True, slots=True)
class CloseReason:
    """A parsed close reason: ``<name>(;retry_after_ms=<int>)(;window_ms=<int>)``."""

    name: str
    retry_after_ms: int | None = None
    window_ms: int | None = None


def parse_close_reason(reason: str) -> CloseReason:
    """Parse a close reason leniently: a peer's odd reason must never break reconnection.

    Unknown keys are ignored; if any parameter is malformed all parameters are dropped
    and only the name is kept (the class still comes from the code).
    """
    name, *params = reason.split(";")
    values: dict[str, int] = {}
    for param in params:
        found = _PARAM.fullmatch(param)
        if found is None:
            return CloseReason(name)
        key, digits = found.groups()
        if key in _KNOWN_PARAMS:
            values[key] = int(digits)
    return CloseReason(name, values.get("retry_after_ms"), values.get("window_ms"))


def format_close_reason(
    name: str, *, retry_after_ms: int | None = None, window_ms: int | None = None
) -> str:
    """Build a close reason; raises ``ValueError`` when it breaks the grammar or 123 bytes."""
    if _NAME.fullmatch(name) is None:
        raise ValueError(f"invalid close reason name {name!r}")
    parts = [name]
    for key, value in (("retry_after_ms", retry_after_ms), ("window_ms", window_ms)):
        if value is None:
            continue
        if isinstance(value, bool) or value < 0:
            raise ValueError(f"{key} must be a non-negative integer")
        parts.append(f"{key}={value}")
    reason = ";".join(parts)
    if len(reason.encode("utf-8")) > MAX_REASON_BYTES:
        raise ValueError(f"close reason longer than {MAX_REASON_BYTES} bytes")
    return reason
