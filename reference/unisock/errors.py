"""One error tree for the protocol core; every error knows its wire form (UNI-ERR, UNI-CLOSE).

``PeerError`` means the peer broke a rule; ``LocalError`` means this side's API was misused;
``ServiceError`` means this side could not serve a valid request. Peer and service errors
become either an ``error`` message (the connection survives, UNI-ERR) or a close frame
(``CloseError``). Nothing here ever puts internals, stack traces or tokens on the wire.
"""

from __future__ import annotations

from typing import Any, ClassVar

from unisock.closecodes import format_close_reason

__all__ = [
    "AlreadyAuthenticated",
    "AlreadySubscribed",
    "AuthFailed",
    "AuthTimeout",
    "CloseError",
    "Forbidden",
    "HeartbeatTimeout",
    "IllegalTransition",
    "InternalError",
    "InvalidChannel",
    "InvalidEventData",
    "InvalidFilter",
    "InvalidJson",
    "InvalidMessage",
    "InvalidPosition",
    "LocalError",
    "MessageInvariantError",
    "MessageTooBig",
    "NotSubscribed",
    "PeerError",
    "ProtocolViolation",
    "RateLimited",
    "ReplyError",
    "RequestError",
    "ServiceError",
    "ServiceRestart",
    "SlowConsumer",
    "SubscriptionLimit",
    "TokenExpired",
    "TokenInvalid",
    "TokenMismatch",
    "Unavailable",
    "UnisockError",
    "UnknownEventType",
    "UnknownType",
    "UnsupportedData",
    "error_classes",
]


class UnisockError(Exception):
    """Root of every error the protocol core raises."""


class PeerError(UnisockError):
    """The peer broke a protocol rule."""


class LocalError(UnisockError):
    """This side's API was misused (a bug in the caller, never the peer's fault)."""


class IllegalTransition(LocalError):
    """The session state machine was asked for a transition its table does not have."""


class MessageInvariantError(LocalError, ValueError):
    """A message dataclass was built with values that break its invariants.

    The parser turns this into :class:`InvalidMessage` when the values came from the peer.
    """


# --- errors that become a close frame ---------------------------------------------------------


class CloseError(PeerError):
    """A rule violation that ends the connection with ``close_code`` (UNI-CLOSE)."""

    close_code: ClassVar[int] = 4000
    close_name: ClassVar[str] = "protocol_violation"

    def __init__(self, message: str = "", *, retry_after_ms: int | None = None) -> None:
        super().__init__(message or self.close_name)
        self.retry_after_ms = retry_after_ms

    def close_reason(self) -> str:
        """The close reason: ``<name>`` then an optional ``;retry_after_ms=<int>`` (UNI-CLOSE)."""
        if self.retry_after_ms is None:
            return self.close_name
        return f"{self.close_name};retry_after_ms={self.retry_after_ms}"


class ProtocolViolation(CloseError):
    """The first message was not a valid ``hello`` (UNI-LC)."""

    close_code = 4000
    close_name = "protocol_violation"


class AuthFailed(CloseError):
    """The token does not verify: forged, expired, bad claims, refused algorithm (UNI-AUTH)."""

    close_code = 4100
    close_name = "auth_failed"


class TokenExpired(CloseError):
    """The token expired without a successful refresh (UNI-AUTH)."""

    close_code = 4101
    close_name = "token_expired"


class AuthTimeout(CloseError):
    """No ``hello`` arrived within ``auth_timeout_ms`` (UNI-LC)."""

    close_code = 4102
    close_name = "auth_timeout"


class SlowConsumer(CloseError):
    """The outbound queue grew beyond ``max_queue`` (UNI-LIM)."""

    close_code = 4200
    close_name = "slow_consumer"


class HeartbeatTimeout(CloseError):
    """Nothing was received for ``interval_ms + timeout_ms`` (UNI-HB)."""

    close_code = 4201
    close_name = "heartbeat_timeout"


class MessageTooBig(CloseError):
    """An inbound frame exceeded ``max_message_bytes`` (UNI-LIM)."""

    close_code = 1009
    close_name = "message_too_big"


class UnsupportedData(CloseError):
    """A binary frame arrived; Unisock speaks text frames only (UNI-TR)."""

    close_code = 1003
    close_name = "unsupported_data"


class ServiceRestart(CloseError):
    """This node can no longer vouch for what it delivered (it missed events its broker no
    longer holds): the client reconnects within ``window_ms`` and resumes (UNI-ERR-17)."""

    close_code = 1012
    close_name = "service_restart"

    def __init__(self, message: str = "", *, window_ms: int) -> None:
        super().__init__(message)
        self.window_ms = window_ms

    def close_reason(self) -> str:
        return format_close_reason(self.close_name, window_ms=self.window_ms)


# --- errors that become an `error` message ----------------------------------------------------


class ReplyError(UnisockError):
    """An error answered with an ``error`` message; the connection survives (UNI-ERR).

    ``request_id`` is the offending message's ``id`` when it was readable.
    """

    code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str = "",
        *,
        request_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message or self.code.replace("_", " "))
        self.message = message or self.code.replace("_", " ")
        self.request_id = request_id
        self.details = details

    def to_message(self, request_id: str | None = None) -> dict[str, Any]:
        """The ``error`` wire message; ``request_id`` overrides the one recorded at raise time."""
        rid = request_id if request_id is not None else self.request_id
        out: dict[str, Any] = {"type": "error"}
        if rid is not None:
            out["id"] = rid
        out["code"] = self.code
        out["message"] = self.message
        retry = self._retry_after_ms()
        if retry is not None:
            out["retry_after_ms"] = retry
        if self.details:
            out["details"] = dict(self.details)
        return out

    def _retry_after_ms(self) -> int | None:
        return None


class RequestError(PeerError, ReplyError):
    """The peer's request was refused; one subclass per wire error code (UNI-ERR).

    ``message_type`` is the refused message's ``type`` when parsing got that far: every
    ``publish`` frame costs a rate-limit token, even one that fails validation (UNI-PUB-24).
    """

    message_type: str | None = None


class InvalidJson(RequestError):
    code = "invalid_json"


class InvalidMessage(RequestError):
    code = "invalid_message"


class UnknownType(RequestError):
    code = "unknown_type"


class AlreadyAuthenticated(RequestError):
    code = "already_authenticated"


class InvalidChannel(RequestError):
    code = "invalid_channel"


class InvalidFilter(RequestError):
    code = "invalid_filter"


class Forbidden(RequestError):
    code = "forbidden"


class AlreadySubscribed(RequestError):
    code = "already_subscribed"


class NotSubscribed(RequestError):
    code = "not_subscribed"


class SubscriptionLimit(RequestError):
    code = "subscription_limit"


class RateLimited(RequestError):
    """Over the publish rate; ``retry_after_ms`` says when a token is available (UNI-PUB)."""

    code = "rate_limited"

    def __init__(
        self, message: str = "", *, retry_after_ms: int, request_id: str | None = None
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.retry_after_ms = retry_after_ms

    def _retry_after_ms(self) -> int | None:
        return self.retry_after_ms


class UnknownEventType(RequestError):
    code = "unknown_event_type"


class InvalidEventData(RequestError):
    """Typed-event data failed its schema; ``pointer`` names where (UNI-PUB), nothing more."""

    code = "invalid_event_data"

    def __init__(self, message: str = "", *, pointer: str, request_id: str | None = None) -> None:
        super().__init__(message, request_id=request_id, details={"pointer": pointer})
        self.pointer = pointer


class InvalidPosition(RequestError):
    code = "invalid_position"


class TokenInvalid(RequestError):
    code = "token_invalid"


class TokenMismatch(RequestError):
    code = "token_mismatch"


class ServiceError(ReplyError):
    """This side could not serve a valid request (not the peer's fault)."""


class InternalError(ServiceError):
    """An unexpected failure: the wire sees only ``internal_error`` and a fixed text (UNI-ERR)."""

    code = "internal_error"

    def __init__(self, request_id: str | None = None) -> None:
        super().__init__("internal error", request_id=request_id)


class Unavailable(ServiceError):
    """A dependency (the broker) is unavailable; the client may retry after ``retry_after_ms``."""

    code = "unavailable"

    def __init__(
        self, message: str = "", *, retry_after_ms: int, request_id: str | None = None
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.retry_after_ms = retry_after_ms

    def _retry_after_ms(self) -> int | None:
        return self.retry_after_ms


def error_classes() -> dict[str, type[ReplyError]]:
    """Every ``error`` code and its class (one class per code of the registry, UNI-ERR)."""
    found: dict[str, type[ReplyError]] = {}
    pending: list[type[ReplyError]] = [RequestError, ServiceError]
    while pending:
        klass = pending.pop()
        pending.extend(klass.__subclasses__())
        if klass not in (RequestError, ServiceError):
            found[klass.code] = klass
    return found
