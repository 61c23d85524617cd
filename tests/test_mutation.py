"""The mutation runner: operators, isolation of the mutated copy, verdicts and grading.

A toy repository (a package of two small functions and a test command with two units)
stands in for the live suites, so the whole campaign runs in seconds: each outcome the
runner reports (killed, survived, timeout, not reached, equivalent) is produced for real.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest
from tests.mutation.__main__ import main
from tests.mutation.operators import apply, mutants_of
from tests.mutation.targets import ROOT, Target

TOY = '''\
"""A toy module."""

import logging

log = logging.getLogger("toy")
__all__ = ["add", "spin", "unused"]


def add(a: int, b: int) -> int:
    """Add."""
    log.info("adding %s", a)
    total = a + b
    return total


def spin(n: int) -> int:
    i = 0
    while i < n:
        i += 1
    return i


def unused(flag: bool) -> str:
    if flag and n_is_positive(1):  # pragma: no mutate
        raise ValueError("never shown")
    return "no"


def n_is_positive(n: int) -> bool:
    return n > 0
'''

CHECKS = {
    "add": "from toy.core import add; assert add(2, 3) == 5",
    "spin": "from toy.core import spin; assert spin(3) == 3",
}


def _command(units: Sequence[str] | None, scale: float) -> list[str]:
    chosen = list(CHECKS) if units is None else list(units)
    return [sys.executable, "-c", "\n".join(["pass", *(CHECKS[u] for u in chosen)])]


@pytest.fixture
def toy(tmp_path: Path) -> Target:
    package = tmp_path / "src" / "toy"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("", "utf-8")
    (package / "core.py").write_text(TOY, "utf-8")
    (tmp_path / "suite").mkdir()
    return Target(
        name="toy",
        package="src/toy",
        modules=("src/toy/core.py",),
        command=_command,
        timeout_s=5.0,
        units=lambda scale: list(CHECKS),
        suite=("suite",),
        root=tmp_path,
    )


def test_operators_leave_docstrings_logging_all_and_marked_lines_alone(toy: Target) -> None:
    mutants = mutants_of(toy.root / "src/toy/core.py", "src/toy/core.py")
    befores = {m.before for m in mutants}
    assert not any("Add." in b or "adding" in b for b in befores)
    assert not [m for m in mutants if m.operator == "string" and "never shown" in m.before]
    assert not any("__all__" in b or '"add"' in b for b in befores)
    assert not [m for m in mutants if m.line == 24]  # the marked line
    operators = {m.operator for m in mutants}
    assert {"cmp", "arith", "number", "string", "return", "delete", "negate"} <= operators
    assert len({m.key for m in mutants}) == len(mutants)
    source = (toy.root / "src/toy/core.py").read_bytes()
    for mutant in mutants:
        mutated = apply(source, mutant).decode("utf-8")
        compile(mutated, "core.py", "exec")
        assert mutated != TOY
    gt = next(m for m in mutants if m.operator == "cmp" and m.before == "n > 0")
    assert gt.after == "(n >= 0)"
    assert apply(source, gt).decode("utf-8").count("return (n >= 0)") == 1


def test_keys_survive_edits_elsewhere_in_the_module(toy: Target) -> None:
    path = toy.root / "src/toy/core.py"
    before = {m.key: m.ident for m in mutants_of(path, "src/toy/core.py")}
    path.write_text(TOY.replace('"""A toy module."""', '"""A toy module.\n\nLonger."""'))
    after = {m.key: m.ident for m in mutants_of(path, "src/toy/core.py")}
    assert before == after


def test_a_campaign_grades_every_kind_of_outcome(
    toy: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mutants = mutants_of(toy.root / "src/toy/core.py", "src/toy/core.py")
    equivalent = next(m for m in mutants if m.before == "0" and m.after == "(1)")
    verdicts = tmp_path / "verdicts.json"
    why = "spin(3) counts from 1 to 3 just as well"
    verdicts.write_text(
        json.dumps({equivalent.ident: {"key": equivalent.key, "verdict": "equivalent", "why": why}})
    )
    out = tmp_path / "out"
    argv = ["toy", "--jobs", "2", "--nice", "0", "--time-scale", "1", "--out", str(out)]
    assert main([*argv, "--verdicts", str(verdicts)], {"toy": lambda: toy}) == 0
    results = json.loads((out / "results.json").read_text("utf-8"))
    by_change = {(m["line"], m["change"]): m for m in results["mutants"]}
    assert by_change[(12, "a + b => (a - b)")]["status"] == "killed"
    assert by_change[(12, "a + b => (a - b)")]["units"] == ["add"]
    assert by_change[(19, "i += 1 => i -= 1")]["status"] == "timeout"
    unreached = by_change[(26, "\"no\" => 'no_x'")]
    assert (unreached["status"], unreached["covered"]) == ("survived", False)
    assert by_change[(17, "0 => (1)")]["status"] == "equivalent"
    row = results["summary"]["src/toy/core.py"]
    assert row["equivalent"] == 1
    assert row["mutants"] == len(mutants)
    caught = row["killed"] + row["timeout"]
    assert row["score"] == round(100 * caught / (row["mutants"] - 1), 1)
    table = (out / "results.md").read_text("utf-8")
    assert "| src/toy/core.py |" in table and why in table
    # Counting from -1 also ends at 3: a survivor the toy suite reaches but cannot see.
    reached = by_change[(17, "0 => (-1)")]
    assert (reached["status"], reached["covered"], reached["verdict"]) == ("survived", True, "")
    assert f"| `{reached['ident']}` | core.py:17 number | `0 => (-1)` | **unexplained** |" in table


def test_rejudge_runs_only_the_survivors_again(toy: Target, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["toy", "--jobs", "2", "--nice", "0", "--time-scale", "1", "--out", str(out)]
    assert main(argv, {"toy": lambda: toy}) == 0
    first = json.loads((out / "results.json").read_text("utf-8"))
    caught = {m["ident"] for m in first["mutants"] if m["status"] in ("killed", "timeout")}
    assert main([*argv, "--rejudge"], {"toy": lambda: toy}) == 0
    second = json.loads((out / "results.json").read_text("utf-8"))
    assert second["rejudged"] == len(first["mutants"]) - len(caught)
    assert second["summary"] == first["summary"]
    kept = {m["ident"]: m for m in second["mutants"] if m["ident"] in caught}
    assert kept == {m["ident"]: m for m in first["mutants"] if m["ident"] in caught}
    assert "Judged again" in (out / "results.md").read_text("utf-8")
    doubtful = sorted(caught)[0]
    assert main([*argv, "--rejudge", "--only", doubtful], {"toy": lambda: toy}) == 0
    third = json.loads((out / "results.json").read_text("utf-8"))
    assert third["rejudged"] == 1
    assert third["summary"] == first["summary"]


def test_the_mutated_copy_is_what_the_suite_imports(toy: Target, tmp_path: Path) -> None:
    from tests.mutation.runner import Workspace, check_isolation, run_command

    work = Workspace(toy, tmp_path)
    try:
        check_isolation(work)
        mutant = next(
            m
            for m in mutants_of(toy.root / "src/toy/core.py", "src/toy/core.py")
            if m.before == "a + b"
        )
        tree = work.mirror(mutant)
        status, out, _ = run_command(_command(["add"], 1.0), work.env(tree), 30, toy.root)
        assert status == 1 and "AssertionError" in out
        assert (tree / "src/toy/core.py").read_text("utf-8") != TOY
        assert (toy.root / "src/toy/core.py").read_text("utf-8") == TOY
        assert (tree / "suite").is_symlink()
    finally:
        work.remove()


def test_client_target_lists_the_client_suite_checks() -> None:
    from tests.mutation.targets import client_target

    target = client_target()
    units = target.units(1.0) if target.units else []
    assert "backoff_delays_have_full_jitter_growth_and_cap" in units
    assert not [u for u in units if u.startswith("adapter_speaks")]  # smoke runs anyway
    command = target.command(["x"], 2.0)
    assert command[-3:] == [sys.executable, "-m", "unisock.adapter"]
    assert "--strict" in command and "-x" in command
    assert (ROOT / target.package / "client.py").is_file()


def test_readme_shows_the_one_command() -> None:
    readme = (ROOT / "tests" / "mutation" / "README.md").read_text("utf-8")
    assert "python -m tests.mutation client --jobs 2 --sample 80 --seed 1" in readme
    assert textwrap.dedent(readme).count("## ") >= 3


def test_server_launcher_refuses_an_unknown_deployment() -> None:
    from tests.mutation.server_suite import main as launch

    with pytest.raises(SystemExit) as refused:
        launch(["--deployments", "memory,postgres", "-k", "test_smoke"])
    assert refused.value.code == 2


@pytest.mark.slow
def test_server_launcher_gives_the_redis_deployment_every_operator_hook(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outage and cluster checks only run with their hooks: in the ``redis`` deployment
    they must pass, not be skipped, or the mutants only they reach would survive unseen."""
    pytest.importorskip("redis")
    from tests.mutation.server_suite import main as launch

    from redis_support import require_redis_server

    require_redis_server()
    # the launcher sets the time scale for its suite when none is set: keep it to this test
    monkeypatch.setenv("UNISOCK_TIME_SCALE", os.environ.get("UNISOCK_TIME_SCALE", "1"))
    status = launch(["--deployments", "redis", "-k", "test_outage", "-k", "test_cluster"])
    shown = capsys.readouterr().out
    assert status == 0, shown[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in shown.splitlines() if line.strip()}
    assert rows["outage"][:2] != ["0", "pass"] and "pass" in rows["outage"], shown[-3000:]
    assert "cluster" in rows and "pass" in rows["cluster"], shown[-3000:]


@pytest.mark.slow
def test_server_launcher_runs_the_checks_of_other_settings_in_the_settings_deployment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Elsewhere the checks of discarded idle state are skipped for time and those of a
    required ``iss`` and ``aud`` are not applicable: in the ``settings`` deployment they must
    pass, and it runs nothing for other units."""
    from tests.mutation.server_suite import main as launch

    monkeypatch.setenv("UNISOCK_TIME_SCALE", os.environ.get("UNISOCK_TIME_SCALE", "1"))
    assert launch(["--deployments", "settings", "-k", "test_smoke"]) == 0
    assert "Verdict" not in capsys.readouterr().out  # no server, no suite
    status = launch(["--deployments", "settings", "-k", "test_security", "-k", "test_auth"])
    shown = capsys.readouterr().out
    assert status == 0, shown[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in shown.splitlines() if line.strip()}
    assert rows["security"] == ["2", "pass"], shown[-3000:]
    assert rows["auth"] == ["2", "pass"], shown[-3000:]


@pytest.mark.slow
def test_server_launcher_fails_a_server_graded_conforming_non_strict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that never discards idle channel state breaks a SHOULD (UNI-SEC-14) only: the
    suite says so in its verdict, and the campaign counts that as caught."""
    from tests.mutation.server_suite import NON_STRICT
    from tests.mutation.server_suite import main as launch

    copy = tmp_path / "unisock"
    shutil.copytree(ROOT / "reference" / "unisock", copy, symlinks=False)
    broker = copy / "memory_broker.py"
    text = broker.read_text("utf-8")
    assert text.count("        self.touched = now\n") == 1
    broker.write_text(text.replace("        self.touched = now\n", "        pass\n"), "utf-8")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("UNISOCK_TIME_SCALE", os.environ.get("UNISOCK_TIME_SCALE", "1"))
    status = launch(["--deployments", "settings", "-k", "test_security"])
    shown = capsys.readouterr()
    assert status == NON_STRICT, shown.out[-3000:]
    assert "non-strict" in shown.err


def test_a_mutant_inside_a_statement_of_several_lines_is_reached_through_its_first_line(
    tmp_path: Path,
) -> None:
    """Coverage records a statement spread over lines under its first line only; a mutant on
    a later line of it (a ``__slots__`` name) must still count as reached."""
    from tests.mutation.runner import units_reaching

    (tmp_path / "m.py").write_text(
        'class C:\n    __slots__ = (\n        "a",\n        "b",\n    )\n\n'
        "    def f(self, n: int) -> int:\n        if n > 1:\n"
        "            return 2\n        return 3\n",
        "utf-8",
    )
    mutants = {m.line: m for m in mutants_of(tmp_path / "m.py", "m.py") if m.operator == "string"}
    slot = mutants[4]  # "b"
    covered = {"first_lines": {"m.py": {2}}, "body_only": {"m.py": {9}}}
    assert units_reaching(slot, covered, tmp_path) == ["first_lines"]
    comparison = next(m for m in mutants_of(tmp_path / "m.py", "m.py") if m.operator == "cmp")
    assert units_reaching(comparison, covered, tmp_path) == []  # the if line 8 ran nowhere
    assert units_reaching(comparison, {"u": {"m.py": {8}}}, tmp_path) == ["u"]
