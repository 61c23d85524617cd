"""The smallest end-to-end exchange: if this fails, nothing else can be trusted."""

from __future__ import annotations

import pytest

from unisock_conformance.checks.conftest import User
from unisock_conformance.deployment import Names


@pytest.mark.requirement(
    "UNI-LC-9", "UNI-SUB-1", "UNI-PUB-14", "UNI-PUB-15", "UNI-PUB-28", "UNI-DEL-1"
)
def test_server_delivers_a_published_event_to_a_subscriber(user: User, names: Names) -> None:
    tenant = names.tenant()
    channel = names.channel()
    alice = user(tenant, names.user(0))
    bob = user(tenant, names.user(1))
    assert alice.welcome is not None and alice.welcome["session"]["tenant"] == tenant
    subscribed = bob.subscribe(channel)
    assert subscribed["channel"] == channel
    ack = alice.publish(channel, "smoke.test", {"n": 1})
    assert ack["channel"] == channel and ack["duplicate"] is False
    event = bob.expect("event", where=lambda frame: frame["channel"] == channel)
    assert event["offset"] == ack["offset"] and event["epoch"] == ack["epoch"]
    assert event["data"] == {"n": 1} and event["event"] == "smoke.test"
    assert event["publisher"] == alice.welcome["session"]["sub"]
