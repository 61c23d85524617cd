"""``python -m tests.mutation TARGET``: a sampled mutation campaign with a live suite.

    python -m tests.mutation client --jobs 2 --sample 80 --seed 1

draws 80 of the client module's mutants (the same 80 for the same seed and code), runs
the suite against each in parallel and writes ``results.json`` and ``results.md`` under
``build/mutation/TARGET``. See ``tests/mutation/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tests.mutation.operators import OPERATORS, Mutant, apply, mutants_of
from tests.mutation.report import apply_verdicts, load_verdicts, markdown, write
from tests.mutation.runner import (
    Outcome,
    Workspace,
    check_isolation,
    coverage_map,
    run_command,
    run_mutants,
)
from tests.mutation.targets import TARGETS, Target


def _parser(targets: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.mutation",
        description="Mutate a target's modules and judge each mutant with its live suite.",
    )
    parser.add_argument("target", choices=sorted(targets))
    parser.add_argument("--module", action="append", default=[], help="only these module files")
    parser.add_argument("--operator", action="append", default=[], choices=OPERATORS)
    parser.add_argument("--sample", type=int, default=0, help="draw this many mutants (0: all)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the sample (default 1)")
    parser.add_argument("--only", action="append", default=[], metavar="IDENT")
    parser.add_argument("--jobs", type=int, default=2, help="mutants judged at once")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=float(os.environ.get("UNISOCK_TIME_SCALE", "2")),
        help="the suite's time scale (default $UNISOCK_TIME_SCALE or 2)",
    )
    parser.add_argument("--nice", type=int, default=15, help="niceness of the campaign")
    parser.add_argument("--out", type=Path, help="results folder (default build/mutation/TARGET)")
    parser.add_argument(
        "--no-coverage",
        action="store_true",
        help="run the whole suite for every mutant instead of the units reaching its line",
    )
    parser.add_argument(
        "--verdicts", type=Path, help="verdict file (default tests/mutation/verdicts/TARGET.json)"
    )
    parser.add_argument(
        "--rejudge",
        action="store_true",
        help="judge again only the survivors of the last results of the same draw, keeping "
        "its killed and timed-out mutants (after writing checks); with --only, judge again "
        "just those mutants and keep every other outcome (to confirm a doubtful kill)",
    )
    parser.add_argument("--list", action="store_true", help="list the drawn mutants and exit")
    parser.add_argument("--show", metavar="IDENT", help="print one mutant's diff and exit")
    return parser


def _draw(target: Target, args: argparse.Namespace) -> tuple[list[Mutant], int]:
    modules = args.module or list(target.modules)
    unknown = sorted(set(modules) - set(target.modules))
    if unknown:
        raise SystemExit(f"not modules of {target.name}: {unknown}")
    everything = [m for module in modules for m in mutants_of(target.root / module, module)]
    if args.operator:
        everything = [m for m in everything if m.operator in args.operator]
    everything.sort(key=lambda m: m.key)
    if args.only and not args.rejudge:
        chosen = [m for m in everything if m.ident in args.only]
        missing = sorted(set(args.only) - {m.ident for m in chosen})
        if missing:
            raise SystemExit(f"no such mutants: {missing}")
        return chosen, len(everything)
    if args.sample and args.sample < len(everything):
        chosen = random.Random(args.seed).sample(everything, args.sample)
        return sorted(chosen, key=lambda m: (m.module, m.line, m.key)), len(everything)
    return everything, len(everything)


def _caught_before(
    path: Path, mutants: list[Mutant], again: set[str]
) -> tuple[list[Outcome], list[Mutant]]:
    """Split a draw into outcomes kept from ``path`` and mutants to judge again.

    Without ``again`` the survivors are judged again and the caught mutants kept; with it,
    exactly the mutants named there are judged again and every other outcome is kept.
    """
    if not path.is_file():
        raise SystemExit(f"--rejudge needs earlier results: {path} is missing")
    earlier = {m["ident"]: m for m in json.loads(path.read_text("utf-8"))["mutants"]}
    kept, judged = [], []
    for mutant in mutants:
        found = earlier.get(mutant.ident)
        if again:
            keep = found is not None and mutant.ident not in again
        else:
            keep = found is not None and found["status"] in ("killed", "timeout")
        if keep:
            assert found is not None
            fields = {k: found[k] for k in Outcome.__dataclass_fields__ if k in found}
            if fields["status"] == "equivalent":  # verdicts are applied afresh
                fields.update(status="survived", verdict="", why="")
            kept.append(Outcome(**fields))
        else:
            judged.append(mutant)
    return kept, judged


def _show(root: Path, mutant: Mutant) -> str:
    import difflib

    original = (root / mutant.module).read_text("utf-8").splitlines(keepends=True)
    mutated = apply((root / mutant.module).read_bytes(), mutant).decode("utf-8")
    diff = difflib.unified_diff(
        original, mutated.splitlines(keepends=True), mutant.module, f"{mutant.module} (mutant)"
    )
    return f"{mutant.ident} {mutant.key}\n" + "".join(diff)


def main(
    argv: Sequence[str] | None = None,
    targets: Mapping[str, Callable[[], Target]] = TARGETS,
) -> int:
    args = _parser(list(targets)).parse_args(argv)
    target = targets[args.target]()
    if args.show:
        args.only = [args.show]
    mutants, total = _draw(target, args)
    if args.show:
        print(_show(target.root, mutants[0]))
        return 0
    if args.list:
        for mutant in mutants:
            print(f"{mutant.ident}  {mutant.label}")
        print(f"{len(mutants)} of {total} mutants")
        return 0
    if args.nice:
        os.nice(args.nice)
    out = args.out or target.root / "build" / "mutation" / target.name
    kept: list[Outcome] = []
    if args.rejudge:
        kept, mutants = _caught_before(out / "results.json", mutants, set(args.only))
    lock = threading.Lock()

    def say(text: str) -> None:
        with lock:
            print(text, flush=True)

    started = time.monotonic()
    work = Workspace(target)
    try:
        check_isolation(work)
        covered = None
        if target.units is not None and not args.no_coverage:
            covered = coverage_map(
                target, work, args.time_scale, args.jobs, out / "coverage.json", say
            )
        else:
            say("baseline: the whole suite against the unmutated copy")
            tree = work.mirror()
            status, text, _ = run_command(
                target.command(None, args.time_scale),
                work.env(tree),
                target.timeout_s * args.time_scale,
                target.root,
            )
            if status != 0:
                say(text[-3000:])
                raise SystemExit("the suite fails the unmutated code: no campaign")
        say(f"judging {len(mutants)} of {total} mutants with {args.jobs} jobs")
        if kept:
            say(f"keeping {len(kept)} outcomes of the last results")
        finished: list[Outcome] = []

        def done(outcome: Outcome) -> None:
            with lock:
                finished.append(outcome)
                where = f"{Path(outcome.module).name}:{outcome.line}"
                reach = f"{len(outcome.units)} units" if outcome.covered else "not reached"
                print(
                    f"[{len(finished):>3}/{len(mutants)}] {outcome.status:<9} {outcome.ident} "
                    f"{where} {outcome.operator}: {outcome.change} "
                    f"({outcome.seconds:.0f} s, {reach})",
                    flush=True,
                )

        outcomes = run_mutants(
            target,
            mutants,
            scale=args.time_scale,
            jobs=args.jobs,
            work=work,
            covered=covered,
            done=done,
        )
    finally:
        work.remove()
    outcomes = [*kept, *outcomes]
    apply_verdicts(outcomes, load_verdicts(target.name, args.verdicts))
    meta = {
        "command": shlex.join(["python", "-m", "tests.mutation", *(argv or sys.argv[1:])]),
        "seed": args.seed,
        "sampled": len(mutants) + len(kept),
        "rejudged": len(mutants) if args.rejudge else None,
        "total": total,
        "time_scale": args.time_scale,
        "seconds": time.monotonic() - started,
    }
    json_path, md_path = write(out, target.name, meta, outcomes)
    print(markdown(target.name, meta, outcomes))
    print(f"results: {json_path} and {md_path}")
    unexplained = [o for o in outcomes if o.status == "survived" and not o.verdict]
    print(json.dumps({"unexplained_survivors": [o.ident for o in unexplained]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
