"""What a campaign mutates and which live suite judges each mutant.

A :class:`Target` names the import package that gets copied, the modules in it that get
mutated, and the test command that runs against the copy (a mutant is killed when that
command exits non-zero). A target may split its suite into *units* (checks, test files):
the runner then measures once which units execute each line of the unmutated modules and
runs, for each mutant, only the units that reach its line; a mutant no unit reaches
survives without a run. Register a new target in :data:`TARGETS`.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ROOT", "TARGETS", "Target", "client_target", "server_target"]

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Target:
    """A package, the modules of it to mutate, and the suite that judges a mutant."""

    name: str
    package: str
    """The import package's directory, relative to the repository root; it is copied."""
    modules: tuple[str, ...]
    """Module files (relative to the root) whose mutants the campaign draws from."""
    command: Callable[[Sequence[str] | None, float], list[str]]
    """The suite's command for ``units`` (None: the whole suite) at a time scale."""
    timeout_s: float = 300.0
    """A run longer than this (times the time scale) is stopped: the mutant timed out."""
    units: Callable[[float], list[str]] | None = None
    """The suite's units, if it can run a subset (enables coverage-based selection)."""
    suite: tuple[str, ...] = ("conformance",)
    """Folders (relative to the root) whose sources, with the package's, key the coverage
    cache: editing the suite measures coverage again."""
    root: Path = ROOT
    """The repository root; commands run there."""


def _python() -> str:
    return sys.executable


# -- the client suite against the reference client --------------------------------------------

_CLIENT_RUNNER = "unisock_conformance.client_suite.runner"


def _client_command(units: Sequence[str] | None, scale: float) -> list[str]:
    command = [_python(), "-m", _CLIENT_RUNNER, "--time-scale", str(scale), "--strict", "-x"]
    for unit in units or ():
        command += ["-k", unit]
    if units is not None and not units:
        command += ["-k", "<smoke only>"]
    return [*command, "--", _python(), "-m", "unisock.adapter"]


def _client_units(scale: float) -> list[str]:
    listed = subprocess.run(
        [_python(), "-m", _CLIENT_RUNNER, "--list"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    rows = [line.split() for line in listed.splitlines()]
    return [row[1] for row in rows if len(row) >= 2 and row[0] != "smoke"]


def client_target(modules: tuple[str, ...] = ("reference/unisock/client.py",)) -> Target:
    """The reference client behind its adapter, judged by the client suite (all roles)."""
    return Target(
        name="client",
        package="reference/unisock",
        modules=modules,
        command=_client_command,
        timeout_s=240.0,
        units=_client_units,
    )


# -- the server suite against the reference server --------------------------------------------

SERVER_MODULES = (
    "reference/unisock/session.py",
    "reference/unisock/server.py",
    "reference/unisock/memory_broker.py",
    "reference/unisock/auth.py",
)


def _server_command(units: Sequence[str] | None, scale: float) -> list[str]:
    command = [_python(), "-m", "tests.mutation.server_suite", "--time-scale", str(scale)]
    if units is None:
        return [*command, "--all"]
    for unit in units:
        command += ["-k", unit]
    return command


def _server_units(scale: float) -> list[str]:
    from tests.mutation.server_suite import UNITS

    return list(UNITS)


def server_target(modules: tuple[str, ...] = SERVER_MODULES) -> Target:
    """The reference server, judged by the quick server suite in its three deployments
    (in-memory broker, two nodes on Redis, settings no other has); a unit is one check
    module, run against servers started from the mutated package."""
    return Target(
        name="server",
        package="reference/unisock",
        modules=modules,
        command=_server_command,
        timeout_s=300.0,
        units=_server_units,
        suite=("conformance", "tests/mutation"),
    )


TARGETS: dict[str, Callable[[], Target]] = {
    "client": client_target,
    "server": server_target,
}
