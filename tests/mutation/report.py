"""Verdicts for explained survivors, and the results as JSON and a Markdown table.

A verdict file (``verdicts/<target>.json``) maps a mutant's ident to ``verdict`` and
``why``: ``equivalent`` when no conforming-or-not difference can be observed (the mutant
leaves the counted score), ``accepted`` when the difference is real but the suite is not
the place to catch it (it stays a survivor, with its reason shown). Each entry repeats the
mutant's key so a reader can see what it is about without running anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tests.mutation.runner import Outcome

__all__ = ["VERDICTS", "apply_verdicts", "load_verdicts", "markdown", "summary", "write"]

VERDICTS = Path(__file__).resolve().parent / "verdicts"
KINDS = ("equivalent", "accepted")


def load_verdicts(target: str, path: Path | None = None) -> dict[str, dict[str, str]]:
    path = path or VERDICTS / f"{target}.json"
    if not path.is_file():
        return {}
    entries: dict[str, dict[str, str]] = json.loads(path.read_text("utf-8"))
    for ident, entry in entries.items():
        if entry.get("verdict") not in KINDS or not entry.get("why"):
            raise ValueError(f"{path}: {ident} needs a verdict in {KINDS} and a why")
    return entries


def apply_verdicts(outcomes: Iterable[Outcome], verdicts: Mapping[str, Mapping[str, str]]) -> None:
    """Mark explained survivors; a verdict on a mutant the suite now kills is dropped."""
    for outcome in outcomes:
        entry = verdicts.get(outcome.ident)
        if entry is None or outcome.status != "survived":
            continue
        outcome.verdict = entry["verdict"]
        outcome.why = entry["why"]
        if entry["verdict"] == "equivalent":
            outcome.status = "equivalent"


def summary(outcomes: Iterable[Outcome]) -> dict[str, dict[str, Any]]:
    """Counts per module, plus ``all``; the score is killed / (all but equivalent)."""
    table: dict[str, dict[str, Any]] = {}
    for outcome in outcomes:
        for name in (outcome.module, "all"):
            row = table.setdefault(
                name,
                {"mutants": 0, "killed": 0, "timeout": 0, "survived": 0, "equivalent": 0},
            )
            row["mutants"] += 1
            row[outcome.status] += 1
            row.setdefault("not_reached", 0)
            if outcome.status == "survived" and not outcome.covered:
                row["not_reached"] += 1
    for row in table.values():
        judged = row["mutants"] - row["equivalent"]
        caught = row["killed"] + row["timeout"]
        row["score"] = round(100 * caught / judged, 1) if judged else 100.0
    return table


def markdown(target: str, meta: Mapping[str, Any], outcomes: list[Outcome]) -> str:
    table = summary(outcomes)
    lines = [
        f"# Mutation results: {target}",
        "",
        f"Command: `{meta['command']}`  ",
        f"Mutants: {meta['sampled']} of {meta['total']} (seed {meta['seed']}); "
        f"wall time {meta['seconds']:.0f} s."
        + (
            f" Judged again: {meta['rejudged']} mutants; the other outcomes are kept from "
            "the previous results of the same draw."
            if meta.get("rejudged") is not None
            else ""
        ),
        "",
        "| module | mutants | killed | timeout | survived | (not reached) | equivalent | score |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in [*sorted(n for n in table if n != "all"), "all"]:
        row = table[name]
        lines.append(
            f"| {name} | {row['mutants']} | {row['killed']} | {row['timeout']} | "
            f"{row['survived']} | {row['not_reached']} | {row['equivalent']} | "
            f"{row['score']}% |"
        )
    lines += [
        "",
        "Score: (killed + timeout) / (mutants - equivalent). A mutant *not reached* is a "
        "survivor no unit of the suite executes.",
    ]
    survivors = [o for o in outcomes if o.status in ("survived", "equivalent")]
    if survivors:
        lines += ["", "## Survivors", "", "| ident | where | change | verdict |"]
        lines.append("|---|---|---|---|")
        for o in sorted(survivors, key=lambda o: (o.module, o.line)):
            change = o.change.replace("|", "\\|")
            verdict = (
                f"{o.verdict}: {o.why}"
                if o.verdict
                else ("not reached" if not o.covered else "**unexplained**")
            )
            lines.append(
                f"| `{o.ident}` | {Path(o.module).name}:{o.line} {o.operator} | "
                f"`{change}` | {verdict.replace('|', '/')} |"
            )
    return "\n".join(lines) + "\n"


def write(
    out: Path, target: str, meta: Mapping[str, Any], outcomes: list[Outcome]
) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "target": target,
        **meta,
        "summary": summary(outcomes),
        "mutants": [o.as_json() for o in sorted(outcomes, key=lambda o: (o.module, o.line))],
    }
    json_path = out / "results.json"
    json_path.write_text(json.dumps(data, indent=1) + "\n", "utf-8")
    md_path = out / "results.md"
    md_path.write_text(markdown(target, meta, outcomes), "utf-8")
    return json_path, md_path
