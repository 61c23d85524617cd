"""Prometheus metrics of one server node, served on the WebSocket port at ``/metrics``.

Each server owns its own registry so that several servers in one process (tests, benchmarks)
never share counters. Per-recipient work is counted in batches per event, never per frame.

The counters that move with every message and event (frames in and out, publishes,
deliveries, the delivery latency) are plain numbers read when ``/metrics`` is scraped:
``prometheus_client`` takes a lock per increment, which the event loop, their only writer,
does not need. They are exposed exactly as its own counters and histograms would be.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class PlainCounter:
    """A counter without a lock, for the event loop's hot path; registered like a Counter."""

    __slots__ = ("created", "documentation", "name", "value")

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.value = 0
        self.created = time.time()
        registry.register(self)

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self.name, self.documentation)
        family.add_metric((), self.value, created=self.created)
        return [family]


class PlainHistogram:
    """A histogram without a lock (see :class:`PlainCounter`), with Histogram's buckets."""

    __slots__ = ("bounds", "counts", "created", "documentation", "name", "total")

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = (*buckets, float("inf"))
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.created = time.time()
        registry.register(self)

    def observe(self, amount: float) -> None:
        # The first bucket whose bound is at least ``amount`` (Prometheus' ``le``).
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.total += amount

    def collect(self) -> Iterable[Metric]:
        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            running += count
            cumulative.append((_bound_text(bound), running))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric((), cumulative, self.total)
        family.samples.append(Sample(f"{self.name}_created", {}, self.created))
        return [family]


def _bound_text(bound: float) -> str:
    # As prometheus_client writes a bucket's ``le`` label.
    return "+Inf" if bound == float("inf") else repr(float(bound))


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
        self.messages_in = PlainCounter(
            "unisock_messages_in", "Frames received from clients.", self.registry
        )
        self.messages_out = PlainCounter(
            "unisock_messages_out", "Frames queued to clients.", self.registry
        )
        self.published = PlainCounter(
            "unisock_events_published",
            "Events sequenced by publishes on this node.",
            self.registry,
        )
        self.deliveries = PlainCounter(
            "unisock_deliveries", "Event frames delivered to connections.", self.registry
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
        self.latency = PlainHistogram(
            "unisock_delivery_latency_seconds",
            "Time from sequencing to the frame being written, per event fan-out on this node.",
            LATENCY_BUCKETS,
            self.registry,
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
