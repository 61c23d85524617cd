"""How far Redis's clock is from this node's, for publish deadlines that Redis enforces.

One ``TIME`` round trip tells the offset only to within half the round trip: on a loaded node
whose event loop reads the reply late, a single sample can be off by most of a second, and a
deadline computed with it would have Redis refuse publishes that were in time. So the estimate
keeps the sample with the smallest error bound, letting a bound grow slowly with age so that a
clock that was stepped is followed within minutes.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ClockSkew"]

_DRIFT: Final = 0.001
"""How fast an accepted sample's error bound grows with its age (1 ms per second)."""


class ClockSkew:
    """The best estimate so far of (Redis clock - local clock), in milliseconds."""

    def __init__(self) -> None:
        self.offset_ms = 0.0
        self.error_ms: float | None = None  # None until a first sample
        self._at_ms = 0.0

    def sample(self, sent_ms: float, remote_ms: float, received_ms: float) -> bool:
        """One round trip: sent and received on the local clock, ``remote_ms`` read between.
        Returns whether it replaced the estimate."""
        error = max(received_ms - sent_ms, 0.0) / 2
        if self.error_ms is not None:
            aged = self.error_ms + (received_ms - self._at_ms) * _DRIFT
            if error > aged:
                return False
        self.offset_ms = remote_ms - (sent_ms + received_ms) / 2
        self.error_ms = error
        self._at_ms = received_ms
        return True
