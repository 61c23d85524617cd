"""Reconnection timing: exponential backoff with full jitter, and drain spreading (UNI-CLOSE).

``delay = max(F, retry_after_ms, U(0, min(cap_ms, base_ms * 2**n)))`` with
``F = max(100, floor_ms)``. The floor is what keeps a broken client or server from
turning into a reconnect storm, so no input can produce a delay below it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = [
    "ABSOLUTE_FLOOR_MS",
    "DEFAULTS",
    "BackoffParams",
    "backoff_bounds",
    "backoff_delay",
    "drain_delay",
]

ABSOLUTE_FLOOR_MS = 100
"""No reconnect delay is ever shorter than this, whatever the server announces."""


@dataclass(frozen=True, slots=True)
class BackoffParams:
    """The ``backoff`` object of ``welcome``; :data:`DEFAULTS` apply before any welcome."""

    base_ms: int
    cap_ms: int
    floor_ms: int
    reset_after_ms: int

    def __post_init__(self) -> None:
        for name in ("base_ms", "cap_ms", "floor_ms", "reset_after_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer")

    @property
    def floor(self) -> int:
        """The effective floor ``F = max(100, floor_ms)``."""
        return max(ABSOLUTE_FLOOR_MS, self.floor_ms)


DEFAULTS = BackoffParams(base_ms=500, cap_ms=30000, floor_ms=250, reset_after_ms=10000)


def _ceiling(params: BackoffParams, attempt: int) -> int:
    """``min(cap_ms, base_ms * 2**attempt)`` without building huge integers."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    if params.base_ms == 0:
        return 0
    # base * 2**attempt >= 2**attempt > cap once attempt reaches cap's bit length.
    if attempt >= params.cap_ms.bit_length():
        return params.cap_ms
    return min(params.cap_ms, params.base_ms << attempt)


def _lower(params: BackoffParams, retry_after_ms: int | None) -> int:
    if retry_after_ms is None:
        return params.floor
    if retry_after_ms < 0:
        raise ValueError("retry_after_ms must be >= 0")
    return max(params.floor, retry_after_ms)


def backoff_bounds(
    params: BackoffParams, attempt: int, retry_after_ms: int | None = None
) -> tuple[int, int]:
    """The inclusive range ``(low, high)`` every delay for ``attempt`` falls in (UNI-CLOSE).

    ``attempt`` counts consecutive failed attempts (0 for the first reconnect).
    """
    low = _lower(params, retry_after_ms)
    return low, max(low, _ceiling(params, attempt))


def backoff_delay(
    params: BackoffParams,
    attempt: int,
    rng: random.Random,
    retry_after_ms: int | None = None,
) -> int:
    """One delay in milliseconds: full jitter over ``[0, ceiling]``, raised to the floor."""
    low = _lower(params, retry_after_ms)
    return max(low, rng.randint(0, _ceiling(params, attempt)))


def drain_delay(window_ms: int | None, params: BackoffParams, rng: random.Random) -> int:
    """Delay for class ``now`` (drain, restart): uniform over ``[0, window_ms]``, never below F.

    Without a window (none in the close reason or drain message) ``cap_ms`` is used.
    """
    window = params.cap_ms if window_ms is None else window_ms
    if window < 0:
        raise ValueError("window_ms must be >= 0")
    return max(params.floor, rng.randint(0, window))
