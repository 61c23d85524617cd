"""Deliberately broken variants of the reference client, run behind its test adapter.

``python tests/broken_clients/variants.py VARIANT`` patches one rule out of
:mod:`unisock.client` (the shipped client has no switches for any of this) and then runs
``unisock.adapter.main``. The client conformance suite must fail each variant; see
``tests/test_client_suite.py``.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from collections.abc import Callable, Mapping
from typing import Any

import unisock.client as client_module
from unisock import adapter
from unisock.backoff import BackoffParams
from unisock.closecodes import ReconnectClass, close_class


def _patch(name: str, value: object) -> None:
    """Replace a name the client module imported (it is not part of its public API)."""
    setattr(client_module, name, value)


def _floor(params: BackoffParams, retry_after_ms: int | None) -> int:
    return max(params.floor, retry_after_ms or 0)


def no_jitter() -> None:
    """Always the top of the range: max(F, R, min(cap, base * 2^n))."""

    def delay(
        params: BackoffParams, attempt: int, rng: random.Random, retry: int | None = None
    ) -> int:
        return max(
            _floor(params, retry), min(params.cap_ms, params.base_ms * (1 << min(attempt, 30)))
        )

    _patch("backoff_delay", delay)


def no_backoff_cap() -> None:
    """Full jitter, but the range keeps doubling past cap_ms."""

    def delay(
        params: BackoffParams, attempt: int, rng: random.Random, retry: int | None = None
    ) -> int:
        return max(_floor(params, retry), rng.randint(0, params.base_ms * (1 << min(attempt, 30))))

    _patch("backoff_delay", delay)


def _reclassify(mapping: Callable[[int], ReconnectClass | None]) -> None:
    def patched(code: int) -> ReconnectClass:
        return mapping(code) or close_class(code)

    _patch("close_class", patched)


def reconnect_on_fatal() -> None:
    """Treats every close of class never, except 4001, as a transient failure."""
    _reclassify(
        lambda code: (
            ReconnectClass.BACKOFF
            if code != 4001 and close_class(code) is ReconnectClass.NEVER
            else None
        )
    )


def supersede_loop() -> None:
    """Reconnects after 4001 superseded: two tabs of a session would evict each other."""
    _reclassify(lambda code: ReconnectClass.BACKOFF if code == 4001 else None)


def wrong_resume_offset() -> None:
    """Resumes every channel one offset after the last one it received."""
    original = client_module.Client._send

    async def send(self: client_module.Client, msg: Mapping[str, Any]) -> None:
        if msg.get("type") == "subscribe" and "from" in msg:
            start = {
                channel: {"epoch": pos["epoch"], "offset": pos["offset"] + 1}
                for channel, pos in msg["from"].items()
            }
            msg = {**msg, "from": start}
        await original(self, msg)

    client_module.Client._send = send  # type: ignore[method-assign]


def no_refresh() -> None:
    """Ignores token_expiring: the token runs out and the server closes with 4101."""

    async def ignore(self: client_module.Client, ws: Any, msg: dict[str, Any]) -> None:
        return None

    client_module.Client._handle_token_expiring = ignore  # type: ignore[method-assign]


def no_heartbeat_timeout() -> None:
    """Waits for ever on a silent connection."""
    client_module.HeartbeatParams.silence_ms = property(lambda self: 10**9)  # type: ignore[assignment, method-assign]


def no_dedup() -> None:
    """Passes every event on, duplicates and stale offsets included."""
    original = client_module.Client._handle_event

    async def handle(self: client_module.Client, ws: Any, msg: dict[str, Any]) -> None:
        self._positions.pop(msg.get("channel", ""), None)
        await original(self, ws, msg)

    client_module.Client._handle_event = handle  # type: ignore[method-assign]


def no_floor() -> None:
    """Full jitter without the floor F: reconnects can follow each other at once."""

    def delay(
        params: BackoffParams, attempt: int, rng: random.Random, retry: int | None = None
    ) -> int:
        return max(
            retry or 0, rng.randint(0, min(params.cap_ms, params.base_ms * (1 << min(attempt, 30))))
        )

    def drain(window_ms: int | None, params: BackoffParams, rng: random.Random) -> int:
        return rng.randint(0, params.cap_ms if window_ms is None else window_ms)

    async def no_wait(self: client_module.Client) -> None:
        return None

    _patch("backoff_delay", delay)
    _patch("drain_delay", drain)
    client_module.Client._wait_floor = no_wait  # type: ignore[method-assign]


def fixed_seed() -> None:
    """Every instance draws its jitter from the same seed."""

    class Seeded(random.Random):
        def __init__(self, x: Any = None) -> None:
            super().__init__(1234)

    shim = type(sys)("random_shim")
    shim.Random = Seeded  # type: ignore[attr-defined]
    _patch("random", shim)


def new_message_id_on_retry() -> None:
    """Re-sends an unacknowledged publish under a fresh message_id."""
    original = client_module.Client._send
    counter = iter(range(1, 1 << 30))

    async def send(self: client_module.Client, msg: Mapping[str, Any]) -> None:
        if msg.get("type") == "publish" and getattr(self, "_gen", 0) > 1:
            msg = {**msg, "message_id": f"{msg['message_id']}-retry{next(counter)}"}
        await original(self, msg)

    client_module.Client._send = send  # type: ignore[method-assign]


def pings_only_liveness() -> None:
    """Only pings renew the silence deadline: a quiet but live server looks dead."""

    async def read_loop(
        self: client_module.Client, ws: Any, heartbeat: client_module.HeartbeatParams
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._seconds(heartbeat.silence_ms)
        while True:
            try:
                raw = await asyncio.wait_for(ws.recv(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                await self._abort(ws, client_module.CloseInfo(1006, "heartbeat_timeout", True))
                return
            msg = client_module._decode(raw)
            if msg is None:
                continue
            if msg.get("type") == "ping":
                deadline = loop.time() + self._seconds(heartbeat.silence_ms)
            await self._dispatch(ws, msg)

    client_module.Client._read_loop = read_loop  # type: ignore[method-assign]


def drain_at_window_end() -> None:
    """Leaves a draining server always at the end of window_ms: every client at once."""

    async def handle(self: client_module.Client, ws: Any, msg: dict[str, Any]) -> None:
        if self._state is client_module.ClientState.DRAINING:
            return
        self._set_state(client_module.ClientState.DRAINING)
        self._drain_window_ms = msg["window_ms"]
        self._spawn(self._leave_after(ws, self._seconds(max(msg["window_ms"], 150))))

    client_module.Client._handle_drain = handle  # type: ignore[method-assign]


def now_window_ignores_drain() -> None:
    """A now-class close after drain draws from cap_ms, forgetting the drain's window."""
    original = client_module.Client._handle_drain

    async def handle(self: client_module.Client, ws: Any, msg: dict[str, Any]) -> None:
        await original(self, ws, msg)
        self._drain_window_ms = None

    client_module.Client._handle_drain = handle  # type: ignore[method-assign]


def dedup_age_from_last_send() -> None:
    """Measures an unacknowledged publish's age from its latest send, not its first."""
    original = client_module.Client._send_publish

    async def send(self: client_module.Client, pending: Any) -> None:
        if pending.sent_gen != self._gen:
            pending.first_sent = None
        await original(self, pending)

    client_module.Client._send_publish = send  # type: ignore[method-assign]


def revoked_comes_back() -> None:
    """Forgets a revoked subscription on this connection only: the next one re-sends it."""
    original = client_module.Client._handle_unsubscribed

    async def handle(self: client_module.Client, ws: Any, msg: dict[str, Any]) -> None:
        sub = self._subs.get(msg["channel"]) if "id" not in msg else None
        await original(self, ws, msg)
        if sub is not None:
            sub.sent_gen = self._gen
            self._subs[sub.channel] = sub

    client_module.Client._handle_unsubscribed = handle  # type: ignore[method-assign]


def resume_takes_subscribed_head() -> None:
    """Records subscribed.position also for a resuming subscribe: the resume point jumps."""
    original = client_module.Client._take_request

    def take(self: client_module.Client, msg: Mapping[str, Any], kind: str) -> Any:
        request = original(self, msg, kind)
        if request is not None and kind == "subscribe":
            request.plain = True
        return request

    client_module.Client._take_request = take  # type: ignore[method-assign]


def size_in_characters() -> None:
    """Checks max_message_bytes against the number of characters, not UTF-8 octets."""

    async def send(self: client_module.Client, msg: Mapping[str, Any]) -> None:
        ws = self._ws
        if ws is None:
            raise client_module.NotConnected("no open connection")
        text = json.dumps(msg, separators=(",", ":"), ensure_ascii=False)
        limit = self._limit("max_message_bytes", 0)
        if limit and len(text) > limit:
            raise client_module.MessageTooLarge("too large")
        await ws.send(text)

    client_module.Client._send = send  # type: ignore[method-assign]


def ignores_the_subprotocol() -> None:
    """Sends hello whatever the 101 response selected."""
    from websockets.asyncio.client import ClientConnection

    ClientConnection.subprotocol = property(lambda self: "unisock.v1")  # type: ignore[assignment, method-assign]


def normalizes_channels() -> None:
    """Trims and lowercases channel names before checking and sending them."""
    subscribe, publish = client_module.Client.subscribe, client_module.Client.publish

    async def sub(self: client_module.Client, channel: str, **kwargs: Any) -> Any:
        return await subscribe(self, channel.strip().lower(), **kwargs)

    async def pub(self: client_module.Client, channel: str, *args: Any, **kwargs: Any) -> Any:
        return await publish(self, channel.strip().lower(), *args, **kwargs)

    client_module.Client.subscribe = sub  # type: ignore[method-assign]
    client_module.Client.publish = pub  # type: ignore[method-assign]


def drops_own_event_before_ack() -> None:
    """Drops an event whose message_id is one of its own unacknowledged publishes."""
    original = client_module.Client._handle_event

    async def handle(self: client_module.Client, ws: Any, msg: dict[str, Any]) -> None:
        if msg.get("message_id") in self._publishes:
            return
        await original(self, ws, msg)

    client_module.Client._handle_event = handle  # type: ignore[method-assign]


def ignores_unknown_error_codes() -> None:
    """Ignores an error whose code it does not know: the request waits for ever."""
    from unisock import errors

    original = client_module.Client._handle_error

    async def handle(self: client_module.Client, ws: Any, msg: dict[str, Any]) -> None:
        if msg.get("code") not in errors.error_classes():
            return
        await original(self, ws, msg)

    client_module.Client._handle_error = handle  # type: ignore[method-assign]


def keeps_first_backoff() -> None:
    """Keeps the backoff values of the first welcome on every later connection."""
    original = client_module.Client._on_welcome
    first: list[BackoffParams] = []

    async def on_welcome(self: client_module.Client, welcome: Any) -> None:
        await original(self, welcome)
        first.append(welcome.backoff)
        self._backoff = first[0]

    client_module.Client._on_welcome = on_welcome  # type: ignore[method-assign]


def no_welcome_deadline() -> None:
    """Waits for welcome for ever after sending hello."""

    async def await_welcome(self: client_module.Client, ws: Any) -> Any:
        msg = client_module._decode(await ws.recv())
        if msg is None or msg.get("type") != "welcome":
            await ws.close(1002, "protocol_error")
            return None
        return client_module.Welcome.from_message(msg)

    client_module.Client._await_welcome = await_welcome  # type: ignore[method-assign]


def stops_on_a_bad_welcome() -> None:
    """Stops for good, as after its own 1002 close, when the first message is not welcome."""
    original = client_module.Client._await_welcome

    async def await_welcome(self: client_module.Client, ws: Any) -> Any:
        welcome = await original(self, ws)
        local = self._local_close
        if welcome is None and local is not None and local.reason == "bad_welcome":
            self._local_close = client_module.CloseInfo(1002, "protocol_error", local=True)
        return welcome

    client_module.Client._await_welcome = await_welcome  # type: ignore[method-assign]


def skips_a_bad_first_message() -> None:
    """Ignores first messages that are not a valid welcome and waits for one, up to the deadline."""

    async def await_welcome(self: client_module.Client, ws: Any) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._seconds(self._auth_timeout_ms)
        while True:
            try:
                raw = await asyncio.wait_for(ws.recv(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                await self._abort(ws, client_module.CloseInfo(1006, "welcome_timeout", local=True))
                return None
            msg = client_module._decode(raw)
            if msg is not None and msg.get("type") == "welcome" and not client_module._invalid(msg):
                return client_module.Welcome.from_message(msg)

    client_module.Client._await_welcome = await_welcome  # type: ignore[method-assign]


def close_leaves_reconnect_pending() -> None:
    """An application close while waiting to reconnect does not cancel the reconnection."""

    async def close(self: client_module.Client) -> None:
        if self._ws is not None:
            await self._ws.close(1000, "normal")
        self._finish(client_module.CloseInfo(1000, "normal", local=True))

    client_module.Client.close = close  # type: ignore[method-assign]


def ignores_request_limits() -> None:
    """Sends requests over max_targets, max_attrs and max_filter_nodes for the server to refuse."""
    original = client_module.Client._limit

    def limit(self: client_module.Client, name: str, default: int) -> int:
        if name in ("max_targets", "max_attrs", "max_filter_nodes"):
            return 1000
        return original(self, name, default)

    client_module.Client._limit = limit  # type: ignore[method-assign]


def stable_from_handshake() -> None:
    """Counts the stable period from the opening handshake instead of from welcome."""
    original = client_module.Client._connection

    async def connection(self: client_module.Client, token: str) -> Any:
        started = self._clock()
        close, opened_at = await original(self, token)
        return close, (started if opened_at is not None else None)

    client_module.Client._connection = connection  # type: ignore[method-assign]


def logs_refused_token() -> None:
    """Logs the refused token at WARNING when the server closes with 4100 or 4101."""
    original = client_module.Client._new_token

    async def new_token(self: client_module.Client, close: client_module.CloseInfo) -> str:
        if close.code in (4100, 4101):
            client_module.log.warning("token refused (%s): %s", close.name, self._last_token)
        return await original(self, close)

    client_module.Client._new_token = new_token  # type: ignore[method-assign]


def logs_token_signature() -> None:
    """Logs the signature of the token of every hello at WARNING, as if it were harmless."""
    original = client_module.Client._connection

    async def connection(self: client_module.Client, token: str) -> Any:
        client_module.log.warning("hello with token signature %s", token.rsplit(".", 1)[-1])
        return await original(self, token)

    client_module.Client._connection = connection  # type: ignore[method-assign]


VARIANTS: dict[str, Callable[[], None]] = {
    "no_jitter": no_jitter,
    "no_backoff_cap": no_backoff_cap,
    "reconnect_on_fatal": reconnect_on_fatal,
    "supersede_loop": supersede_loop,
    "wrong_resume_offset": wrong_resume_offset,
    "no_refresh": no_refresh,
    "no_heartbeat_timeout": no_heartbeat_timeout,
    "no_dedup": no_dedup,
    "no_floor": no_floor,
    "fixed_seed": fixed_seed,
    "new_message_id_on_retry": new_message_id_on_retry,
    "pings_only_liveness": pings_only_liveness,
    "drain_at_window_end": drain_at_window_end,
    "now_window_ignores_drain": now_window_ignores_drain,
    "dedup_age_from_last_send": dedup_age_from_last_send,
    "revoked_comes_back": revoked_comes_back,
    "resume_takes_subscribed_head": resume_takes_subscribed_head,
    "size_in_characters": size_in_characters,
    "ignores_the_subprotocol": ignores_the_subprotocol,
    "normalizes_channels": normalizes_channels,
    "drops_own_event_before_ack": drops_own_event_before_ack,
    "ignores_unknown_error_codes": ignores_unknown_error_codes,
    "keeps_first_backoff": keeps_first_backoff,
    "no_welcome_deadline": no_welcome_deadline,
    "stops_on_a_bad_welcome": stops_on_a_bad_welcome,
    "skips_a_bad_first_message": skips_a_bad_first_message,
    "close_leaves_reconnect_pending": close_leaves_reconnect_pending,
    "ignores_request_limits": ignores_request_limits,
    "stable_from_handshake": stable_from_handshake,
    "logs_refused_token": logs_refused_token,
    "logs_token_signature": logs_token_signature,
}


def garbage_adapter() -> int:
    """Not a client fault at all: an adapter that writes a log line to standard output."""
    line = sys.stdin.readline()
    print("starting adapter...", flush=True)
    request = json.loads(line)
    print(json.dumps({"seq": request["seq"], "outcome": "result", "result": {}}), flush=True)
    sys.stdin.read()
    return 0


def main(argv: list[str]) -> int:
    name = argv[0] if argv else ""
    if name == "garbage_adapter":
        return garbage_adapter()
    if name not in VARIANTS:
        print(f"unknown variant {name!r}; choose from {sorted(VARIANTS)}", file=sys.stderr)
        return 2
    VARIANTS[name]()
    return adapter.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
