"""Timing checks: how long a run may wait for announced timers, and running them alongside.

A check of a timer (heartbeats, the authentication deadline, token expiry, idle channel
state, supersede deadlines) mostly waits. Each one says how long it must wait for the values
the server announced; it runs when that fits the run's time budget (the profile's, or
``--time-budget``) and is graded ``not-run`` otherwise, with the budget that would run it.

Checks marked ``@pytest.mark.timing`` start on threads of their own as soon as the server's
``welcome`` is known, so their waits overlap each other and the rest of the run; the pytest
item of such a check then only collects its outcome. They get the fixtures ``user``,
``connect``, ``deployment``, ``server_info``, ``names``, ``profile`` and ``conn_group`` and their
parameters, built exactly as the fixtures would build them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final

import pytest

from unisock_conformance.deployment import NOT_RUN_PREFIX, Deployment, Names, ServerInfo
from unisock_conformance.wire import ConnGroup

__all__ = [
    "TIME_BUDGET_S",
    "TIME_PREFIX",
    "TIMING_MARKER",
    "Background",
    "budget_s",
    "require_time",
]

TIMING_MARKER: Final = "timing"
# Seconds of waiting a run affords one timing check, per profile, before time scaling.
TIME_BUDGET_S: Final = {"quick": 60.0, "full": 600.0}
# Start of the reason of a check skipped for time (the summary lists them apart).
TIME_PREFIX: Final = f"{NOT_RUN_PREFIX} skipped for time:"
# Fixtures a background check may ask for.
_FIXTURES: Final = frozenset(
    {"user", "connect", "deployment", "server_info", "names", "profile", "conn_group"}
)


def budget_s(deployment: Deployment) -> float:
    """Seconds one timing check may wait in this run (``--time-budget`` or the profile's)."""
    if deployment.time_budget_s is not None:
        return deployment.time_budget_s
    return deployment.timeout(TIME_BUDGET_S.get(deployment.profile, TIME_BUDGET_S["quick"]))


def require_time(deployment: Deployment, seconds: float, what: str) -> None:
    """Skip (``not-run``) a check that must wait ``seconds`` when the budget is smaller."""
    budget = budget_s(deployment)
    if seconds <= budget:
        return
    needed = math.ceil(seconds) + 1
    # --profile full raises the budget only when no --time-budget overrides it.
    full = deployment.timeout(TIME_BUDGET_S["full"])
    profiles = (
        " or --profile full"
        if deployment.profile != "full" and deployment.time_budget_s is None and seconds <= full
        else ""
    )
    # Rounded away from each other, so the message never reads "3.0 s exceeds 3.0 s".
    shown_needed, shown_budget = math.ceil(seconds * 10) / 10, math.floor(budget * 10) / 10
    pytest.skip(
        f"{TIME_PREFIX} {what} needs {shown_needed:.1f} s of waiting, more than this run's "
        f"budget of {shown_budget:.1f} s per timing check; run with --time-budget {needed}"
        f"{profiles}"
    )


class Background:
    """Timing checks running on threads from the start of the run."""

    def __init__(self) -> None:
        self.futures: dict[str, Future[None]] = {}
        self._pool: ThreadPoolExecutor | None = None

    def start(
        self,
        items: list[pytest.Item],
        deployment: Deployment,
        info: ServerInfo,
    ) -> None:
        """Start every given check (those that ask only for supported fixtures)."""
        runnable = [(item, _call(item, deployment, info)) for item in items]
        runnable = [(item, call) for item, call in runnable if call is not None]
        if not runnable:
            return
        self._pool = ThreadPoolExecutor(
            max_workers=len(runnable), thread_name_prefix="unisock-timing"
        )
        for item, call in runnable:
            assert call is not None
            self.futures[item.nodeid] = self._pool.submit(call)

    def outcome(self, nodeid: str) -> Future[None] | None:
        """The running or finished check ``nodeid``, if it runs in the background."""
        return self.futures.get(nodeid)

    def wait_all(self) -> None:
        """Let every background check finish (before checks that stop or reset the server)."""
        for future in list(self.futures.values()):
            future.exception()

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _call(item: pytest.Item, deployment: Deployment, info: ServerInfo) -> Callable[[], None] | None:
    """A closure running the check's function with fixtures built like conftest's."""
    from unisock_conformance.checks.conftest import Connect, User

    function = getattr(item, "obj", None)
    fixtureinfo = getattr(item, "_fixtureinfo", None)
    if function is None or fixtureinfo is None:
        return None
    params: Mapping[str, Any] = getattr(getattr(item, "callspec", None), "params", {})
    wanted = [name for name in fixtureinfo.argnames if name not in params]
    if any(name not in _FIXTURES for name in wanted):
        return None

    def run() -> None:
        names = Names(deployment.seed, item.nodeid)
        group = ConnGroup(item.nodeid)
        connect = Connect(deployment, group, names)
        available: dict[str, Any] = {
            "user": User(deployment, connect),
            "connect": connect,
            "deployment": deployment,
            "server_info": info,
            "names": names,
            "profile": deployment.profile,
            "conn_group": group,
        }
        kwargs = {name: available[name] for name in wanted}
        kwargs.update(params)
        try:
            function(**kwargs)
        finally:
            group.close_all()
        group.check_unreported()

    return run
