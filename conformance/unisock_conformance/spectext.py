"""Read requirement items and examples out of the spec's Markdown.

The spec is the source of truth; this module is how tests, the coverage matrix and
the report writers find requirement IDs and their text without a second copy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ID_ITEM = re.compile(r"^\s*[-*]\s+\*\*(UNI-[A-Z]+-\d+)\*\*")
ANY_ID = re.compile(r"\bUNI-[A-Z]+-\d+\b")
LEVEL_WORDS = {
    "MUST": "MUST",
    "MUST NOT": "MUST",
    "SHALL": "MUST",
    "SHALL NOT": "MUST",
    "REQUIRED": "MUST",
    "SHOULD": "SHOULD",
    "SHOULD NOT": "SHOULD",
    "RECOMMENDED": "SHOULD",
    "NOT RECOMMENDED": "SHOULD",
    "MAY": "MAY",
    "OPTIONAL": "MAY",
}
LEVEL_RE = re.compile(
    r"\b(MUST NOT|MUST|SHALL NOT|SHALL|REQUIRED|SHOULD NOT|SHOULD|NOT RECOMMENDED|"
    r"RECOMMENDED|MAY|OPTIONAL)\b"
)
CODE_SPAN = re.compile(r"`[^`]*`")
SCHEMA_COMMENT = re.compile(r"<!--\s*schema:\s*([A-Za-z0-9_./-]+)\s*-->")


@dataclass(frozen=True)
class RequirementItem:
    """One normative list item: its ID, file, line, text and the levels its words name."""

    id: str
    section: str
    line: int
    text: str
    levels: frozenset[str]


@dataclass(frozen=True)
class JsonExample:
    """A fenced ```json block; ``schema`` is set when an HTML comment names one."""

    section: str
    line: int
    schema: str | None
    value: Any


def _prose_lines(path: Path) -> Iterator[tuple[int, str, bool]]:
    """Yield (line number, text, in_note) for lines outside fenced code blocks."""
    fenced = False
    in_note = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        stripped = line.lstrip()
        if stripped.startswith(">"):
            in_note = True
        elif not stripped:
            in_note = False
        yield number, line, in_note


def levels_in(text: str) -> frozenset[str]:
    """The RFC 2119 levels that the capitalised key words in ``text`` name."""
    bare = CODE_SPAN.sub("", text)
    return frozenset(LEVEL_WORDS[word] for word in LEVEL_RE.findall(bare))


def requirement_items(spec_dir: Path) -> list[RequirementItem]:
    """Every ``- **UNI-X-n** ...`` item in the spec, with its continuation lines."""
    items: list[RequirementItem] = []
    for path in sorted(spec_dir.glob("*.md")):
        current: tuple[str, int, list[str]] | None = None
        for number, line, _note in _prose_lines(path):
            match = ID_ITEM.match(line)
            starts_block = not line.strip() or line.lstrip().startswith(("-", "*", "#", "|"))
            if current is not None and (match or starts_block):
                items.append(_item(path.stem, current))
                current = None
            if match:
                current = (match.group(1), number, [line])
            elif current is not None:
                current[2].append(line)
        if current is not None:
            items.append(_item(path.stem, current))
    return items


def _item(section: str, current: tuple[str, int, list[str]]) -> RequirementItem:
    ident, line, lines = current
    text = " ".join(part.strip() for part in lines)
    return RequirementItem(ident, section, line, text, levels_in(text))


def stray_keywords(spec_dir: Path) -> list[tuple[str, int, str]]:
    """RFC 2119 key words outside requirement items, notes and code: each is a defect."""
    found: list[tuple[str, int, str]] = []
    for path in sorted(spec_dir.glob("*.md")):
        in_item = False
        for number, line, in_note in _prose_lines(path):
            if ID_ITEM.match(line):
                in_item = True
                continue
            if not line.strip() or line.lstrip().startswith(("-", "*", "#", "|")):
                in_item = False
            if in_item or in_note:
                continue
            if levels_in(line):
                found.append((path.stem, number, line.strip()))
    return found


def json_examples(spec_dir: Path) -> list[JsonExample]:
    """Every ```json block of the spec, parsed, with the schema its comment names."""
    examples: list[JsonExample] = []
    for path in sorted(spec_dir.glob("*.md")):
        lines = path.read_text(encoding="utf-8").splitlines()
        index = 0
        while index < len(lines):
            if lines[index].strip() == "```json":
                schema = None
                back = index - 1
                while back >= 0 and not lines[back].strip():
                    back -= 1
                if back >= 0 and (found := SCHEMA_COMMENT.search(lines[back])):
                    schema = found.group(1)
                end = index + 1
                while lines[end].strip() != "```":
                    end += 1
                value = json.loads("\n".join(lines[index + 1 : end]))
                examples.append(JsonExample(path.stem, index + 1, schema, value))
                index = end
            index += 1
    return examples


def load_registry(spec_dir: Path) -> dict[str, Any]:
    """The machine-readable requirement registry ``spec/requirements.json``."""
    with (spec_dir / "requirements.json").open(encoding="utf-8") as handle:
        registry: dict[str, Any] = json.load(handle)
    return registry
