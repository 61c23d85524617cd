"""Pick the broker a configuration names: the embedded in-memory one, or Redis."""

from __future__ import annotations

from collections.abc import Callable

from unisock.broker import Broker
from unisock.config import ServerConfig
from unisock.memory_broker import MemoryBroker
from unisock.messages import encode_event_frame

__all__ = ["build_broker"]


def build_broker(config: ServerConfig, clock: Callable[[], int]) -> Broker:
    """The broker of ``config.broker``; ``clock`` stamps events of the in-memory broker only.

    On Redis every node stamps and ages events by Redis's clock, so that nodes whose clocks
    differ still keep ``ts`` non-decreasing per channel and age history alike.
    """
    if config.broker == "memory":
        return MemoryBroker(
            history_max_count=config.history_max_count,
            history_max_age_ms=config.history_max_age_ms,
            dedup_window_ms=config.dedup_window_ms,
            clock=clock,
            encode_frame=encode_event_frame,
        )
    from unisock.redis_broker import RedisBroker  # redis-py only when a deployment uses it

    return RedisBroker(
        config.broker,
        prefix=config.broker_key_prefix,
        history_max_count=config.history_max_count,
        history_max_age_ms=config.history_max_age_ms,
        dedup_window_ms=config.dedup_window_ms,
        encode_frame=encode_event_frame,
    )
