"""Close reasons as spec 9.2 defines them: the grammar, the registry names, the parameters.

Every check that receives a close from the server can hold its reason to UNI-CLOSE-9 here,
not only the checks that exist to provoke one; :data:`SERVER_CLOSES` keeps every close the
server starts during a run, so that one last check holds all of them to it.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass

from unisock.schemas import SCHEMA_ROOT

__all__ = [
    "NAMES",
    "REASON",
    "SERVER_CLOSES",
    "CloseLog",
    "SeenClose",
    "reason_parameters",
    "reason_problem",
]

_REGISTRY = json.loads((SCHEMA_ROOT / "registries" / "close-codes.json").read_text("utf-8"))
NAMES: dict[int, str] = {int(entry["code"]): str(entry["name"]) for entry in _REGISTRY["codes"]}
"""Registry name of every listed close code."""
_INT = r"(?:0|[1-9][0-9]{0,15})"
REASON = re.compile(
    rf"(?P<name>[a-z][a-z0-9_]*)"
    rf"(?:;retry_after_ms={_INT}(?:;window_ms={_INT})?|;window_ms={_INT}(?:;retry_after_ms={_INT})?)?"
)
"""The ``close-reason`` rule of spec 9.2."""


def reason_problem(code: int, reason: str) -> str | None:
    """What breaks UNI-CLOSE-9 in the reason of a close with ``code``, or None."""
    if len(reason.encode("utf-8")) > 123:
        return f"close reason longer than 123 octets: {reason!r}"
    match = REASON.fullmatch(reason)
    if match is None:
        return f"close reason {reason!r} does not follow the grammar"
    if code in NAMES and match.group("name") != NAMES[code]:
        return f"close reason {reason!r} does not start with {NAMES[code]!r}, the name of {code}"
    return None


def reason_parameters(reason: str) -> dict[str, int]:
    """The parameters of a reason that follows the grammar (``window_ms``, ``retry_after_ms``)."""
    pairs = (part.partition("=") for part in reason.split(";")[1:])
    return {name: int(value) for name, _, value in pairs}


@dataclass(frozen=True)
class SeenClose:
    """A close the server started: on which check's connection, with what code and reason."""

    check: str
    connection: str
    code: int
    reason: str


class CloseLog:
    """The closes the server started during one run, from every check's connections.

    A close the suite started is left out: the server's answer echoes the suite's reason.
    Reader threads of many checks record here at once, so the list has a lock.
    """

    def __init__(self) -> None:
        self._seen: list[SeenClose] = []
        self._lock = threading.Lock()

    def record(self, close: SeenClose) -> None:
        with self._lock:
            self._seen.append(close)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()

    def seen(self) -> list[SeenClose]:
        with self._lock:
            return list(self._seen)

    def problems(self) -> list[str]:
        """One line per close whose reason breaks UNI-CLOSE-9, naming the check it came in."""
        lines = []
        for close in self.seen():
            problem = reason_problem(close.code, close.reason)
            if problem is not None:
                where = f"{close.check} ({close.connection})" if close.check else close.connection
                lines.append(f"{where}: close {close.code}: {problem}")
        return lines


SERVER_CLOSES = CloseLog()
"""Every close the server started in this process's current run (cleared when a run starts)."""
