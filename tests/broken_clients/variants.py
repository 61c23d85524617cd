"""Deliberately broken variants of the reference client, run behind its test adapter.

``python tests/broken_clients/variants.py VARIANT`` patches one rule out of
:mod:`unisock.client` (the shipped client has no switches for any of this) and then runs
``unisock.adapter.main``. The client conformance suite must fail each variant; see
``tests/test_client_suite.py``.
"""

from __future__ import annotations

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
