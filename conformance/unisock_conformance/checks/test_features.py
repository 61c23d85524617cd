"""Announced features are implemented, absent ones are refused (UNI-CONF-1, spec 14.3).

For each optional feature, a server that lists it in ``welcome.features`` must show it works
in a minimal probe; a server that does not list it must follow the spec's rules for its
absence (``$sys`` refused with ``forbidden``, no typed-event refusals, no ``coalesced``).
"""

from __future__ import annotations

import pytest

from unisock_conformance.checks.conftest import User
from unisock_conformance.checks.test_coalescing_limits import flood_stalled_reader
from unisock_conformance.deployment import NOT_RUN_PREFIX, Deployment, Names, ServerInfo


def _system_namespace(announced: bool, user: User, names: Names) -> None:
    channel = f"$sys.{names.channel('probe')}"
    listener = user(names.tenant(0), names.user(0), subscribe=("$sys.>",), publish=())
    sender = user(
        names.tenant(1), names.user(1), subscribe=(), publish=("$sys.>",), broadcaster=True
    )
    reply = listener.request({"type": "subscribe", "id": "sys", "channel": "$sys.>"})
    published = sender.request(sender.publish_message(channel, "probe.sys", id="psys"))
    if not announced:
        # UNI-CH-16: without the feature every $sys subscribe and publish is forbidden.
        assert reply.get("code") == "forbidden", f"$sys subscribe answered {reply}"
        assert published.get("code") == "forbidden", f"$sys publish answered {published}"
        return
    assert reply.get("type") == "subscribed", f"$sys.> subscribe with a $sys.> grant: {reply}"
    assert published.get("type") == "ack", f"broadcaster $sys publish with a grant: {published}"
    listener.wait_events(lambda e: e["channel"] == channel and e["offset"] == published["offset"])


def _typed_events(announced: bool, user: User, names: Names) -> None:
    tenant, channel = names.tenant(), names.channel()
    conn = user(tenant, names.user())
    if announced:
        # Open mode accepts an unregistered type, strict mode names it: both are typed handling.
        unknown = f"probe.t{names.hex}"
        reply = conn.request(conn.publish_message(channel, unknown, {"any": [1, "x"]}, id="pt"))
        assert reply.get("type") == "ack" or reply.get("code") == "unknown_event_type", reply
        return
    # UNI-PUB-20: without the feature no publish is refused for its type or data.
    for index, event in enumerate(("task.updated", "task.created", f"probe.t{names.hex}")):
        reply = conn.request(
            conn.publish_message(channel, event, [None, {"status": 5}], id=f"p{index}")
        )
        assert reply.get("type") == "ack", f"{event} refused without typed_events: {reply}"


def _coalescing(announced: bool, user: User, deployment: Deployment, names: Names) -> None:
    channel = deployment.coalescing_channel
    if channel is None:
        if announced:
            pytest.skip(
                f"{NOT_RUN_PREFIX} needs --coalescing-channel (a channel declared coalescing)"
            )
        channel = names.channel()
    flood = flood_stalled_reader(user, deployment, names, channel)
    if not announced:
        leaked = [frame for frame in flood.events if "coalesced" in frame]
        assert leaked == [], f"coalesced frames without the coalescing feature: {leaked[:3]}"
        return
    assert flood.coalesced or flood.code is None, (
        f"the stalled reader of coalescing channel {channel!r} was closed with {flood.code} "
        "and no queued event was coalesced"
    )
    if not flood.coalesced:
        pytest.skip(
            f"{NOT_RUN_PREFIX} the reader never fell behind by two events of one key on {channel!r}"
        )


@pytest.mark.requirement("UNI-CONF-1")
@pytest.mark.parametrize("feature", ["system_namespace", "typed_events", "coalescing"])
def test_server_announces_exactly_the_optional_features_it_implements(
    feature: str, user: User, deployment: Deployment, names: Names, server_info: ServerInfo
) -> None:
    announced = feature in server_info.features
    if feature == "system_namespace":
        _system_namespace(announced, user, names)
    elif feature == "typed_events":
        _typed_events(announced, user, names)
    else:
        _coalescing(announced, user, deployment, names)
