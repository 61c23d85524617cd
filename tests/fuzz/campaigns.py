"""The three fuzz campaigns, bounded by case count, shared by CI and ``make fuzz-long``.

- core: hypothesis draws lists of hostile frames and feeds each list to a fresh session core;
- live: the same frames over real sockets to a running server, while a watcher connection
  of the same tenant checks that only acknowledged publishes were ever sequenced and that
  the server goes on serving it;
- frames: raw RFC 6455 frames, every deterministic rule plus seeded random byte mutations.

Each returns :class:`Stats`; a property violation raises AssertionError with the case.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from fuzz.core import CoreHarness
from fuzz.frames import (
    FENCE,
    PONG,
    TEXT,
    Case,
    RawSocket,
    build,
    deterministic_cases,
    random_case,
)
from fuzz.live import LIMIT, LiveServer, fence, live_server
from fuzz.mutate import cheap_mutants, hostile_text
from fuzz.properties import check_close, check_frame

__all__ = ["Stats", "core_campaign", "frame_campaign", "live_campaign"]

MUTANTS_PER_MESSAGE = 6
"""Cheap byte-level edits tried after each schema-generated frame in the core campaign."""


@dataclass
class Stats:
    name: str
    cases: int = 0
    seconds: float = 0.0
    closes: int = 0
    replies: int = 0

    @property
    def rate(self) -> float:
        return self.cases / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"fuzz {self.name}: {self.cases} cases in {self.seconds:.1f} s "
            f"({self.rate:.0f}/s), {self.replies} replies checked, {self.closes} server closes"
        )


def _run(examples: int, seed: int, strategy: Any, body: Callable[..., None]) -> None:
    test = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.shrink],
    )(given(strategy)(body))
    hypothesis_seed(seed)(test)()


def core_campaign(examples: int, seed: int) -> Stats:
    """``examples`` lists of 1-20 frames, half before ``hello``, through the session core."""
    stats = Stats("core")
    started = time.perf_counter()

    def body(case: tuple[list[str], bool]) -> None:
        texts, authenticated = case
        harness = CoreHarness(authenticated=authenticated)
        rng = random.Random(seed + stats.cases)
        for text in texts:
            for variant in (text, *cheap_mutants(text, rng, MUTANTS_PER_MESSAGE)):
                stats.cases += 1
                stats.replies += len(harness.send(variant))
        stats.closes += harness.core.state.name == "CLOSED"

    strategy = st.tuples(st.lists(hostile_text(), min_size=1, max_size=20), st.booleans())
    _run(examples, seed, strategy, body)
    stats.seconds = time.perf_counter() - started
    return stats


class _Watcher:
    """A second connection of the fuzzed tenant, subscribed to everything it may see."""

    def __init__(self, live: LiveServer) -> None:
        self.ws = live.open(live.token(sub="watcher"))
        self.count = 0
        for pattern in (">", "$sys.>"):
            self.ws.send(
                json.dumps({"type": "subscribe", "id": f"w-{pattern}", "channel": pattern})
            )
        frames, closed = fence(self.ws, "w-ready")
        assert closed is None, closed
        self.events: list[dict[str, Any]] = [f for f in frames if f["type"] == "event"]

    def alive(self) -> None:
        """The server still serves this bystander (UNI-SEC-13); collect its events."""
        self.count += 1
        frames, closed = fence(self.ws, f"w{self.count}")
        assert closed is None, f"the bystander connection was closed: {closed}"
        self.events += [f for f in frames if f["type"] == "event"]


def live_campaign(examples: int, seed: int) -> Stats:
    """``examples`` lists of 1-10 frames over a socket; reconnect after every server close."""
    stats = Stats("live")
    with live_server() as live:
        watcher = _Watcher(live)
        acked: set[tuple[str, int]] = set()
        state: dict[str, Any] = {"ws": None}
        started = time.perf_counter()

        def body(texts: list[str]) -> None:
            if state["ws"] is None:
                state["ws"] = live.open(live.token())
            ws = state["ws"]
            rng = random.Random(seed + stats.cases)
            for text in [m for t in texts for m in (t, *cheap_mutants(t, rng, 2))]:
                stats.cases += 1
                try:
                    # a lone surrogate goes out as its (invalid) UTF-8 octets: close 1007
                    ws.send(text.encode("utf-8", "surrogatepass"), text=True)
                except ConnectionClosed:
                    break
            frames, closed = fence(ws, "fz")
            stats.replies += len(frames)
            for frame in frames:
                if frame["type"] == "ack":
                    acked.add((frame["channel"], frame["offset"]))
            if closed is not None:
                stats.closes += 1
                ws.close()
                state["ws"] = None
            if stats.cases % 10 == 0:
                watcher.alive()

        _run(examples, seed, st.lists(hostile_text(), min_size=1, max_size=10), body)
        stats.seconds = time.perf_counter() - started
        watcher.alive()
        unacked = [
            e
            for e in watcher.events
            if e["channel"].startswith("$") is False and (e["channel"], e["offset"]) not in acked
        ]
        assert not unacked, f"events sequenced without an ack (refused publish?): {unacked[:3]}"
    return stats


def _hello(live: LiveServer) -> RawSocket:
    host, port = live.url.removeprefix("ws://").rstrip("/").rsplit(":", 1)
    raw = RawSocket(host, int(port), LIMIT)
    raw.send(build(TEXT, json.dumps({"type": "hello", "token": live.token()}).encode()))
    opcode, payload = next(raw.frames())
    assert opcode == TEXT and check_frame(payload.decode())["type"] == "welcome"
    return raw


def _outcome(raw: RawSocket) -> tuple[list[tuple[int, bytes]], tuple[int, str] | None]:
    """Frames until the Unisock pong of the fence, or the close (code, reason)."""
    seen: list[tuple[int, bytes]] = []
    for opcode, payload in raw.frames():
        if opcode == 0x8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            return seen, (code, payload[2:].decode())
        if opcode == TEXT:
            message = check_frame(payload.decode())
            if message["type"] == "pong" and message.get("id") == "fence":
                return seen, None
        seen.append((opcode, payload))
    return seen, (1006, "")


def _frame_case(live: LiveServer, case: Case, stats: Stats) -> None:
    raw = _hello(live)
    try:
        raw.send(case.data)
        if case.closes is not None and case.name == "random":
            raw.send(build(TEXT, FENCE))
            raw.sock.settimeout(0.3 * LIMIT / 5)
        try:
            seen, closed = _outcome(raw)
        except TimeoutError:
            assert case.name == "random", f"{case.name}: no answer and no close"
            return  # the server waits for bytes a lying header promised: allowed
        if case.closes is None:
            assert closed is None, f"{case.name}: closed {closed}, expected the fence's pong"
            if case.pong is not None:
                assert (PONG, case.pong) in seen, f"{case.name}: no pong for the ping: {seen}"
            return
        if case.name == "random" and closed is None:
            return
        assert closed is not None, f"{case.name}: the connection stayed open"
        stats.closes += 1
        code, reason = closed
        assert code in case.closes, (
            f"{case.name}: closed {code} {reason!r}, expected {set(case.closes)}"
        )
        if code not in (1000, 1006):
            check_close(code, reason)
    finally:
        raw.close()


def frame_campaign(random_cases: int, seed: int) -> Stats:
    """Every deterministic framing case, then ``random_cases`` seeded mutations."""
    stats = Stats("frames")
    with live_server() as live:
        watcher = _Watcher(live)
        limit = live.server.config.max_message_bytes
        rng = random.Random(seed)
        started = time.perf_counter()
        cases = [*deterministic_cases(limit), *(random_case(rng) for _ in range(random_cases))]
        for index, case in enumerate(cases):
            stats.cases += 1
            try:
                _frame_case(live, case, stats)
            except AssertionError as error:
                raise AssertionError(
                    f"frame case {index} {case.name} {case.data[:80]!r}: {error}"
                ) from None
            if index % 10 == 0:
                watcher.alive()
        stats.seconds = time.perf_counter() - started
        watcher.alive()
    return stats
