"""The properties every fuzz case is held to, whatever was sent (issue-independent: spec rules).

- no exception escapes the session core: an ``InternalFailure`` action is a defect found;
- every server message validates against ``schemas/v1/server-message.json`` (UNI-TR-9);
- every close uses a registry code, with a reason that follows the close-reason grammar and
  names that code (UNI-CLOSE-9);
- a request gets at most one reply, and a refused publish is never sequenced (UNI-TR-26,
  UNI-ERR-6).
"""

from __future__ import annotations

import json
from typing import Any

from unisock.schemas import validate_server_message
from unisock_conformance.closes import NAMES as CLOSE_NAMES
from unisock_conformance.closes import reason_problem

__all__ = ["CLOSE_NAMES", "check_close", "check_frame"]


def check_frame(text: str) -> dict[str, Any]:
    """One server text frame: JSON, an object, valid against the server-message schema."""
    message = json.loads(text)
    problems = validate_server_message(message)
    assert not problems, f"server message violates its schema: {problems[:3]} in {text[:300]}"
    assert isinstance(message, dict)
    return dict(message)


def check_close(code: int | None, reason: str, *, allowed: frozenset[int] | None = None) -> None:
    """A close the server sent: registry code, grammar reason naming it (or library text)."""
    assert code is not None, "the connection ended without a close frame"
    assert code in CLOSE_NAMES, f"close code {code} is not in the registry"
    assert code != 1000, "the server never closes with 1000: a client would not reconnect"
    if allowed is not None:
        assert code in allowed, f"close {code} {reason!r}, expected one of {sorted(allowed)}"
    problem = reason_problem(code, reason)
    assert problem is None, f"close {code}: {problem}"
