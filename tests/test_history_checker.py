"""The history checker of the fault runs: it accepts valid histories and catches each kind of
violation (so that a valid verdict from a fault run means something)."""

from __future__ import annotations

from history import Delivery, History, Publish, check


def _history(*deliveries: Delivery, publishes: list[Publish] | None = None) -> History:
    history = History(
        publishes=publishes
        if publishes is not None
        else [
            Publish("acme", "c", "m1", True, "e1", 1, at=1.0),
            Publish("acme", "c", "m2", True, "e1", 2, at=2.0),
            Publish("acme", "c", "m3", False, at=2.5),
            Publish("globex", "c", "g1", True, "x1", 1, at=3.0),
        ],
        deliveries=list(deliveries),
    )
    history.subscribers = {"s": "acme"}
    history.channels = {"s": ["c"]}
    return history


def event(offset: int, message_id: str, epoch: str = "e1", at: float = 5.0) -> Delivery:
    return Delivery("s", "acme", "c", "event", epoch, offset, message_id, at=at)


def gap(offset: int, epoch: str, reason: str = "window_exceeded", at: float = 5.0) -> Delivery:
    return Delivery("s", "acme", "c", "gap", epoch, offset, reason=reason, at=at)


def test_checker_accepts_every_acked_event_delivered_once_in_order() -> None:
    verdict = check(_history(event(1, "m1"), event(2, "m2")))
    assert verdict.ok, verdict.report()
    assert verdict.counts["acked events delivered"] == 2
    assert verdict.counts["publishes not acked"] == 1


def test_checker_accepts_an_event_covered_by_a_gap_of_its_epoch() -> None:
    verdict = check(_history(event(1, "m1"), gap(2, "e1")))
    assert verdict.ok, verdict.report()
    assert verdict.counts["acked events covered by a gap"] == 1


def test_checker_accepts_events_covered_by_a_gap_into_a_later_epoch() -> None:
    later = Publish("acme", "c", "m4", True, "e2", 1, at=9.0)
    publishes = [*_history().publishes, later]
    verdict = check(
        _history(
            event(1, "m1"),
            gap(0, "e2", "epoch_changed", 9.5),
            event(1, "m4", "e2", 9.6),
            publishes=publishes,
        )
    )
    assert verdict.ok, verdict.report()


def test_checker_reports_an_acked_event_lost_without_a_gap() -> None:
    verdict = check(_history(event(1, "m1")))
    assert not verdict.ok
    assert "acked m2 at e1:2 lost without a gap" in verdict.report()


def test_checker_does_not_take_a_gap_before_the_event_for_cover() -> None:
    verdict = check(_history(gap(1, "e1"), event(1, "m1")))
    assert any("lost without a gap" in v for v in verdict.violations)


def test_checker_reports_duplicates_and_reordering() -> None:
    twice = check(_history(event(1, "m1"), event(2, "m2"), event(2, "m2")))
    assert any("delivered twice" in v for v in twice.violations)
    reordered = check(_history(event(2, "m2"), event(1, "m1")))
    assert any("offset 1 after 2" in v for v in reordered.violations)


def test_checker_reports_an_epoch_that_comes_back() -> None:
    later = Publish("acme", "c", "m4", True, "e2", 1, at=9.0)
    publishes = [*_history().publishes, later]
    verdict = check(
        _history(event(1, "m1"), event(1, "m4", "e2"), event(2, "m2"), publishes=publishes)
    )
    assert any("came back" in v for v in verdict.violations)


def test_checker_reports_cross_tenant_and_phantom_deliveries() -> None:
    crossed = check(_history(event(1, "m1"), event(2, "m2"), event(3, "g1")))
    assert any("crossed tenants" in v for v in crossed.violations)
    assert crossed.counts["cross-tenant deliveries"] == 1
    phantom = check(_history(event(1, "m1"), event(2, "m2"), event(3, "nobody")))
    assert any("never published" in v for v in phantom.violations)


def test_checker_reports_a_delivery_at_another_position_than_its_ack() -> None:
    verdict = check(_history(event(1, "m1"), event(3, "m2")))
    assert any("acked at e1:2" in v for v in verdict.violations)


def test_checker_accepts_a_first_attempt_sequenced_in_an_epoch_that_was_lost() -> None:
    """m4 took effect in e1 without an ack (Redis died before answering), e1 was lost, and
    its retry was acked in e2: delivered once per epoch, at the acked position in e2."""
    retried = Publish("acme", "c", "m4", True, "e2", 1, at=9.0)
    publishes = [*_history().publishes, retried]
    verdict = check(
        _history(
            event(1, "m1"),
            event(2, "m2"),
            event(3, "m4"),
            gap(0, "e2", "epoch_changed", 9.5),
            event(1, "m4", "e2", 9.6),
            publishes=publishes,
        )
    )
    assert verdict.ok, verdict.report()
    assert verdict.counts["acked events also sequenced in a lost epoch"] == 1


def test_checker_reports_a_delivery_in_a_later_epoch_than_its_ack() -> None:
    publishes = [*_history().publishes, Publish("acme", "c", "m4", True, "e1", 3, at=4.0)]
    verdict = check(
        _history(
            event(1, "m1"),
            event(2, "m2"),
            gap(0, "e2", "epoch_changed", 9.5),
            event(1, "m4", "e2", 9.6),
            publishes=publishes,
        )
    )
    assert any("acked at e1:3" in v for v in verdict.violations), verdict.report()
