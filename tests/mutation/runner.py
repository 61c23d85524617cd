"""Run a target's live suite against mutants, each in its own copy of the package.

For every mutant the runner builds a tree that mirrors the repository root with symbolic
links, except along the path to the target's package, which is copied; the mutated module
is written into that copy and ``PYTHONPATH`` points at it, so the suite's processes (the
suite itself, the client adapter or the server it starts) import the mutated package. A
check before the campaign proves the copy is what gets imported, and a baseline proves the
suite passes the unmutated copy: otherwise every mutant would look killed.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.mutation.operators import Mutant, apply
from tests.mutation.targets import ROOT, Target

__all__ = ["Outcome", "Workspace", "coverage_map", "run_mutants"]

KEEP_OUTPUT = 3000


@dataclass
class Outcome:
    """What the suite said about one mutant."""

    ident: str
    key: str
    module: str
    line: int
    operator: str
    change: str
    status: str
    """``killed``, ``timeout`` or ``survived`` (a verdict later turns some ``equivalent``)."""
    units: list[str] = field(default_factory=list)
    covered: bool = True
    seconds: float = 0.0
    failed: list[str] = field(default_factory=list)
    output: str = ""
    verdict: str = ""
    why: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class Workspace:
    """Temporary mirrors of the repository, one per run, removed afterwards."""

    def __init__(self, target: Target, base: Path | None = None) -> None:
        self.target = target
        self.root = Path(tempfile.mkdtemp(prefix=f"unisock-mutation-{target.name}-", dir=base))
        self._count = 0
        self._lock = threading.Lock()

    def mirror(self, mutant: Mutant | None = None) -> Path:
        """A mirror of the repository root with the package copied (and ``mutant`` applied)."""
        with self._lock:
            self._count += 1
            tree = self.root / f"tree-{self._count}"
        package = Path(self.target.package)
        here, source = tree, self.target.root
        for part in package.parts:
            here.mkdir(parents=True)
            for entry in source.iterdir():
                if entry.name != part:
                    (here / entry.name).symlink_to(entry)
            here, source = here / part, source / part
        shutil.copytree(source, here, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        if mutant is not None:
            original = (self.target.root / mutant.module).read_bytes()
            (tree / mutant.module).write_bytes(apply(original, mutant))
        return tree

    def env(self, tree: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        path = str(tree / Path(self.target.package).parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (path, env.get("PYTHONPATH")) if p)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.update(extra or {})
        return env

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def run_command(
    command: Sequence[str], env: dict[str, str], timeout_s: float, cwd: Path = ROOT
) -> tuple[int | None, str, float]:
    """Run ``command`` in its own process group; (status or None on timeout, output, s)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        list(command),
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        status: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        status = None
    text = out.decode("utf-8", errors="replace")
    return status, text, time.monotonic() - started


def check_isolation(work: Workspace) -> None:
    """The mirror's package, not the installed one, is what a process imports."""
    tree = work.mirror()
    name = Path(work.target.package).name
    probe = f"import {name}; print({name}.__file__)"
    status, out, _ = run_command(
        [sys.executable, "-c", probe], work.env(tree), 60, work.target.root
    )
    expected = tree / work.target.package
    if status != 0 or not out.strip().startswith(str(expected)):
        raise RuntimeError(f"the mutated copy is not what gets imported: {out.strip()!r}")


# -- coverage: which units reach which line ---------------------------------------------------


def _fingerprint(target: Target, units: Sequence[str]) -> str:
    digest = hashlib.sha1("\n".join(units).encode("utf-8"))
    for folder in (target.package, *target.suite):
        for path in sorted((target.root / folder).rglob("*.py")):
            digest.update(path.read_bytes())
    return digest.hexdigest()


def coverage_map(
    target: Target,
    work: Workspace,
    scale: float,
    jobs: int,
    cache: Path,
    say: Callable[[str], None],
) -> dict[str, dict[str, set[int]]]:
    """Per unit, per module: the lines of the unmutated modules that unit executes.

    Each unit runs once with coverage switched on in every Python process it starts (the
    ``COVERAGE_PROCESS_START`` hook); a unit that fails the unmutated code stops the campaign.
    The map is cached under ``cache`` until the package, the suite or the units change.
    """
    assert target.units is not None
    units = target.units(scale)
    stamp = _fingerprint(target, units)
    if cache.is_file():
        stored = json.loads(cache.read_text("utf-8"))
        if stored.get("fingerprint") == stamp:
            return {
                unit: {module: set(lines) for module, lines in modules.items()}
                for unit, modules in stored["units"].items()
            }
    from coverage import CoverageData

    say(f"measuring which of {len(units)} units reach which lines (cached in {cache})")
    tree = work.mirror()
    result: dict[str, dict[str, set[int]]] = {}

    def measure(index: int, unit: str) -> None:
        folder = work.root / f"coverage-{index}"
        folder.mkdir()
        rc = folder / "coveragerc"
        include = ",".join(str(tree / module) for module in target.modules)
        rc.write_text(
            f"[run]\nparallel = True\ndata_file = {folder / '.coverage'}\ninclude = {include}\n",
            "utf-8",
        )
        env = work.env(tree, {"COVERAGE_PROCESS_START": str(rc)})
        status, out, seconds = run_command(
            target.command([unit], scale), env, target.timeout_s * scale, target.root
        )
        if status != 0:
            raise RuntimeError(f"unit {unit} fails the unmutated code:\n{out[-KEEP_OUTPUT:]}")
        lines: dict[str, set[int]] = {}
        for data_file in folder.glob(".coverage.*"):
            data = CoverageData(basename=str(data_file))
            data.read()
            for module in target.modules:
                lines.setdefault(module, set()).update(data.lines(str(tree / module)) or ())
        result[unit] = lines
        say(f"  {unit}: {sum(len(v) for v in lines.values())} lines ({seconds:.0f} s)")

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(measure, i, unit) for i, unit in enumerate(units)]:
            future.result()
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(
        json.dumps(
            {
                "fingerprint": stamp,
                "units": {
                    unit: {module: sorted(lines) for module, lines in modules.items()}
                    for unit, modules in result.items()
                },
            }
        ),
        "utf-8",
    )
    return result


def units_reaching(
    mutant: Mutant, covered: dict[str, dict[str, set[int]]], root: Path = ROOT
) -> list[str]:
    """The units that execute a line of the mutant's span, or the first line of the statement
    that holds it: coverage records a statement spread over several lines (a ``__slots__``
    tuple, a call with one argument per line) under its first line only."""
    span = set(range(mutant.line, mutant.line + mutant.before.count("\n") + 1))
    span |= {_statement_line(root / mutant.module, mutant.line)}
    return [unit for unit, modules in covered.items() if span & modules.get(mutant.module, set())]


_PARSING = threading.Lock()
"""One parse at a time: CPython 3.11's parser keeps a recursion count that two threads
parsing at once corrupt ("AST constructor recursion depth mismatch"), and mutants are judged
on several threads."""


@functools.cache
def _statement_starts(path: Path) -> tuple[tuple[int, int], ...]:
    """Every simple statement's (first line, last line), and every compound statement's
    header lines (up to its body), in the module at ``path``."""
    spans = []
    with _PARSING:
        tree = ast.parse(path.read_bytes())
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt):
            continue
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
            last = body[0].lineno - 1  # the header only: the body has statements of its own
        else:
            last = node.end_lineno or node.lineno
        spans.append((node.lineno, max(node.lineno, last)))
    return tuple(spans)


def _statement_line(path: Path, line: int) -> int:
    """The first line of the innermost statement whose lines hold ``line``."""
    holding = [first for first, last in _statement_starts(path) if first <= line <= last]
    return max(holding, default=line)


# -- the campaign -----------------------------------------------------------------------------


def _failed(output: str) -> list[str]:
    return [line.split()[1] for line in output.splitlines() if line.strip().startswith("FAIL")]


def run_mutants(
    target: Target,
    mutants: Iterable[Mutant],
    *,
    scale: float,
    jobs: int,
    work: Workspace,
    covered: dict[str, dict[str, set[int]]] | None,
    done: Callable[[Outcome], None],
) -> list[Outcome]:
    """Judge every mutant; ``done`` is called as each one finishes (from worker threads)."""
    timeout_s = target.timeout_s * scale

    def judge(mutant: Mutant) -> Outcome:
        outcome = Outcome(
            mutant.ident,
            mutant.key,
            mutant.module,
            mutant.line,
            mutant.operator,
            mutant.describe(),
            "survived",
        )
        units: list[str] | None = None
        if covered is not None:
            units = units_reaching(mutant, covered, target.root)
            outcome.units = units
            if not units:
                outcome.covered = False
                done(outcome)
                return outcome
        tree = work.mirror(mutant)
        try:
            status, out, seconds = run_command(
                target.command(units, scale), work.env(tree), timeout_s, target.root
            )
        finally:
            shutil.rmtree(tree, ignore_errors=True)
        outcome.seconds = round(seconds, 1)
        if status is None:
            outcome.status = "timeout"
        elif status != 0:
            outcome.status = "killed"
            outcome.failed = _failed(out)
            outcome.output = out[-KEEP_OUTPUT:]
        done(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(judge, mutants))
