"""The spec's requirement IDs, its registry and its examples agree (UNI-CONF)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from unisock import schemas, specgen
from unisock_conformance import spectext

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "spec"
SECTIONS = [f"{n:02d}" for n in range(1, 17)]
ROLES = {"server", "client", "broadcaster"}
LEVELS = {"MUST", "SHOULD", "MAY"}


@pytest.fixture(scope="module")
def items() -> list[spectext.RequirementItem]:
    return spectext.requirement_items(SPEC)


@pytest.fixture(scope="module")
def registry() -> list[dict[str, object]]:
    entries: list[dict[str, object]] = spectext.load_registry(SPEC)["requirements"]
    return entries


def test_spec_has_every_section() -> None:
    stems = {path.stem[:2] for path in SPEC.glob("[0-9][0-9]-*.md")}
    assert stems == set(SECTIONS)
    assert (SPEC / "index.md").is_file()


def test_requirement_ids_are_unique_in_text(items: list[spectext.RequirementItem]) -> None:
    counts = Counter(item.id for item in items)
    assert [ident for ident, n in counts.items() if n > 1] == []


def test_requirement_ids_are_unique_in_registry(registry: list[dict[str, object]]) -> None:
    counts = Counter(entry["id"] for entry in registry)
    assert [ident for ident, n in counts.items() if n > 1] == []


def test_every_text_id_is_in_registry_and_back(
    items: list[spectext.RequirementItem], registry: list[dict[str, object]]
) -> None:
    live = {str(e["id"]) for e in registry if not e.get("removed_in")}
    text = {item.id for item in items}
    assert sorted(text - live) == [], "IDs in the text but not in requirements.json"
    assert sorted(live - text) == [], "IDs in requirements.json but not in the text"


def test_registry_level_section_and_role_match_text(
    items: list[spectext.RequirementItem], registry: list[dict[str, object]]
) -> None:
    by_id = {item.id: item for item in items}
    problems = []
    for entry in registry:
        if entry.get("removed_in"):
            continue
        item = by_id[str(entry["id"])]
        if entry["level"] not in LEVELS or item.levels != {entry["level"]}:
            problems.append(f"{entry['id']}: registry {entry['level']}, text {sorted(item.levels)}")
        if entry["section"] != item.section:
            problems.append(f"{entry['id']}: section {entry['section']} != {item.section}")
        if entry["role"] not in ROLES:
            problems.append(f"{entry['id']}: role {entry['role']}")
        summary = str(entry["summary"])
        if not summary or len(summary) > 120 or "\n" in summary:
            problems.append(f"{entry['id']}: summary must be one line of at most 120 characters")
    assert problems == []


def test_requirement_ids_are_numbered_within_their_area(
    registry: list[dict[str, object]],
) -> None:
    """IDs are never reused: each area counts up from 1 with no holes (removed ones stay)."""
    numbers: dict[str, list[int]] = {}
    for entry in registry:
        area, number = re.fullmatch(r"UNI-([A-Z]+)-(\d+)", str(entry["id"])).groups()  # type: ignore[union-attr]
        numbers.setdefault(area, []).append(int(number))
    for area, found in numbers.items():
        assert sorted(found) == list(range(1, len(found) + 1)), area


def test_rfc2119_words_appear_only_in_requirement_items() -> None:
    assert spectext.stray_keywords(SPEC) == []


def test_every_section_with_rules_has_requirements(items: list[spectext.RequirementItem]) -> None:
    with_ids = {item.section[:2] for item in items}
    assert set(SECTIONS) - {"15"} <= with_ids


def test_spec_json_examples_validate() -> None:
    examples = spectext.json_examples(SPEC)
    assert len(examples) >= 20
    problems = []
    for example in examples:
        where = f"{example.section}.md:{example.line}"
        if example.schema is not None:
            validator = schemas.validator_for(example.schema)
            errors = [e.message for e in validator.iter_errors(example.value)]
        elif isinstance(example.value, dict) and isinstance(example.value.get("type"), str):
            errors = _message_errors(example.value)
        else:
            errors = ["not a message: precede it with <!-- schema: NAME -->"]
        problems.extend(f"{where}: {error}" for error in errors)
    assert problems == []


def _message_errors(message: dict[str, object]) -> list[str]:
    kind = message["type"]
    if kind in schemas.CLIENT_MESSAGE_TYPES:
        errors = schemas.validate_client_message(message)
        if not errors or kind not in schemas.SERVER_MESSAGE_TYPES:
            return errors
    return schemas.validate_server_message(message)


def test_registry_validates_against_its_schema() -> None:
    schema = json.loads((SPEC / "requirements.schema.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    errors = list(Draft202012Validator(schema).iter_errors(spectext.load_registry(SPEC)))
    assert [error.message for error in errors] == []


def test_generated_spec_blocks_are_up_to_date() -> None:
    """Close-code and error-code tables and the state diagram match their sources."""
    for path in sorted(SPEC.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        assert specgen.regenerate(text) == text, f"run python -m unisock.specgen ({path.name})"


def test_generated_blocks_exist() -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in SPEC.glob("*.md"))
    for begin, _end in specgen.BLOCKS.values():
        assert begin in text


def _listed_ids(text: str) -> set[str]:
    """IDs named in ``text``, with "UNI-X-1 to UNI-X-3" expanded to the whole range."""
    found = set(re.findall(r"UNI-[A-Z]+-\d+", text))
    for area, first, last in re.findall(r"UNI-([A-Z]+)-(\d+)\s+to\s+UNI-\1-(\d+)", text):
        found |= {f"UNI-{area}-{n}" for n in range(int(first), int(last) + 1)}
    return found


def test_feature_tags_are_exactly_those_section_14_3_lists(
    registry: list[dict[str, object]],
) -> None:
    text = (SPEC / "14-conformance.md").read_text("utf-8")
    paragraph = text.split("A requirement belongs to a feature when", 1)[1]
    paragraph = paragraph.split("A requirement that also binds", 1)[0]
    listed = {
        ident: feature
        for ids, feature in re.findall(r"([^()]+?)\(`([a-z_]+)`\)", paragraph)
        for ident in _listed_ids(ids)
    }
    tagged = {str(e["id"]): e["feature"] for e in registry if e.get("feature")}
    assert tagged == listed
