"""The stateful model's oracle: a violation names the rule it breaks, and epochs may move
only when nothing the history window guarantees was lost."""

from __future__ import annotations

from typing import Any

import pytest

from unisock_conformance.oracle import Model, ModelConn, ModelViolation, Publish, Sub

CHANNEL = "m.a"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _world(**history: int) -> tuple[Model, Clock]:
    clock = Clock()
    model = Model(clock=clock, **history)
    for key, sub in (("c1", "alice"), ("c2", "bob")):
        model.add_conn(ModelConn(key, "acme", sub))
    return model, clock


def _subscribe(model: Model, key: str, pattern: str = CHANNEL) -> None:
    sub = Sub(pattern, None, start_seq=model.next_seq(), request_id=f"s-{key}")
    model.register_subscribe(key, sub)
    position = {"epoch": "e1", "offset": 0}
    subscribed = {"type": "subscribed", "id": f"s-{key}", "channel": pattern, "ts": 1}
    model.on_frame(key, {**subscribed, "position": position})


def _publish(model: Model, message_id: str, **fields: Any) -> Publish:
    p = Publish(
        seq=model.next_seq(),
        message_id=message_id,
        tenant="acme",
        channel=CHANNEL,
        owner=None,
        event="t.e",
        data={},
        attrs=None,
        to=fields.get("to"),
        exclude=fields.get("exclude"),
        exclude_self=False,
        origin="c1",
        publisher_sub="alice",
    )
    return model.register_publish(p)


def _event(p: Publish, epoch: str, offset: int) -> dict[str, Any]:
    return {
        "type": "event",
        "channel": CHANNEL,
        "epoch": epoch,
        "offset": offset,
        "event": p.event,
        "data": p.data,
        "message_id": p.message_id,
        "ts": 1_000 + offset,
        "publisher": p.publisher_sub,
    }


def _ack(p: Publish, epoch: str, offset: int) -> dict[str, Any]:
    return {"type": "ack", "epoch": epoch, "offset": offset, "duplicate": False}


@pytest.mark.parametrize(
    ("fields", "rule"),
    [({"to": ("alice",)}, "UNI-PUB-10"), ({"exclude": ("bob",)}, "UNI-PUB-11")],
)
def test_model_names_the_targeting_rule_an_extra_delivery_breaks(
    fields: dict[str, Any], rule: str
) -> None:
    model, _ = _world()
    for key in ("c1", "c2"):
        model.conns[key].subs[CHANNEL] = Sub(CHANNEL, None, start_seq=0, active=True)
    p = _publish(model, "m1", **fields)
    model.on_ack(p, _ack(p, "e1", 1))
    model.on_frame("c2", _event(p, "e1", 1))  # bob is not a recipient
    with pytest.raises(ModelViolation) as caught:
        model.check()
    assert caught.value.requirements == (rule,)
    assert str(caught.value).startswith(f"{rule} violated")


def test_model_names_the_tenant_rule_for_a_cross_tenant_delivery() -> None:
    model, _ = _world()
    model.add_conn(ModelConn("c3", "globex", "alice"))
    model.conns["c3"].subs[CHANNEL] = Sub(CHANNEL, None, start_seq=0, active=True)
    p = _publish(model, "m1")
    model.on_ack(p, _ack(p, "e1", 1))
    model.on_frame("c3", _event(p, "e1", 1))
    with pytest.raises(ModelViolation) as caught:
        model.check()
    assert caught.value.requirements[0] == "UNI-CH-2"


def test_model_accepts_a_new_epoch_once_no_retained_event_is_lost() -> None:
    model, clock = _world(max_count=10, max_age_ms=1_000)
    _subscribe(model, "c2")
    first = _publish(model, "m1")
    model.on_ack(first, _ack(first, "e1", 1))
    model.on_frame("c2", _event(first, "e1", 1))
    clock.now += 2.0  # the event is older than max_age_ms: UNI-SEC-14 may discard it
    model.on_frame(
        "c2",
        {"type": "gap", "channel": CHANNEL, "epoch": "e2", "offset": 0, "reason": "epoch_changed"},
    )
    second = _publish(model, "m2")
    model.on_ack(second, _ack(second, "e2", 1))
    model.on_frame("c2", _event(second, "e2", 1))
    model.check()


def test_model_fails_a_new_epoch_that_loses_an_event_within_the_history_window() -> None:
    model, _ = _world(max_count=10, max_age_ms=60_000)
    first = _publish(model, "m1")
    model.on_ack(first, _ack(first, "e1", 1))
    second = _publish(model, "m2")
    model.on_ack(second, _ack(second, "e2", 1))
    with pytest.raises(ModelViolation) as caught:
        model.check()
    assert caught.value.requirements == ("UNI-DEL-22",)


def test_model_fails_a_first_event_of_a_new_epoch_without_a_gap() -> None:
    model, clock = _world(max_count=10, max_age_ms=1_000)
    _subscribe(model, "c2")
    first = _publish(model, "m1")
    model.on_ack(first, _ack(first, "e1", 1))
    model.on_frame("c2", _event(first, "e1", 1))
    clock.now += 2.0
    second = _publish(model, "m2")
    model.on_ack(second, _ack(second, "e2", 1))
    model.on_frame("c2", _event(second, "e2", 1))
    with pytest.raises(ModelViolation) as caught:
        model.check()
    assert caught.value.requirements == ("UNI-DEL-19",)
