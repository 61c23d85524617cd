"""Client-side pacing of publishes below the announced ``publish_rate`` (UNI-PUB-30).

A server meters each connection with a token bucket of ``burst`` tokens refilled at
``per_second`` (spec 11.4), and every ``publish`` takes a token, valid or not. A check that
outran the bucket would be answered ``rate_limited`` and would judge the server for the
suite's own haste, so every test connection paces the publishes it sends by a bucket of
its own: one token less than the burst (the server's bucket is full when it sends
``welcome``, before the suite receives it) and 90% of the announced rate, so that clock
differences and network jitter never matter.
Checks that exhaust the bucket on purpose turn pacing off on their connection.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["RATE_MARGIN", "Pacer"]

RATE_MARGIN: Final = 0.9


class Pacer:
    """A token bucket that waits instead of refusing; thread-safe."""

    def __init__(self, per_second: float, burst: float) -> None:
        self.per_second = RATE_MARGIN * per_second if per_second > 0 else 0.0
        self.burst = max(1.0, float(burst) - 1)
        self.tokens = self.burst
        self.at = time.monotonic()
        self.waited_s = 0.0
        self._lock = threading.Lock()

    @classmethod
    def from_limits(cls, limits: Mapping[str, Any]) -> Pacer | None:
        """The pacer for ``welcome.limits``; None when no usable rate is announced."""
        rate = limits.get("publish_rate")
        if not isinstance(rate, Mapping):
            return None
        per_second, burst = rate.get("per_second"), rate.get("burst")
        if not isinstance(per_second, int | float) or not isinstance(burst, int | float):
            return None
        if isinstance(per_second, bool) or isinstance(burst, bool) or per_second <= 0:
            return None
        return cls(float(per_second), float(burst))

    def wait_s(self) -> float:
        """How long a publish would wait now (0 when a token is available)."""
        with self._lock:
            tokens = min(self.burst, self.tokens + (time.monotonic() - self.at) * self.per_second)
            return 0.0 if tokens >= 1 else (1 - tokens) / self.per_second

    def ready(self) -> bool:
        """Whether a publish can go out now without waiting."""
        return self.wait_s() == 0.0

    def take(self) -> None:
        """Wait until one publish fits within the rate, then spend its token."""
        with self._lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.per_second)
            self.at = now
            if self.tokens < 1:
                wait = (1 - self.tokens) / self.per_second
                time.sleep(wait)
                self.waited_s += wait
                self.tokens, self.at = 1.0, time.monotonic()
            self.tokens -= 1
