"""Drive the I/O-free session core with hostile frames, completing broker work in place.

:class:`CoreHarness` plays the adapter: it answers ``StartSubscribe``, ``StartPublish`` and
``RefuseUnlessDuplicate`` at once (a publish is sequenced and its event frame encoded, as the
broker does), and checks every action against :mod:`fuzz.properties`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fuzz.properties import check_close, check_frame
from unisock.auth import AuthConfig, TokenVerifier, mint_token
from unisock.broker import Position, PublishResult, StoredEvent
from unisock.config import ServerConfig
from unisock.messages import encode_event_frame, readable_id
from unisock.session import (
    Action,
    Close,
    InternalFailure,
    RefuseUnlessDuplicate,
    Send,
    SessionCore,
    StartPublish,
    StartSubscribe,
)
from unisock.state import State

__all__ = ["REQUESTS", "SECRET", "T0", "CoreHarness"]

SECRET = "fuzz-secret-0123456789abcdef0123456789"
T0 = 1_764_120_000_000
EPOCH = "e-fuzz"
REQUESTS = frozenset({"subscribe", "unsubscribe", "publish", "refresh"})


@dataclass
class CoreHarness:
    """One session core after ``hello`` (or before it, with ``authenticated=False``)."""

    authenticated: bool = True
    config: ServerConfig = field(default_factory=ServerConfig)
    core: SessionCore = field(init=False)
    offsets: int = 0
    now: int = T0
    closed: tuple[int, str] | None = None

    def __post_init__(self) -> None:
        verifier = TokenVerifier(AuthConfig(hs256_secret=SECRET))
        self.core = SessionCore(self.config, verifier, "c-fuzz", lambda: self.now)
        if self.authenticated:
            token = mint_token(
                SECRET,
                "acme",
                "alice",
                subscribe=[">", "$me.>", "$sys.>"],
                publish=[">", "$me.>"],
                now=T0 / 1000,
            )
            replies = self.send(json.dumps({"type": "hello", "token": token}))
            assert replies and replies[0]["type"] == "welcome", replies

    def token(self, **claims: Any) -> str:
        return mint_token(SECRET, "acme", "alice", now=T0 / 1000, **claims)

    def send(self, text: str) -> list[dict[str, Any]]:
        """Feed one frame; returns the messages sent back. Raises AssertionError on a defect."""
        was_open = self.core.state is not State.AWAITING_HELLO
        actions = self.core.receive_text(text)
        frames = self._settle(actions)
        self.now += 1
        self._check_replies(text, frames, was_open)
        return frames

    def _settle(self, actions: list[Action]) -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        pending = list(actions)
        while pending:
            action = pending.pop(0)
            assert not isinstance(action, InternalFailure), f"core defect: {action.error!r}"
            if isinstance(action, Send):
                frames.append(check_frame(action.frame))
            elif isinstance(action, Close):
                check_close(action.code, action.reason)
                self.closed = (action.code, action.reason)
            elif isinstance(action, StartSubscribe):
                text = action.pattern.text
                head = Position(EPOCH, self.offsets) if action.head is not None else None
                pending += self.core.subscribe_result(text, head)
                pending += self.core.subscription_active(text)
            elif isinstance(action, StartPublish):
                self.offsets += 1
                frame = encode_event_frame(action.record, EPOCH, self.offsets, self.now)
                check_frame(frame)
                event = StoredEvent(action.record, EPOCH, self.offsets, self.now, frame)
                pending += self.core.publish_result(action.request_id, PublishResult(event, False))
            elif isinstance(action, RefuseUnlessDuplicate):
                pending += self.core.publish_failed(action.request_id, action.error)
        return frames

    def _check_replies(self, text: str, frames: list[dict[str, Any]], was_open: bool) -> None:
        """UNI-TR-26: exactly one reply to a request; none of them an ack after an error."""
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):
            return
        if not was_open or not isinstance(message, dict) or self.core.state is State.CLOSED:
            return
        rid = readable_id(message)
        if (
            rid is None
            or not isinstance(message.get("type"), str)
            or message["type"] not in REQUESTS
        ):
            return
        replies = [f for f in frames if f.get("id") == rid and f["type"] != "event"]
        if any(f["type"] == "error" and f.get("code") == "invalid_json" for f in frames):
            return  # the id was never readable: the payload broke a JSON limit
        assert len(replies) == 1, f"expected exactly one reply to {text[:200]}, got {replies}"
