"""Section 6: publish. Acks, refusals, authorisation, targeting, typed events, idempotency.

Negative delivery checks use fences: the publisher sends a later event on a channel the
receiver is subscribed to, and once that event has arrived everything published before it
has too (section 7.4), so "was not delivered" is decided without sleeping.
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

import pytest

from unisock_conformance.checks.conftest import User
from unisock_conformance.deployment import Deployment, Names, ServerInfo, not_applicable, not_run
from unisock_conformance.oracle import json_equal
from unisock_conformance.timing import require_time
from unisock_conformance.wire import Conn

Frame = dict[str, Any]

# A valid and an invalid payload for the example event type the project publishes under
# schemas/v1/events/task.updated.json; deployments that register it must refuse the latter.
TASK_UPDATED_OK = {
    "task_id": "42",
    "version": 7,
    "changes": {"status": "in_progress"},
    "updated_by": "alice",
    "updated_at": 1764120000456,
}
TASK_UPDATED_BAD = {**TASK_UPDATED_OK, "changes": {"status": "finished"}}
_POINTER = re.compile(r"^(/([^~/]|~[01])*)*$")


def _refusal(conn: Conn, message: Frame) -> Frame:
    """Send ``message`` and return the error reply (fail on anything else)."""
    reply = conn.request(message)
    assert reply.get("type") == "error", f"expected an error for {message}, got {reply}"
    return reply


def _not_delivered(receiver: Conn, publisher: Conn, fence_channel: str, message_id: str) -> None:
    """Prove with a fence on ``fence_channel`` that ``message_id`` never reached ``receiver``."""
    receiver.assert_no_frame(
        "event",
        fence=lambda: publisher.publish(fence_channel, "fence.event"),
        where=lambda frame: frame.get("message_id") == message_id,
    )


def _reply_to(conn: Conn, request_id: str) -> Frame:
    return conn.expect(None, where=lambda frame: frame.get("id") == request_id)


def _delivered(receiver: Conn, message_id: str) -> Frame:
    return receiver.expect("event", where=lambda frame: frame.get("message_id") == message_id)


# -- acks ------------------------------------------------------------------------------------


@pytest.mark.requirement("UNI-PUB-25", "UNI-PUB-28", "UNI-DEL-7")
def test_server_acknowledges_new_publishes_with_contiguous_offsets(
    user: User, names: Names
) -> None:
    alice = user(names.tenant(), names.user())
    channel = names.channel()
    acks = []
    for i in range(3):
        message = alice.publish_message(channel, "test.event", {"i": i}, id=f"p-{i}")
        acks.append(alice.request(message))
        ack = acks[-1]
        assert ack["type"] == "ack" and ack["id"] == f"p-{i}", ack
        assert ack["channel"] == channel and ack["message_id"] == message["message_id"], ack
        assert ack["duplicate"] is False, ack
    assert [a["offset"] for a in acks] == [1, 2, 3]
    assert len({a["epoch"] for a in acks}) == 1


@pytest.mark.requirement("UNI-PUB-25")
def test_server_answers_each_publish_with_exactly_one_reply(user: User, names: Names) -> None:
    allowed = names.channel()
    alice = user(names.tenant(), names.user(), publish=(allowed,))
    messages = [
        alice.publish_message(allowed, id="p-ok"),
        alice.publish_message(names.channel(), id="p-forbidden"),
        alice.publish_message(allowed, "Bad Event", id="p-invalid"),
    ]
    for message in messages:
        alice.send(message)
    alice.request({"type": "ping", "id": "after-all"})
    replies = [f for f in alice.frames if f.get("id") in {"p-ok", "p-forbidden", "p-invalid"}]
    assert sorted(f["id"] for f in replies) == ["p-forbidden", "p-invalid", "p-ok"], replies
    kinds = {f["id"]: f.get("code", f["type"]) for f in replies}
    assert kinds == {"p-ok": "ack", "p-forbidden": "forbidden", "p-invalid": "invalid_message"}


# -- refusals --------------------------------------------------------------------------------


def _publish_without(field: str) -> Frame:
    message: Frame = {
        "type": "publish",
        "id": "p-missing",
        "channel": "missing",
        "event": "test.event",
        "data": {},
        "message_id": "m-missing",
    }
    del message[field]
    return message


@pytest.mark.requirement("UNI-PUB-1")
@pytest.mark.parametrize("field", ["id", "channel", "event", "data", "message_id"])
def test_server_refuses_publish_missing_a_required_field_with_invalid_message(
    user: User, names: Names, field: str
) -> None:
    alice = user(names.tenant(), names.user())
    message = _publish_without(field)
    alice.send(message)
    reply = alice.expect("error")
    assert reply["code"] == "invalid_message", reply
    if field != "id":
        assert reply.get("id") == "p-missing", reply


@pytest.mark.requirement("UNI-PUB-1")
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event", "Task.Updated"),
        ("event", "task..updated"),
        ("event", "t" * 65),
        ("message_id", "m" * 129),
        ("message_id", ""),
        ("exclude_self", "yes"),
        ("to", []),
        ("attrs", {"Bad-Key": 1}),
        ("attrs", {"nested": {"a": 1}}),
        ("attrs", {"long": "x" * 257}),
        ("key", ""),
    ],
)
def test_server_refuses_publish_with_a_schema_invalid_field_with_invalid_message(
    user: User, names: Names, field: str, value: Any
) -> None:
    alice = user(names.tenant(), names.user())
    channel = names.channel()
    alice.subscribe(channel)
    message = alice.publish_message(channel)
    message[field] = value
    reply = _refusal(alice, message)
    assert reply["code"] == "invalid_message", reply
    ack = alice.publish(channel)
    assert ack["offset"] == 1, f"UNI-PUB-27: the refused publish took an offset: {ack}"


@pytest.mark.requirement("UNI-PUB-2")
@pytest.mark.parametrize(
    "channel", ["tasks.*", "tasks.>", ">", "Tasks.1", "tasks..1", "tasks.1 ", "$sys", "$acme.x"]
)
def test_server_refuses_publish_to_a_pattern_or_non_canonical_name_with_invalid_channel(
    user: User, names: Names, channel: str
) -> None:
    alice = user(names.tenant(), names.user(), publish=(">", "$me.>"))
    reply = _refusal(alice, alice.publish_message(channel))
    assert reply["code"] == "invalid_channel", reply


@pytest.mark.requirement("UNI-PUB-3")
def test_server_refuses_publish_over_max_targets_with_invalid_message(
    user: User, names: Names, server_info: ServerInfo
) -> None:
    limit = int(server_info.limits.get("max_targets", 100))
    alice = user(names.tenant(), names.user())
    over = [f"u{i}" for i in range(limit + 1)]
    for field in ("to", "exclude"):
        message = alice.publish_message(names.channel())
        message[field] = over
        assert _refusal(alice, message)["code"] == "invalid_message"
    at_limit = alice.publish_message(names.channel())
    at_limit["to"] = over[:limit]
    assert alice.request(at_limit)["type"] == "ack"


@pytest.mark.requirement("UNI-PUB-3")
def test_server_refuses_publish_over_max_attrs_with_invalid_message(
    user: User, names: Names, server_info: ServerInfo
) -> None:
    limit = int(server_info.limits.get("max_attrs", 16))
    alice = user(names.tenant(), names.user())
    attrs = {f"a{i}": i for i in range(limit + 1)}
    message = alice.publish_message(names.channel(), attrs=attrs)
    assert _refusal(alice, message)["code"] == "invalid_message"
    del attrs[f"a{limit}"]
    assert alice.request(alice.publish_message(names.channel(), attrs=attrs))["type"] == "ack"


# -- authorisation ---------------------------------------------------------------------------


@pytest.mark.requirement("UNI-PUB-4", "UNI-PUB-27")
def test_server_refuses_publish_outside_publish_grants_and_sequences_nothing(
    user: User, names: Names
) -> None:
    tenant, base = names.tenant(), names.channel()
    alice = user(tenant, names.user(0), publish=(f"{base}.*",))
    bob = user(tenant, names.user(1))
    bob.subscribe(f"{base}.>")
    for channel in (f"{base}.a.b", base, names.channel()):
        message = alice.publish_message(channel)
        assert _refusal(alice, message)["code"] == "forbidden"
        if channel.startswith(base + "."):
            _not_delivered(bob, alice, f"{base}.fence", message["message_id"])
    ack = alice.publish(f"{base}.a")
    assert ack["offset"] == 1


@pytest.mark.requirement("UNI-PUB-5")
def test_server_refuses_sys_publish_from_a_user_role_connection(user: User, names: Names) -> None:
    channel = f"$sys.{names.channel()}"
    alice = user(names.tenant(), names.user(), publish=("$sys.>", ">"))
    assert _refusal(alice, alice.publish_message(channel))["code"] == "forbidden"


@pytest.mark.requirement("UNI-PUB-6")
@pytest.mark.feature("system_namespace")
@pytest.mark.parametrize("field", ["to", "exclude", "user"])
def test_server_refuses_sys_publish_with_targeting_fields(
    user: User, names: Names, field: str
) -> None:
    backend = user(names.tenant(), names.user(), publish=("$sys.>",), broadcaster=True)
    message = backend.publish_message(f"$sys.{names.channel()}")
    message[field] = "bob" if field == "user" else ["bob"]
    assert _refusal(backend, message)["code"] == "invalid_message"


@pytest.mark.requirement("UNI-PUB-7")
def test_server_refuses_user_field_outside_the_me_namespace(user: User, names: Names) -> None:
    for broadcaster in (False, True):
        conn = user(names.tenant(), names.user(), broadcaster=broadcaster)
        message = conn.publish_message(names.channel(), user=names.user(9))
        assert _refusal(conn, message)["code"] == "invalid_message"


@pytest.mark.requirement("UNI-PUB-8", "UNI-CH-10", "UNI-DEL-3", "UNI-DEL-6")
def test_server_sequences_me_publishes_in_the_named_users_private_channel(
    user: User, names: Names
) -> None:
    tenant = names.tenant()
    alice_sub, bob_sub = names.user(0), names.user(1)
    backend = user(tenant, names.user(9), publish=("$me.>",), broadcaster=True)
    alice = user(tenant, alice_sub, publish=("$me.>",))
    bob = user(tenant, bob_sub)
    alice.subscribe("$me.>")
    bob.subscribe("$me.inbox")
    to_bob = backend.publish("$me.inbox", "note.created", {"n": 1}, user=bob_sub)
    to_alice = alice.publish("$me.inbox", "note.created", {"n": 2})
    assert to_bob["offset"] == 1 and to_alice["offset"] == 1, (
        f"UNI-DEL-6: each user's $me.inbox is its own offset scope: {to_bob}, {to_alice}"
    )
    got = _delivered(bob, to_bob["message_id"])
    assert got["channel"] == "$me.inbox" and got["publisher"] == names.user(9), got
    mine = _delivered(alice, to_alice["message_id"])
    assert mine["channel"] == "$me.inbox", mine
    _not_delivered(alice, alice, "$me.fence", to_bob["message_id"])
    bob_fence = backend.publish("$me.inbox", "fence.event", user=bob_sub)
    _delivered(bob, bob_fence["message_id"])
    assert not [e for e in bob.events() if e["message_id"] == to_alice["message_id"]]


@pytest.mark.requirement("UNI-PUB-9")
def test_server_refuses_user_role_publish_to_another_users_private_channel(
    user: User, names: Names
) -> None:
    alice = user(names.tenant(), names.user(0), publish=("$me.>",))
    message = alice.publish_message("$me.inbox", user=names.user(1))
    assert _refusal(alice, message)["code"] == "forbidden"
    assert alice.publish("$me.inbox", user=names.user(0))["type"] == "ack"


# -- targeting -------------------------------------------------------------------------------


def _trio(user: User, names: Names) -> tuple[Conn, Conn, Conn, str, str]:
    tenant, channel = names.tenant(), names.channel()
    conns = [user(tenant, names.user(i)) for i in range(3)]
    for conn in conns:
        conn.subscribe(channel)
    return conns[0], conns[1], conns[2], channel, tenant


@pytest.mark.requirement("UNI-PUB-10")
def test_server_delivers_a_targeted_event_only_to_listed_users(user: User, names: Names) -> None:
    alice, bob, carol, channel, _ = _trio(user, names)
    ack = alice.publish(channel, to=[names.user(1), "nobody-connected"])
    _delivered(bob, ack["message_id"])
    _not_delivered(carol, alice, channel, ack["message_id"])
    _not_delivered(alice, bob, channel, ack["message_id"])


@pytest.mark.requirement("UNI-PUB-11")
def test_server_never_delivers_to_excluded_users_even_when_also_targeted(
    user: User, names: Names
) -> None:
    alice, bob, carol, channel, _ = _trio(user, names)
    ack = alice.publish(channel, to=[names.user(1), names.user(2)], exclude=[names.user(1)])
    _delivered(carol, ack["message_id"])
    _not_delivered(bob, alice, channel, ack["message_id"])
    plain = alice.publish(channel, exclude=[names.user(2)])
    _delivered(bob, plain["message_id"])
    _delivered(alice, plain["message_id"])
    _not_delivered(carol, alice, channel, plain["message_id"])


@pytest.mark.requirement("UNI-PUB-12")
def test_server_applies_exclude_self_to_the_publishing_connection_only(
    user: User, names: Names
) -> None:
    tenant, channel, sub = names.tenant(), names.channel(), names.user()
    tab1, tab2 = user(tenant, sub), user(tenant, sub)
    tab1.subscribe(channel)
    tab2.subscribe(channel)
    ack = tab1.publish(channel, exclude_self=True)
    _delivered(tab2, ack["message_id"])
    _not_delivered(tab1, tab2, channel, ack["message_id"])


@pytest.mark.requirement("UNI-PUB-13")
def test_server_sequences_a_targeted_event_that_reaches_nobody(user: User, names: Names) -> None:
    alice, bob, _, channel, _ = _trio(user, names)
    first = alice.publish(channel)
    hidden = alice.publish(channel, to=["nobody-connected"])
    last = alice.publish(channel)
    assert [first["offset"], hidden["offset"], last["offset"]] == [1, 2, 3]
    events = bob.wait_events(lambda e: e["channel"] == channel, 2)
    assert [e["offset"] for e in events[:2]] == [1, 3]


# -- event content ---------------------------------------------------------------------------

_PAYLOADS: list[Any] = [
    {"nested": {"list": [1, 2.5, -3, True, None, "é€😀"], "empty": {}}, "big": 9007199254740991},
    [1, "two", {"three": 3}],
    "just a string",
    0,
    None,
]


@pytest.mark.requirement("UNI-PUB-14", "UNI-PUB-15", "UNI-DEL-1")
@pytest.mark.parametrize("data", _PAYLOADS, ids=["object", "array", "string", "number", "null"])
def test_server_copies_event_data_message_id_and_attrs_into_the_frame(
    user: User, names: Names, server_info: ServerInfo, data: Any
) -> None:
    alice, bob, _, channel, _ = _trio(user, names)
    # Each JSON scalar type once, as many as the announced max_attrs allows.
    kinds = {"prio": 2, "kind": "a", "flag": False, "none": None, "ratio": 0.5}
    limit = int(server_info.limits.get("max_attrs", len(kinds)))
    attrs = dict(list(kinds.items())[:limit])
    ack = alice.publish(channel, "test.content", data, attrs=attrs)
    frame = _delivered(bob, ack["message_id"])
    assert frame["event"] == "test.content"
    assert json_equal(frame["data"], data), f"data {frame['data']!r} != {data!r}"
    assert json_equal(frame["attrs"], attrs), frame
    assert frame["publisher"] == names.user(0), frame
    assert (frame["epoch"], frame["offset"]) == (ack["epoch"], ack["offset"])
    assert isinstance(frame["ts"], int) and frame["ts"] > 1_600_000_000_000, frame


@pytest.mark.requirement("UNI-PUB-14")
def test_server_copies_empty_attrs_into_the_frame(user: User, names: Names) -> None:
    alice, bob, _, channel, _ = _trio(user, names)
    ack = alice.publish(channel, attrs={})
    frame = _delivered(bob, ack["message_id"])
    assert frame.get("attrs") == {}, f"a publish carrying attrs {{}} gave {frame}"


@pytest.mark.requirement("UNI-DEL-1", "UNI-PUB-14")
def test_server_omits_attrs_when_the_publish_had_none(user: User, names: Names) -> None:
    alice, bob, _, channel, _ = _trio(user, names)
    ack = alice.publish(channel)
    assert "attrs" not in _delivered(bob, ack["message_id"])


# -- typed events ----------------------------------------------------------------------------


def _unless_unregistered(reply: dict[str, Any], deployment: Deployment) -> None:
    """An ack of data task.updated's schema refuses: a fault of a deployment that registers
    the example types (``--example-event-types``), else a check that cannot run here."""
    if reply.get("type") != "ack":
        return
    assert not deployment.example_event_types, (
        "task.updated data its schema refuses was acknowledged, although the deployment "
        f"registers the example event types (--example-event-types): {reply}"
    )
    not_run(
        "the deployment does not register the example event type task.updated; register "
        "schemas/v1/events/task.updated.json and pass --example-event-types to run this check"
    )


@pytest.mark.requirement("UNI-PUB-16", "UNI-PUB-17", "UNI-PUB-27")
@pytest.mark.feature("typed_events")
def test_server_refuses_registered_event_with_invalid_data_naming_the_pointer(
    user: User, names: Names, deployment: Deployment
) -> None:
    alice, bob, _, channel, _ = _trio(user, names)
    message = alice.publish_message(channel, "task.updated", TASK_UPDATED_BAD)
    reply = alice.request(message)
    _unless_unregistered(reply, deployment)
    assert reply.get("code") == "invalid_event_data", reply
    pointer = reply.get("details", {}).get("pointer")
    assert isinstance(pointer, str) and pointer.startswith("/data"), reply
    assert _POINTER.fullmatch(pointer), f"not an RFC 6901 pointer: {pointer!r}"
    assert set(reply["details"]) == {"pointer"}, f"details reveal more than the location: {reply}"
    text = json.dumps(reply)
    for internal in ("$schema", "additionalProperties", "Failed validating", "Traceback"):
        assert internal not in text, f"error reveals schema internals ({internal}): {reply}"
    ok = alice.publish(channel, "task.updated", TASK_UPDATED_OK)
    assert ok["offset"] == 1, f"the refused publish took an offset: {ok}"
    _not_delivered(bob, alice, channel, message["message_id"])


@pytest.mark.requirement("UNI-PUB-19")
@pytest.mark.feature("typed_events")
def test_server_in_open_mode_accepts_an_unregistered_type_without_checking_data(
    user: User, names: Names
) -> None:
    alice = user(names.tenant(), names.user())
    reply = alice.request(alice.publish_message(names.channel(), "zz.unregistered", "any"))
    if reply.get("code") == "unknown_event_type":
        not_applicable("the typed-event registry runs in strict mode; the rule binds open mode")
    assert reply.get("type") == "ack", reply


@pytest.mark.requirement("UNI-PUB-18")
@pytest.mark.feature("typed_events")
def test_server_in_strict_mode_refuses_an_unregistered_type(user: User, names: Names) -> None:
    alice = user(names.tenant(), names.user())
    channel = names.channel()
    reply = alice.request(alice.publish_message(channel, "zz.unregistered", {}))
    if reply.get("type") == "ack":
        not_applicable("the typed-event registry runs in open mode; the rule binds strict mode")
    assert reply.get("code") == "unknown_event_type", reply
    assert alice.publish(channel)["offset"] == 1


@pytest.mark.requirement("UNI-PUB-20")
def test_server_without_typed_events_never_refuses_for_event_types(
    user: User, names: Names, server_info: ServerInfo
) -> None:
    if "typed_events" in server_info.features:
        not_applicable("the server announces typed_events; the rule binds servers without it")
    alice = user(names.tenant(), names.user())
    for event, data in (("task.updated", TASK_UPDATED_BAD), ("zz.unregistered", "x")):
        reply = alice.request(alice.publish_message(names.channel(), event, data))
        assert reply.get("type") == "ack", reply


# -- idempotency -----------------------------------------------------------------------------


@pytest.mark.requirement("UNI-PUB-21", "UNI-DEL-13")
def test_server_acks_a_duplicate_with_the_original_position_and_delivers_it_once(
    user: User, names: Names
) -> None:
    alice, bob, _, channel, _ = _trio(user, names)
    mid = names.message_id()
    first = alice.publish(channel, data={"v": 1}, message_id=mid)
    alice.publish(channel)
    again = alice.publish(channel, data={"v": 2}, message_id=mid)
    assert again["duplicate"] is True, again
    assert (again["epoch"], again["offset"]) == (first["epoch"], first["offset"]), again
    assert again["message_id"] == mid and again["channel"] == channel
    nxt = alice.publish(channel)
    assert nxt["offset"] == first["offset"] + 2, f"the duplicate took an offset: {nxt}"
    _delivered(bob, nxt["message_id"])
    copies = [e for e in bob.events(channel) if e["message_id"] == mid]
    assert len(copies) == 1 and copies[0]["data"] == {"v": 1}, copies


@pytest.mark.requirement("UNI-PUB-22")
def test_server_recognises_a_duplicate_from_another_connection(user: User, names: Names) -> None:
    tenant, channel, mid = names.tenant(), names.channel(), names.message_id()
    first = user(tenant, names.user(0)).publish(channel, message_id=mid)
    retry = user(tenant, names.user(1)).publish(channel, message_id=mid)
    assert retry["duplicate"] is True, retry
    assert (retry["epoch"], retry["offset"]) == (first["epoch"], first["offset"])


@pytest.mark.requirement("UNI-PUB-21", "UNI-DEL-6")
def test_server_scopes_deduplication_by_channel_and_tenant(user: User, names: Names) -> None:
    mid = names.message_id()
    channel = names.channel()
    one = user(names.tenant(0), names.user()).publish(channel, message_id=mid)
    other_tenant = user(names.tenant(1), names.user()).publish(channel, message_id=mid)
    other_channel = user(names.tenant(0), names.user()).publish(names.channel(), message_id=mid)
    assert one["duplicate"] is False
    assert other_tenant["duplicate"] is False and other_tenant["offset"] == 1
    assert other_channel["duplicate"] is False and other_channel["offset"] == 1


@pytest.mark.requirement("UNI-PUB-23", "UNI-PUB-27")
def test_server_sequences_a_corrected_retry_of_a_refused_publish(user: User, names: Names) -> None:
    alice, bob, _, channel, _ = _trio(user, names)
    mid = names.message_id()
    bad = alice.publish_message(channel, "Bad Event", message_id=mid)
    assert _refusal(alice, bad)["code"] == "invalid_message"
    fixed = alice.publish(channel, message_id=mid)
    assert fixed["duplicate"] is False and fixed["offset"] == 1, fixed
    _delivered(bob, mid)


@pytest.mark.requirement("UNI-PUB-24")
def test_server_reports_the_first_failing_publish_check(user: User, names: Names) -> None:
    tenant, channel = names.tenant(), names.channel()
    alice = user(tenant, names.user(), publish=(f"{channel}.ok",))
    # step 2 (schema) before step 3 (authorisation)
    schema_and_grant = alice.publish_message(f"{channel}.denied", "Bad Event")
    assert _refusal(alice, schema_and_grant)["code"] == "invalid_message"
    # step 3 (authorisation) before step 4 (idempotency): a foreign duplicate stays forbidden
    mid = names.message_id()
    user(tenant, names.user(1)).publish(f"{channel}.denied", message_id=mid)
    foreign = alice.publish_message(f"{channel}.denied", message_id=mid)
    assert _refusal(alice, foreign)["code"] == "forbidden"


@pytest.mark.requirement("UNI-PUB-24", "UNI-PUB-39", "UNI-PUB-30")
def test_server_rate_limits_malformed_publishes_before_checking_them(
    user: User, names: Names, server_info: ServerInfo
) -> None:
    """Step 1 (rate) precedes step 2 (schema): a malformed publish takes a token too."""
    rate = server_info.limits.get("publish_rate", {})
    burst, per_second = int(rate.get("burst", 100)), float(rate.get("per_second", 50))
    if burst + per_second > 1000:
        not_run(f"a burst of {burst} at {per_second}/s is too large to exhaust quickly")
    started = time.monotonic()  # before the hello: the server's bucket fills no earlier
    alice = user(names.tenant(), names.user())
    alice.pace = False
    channel = names.channel()
    codes: list[str] = []
    while "rate_limited" not in codes:
        batch = [
            alice.publish_message(channel, "Bad Event", id=f"m{len(codes) + i}")
            for i in range(burst + int(per_second) + 10 if not codes else int(per_second) + 10)
        ]
        for message in batch:
            alice.send(message)
        codes += [str(_reply_to(alice, str(m["id"])).get("code")) for m in batch]
        supply = burst + per_second * (time.monotonic() - started)
        if len(codes) > supply + 1 or len(codes) > burst + 5000:
            break
    assert set(codes) <= {"invalid_message", "rate_limited"}, sorted(set(codes))
    if "rate_limited" not in codes and len(codes) <= supply + 1:
        not_run(f"this run sent publishes too slowly to outrun a refill of {per_second}/s")
    assert "rate_limited" in codes, (
        f"{len(codes)} malformed publishes, more than a burst of {burst} plus the refill at "
        f"{per_second}/s, were all answered invalid_message: they took no rate token"
    )
    assert codes[:burst] == ["invalid_message"] * burst, codes[:burst]


@pytest.mark.requirement("UNI-PUB-24")
@pytest.mark.feature("typed_events")
def test_server_acks_a_duplicate_before_checking_event_data(
    user: User, names: Names, deployment: Deployment
) -> None:
    alice = user(names.tenant(), names.user())
    channel, mid = names.channel(), names.message_id()
    # Only where the invalid data is refused as a new publish does its ack as a retry show
    # that dedup came first.
    _unless_unregistered(
        alice.request(alice.publish_message(channel, "task.updated", TASK_UPDATED_BAD)),
        deployment,
    )
    first = alice.publish(channel, "task.updated", TASK_UPDATED_OK, message_id=mid)
    retry = alice.request(
        alice.publish_message(channel, "task.updated", TASK_UPDATED_BAD, message_id=mid)
    )
    assert retry.get("type") == "ack" and retry.get("duplicate") is True, retry
    assert retry["offset"] == first["offset"]


# -- ack semantics and rate ------------------------------------------------------------------


@pytest.mark.requirement("UNI-PUB-26", "UNI-DEL-15")
def test_server_acks_only_events_that_are_already_replayable(user: User, names: Names) -> None:
    tenant, base = names.tenant(), names.channel()
    channel = f"{base}.x"
    alice = user(tenant, names.user(0))
    for i in range(4):
        ack = alice.publish(channel, data={"i": i})
        bob = user(tenant, names.user(1))
        before = {"epoch": ack["epoch"], "offset": ack["offset"] - 1}
        bob.subscribe(f"{base}.*" if i % 2 else channel, from_={channel: before})
        frame = _delivered(bob, ack["message_id"])
        assert frame["offset"] == ack["offset"]
        bob.close()


# What each kind of flooding publish is answered with when the bucket still holds a token.
_FLOOD_REPLIES = {
    "accepted": "ack",
    "forbidden": "forbidden",
    "invalid-channel": "invalid_channel",
    "too-many-targets": "invalid_message",
    "duplicate": "ack",
}


def _flood_message(alice: Conn, kind: str, base: str, index: int, limits: Frame) -> Frame:
    ident = f"p{index}"
    if kind == "forbidden":
        return alice.publish_message(f"{base}x.y", id=ident)  # outside the grant {base}.>
    if kind == "invalid-channel":
        return alice.publish_message(f"{base}..y", id=ident)
    if kind == "too-many-targets":
        targets = [f"u{i}" for i in range(int(limits["max_targets"]) + 1)]
        return alice.publish_message(f"{base}.x", to=targets, id=ident)
    if kind == "duplicate":
        return alice.publish_message(f"{base}.x", message_id=f"{base}-dup", id=ident)
    return alice.publish_message(f"{base}.x", id=ident)


@pytest.mark.requirement("UNI-PUB-30", "UNI-PUB-31", "UNI-PUB-39", "UNI-PUB-24", "UNI-PUB-27")
@pytest.mark.parametrize("kind", list(_FLOOD_REPLIES))
def test_server_rate_limits_publishes_beyond_the_burst_and_keeps_the_connection(
    user: User, names: Names, server_info: ServerInfo, kind: str
) -> None:
    """Every publish frame costs a token at step 1 whatever its outcome (refused, invalid,
    duplicate), so a flood of any kind is limited once it outruns burst plus refill; a
    ``rate_limited`` publish costs nothing, so the bucket holds a token again after at most
    ``1000 / per_second`` ms."""
    rate = server_info.limits.get("publish_rate", {})
    burst, per_second = int(rate.get("burst", 100)), float(rate.get("per_second", 50))
    if burst + per_second > 1000:
        not_run(f"a burst of {burst} at {per_second}/s is too large to exhaust quickly")
    base = names.channel()
    tenant = names.tenant()
    if kind == "duplicate":
        first = user(tenant, names.user(1)).publish(f"{base}.x", message_id=f"{base}-dup")
    started = time.monotonic()  # before the hello: the server's bucket fills no earlier
    alice = user(tenant, names.user(), publish=(f"{base}.>",))
    assert alice.welcome is not None
    alice.pace = False  # the flood must outrun the bucket
    messages: list[Frame] = []
    replies: list[Frame] = []
    # Publish in rounds until one is refused, or until more were sent than the bucket could
    # have supplied by the time the last reply came back (however slow this run is).
    while not any(r.get("code") == "rate_limited" for r in replies):
        batch = [
            _flood_message(alice, kind, base, len(messages) + i, alice.welcome["limits"])
            for i in range(burst + int(per_second) + 10 if not messages else int(per_second) + 10)
        ]
        for message in batch:
            alice.send(message)
        messages += batch
        replies += [_reply_to(alice, str(m["id"])) for m in batch]
        supply = burst + per_second * (time.monotonic() - started)
        if len(messages) > supply + 1 or len(messages) > burst + 5000:
            break
    supply = burst + per_second * (time.monotonic() - started)
    limited = [r for r in replies if r.get("code") == "rate_limited"]
    processed = [r for r in replies if r.get("code") != "rate_limited"]
    assert len(processed) >= burst, f"UNI-PUB-31: only {len(processed)} of a burst of {burst}"
    if not limited and len(messages) <= supply + 1:
        not_run(f"this run sent publishes too slowly to outrun a refill of {per_second}/s")
    assert limited, (
        f"UNI-PUB-30: {len(messages)} {kind} publishes, more than a burst of {burst} plus the "
        f"refill at {per_second}/s, and none was rate limited: UNI-PUB-39 charges every "
        f"publish at step 1"
    )
    assert len(processed) <= supply + 1, (
        f"UNI-PUB-39: {len(processed)} {kind} publishes were processed, more than the "
        f"{supply:.1f} tokens a bucket of {burst} at {per_second}/s could supply"
    )
    want = _FLOOD_REPLIES[kind]
    other = [r for r in processed if (r["code"] if r["type"] == "error" else r["type"]) != want]
    assert not other, (
        f"UNI-PUB-24: {len(other)} of {len(processed)} {kind} publishes that took a token were "
        f"not answered with {want}: {other[:3]}"
    )
    most = math.ceil(1000 / per_second)
    assert all(
        isinstance(r.get("retry_after_ms"), int) and 1 <= r["retry_after_ms"] <= most
        for r in limited
    ), f"retry_after_ms outside 1..{most}: {[r.get('retry_after_ms') for r in limited][:10]}"
    assert len(processed) + len(limited) == len(messages), replies
    if kind == "accepted":
        assert sorted(a["offset"] for a in processed) == list(range(1, len(processed) + 1))
    if kind == "duplicate":
        assert all(r["duplicate"] is True and r["offset"] == first["offset"] for r in processed)
    # A refused publish took no token: one refill interval later the bucket holds one again.
    alice.closed.wait(most / 1000 + 0.005)
    again = alice.request(alice.publish_message(f"{base}.x", id="after-refill"))
    assert again["type"] == "ack", (
        f"UNI-PUB-31: {again} {most} ms after the last rate_limited reply: refused "
        f"publishes must not put the bucket in debt"
    )
    assert alice.request({"type": "ping", "id": "still-open"})["type"] == "pong"


@pytest.mark.requirement("UNI-PUB-39", "UNI-PUB-31")
def test_server_charges_no_publish_token_for_other_messages(
    user: User, names: Names, server_info: ServerInfo
) -> None:
    """Pings, subscribes and unsubscribes never drain the publish bucket: a burst of publishes
    right after many of them is processed in full."""
    rate = server_info.limits.get("publish_rate", {})
    burst, per_second = int(rate.get("burst", 100)), float(rate.get("per_second", 50))
    if burst + per_second > 1000:
        not_run(f"a burst of {burst} at {per_second}/s is too large to check quickly")
    channel = names.channel()
    alice = user(names.tenant(), names.user())
    alice.pace = False
    others: list[Frame] = []
    for i in range(burst + int(2 * per_second)):
        others.append({"type": "ping", "id": f"ping{i}"})
        if i % 8 == 0:
            others.append({"type": "subscribe", "id": f"s{i}", "channel": f"{channel}.s{i}"})
            others.append({"type": "unsubscribe", "id": f"u{i}", "channel": f"{channel}.s{i}"})
    publishes = [alice.publish_message(channel, id=f"p{i}") for i in range(burst)]
    for message in [*others, *publishes]:
        alice.send(message)
    replies = [_reply_to(alice, str(m["id"])) for m in publishes]
    kinds = [r["type"] if r["type"] != "error" else r["code"] for r in replies]
    assert kinds == ["ack"] * burst, (
        f"a burst of {burst} publishes after {len(others)} other messages: {kinds}"
    )


# -- the dedup window on both sides --------------------------------------------------------------


@pytest.mark.requirement("UNI-PUB-21", "UNI-PUB-28")
@pytest.mark.timing
def test_server_recognises_a_duplicate_until_dedup_window_ms_and_sequences_it_after(
    user: User, deployment: Deployment, server_info: ServerInfo, names: Names
) -> None:
    """A retry shortly before ``dedup_window_ms`` has passed is a duplicate; a retry once
    it has passed (plus the timer tolerance) is a new event (section 6.6)."""
    window_s = server_info.dedup_window_ms / 1000
    tolerance = deployment.timeout(0.25)
    if window_s <= 2 * tolerance:
        not_run(f"dedup_window_ms {window_s * 1000:.0f} leaves no room for the timer tolerance")
    require_time(deployment, window_s + 2 * tolerance, "dedup_window_ms")
    tenant, channel = names.tenant(), names.channel()
    alice = user(tenant, names.user())
    mid = names.message_id()
    first = alice.publish(channel, message_id=mid)
    sent = time.monotonic()  # the original was sequenced before this moment
    alice.closed.wait(max(0.0, window_s - tolerance - (time.monotonic() - sent)))
    inside = alice.publish(channel, message_id=mid)
    assert inside["duplicate"] is True and inside["offset"] == first["offset"], (
        f"UNI-PUB-21: a retry {time.monotonic() - sent:.2f} s after the original, inside "
        f"dedup_window_ms {window_s * 1000:.0f}, was not a duplicate: {inside}"
    )
    alice.closed.wait(max(0.0, window_s + tolerance - (time.monotonic() - sent)))
    outside = alice.publish(channel, message_id=mid)
    # A new event: the next offset of the same epoch, or any offset of a new epoch when the
    # server discarded the idle channel's state once the window had passed (UNI-SEC-14).
    sequenced = outside["epoch"] != first["epoch"] or outside["offset"] == first["offset"] + 1
    assert outside["duplicate"] is False and sequenced, (
        f"a retry {time.monotonic() - sent:.2f} s after the original, past dedup_window_ms "
        f"{window_s * 1000:.0f}, is a new event: {outside} (original: {first})"
    )
