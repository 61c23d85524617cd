"""Section 7.8: coalescing, and the no-silent-loss guarantee for a stalled reader.

A reader is stalled for real: its socket has a tiny receive buffer and the client stops
reading after ``subscribed``, so the server's writes back up and events queue for it. The
publisher then sends large events; when the reader resumes, every acknowledged offset must
be accounted for, delivered or listed in a ``coalesced`` list, and the lists must obey
UNI-DEL-25 to UNI-DEL-27.

A deployment does not announce which channels coalesce, so the operator names one
(``--coalescing-channel``); without it these checks are not run. When nothing coalesces on that
channel the positive check is graded ``unimplemented``; the rules about frames that do carry
``coalesced`` are checked whenever one appears.
"""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from unisock_conformance.checks.conftest import User
from unisock_conformance.checks.test_coalescing_limits import SOCKET_BUFFERS
from unisock_conformance.deployment import (
    NOT_RUN_PREFIX,
    Deployment,
    Names,
    ServerInfo,
    not_run,
)
from unisock_conformance.oracle import json_equal
from unisock_conformance.wire import Periodic, stalling_socket, widen_receive_buffer

Frame = dict[str, Any]
PAYLOAD_BYTES = 60_000


@contextmanager
def _stalled_reader(deployment: Deployment, token: str, channel: str) -> Iterator[ClientConnection]:
    """A subscribed connection that reads nothing until the caller starts ``recv``."""
    parts = urlsplit(deployment.url)
    if parts.scheme != "ws":
        not_run("stalling a reader needs a plain ws:// URL (a TLS proxy buffers for it)")
    sock = stalling_socket(socket.AF_INET6 if ":" in (parts.hostname or "") else socket.AF_INET)
    sock.settimeout(deployment.timeout())
    sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
    ws = connect(
        deployment.url,
        sock=sock,
        subprotocols=["unisock.v1"],  # type: ignore[list-item]
        origin=deployment.origin,  # type: ignore[arg-type]
        additional_headers=list(deployment.headers) or None,
        compression=None,
        max_size=None,
        max_queue=1,
        ping_interval=None,
    )
    keepalive: Periodic | None = None
    try:
        ws.send(json.dumps({"type": "hello", "token": token}))
        welcome = json.loads(ws.recv(timeout=deployment.timeout()))
        assert welcome["type"] == "welcome"
        ws.send(json.dumps({"type": "subscribe", "id": "s1", "channel": channel}))
        while json.loads(ws.recv(timeout=deployment.timeout())).get("id") != "s1":
            pass
        every = welcome["heartbeat"]["interval_ms"] / 3000
        keepalive = Periodic(lambda: ws.send(json.dumps({"type": "pong"})), every)
        yield ws
    finally:
        if keepalive is not None:
            keepalive.close()
        ws.close()


def _drain(ws: ClientConnection, channel: str, last_offset: int, timeout: float) -> list[Frame]:
    """Read until the event at ``last_offset`` (or one listing it) arrives."""
    widen_receive_buffer(ws.socket)
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"UNI-DEL-23: offset {last_offset} never accounted for: {_brief(frames)}"
        frame = json.loads(ws.recv(timeout=left))
        if frame.get("type") == "ping":
            ws.send(
                json.dumps(
                    {"type": "pong", **({"nonce": frame["nonce"]} if "nonce" in frame else {})}
                )
            )
            continue
        if frame.get("type") != "event" or frame.get("channel") != channel:
            continue
        frames.append(frame)
        if frame["offset"] >= last_offset:
            return frames


def _brief(frames: list[Frame]) -> str:
    return str([(f["offset"], f.get("coalesced")) for f in frames][-10:])


def _account(frames: list[Frame], acks: list[Frame], keys: dict[int, str | None]) -> int:
    """Check UNI-DEL-23/25/26/27 over a drained channel; return how many offsets coalesced."""
    delivered = [f["offset"] for f in frames]
    assert delivered == sorted(set(delivered)), f"UNI-DEL-14: order {delivered}"
    listed: list[int] = []
    for frame in frames:
        if "coalesced" not in frame:
            continue
        replaced = frame["coalesced"]
        assert replaced, f"UNI-DEL-27: empty coalesced list on offset {frame['offset']}"
        assert replaced == sorted(set(replaced)), f"UNI-DEL-26: not ascending: {replaced}"
        assert all(o < frame["offset"] for o in replaced), f"UNI-DEL-26: {frame}"
        own = keys.get(frame["offset"])
        assert own is not None, f"UNI-DEL-25: a keyless event coalesced others: {frame}"
        wrong = [o for o in replaced if keys.get(o) != own]
        assert wrong == [], f"UNI-DEL-25: offsets {wrong} had another key than {own!r}"
        listed += replaced
    both = sorted(set(listed) & set(delivered))
    assert both == [], f"UNI-DEL-26: offsets both delivered and coalesced: {both}"
    assert len(listed) == len(set(listed)), f"UNI-DEL-26: listed twice: {listed}"
    accounted = sorted(delivered + listed)
    first = acks[0]["offset"]
    want = [a["offset"] for a in acks]
    assert [o for o in accounted if o >= first] == want, (
        f"UNI-DEL-23: offsets lost without coalesced or gap: {sorted(set(want) - set(accounted))}"
    )
    return len(listed)


def _run_stall(
    deployment: Deployment,
    user: User,
    names: Names,
    server_info: ServerInfo,
    channel: str,
    keys_for: list[str | None],
) -> tuple[list[Frame], list[Frame], dict[int, str | None], list[Frame]]:
    tenant = names.tenant()  # a tenant of its own: the channel's history is this check's
    burst = int(server_info.limits.get("publish_rate", {}).get("burst", 100))
    pad = "x" * _pad_bytes(server_info)
    fast = user(tenant, names.user(2))
    fast.subscribe(channel)
    token = deployment.mint(tenant, names.user(1), subscribe=(">",))
    with _stalled_reader(deployment, token, channel) as ws:
        started = time.monotonic()
        acks = _publish_spread(user, names, tenant, channel, keys_for, pad, burst)
        stalled_s = time.monotonic() - started
        keys = {ack["offset"]: key for ack, key in zip(acks, keys_for, strict=True)}
        try:
            frames = _drain(ws, channel, acks[-1]["offset"], deployment.timeout(30.0))
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else 1006
            _explain_cut(code, stalled_s, keys_for, server_info)
            raise
    live = fast.wait_events(lambda e: e["channel"] == channel, len(acks))
    return frames, acks, keys, live


def _explain_cut(
    code: int, stalled_s: float, keys_for: list[str | None], server_info: ServerInfo
) -> None:
    """A stalled reader closed for its queue (4200, or 1006 after an abort: UNI-LIM-9):
    not run when the messages the server had to queue may have exceeded ``max_queue``.

    Heartbeat pings queue like any other message (spec 11.5), one per interval while the
    reader is stalled; events that cannot coalesce (keyless ones, one per key) queue too.
    """
    if code not in (4200, 1006):
        return
    interval_s = int(server_info.heartbeat.get("interval_ms", 25_000)) / 1000
    pings = math.ceil(stalled_s / interval_s) + 1
    lasting = sum(1 for key in keys_for if key is None) + len({k for k in keys_for if k})
    max_queue = int(server_info.limits.get("max_queue", 1024))
    if pings + lasting >= max_queue:
        pytest.skip(
            f"{NOT_RUN_PREFIX} the reader was stalled {stalled_s:.1f} s: {pings} heartbeat "
            f"pings and {lasting} events that cannot coalesce may exceed max_queue "
            f"{max_queue}, so closing it ({code}) was allowed; a larger max_queue or a longer "
            f"heartbeat interval runs this check"
        )


def _pad_bytes(server_info: ServerInfo) -> int:
    max_bytes = int(server_info.limits.get("max_message_bytes", 65536))
    return max(100, min(PAYLOAD_BYTES, max_bytes - 2000))


def _publish_spread(
    user: User,
    names: Names,
    tenant: str,
    channel: str,
    keys_for: list[str | None],
    pad: str,
    burst: int,
) -> list[Frame]:
    """Acks of one publish per entry of ``keys_for``, in order.

    At most ``burst - 2`` publishes go over each connection (of its own user), so no publish
    exceeds the rate the server announced and no per-user connection cap is reached.
    """
    acks: list[Frame] = []
    per_conn = max(1, burst - 2)
    for start in range(0, len(keys_for), per_conn):
        publisher = user(tenant, names.user(100 + start // per_conn), subscribe=())
        batch = [
            publisher.publish_message(
                channel, "test.coalesce", {"i": i, "pad": pad}, key=keys_for[i], id=f"q{i}"
            )
            for i in range(start, min(len(keys_for), start + per_conn))
        ]
        for message in batch:
            publisher.send(message)
        for message in batch:
            reply = publisher.expect(None, where=_reply_to(str(message["id"])))
            assert reply.get("type") == "ack", f"publish {message['id']} answered {reply}"
            acks.append(reply)
        publisher.close()
    return acks


def _reply_to(ident: str) -> Callable[[Frame], bool]:
    return lambda frame: frame.get("id") == ident


@pytest.mark.requirement("UNI-DEL-23", "UNI-DEL-24", "UNI-DEL-25", "UNI-DEL-27")
def test_server_loses_no_keyless_event_for_a_stalled_reader(
    deployment: Deployment,
    user: User,
    names: Names,
    server_info: ServerInfo,
    coalescing_channel: str,
) -> None:
    # Fewer events than max_queue: without coalescing the queue must hold them all.
    count = min(60, int(server_info.limits.get("max_queue", 1024)) - 2)
    frames, acks, keys, _ = _run_stall(
        deployment, user, names, server_info, coalescing_channel, [None] * count
    )
    assert _account(frames, acks, keys) == 0, "keyless events were coalesced"
    assert all("coalesced" not in f for f in frames)


@pytest.mark.requirement("UNI-DEL-25", "UNI-DEL-26", "UNI-DEL-27", "UNI-DEL-23")
@pytest.mark.feature("coalescing")
def test_server_coalesces_queued_events_with_the_same_key(
    deployment: Deployment,
    user: User,
    names: Names,
    server_info: ServerInfo,
    coalescing_channel: str,
) -> None:
    # Enough bytes to fill the socket buffers, so events queue on the server; a keyless event
    # now and then (it must never coalesce), few enough to stay far below max_queue.
    count = max(96, math.ceil(SOCKET_BUFFERS / _pad_bytes(server_info)) + 16)
    keyless_every = max(6, count // max(1, int(server_info.limits.get("max_queue", 1024)) // 4))
    keys_for: list[str | None] = [
        None if i % keyless_every == 2 else ("k-b" if i % 3 == 1 else "k-a") for i in range(count)
    ]
    frames, acks, keys, live = _run_stall(
        deployment, user, names, server_info, coalescing_channel, keys_for
    )
    coalesced = _account(frames, acks, keys)
    by_offset = {e["offset"]: e for e in live}
    for frame in frames:
        plain = {k: v for k, v in frame.items() if k != "coalesced"}
        original = by_offset[frame["offset"]]
        assert json_equal(plain, original), "UNI-DEL-26: coalesced frame differs otherwise"
    assert all("coalesced" not in e for e in live), "UNI-DEL-25: a reader that kept up coalesced"
    if coalesced == 0:
        not_run(
            f"nothing coalesced on {coalescing_channel} for a stalled reader, so the rules "
            "about coalesced frames could not be observed"
        )
    last_by_key: dict[str, int] = {}
    for frame in frames:
        key = keys[frame["offset"]]
        if key is not None:
            last_by_key[key] = frame["offset"]
    final = {key: max(o for o, k in keys.items() if k == key) for key in ("k-a", "k-b")}
    assert last_by_key == final, "the latest event of each key must be delivered"
