"""Server configuration: every parameter the server announces in ``welcome``, and a few more.

Defaults are the values of the wire contract (UNI-LIM, UNI-HB, UNI-CLOSE). The configuration
is frozen: a running server never changes what it announced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from unisock.channels import Pattern, parse_pattern
from unisock.errors import InvalidEventData, UnknownEventType
from unisock.fastschema import compile_schema

__all__ = ["FEATURES", "EventTypeRegistry", "ServerConfig"]

FEATURES = ("coalescing", "system_namespace", "typed_events")
"""Optional features this implementation supports (``welcome.features``)."""

RegistryMode = Literal["open", "strict"]

_BROKER_SCHEMES = ("redis://", "rediss://", "unix://")
_POSITIVE = (
    "heartbeat_interval_ms",
    "heartbeat_timeout_ms",
    "max_message_bytes",
    "max_subscriptions",
    "publish_rate_burst",
    "max_queue",
    "max_connections_per_user",
    "auth_timeout_ms",
    "max_filter_nodes",
    "max_targets",
    "max_attrs",
    "history_max_count",
    "history_max_age_ms",
    "dedup_window_ms",
)
_NON_NEGATIVE = (
    "backoff_base_ms",
    "backoff_cap_ms",
    "backoff_floor_ms",
    "backoff_reset_after_ms",
    "refresh_warning_ms",
    "drain_window_ms",
)


@dataclass(frozen=True)
class ServerConfig:
    """Everything a server needs to know that is not per connection."""

    heartbeat_interval_ms: int = 25_000
    heartbeat_timeout_ms: int = 10_000
    backoff_base_ms: int = 500
    backoff_cap_ms: int = 30_000
    backoff_floor_ms: int = 250
    backoff_reset_after_ms: int = 10_000
    max_message_bytes: int = 65_536
    max_subscriptions: int = 100
    publish_rate_per_second: int = 50
    publish_rate_burst: int = 100
    max_queue: int = 1024
    max_connections_per_user: int = 5
    auth_timeout_ms: int = 10_000
    max_filter_nodes: int = 32
    max_targets: int = 100
    max_attrs: int = 16
    history_max_count: int = 1000
    history_max_age_ms: int = 300_000
    dedup_window_ms: int = 120_000
    refresh_warning_ms: int = 60_000
    features: tuple[str, ...] = FEATURES
    coalescing_channels: tuple[str, ...] = ()
    """Patterns of channels whose queued events coalesce by key (UNI-DEL coalescing)."""
    event_types: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Typed-event registry: event type name -> JSON Schema of its ``data`` (UNI-PUB)."""
    registry_mode: RegistryMode = "open"
    """``open`` accepts unregistered event types, ``strict`` refuses them (UNI-PUB)."""
    allowed_origins: tuple[str, ...] = ()
    """Browser origins allowed to connect; ``"*"`` allows any (UNI-SEC)."""
    drain_window_ms: int = 30_000
    """Default window clients spread their reconnects over when this node drains."""
    discard_idle_channels: bool = True
    """Discard the state of channels idle beyond ``history_max_age_ms`` with no subscriber
    on this node (UNI-SEC-14; on Redis, on any node, after a grace of two sweep intervals),
    so publisher-made channel names do not accumulate."""
    node_name: str = "unisock"
    broker: str = "memory"
    """``memory`` (one process, the default) or a Redis URL ``redis://HOST:PORT/DB`` that
    several nodes share (``rediss://`` for TLS, ``unix://`` for a socket)."""
    broker_key_prefix: str = "unisock:"
    """Prefix of every Redis key, so that several deployments can share one Redis."""

    def __post_init__(self) -> None:
        for name in _POSITIVE:
            if _bad_int(getattr(self, name), 1):
                raise ValueError(f"{name} must be a positive integer")
        for name in _NON_NEGATIVE:
            if _bad_int(getattr(self, name), 0):
                raise ValueError(f"{name} must be a non-negative integer")
        if not self.publish_rate_per_second > 0:
            raise ValueError("publish_rate_per_second must be positive")
        if not isinstance(self.discard_idle_channels, bool):
            raise ValueError("discard_idle_channels must be true or false")
        if self.registry_mode not in ("open", "strict"):
            raise ValueError("registry_mode must be 'open' or 'strict'")
        for feature in self.features:
            if feature not in FEATURES:
                raise ValueError(f"unknown feature {feature!r}")
        for text in self.coalescing_channels:
            parse_pattern(text)
        if self.broker != "memory" and not self.broker.startswith(_BROKER_SCHEMES):
            raise ValueError("broker must be 'memory' or a redis://, rediss:// or unix:// URL")
        if not self.broker_key_prefix:
            raise ValueError("broker_key_prefix must not be empty")

    def coalescing_patterns(self) -> tuple[Pattern, ...]:
        """The parsed coalescing patterns (validated at construction)."""
        return tuple(parse_pattern(text) for text in self.coalescing_channels)

    def origin_allowed(self, origin: str | None) -> bool:
        """UNI-SEC: a browser ``Origin`` must be listed; a handshake without one is accepted."""
        if origin is None:
            return True
        return "*" in self.allowed_origins or origin in self.allowed_origins

    def welcome_payload(self) -> dict[str, Any]:
        """The announced parameters of ``welcome`` (everything but the per-connection fields)."""
        return {
            "heartbeat": {
                "interval_ms": self.heartbeat_interval_ms,
                "timeout_ms": self.heartbeat_timeout_ms,
            },
            "backoff": {
                "base_ms": self.backoff_base_ms,
                "cap_ms": self.backoff_cap_ms,
                "floor_ms": self.backoff_floor_ms,
                "reset_after_ms": self.backoff_reset_after_ms,
            },
            "limits": {
                "max_message_bytes": self.max_message_bytes,
                "max_subscriptions": self.max_subscriptions,
                "publish_rate": {
                    "per_second": self.publish_rate_per_second,
                    "burst": self.publish_rate_burst,
                },
                "max_queue": self.max_queue,
                "max_connections_per_user": self.max_connections_per_user,
                "auth_timeout_ms": self.auth_timeout_ms,
                "max_filter_nodes": self.max_filter_nodes,
                "max_targets": self.max_targets,
                "max_attrs": self.max_attrs,
            },
            "history": {
                "max_count": self.history_max_count,
                "max_age_ms": self.history_max_age_ms,
            },
            "dedup_window_ms": self.dedup_window_ms,
            "refresh_warning_ms": self.refresh_warning_ms,
            "features": list(self.features),
        }


def _bad_int(value: object, minimum: int) -> bool:
    return isinstance(value, bool) or not isinstance(value, int) or value < minimum


def _pointer(path: Any) -> str:
    """RFC 6901 pointer into the publish message (``/data/...``)."""
    parts = ["", "data"]
    parts.extend(str(step).replace("~", "~0").replace("/", "~1") for step in path)
    return "/".join(parts)


class EventTypeRegistry:
    """Typed events: one compiled JSON Schema validator per registered type (UNI-PUB)."""

    def __init__(self, schemas: Mapping[str, Mapping[str, Any]], mode: RegistryMode = "open"):
        self.mode = mode
        self._validators: dict[str, Draft202012Validator] = {}
        self._checks: dict[str, Callable[[Any], bool]] = {}
        for name, schema in schemas.items():
            Draft202012Validator.check_schema(schema)
            validator = Draft202012Validator(schema)
            self._validators[name] = validator
            # A fast yes for the common case; jsonschema explains a no (UNI-PUB pointer).
            self._checks[name] = compile_schema(schema) or validator.is_valid

    @classmethod
    def from_config(cls, config: ServerConfig) -> EventTypeRegistry:
        return cls(config.event_types, config.registry_mode)

    def __contains__(self, event_type: object) -> bool:
        return event_type in self._validators

    def check(self, event_type: str, data: Any) -> None:
        """Raise :class:`InvalidEventData` (with the failing pointer) or
        :class:`UnknownEventType` (strict mode); return quietly when ``data`` is acceptable.
        """
        check = self._checks.get(event_type)
        if check is None:
            if self.mode == "strict":
                raise UnknownEventType(f"event type {event_type!r} is not registered")
            return
        if check(data):
            return
        error = best_match(self._validators[event_type].iter_errors(data))
        if error is not None:
            raise InvalidEventData(
                f"data does not match the schema of {event_type!r}",
                pointer=_pointer(error.absolute_path),
            )
