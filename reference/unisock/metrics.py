"""Prometheus metrics of one server node, served on the WebSocket port at ``/metrics``.

Each server owns its own registry so that several servers in one process (tests, benchmarks)
never share counters. Per-recipient work is counted in batches per event, never per frame.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """The counters the operations section of the docs describes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connections = Gauge(
            "unisock_connections",
            "Open authenticated connections.",
            ["tenant"],
            registry=self.registry,
        )
        self.messages_in = Counter(
            "unisock_messages_in_total", "Frames received from clients.", registry=self.registry
        )
        self.messages_out = Counter(
            "unisock_messages_out_total", "Frames queued to clients.", registry=self.registry
        )
        self.published = Counter(
            "unisock_events_published_total",
            "Events sequenced by publishes on this node.",
            registry=self.registry,
        )
        self.deliveries = Counter(
            "unisock_deliveries_total",
            "Event frames delivered to connections.",
            registry=self.registry,
        )
        self.drops = Counter(
            "unisock_slow_consumer_closes_total",
            "Connections cut for exceeding max_queue.",
            registry=self.registry,
        )
        self.coalesced = Counter(
            "unisock_coalesced_events_total",
            "Queued events replaced by a newer one.",
            registry=self.registry,
        )
        self.resume_hits = Counter(
            "unisock_resume_replays_total",
            "Resume requests answered with a replay.",
            registry=self.registry,
        )
        self.resume_gaps = Counter(
            "unisock_resume_gaps_total",
            "Resume requests answered with a gap.",
            ["reason"],
            registry=self.registry,
        )
        self.closes = Counter(
            "unisock_closes_total",
            "Connections closed by the server, by close code.",
            ["code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "unisock_delivery_latency_seconds",
            "Time from sequencing to the frame being written, per event fan-out on this node.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
