"""Checks, their context and timing tolerances for the client suite.

A check is an ``async`` function registered with :func:`check`; it carries requirement IDs
and a tier (``smoke``, ``client`` or ``broadcaster``). It gets a :class:`Context` holding a
fresh harness server and a fresh adapter process, and fails with ``AssertionError``. Parts
of a check that concern other requirements (typically a SHOULD next to MUSTs) are graded
separately with :meth:`Context.part`, so a missed recommendation never fails a MUST.
"""

from __future__ import annotations

import ast
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from unisock_conformance.client_suite.driver import AdapterProcess, Errored
from unisock_conformance.client_suite.harness import Harness, HConn

__all__ = [
    "CHECKS",
    "TIERS",
    "CheckSpec",
    "Context",
    "PartResult",
    "Tolerances",
    "backoff_range",
    "check",
    "scan_parts",
]

TIERS: Final = ("smoke", "client", "broadcaster")
ABSOLUTE_FLOOR_MS: Final = 100
SUITE_DIR: Final = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Tolerances:
    """How far a measured time may be from the spec's bound (spec section 16.6).

    A measured delay may fall short of a lower bound by ``lower_ms`` (timer granularity) and
    exceed an upper bound by ``upper_ms`` plus ``upper_ratio`` of the bound, both scaled.
    """

    scale: float = 1.0
    lower_ms: float = 10.0
    upper_ms: float = 100.0
    upper_ratio: float = 0.10

    def low(self, bound_ms: float) -> float:
        return bound_ms - self.lower_ms

    def high(self, bound_ms: float) -> float:
        return bound_ms + (self.upper_ms + self.upper_ratio * bound_ms) * self.scale

    def seconds(self, ms: float) -> float:
        """A wait of ``ms`` milliseconds, scaled, in seconds."""
        return ms * self.scale / 1000


def backoff_range(
    backoff: Mapping[str, Any], attempt: int, retry_after_ms: int = 0
) -> tuple[int, int]:
    """The delay range of reconnection ``attempt`` (spec 9.4): ``[max(F, R), max(F, R, B(n))]``."""
    floor = max(ABSOLUTE_FLOOR_MS, int(backoff["floor_ms"]))
    ceiling = min(int(backoff["cap_ms"]), int(backoff["base_ms"]) * 2 ** min(attempt, 40))
    low = max(floor, retry_after_ms)
    return low, max(low, ceiling)


@dataclass
class PartResult:
    """The outcome of one separately graded part of a check."""

    name: str
    requirements: tuple[str, ...]
    failure: str | None = None
    skipped: str | None = None


@dataclass(frozen=True)
class CheckSpec:
    """A registered check."""

    name: str
    module: str
    requirements: tuple[str, ...]
    tier: str
    run: Callable[[Context], Awaitable[None]]
    timeout_s: float
    doc: str

    @property
    def nodeid(self) -> str:
        return f"client_suite/{self.module}.py::{self.name}"


CHECKS: list[CheckSpec] = []


def check(
    *requirements: str, tier: str = "client", timeout_s: float = 30.0
) -> Callable[[Callable[[Context], Awaitable[None]]], Callable[[Context], Awaitable[None]]]:
    """Register a check carrying ``requirements`` (at least one ID)."""
    if not requirements or tier not in TIERS:
        raise ValueError("a check needs requirement IDs and a known tier")

    def register(
        func: Callable[[Context], Awaitable[None]],
    ) -> Callable[[Context], Awaitable[None]]:
        module = func.__module__.rsplit(".", 1)[-1].removeprefix("checks_")
        doc = (func.__doc__ or "").strip().splitlines()
        CHECKS.append(
            CheckSpec(
                func.__name__.removeprefix("check_"),
                module,
                tuple(requirements),
                tier,
                func,
                timeout_s,
                doc[0] if doc else "",
            )
        )
        return func

    return register


def scan_parts(directory: Path = SUITE_DIR) -> dict[str, list[str]]:
    """Requirement ID -> the parts that grade it, as ``client_suite/MODULE.py::CHECK[PART]``.

    A part's IDs are known only when its check runs; this reads the ``ctx.part(NAME, ID...)``
    calls in the check sources instead, so that coverage is known without a run. A part is
    named after the module-level function whose body holds the call.
    """
    found: dict[str, list[str]] = {}
    for path in sorted(directory.glob("checks_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        module = path.stem.removeprefix("checks_")
        for func in tree.body:
            if not isinstance(func, ast.AsyncFunctionDef | ast.FunctionDef):
                continue
            check_name = func.name.removeprefix("check_")
            for node in ast.walk(func):
                if not (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "part"
                ):
                    continue
                values = [arg.value for arg in node.args if isinstance(arg, ast.Constant)]
                if len(values) != len(node.args) or not values or not isinstance(values[0], str):
                    continue
                nodeid = f"client_suite/{module}.py::{check_name}[{values[0]}]"
                for ident in values[1:]:
                    if isinstance(ident, str):
                        found.setdefault(ident, []).append(nodeid)
    return found


@dataclass
class Context:
    """What a check works with: the harness, the adapter, tolerances and its parts."""

    harness: Harness
    adapter: AdapterProcess
    tol: Tolerances
    reply_timeout_s: float = 10.0
    parts: list[PartResult] = field(default_factory=list)
    token: str = ""

    def __post_init__(self) -> None:
        # The application always has its current token to give (scripts override this).
        self.adapter.token_supplier = lambda request: self.token or None

    def seconds(self, ms: float) -> float:
        return self.tol.seconds(ms)

    @property
    def timeout(self) -> float:
        """The wait for things that need no protocol timing (a reply, a notification)."""
        return self.reply_timeout_s * self.tol.scale

    @contextlib.contextmanager
    def part(self, name: str, *requirements: str) -> Iterator[PartResult]:
        """A separately graded part; an ``AssertionError`` inside fails only this part."""
        result = next((p for p in self.parts if p.name == name), None)
        if result is None:
            result = PartResult(name, tuple(requirements))
            self.parts.append(result)
        try:
            yield result
        except AssertionError as exc:
            # A part repeated in a loop keeps its first failure.
            result.failure = result.failure or str(exc) or "assertion failed"

    async def connect(
        self,
        *,
        broadcaster: bool = False,
        token: str | None = None,
        welcome: Mapping[str, Any] | None = None,
    ) -> HConn:
        """Have the application connect, answer its hello with a welcome, await the result."""
        self.token = token or self.harness.mint(broadcaster=broadcaster)
        index = len(self.harness.connections)
        reply = self.adapter.send(
            "connect", url=self.harness.url, token=self.token, timeout_ms=int(self.timeout * 1000)
        )
        conn = await self.harness.hello(index, self.timeout)
        assert conn is not None, "the client did not open a connection and send hello"
        await conn.send_welcome(**dict(welcome or {}))
        self.adapter.outcome("connect", await self._await(reply, "connect"))
        return conn

    async def reconnect(self, conn: HConn, timeout_ms: float) -> HConn | None:
        """The connection after ``conn`` with its hello, if one arrives within ``timeout_ms``."""
        return await self.harness.hello(conn.index + 1, self.seconds(timeout_ms))

    async def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        return await self.adapter.call(cmd, timeout=self.timeout, **args)

    async def _await(self, future: Any, what: str) -> dict[str, Any]:
        import asyncio

        try:
            reply: dict[str, Any] = await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            raise AssertionError(f"the adapter did not answer {what} in time") from None
        return reply

    async def refused(self, cmd: str, **args: Any) -> Errored | None:
        """Run a command expected to fail: the Errored, or None if it succeeded."""
        from unisock_conformance.client_suite.driver import Errored

        try:
            await self.call(cmd, **args)
        except Errored as exc:
            return exc
        return None


def elapsed_ms(start: float, end: float | None = None) -> float:
    return ((time.monotonic() if end is None else end) - start) * 1000
