"""A history checker for delivery under faults, in the spirit of Jepsen's queue checkers.

A run records, from every client, each publish attempt and its outcome, and each event and gap
that a subscriber's client handed to the application (after its own deduplication, UNI-DEL-30).
:func:`check` then verifies, per subscriber and channel:

- **no duplicates**: no position, and no message id within one epoch, is delivered twice;
- **order**: offsets strictly increase within an epoch, and an epoch once left never returns;
- **no loss**: every acknowledged event is delivered exactly once, at the acknowledged
  position, or covered by an explicit gap: a gap of its epoch at or after its offset, or a gap
  into an epoch that began after it (spec 7.7, UNI-DEL-23). A message may also appear in an
  earlier epoch that was lost: its first attempt took effect there, the store lost the epoch
  and its dedup records, and the retry was acked in the next;
- **isolation**: nothing published in one tenant reaches a subscriber of another (UNI-CH-2),
  and nothing is delivered that nobody published.

Epochs are opaque (UNI-DEL-10); "began after" is judged from when the run first observed each
epoch of a channel, in any ack, event or gap: a deployment has one current epoch per channel.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

__all__ = ["Delivery", "History", "Publish", "Verdict", "check"]


@dataclass(frozen=True, slots=True)
class Publish:
    """One publish, its final outcome: acked (with position) or not acked (refused, lost)."""

    tenant: str
    channel: str
    message_id: str
    acked: bool
    epoch: str | None = None
    offset: int | None = None
    at: float = 0.0
    """When the outcome was known (monotonic seconds)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """An event or a gap as a subscriber's application received it."""

    subscriber: str
    tenant: str
    channel: str
    kind: str  # "event" | "gap"
    epoch: str
    offset: int
    message_id: str | None = None
    reason: str | None = None
    at: float = 0.0


@dataclass
class History:
    """Everything a run recorded; appended to by the clients as things happen."""

    publishes: list[Publish] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    subscribers: dict[str, str] = field(default_factory=dict)
    """subscriber name -> tenant, for every subscriber that took part."""
    channels: dict[str, list[str]] = field(default_factory=dict)
    """subscriber name -> channels it was subscribed to for the whole run."""


@dataclass
class Verdict:
    """The checker's result: violations (empty when the history is valid) and counts."""

    violations: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.violations

    def report(self, limit: int = 20) -> str:
        lines = [f"verdict: {'valid' if self.ok else 'INVALID'}"]
        lines += [f"  {name}: {value}" for name, value in sorted(self.counts.items())]
        if self.violations:
            lines.append(f"violations ({len(self.violations)}):")
            lines += [f"  {text}" for text in self.violations[:limit]]
            if len(self.violations) > limit:
                lines.append(f"  ... and {len(self.violations) - limit} more")
        return "\n".join(lines)


def _epoch_order(history: History) -> dict[tuple[str, str], dict[str, float]]:
    """Per (tenant, channel): epoch -> when the run first observed it."""
    first: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)

    def seen(tenant: str, channel: str, epoch: str, at: float) -> None:
        known = first[(tenant, channel)]
        if epoch not in known or at < known[epoch]:
            known[epoch] = at

    for p in history.publishes:
        if p.acked and p.epoch is not None:
            seen(p.tenant, p.channel, p.epoch, p.at)
    for d in history.deliveries:
        seen(d.tenant, d.channel, d.epoch, d.at)
    return first


def check(history: History) -> Verdict:
    """Verify the four properties above; the counts say how much each covered."""
    verdict = Verdict()
    counts = verdict.counts
    bad = verdict.violations
    published: dict[str, Publish] = {}
    for p in history.publishes:
        published[p.message_id] = p
        counts["publishes acked" if p.acked else "publishes not acked"] += 1
    epochs_seen = _epoch_order(history)
    per_stream: dict[tuple[str, str], list[Delivery]] = defaultdict(list)
    for d in history.deliveries:
        per_stream[(d.subscriber, d.channel)].append(d)
        counts[f"{d.kind}s delivered" if d.kind == "event" else f"gaps ({d.reason})"] += 1

    for subscriber, tenant in sorted(history.subscribers.items()):
        for channel in history.channels.get(subscriber, []):
            stream = per_stream.get((subscriber, channel), [])
            order = epochs_seen.get((tenant, channel), {})
            where = f"{subscriber} on {channel}"
            delivered = _check_stream(where, tenant, stream, published, order, bad, counts)
            _check_acked(where, tenant, channel, stream, delivered, order, history, bad, counts)
    counts["subscriber streams"] = sum(len(chs) for chs in history.channels.values())
    return verdict


def _check_stream(
    where: str,
    tenant: str,
    stream: list[Delivery],
    published: dict[str, Publish],
    order: dict[str, float],
    bad: list[str],
    counts: Counter[str],
) -> dict[tuple[str, int], Delivery]:
    """Duplicates, order and isolation over one subscriber's stream of one channel."""
    positions: dict[tuple[str, int], Delivery] = {}
    ids: set[tuple[str, str]] = set()
    left: set[str] = set()
    last: tuple[str, int] | None = None
    for d in stream:
        if last is not None and d.epoch != last[0]:
            left.add(last[0])
        if d.epoch in left:
            bad.append(f"{where}: epoch {d.epoch} came back after the channel moved on")
        if last is not None and d.epoch == last[0] and d.kind == "event" and d.offset <= last[1]:
            bad.append(f"{where}: offset {d.offset} after {last[1]} in epoch {d.epoch}")
        last = (d.epoch, max(d.offset, last[1]) if last and last[0] == d.epoch else d.offset)
        if d.kind != "event":
            continue
        key = (d.epoch, d.offset)
        if key in positions:
            bad.append(f"{where}: position {d.epoch}:{d.offset} delivered twice")
            counts["duplicates"] += 1
        positions[key] = d
        assert d.message_id is not None
        if (d.epoch, d.message_id) in ids:
            bad.append(f"{where}: message {d.message_id} delivered twice in epoch {d.epoch}")
        ids.add((d.epoch, d.message_id))
        origin = published.get(d.message_id)
        if origin is None:
            bad.append(f"{where}: {d.message_id} was delivered but never published")
        elif origin.tenant != tenant:
            bad.append(f"{where}: {d.message_id} of tenant {origin.tenant} crossed tenants")
            counts["cross-tenant deliveries"] += 1
        elif origin.acked and (origin.epoch, origin.offset) != key:
            assert origin.epoch is not None
            if d.epoch != origin.epoch and order.get(d.epoch, d.at) < order.get(
                origin.epoch, origin.at
            ):
                # The attempt took effect in an epoch the store then lost with its dedup
                # records, and its retry was acked in the next: two events, one per epoch.
                counts["acked events also sequenced in a lost epoch"] += 1
                continue
            bad.append(
                f"{where}: {d.message_id} delivered at {d.epoch}:{d.offset}, "
                f"acked at {origin.epoch}:{origin.offset}"
            )
    return positions


def _check_acked(
    where: str,
    tenant: str,
    channel: str,
    stream: list[Delivery],
    delivered: dict[tuple[str, int], Delivery],
    order: dict[str, float],
    history: History,
    bad: list[str],
    counts: Counter[str],
) -> None:
    """Every acked event of the channel: delivered once, or covered by a gap."""
    gaps = [d for d in stream if d.kind == "gap"]
    for p in history.publishes:
        if not p.acked or p.tenant != tenant or p.channel != channel:
            continue
        assert p.epoch is not None and p.offset is not None
        got = delivered.get((p.epoch, p.offset))
        if got is not None:
            counts["acked events delivered"] += 1
            continue
        began = order.get(p.epoch, p.at)
        if any(
            (g.epoch == p.epoch and g.offset >= p.offset)
            or (g.epoch != p.epoch and order.get(g.epoch, g.at) > began)
            for g in gaps
        ):
            counts["acked events covered by a gap"] += 1
            continue
        bad.append(f"{where}: acked {p.message_id} at {p.epoch}:{p.offset} lost without a gap")
        counts["acked events lost"] += 1
