"""The lock-free hot-path metrics are exposed exactly as prometheus_client's own would be."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from unisock.metrics import LATENCY_BUCKETS, Metrics, PlainCounter, PlainHistogram

_CREATED = re.compile(r"^(\w+_created) \S+$", re.MULTILINE)
OBSERVED = (0.0, 0.0004, 0.0005, 0.00050001, 0.003, 0.25, 1.0, 1.5, 30.0)


def _render(registry: CollectorRegistry) -> str:
    """The exposition with creation times (instants, not counts) left out."""
    return _CREATED.sub(r"\1 T", generate_latest(registry).decode())


def test_metrics_plain_counter_and_histogram_render_like_prometheus_client() -> None:
    """Same increments and observations, same text: names, types, buckets, sums."""
    reference, plain = CollectorRegistry(), CollectorRegistry()
    counter = Counter("unisock_frames_total", "Frames.", registry=reference)
    histogram = Histogram(
        "unisock_lat_seconds", "Lat.", buckets=LATENCY_BUCKETS, registry=reference
    )
    plain_counter = PlainCounter("unisock_frames", "Frames.", plain)
    plain_histogram = PlainHistogram("unisock_lat_seconds", "Lat.", LATENCY_BUCKETS, plain)
    for amount in (1, 1, 13):
        counter.inc(amount)
        plain_counter.inc(amount)
    for seconds in OBSERVED:
        histogram.observe(seconds)
        plain_histogram.observe(seconds)
    assert _render(plain) == _render(reference)
    assert 'unisock_lat_seconds_bucket{le="0.0005"} 3.0' in _render(plain)


def test_metrics_hot_counters_count_what_they_are_given() -> None:
    """The server's per-message counters add up on /metrics."""
    metrics = Metrics()
    metrics.messages_in.inc()
    metrics.deliveries.inc(13)
    metrics.deliveries.inc(2)
    text = metrics.render().decode()
    assert "unisock_messages_in_total 1.0" in text
    assert "unisock_deliveries_total 15.0" in text
    assert "unisock_messages_out_total 0.0" in text
