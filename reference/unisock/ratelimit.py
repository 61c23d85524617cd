"""Per-connection publish rate: a token bucket with an injected clock (UNI-PUB, UNI-LIM)."""

from __future__ import annotations

import math

__all__ = ["TokenBucket"]


class TokenBucket:
    """``burst`` tokens, refilled continuously at ``per_second``; starts full.

    The clock is passed to :meth:`try_take` so tests control time exactly.
    """

    __slots__ = ("_last_ms", "_tokens", "burst", "per_second")

    def __init__(self, per_second: float, burst: int) -> None:
        if not per_second > 0:
            raise ValueError("per_second must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.per_second = per_second
        self.burst = burst
        self._tokens = float(burst)
        self._last_ms: int | None = None

    def try_take(self, now_ms: int) -> int | None:
        """Take one token: ``None`` when allowed, else the ms until one is available (>= 1)."""
        if self._last_ms is not None and now_ms > self._last_ms:
            refill = (now_ms - self._last_ms) * self.per_second / 1000.0
            self._tokens = min(float(self.burst), self._tokens + refill)
        if self._last_ms is None or now_ms > self._last_ms:
            # A clock that steps back never refills and never moves the reference point back.
            self._last_ms = now_ms
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        # The epsilon keeps float noise (0.999...) from adding a millisecond to the wait.
        return max(1, math.ceil((1.0 - self._tokens) * 1000.0 / self.per_second - 1e-9))
