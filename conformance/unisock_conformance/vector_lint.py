"""Linter for the vector files: descriptions read as facts and every case cites the spec.

The schema checks shapes; this module checks what a schema cannot: descriptions unique across
all files, short and declarative, and cited requirement IDs present in the registry.

Usage::

    python -m unisock_conformance.vector_lint [VECTORS_DIR] [--requirements spec/requirements.json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from unisock_conformance.paths import VECTORS_DIR

__all__ = [
    "MAX_DESCRIPTION",
    "lint_description",
    "lint_directory",
    "lint_documents",
    "load_documents",
    "main",
    "registry_ids",
]

MAX_DESCRIPTION = 90
_REQUIREMENT_ID = re.compile(r"^UNI-[A-Z]+-[0-9]+$")
_PRESCRIPTIVE = re.compile(r"\bshould\b", re.IGNORECASE)


def lint_description(description: str) -> list[str]:
    """Problems of one description: it must state a fact briefly ("X is rejected")."""
    problems: list[str] = []
    if not description.strip():
        return ["description is empty"]
    if len(description) > MAX_DESCRIPTION:
        problems.append(f"description longer than {MAX_DESCRIPTION} characters")
    if _PRESCRIPTIVE.search(description):
        problems.append('description says "should"; state the fact instead')
    if description.endswith("."):
        problems.append("description ends with a period")
    if description != description.strip():
        problems.append("description has leading or trailing whitespace")
    first = description[0]
    if not (first == "`" or ("A" <= first <= "Z")):
        problems.append("description starts neither with a capital letter nor a `code literal`")
    return problems


def lint_documents(
    documents: Mapping[str, Mapping[str, Any]],
    known_ids: Collection[str] | None = None,
) -> list[str]:
    """Problems across vector documents keyed by file name.

    ``known_ids`` is the set of requirement IDs of the registry; when None the "IDs exist"
    check is skipped (the caller decides whether that is acceptable).
    """
    problems: list[str] = []
    seen: dict[str, str] = {}
    for file_name in sorted(documents):
        document = documents[file_name]
        feature = document.get("feature")
        if f"{feature}.json" != file_name:
            problems.append(f"{file_name}: feature {feature!r} does not match the file name")
        cases = document.get("cases")
        if not isinstance(cases, list) or not cases:
            problems.append(f"{file_name}: no cases")
            continue
        for index, case in enumerate(cases):
            where = f"{file_name}#{index}"
            description = case.get("description") if isinstance(case, Mapping) else None
            if not isinstance(description, str):
                problems.append(f"{where}: missing description")
                continue
            where = f"{where} ({description!r})"
            problems.extend(f"{where}: {p}" for p in lint_description(description))
            if description in seen:
                problems.append(f"{where}: duplicate description (also {seen[description]})")
            else:
                seen[description] = f"{file_name}#{index}"
            requirements = case.get("requirements")
            if not isinstance(requirements, list) or not requirements:
                problems.append(f"{where}: cites no requirement")
                continue
            for requirement in requirements:
                if not isinstance(requirement, str) or not _REQUIREMENT_ID.match(requirement):
                    problems.append(f"{where}: malformed requirement ID {requirement!r}")
                elif known_ids is not None and requirement not in known_ids:
                    problems.append(f"{where}: requirement {requirement} is not in the registry")
    return problems


def load_documents(directory: Path = VECTORS_DIR) -> dict[str, dict[str, Any]]:
    """Read every vector file (not the schema) of ``directory`` keyed by file name."""
    documents: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(directory).glob("*.json")):
        if not path.name.endswith(".schema.json"):
            with path.open(encoding="utf-8") as handle:
                documents[path.name] = json.load(handle)
    return documents


def registry_ids(registry_path: Path) -> set[str]:
    """The requirement IDs of a ``spec/requirements.json`` registry."""
    with registry_path.open(encoding="utf-8") as handle:
        registry = json.load(handle)
    return {str(entry["id"]) for entry in registry["requirements"]}


def lint_directory(
    directory: Path = VECTORS_DIR, known_ids: Collection[str] | None = None
) -> list[str]:
    """Lint every vector file of ``directory``."""
    return lint_documents(load_documents(directory), known_ids)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the problems; exit 1 when there are any."""
    parser = argparse.ArgumentParser(prog="python -m unisock_conformance.vector_lint")
    parser.add_argument("directory", nargs="?", type=Path, default=VECTORS_DIR)
    parser.add_argument("--requirements", type=Path, help="spec/requirements.json")
    args = parser.parse_args(argv)
    known = registry_ids(args.requirements) if args.requirements else None
    problems = lint_directory(args.directory, known)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
