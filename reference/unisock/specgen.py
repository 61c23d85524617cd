"""Regenerate the spec's derived blocks so they cannot drift from their sources.

The close-code and error-code tables come from the registries in ``schemas/``; the
session state diagram comes from the state table in :mod:`unisock.state`.
Run ``python -m unisock.specgen`` to rewrite, ``--check`` to fail on drift.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unisock.resources import load_json

BLOCKS: dict[str, tuple[str, str]] = {
    "close-codes": ("<!-- generated:close-codes -->", "<!-- /generated -->"),
    "error-codes": ("<!-- generated:error-codes -->", "<!-- /generated -->"),
    "state-diagram": ("<!-- state-diagram:begin -->", "<!-- state-diagram:end -->"),
}


def close_code_table() -> str:
    """Markdown table of the close-code registry, grouped by what the client does next."""
    registry: dict[str, Any] = load_json("v1/registries/close-codes.json")
    rows = ["| Code | Name | Client action | Parameters | Meaning |", "|---|---|---|---|---|"]
    for entry in sorted(registry["codes"], key=lambda e: e["code"]):
        params = ", ".join(f"`{p}`" for p in entry.get("params", [])) or "—"
        rows.append(
            f"| {entry['code']} | `{entry['name']}` | `{entry['class']}` | {params} "
            f"| {entry['meaning']} |"
        )
    rows.append("")
    rows.append("| Unregistered code range | Client action |")
    rows.append("|---|---|")
    for span in registry["ranges"]:
        rows.append(f"| {span['from']} to {span['to']} | `{span['class']}` |")
    rows.append(f"| any other | `{registry['default_class']}` |")
    return "\n".join(rows)


def error_code_table() -> str:
    """Markdown table of the error-code registry."""
    registry: dict[str, Any] = load_json("v1/registries/error-codes.json")
    rows = [
        "| Code | Meaning | Connection survives | `retry_after_ms` |",
        "|---|---|---|---|",
    ]
    for entry in registry["codes"]:
        survives = "yes" if entry["connection_survives"] else "no"
        retry = "yes" if entry.get("retry_after") else "no"
        rows.append(f"| `{entry['code']}` | {entry['meaning']} | {survives} | {retry} |")
    return "\n".join(rows)


def state_diagram() -> str:
    """The session state machine as mermaid, rendered from the one transition table."""
    from unisock.state import mermaid_diagram

    return "```mermaid\n" + mermaid_diagram().strip() + "\n```"


RENDERERS: dict[str, Callable[[], str]] = {
    "close-codes": close_code_table,
    "error-codes": error_code_table,
    "state-diagram": state_diagram,
}


def regenerate(text: str) -> str:
    """Replace every marked block in ``text`` with freshly rendered content."""
    for name, (begin, end) in BLOCKS.items():
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
        found = pattern.search(text)
        if found:
            block = f"{begin}\n{RENDERERS[name]()}\n{end}"
            text = text[: found.start()] + block + text[found.end() :]
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", type=Path, default=Path("spec"))
    parser.add_argument("--check", action="store_true", help="fail if any block is stale")
    args = parser.parse_args(argv)
    stale = []
    for path in sorted(args.spec.glob("*.md")):
        old = path.read_text(encoding="utf-8")
        new = regenerate(old)
        if new != old:
            stale.append(path.name)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    if args.check and stale:
        print("stale generated blocks in: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
