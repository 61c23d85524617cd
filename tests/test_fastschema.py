"""The compiled yes/no schema check answers exactly as jsonschema does.

Instances: every message of the vectors, every schema example, and mutations of each (a
member dropped, a member of another type, an unknown member, a value shortened or grown),
against every schema document. The server trusts a "yes" without asking jsonschema, so a
single disagreement would let an invalid message through or refuse a valid one.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from unisock.config import EventTypeRegistry
from unisock.errors import InvalidEventData
from unisock.fastschema import compile_schema
from unisock.schemas import _documents, check_for, registry

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "conformance" / "unisock_conformance" / "_vectors"
EXAMPLES = ROOT / "schemas" / "v1"


def _messages(node: Any) -> Iterator[Any]:
    """Every JSON object found under a vectors file or an examples file."""
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            yield node
        for value in node.values():
            yield from _messages(value)
    elif isinstance(node, list):
        for item in node:
            yield from _messages(item)


def _instances() -> list[Any]:
    found: list[Any] = []
    for path in sorted(VECTORS.glob("*.json")):
        found.extend(_messages(json.loads(path.read_text(encoding="utf-8"))))
    for path in sorted(EXAMPLES.rglob("*.json")):
        content = json.loads(path.read_text(encoding="utf-8"))
        if "examples" in path.parts:
            found.extend(_messages(content))
        if isinstance(content, dict):
            found.extend(content.get("examples", []))
    return found


def _mutations(instance: Any) -> Iterator[Any]:
    yield instance
    if not isinstance(instance, dict):
        return
    replacements: list[Any] = [None, True, -1, 1.5, "", "x" * 300, {}, [1, "a"]]
    for key in instance:
        dropped = dict(instance)
        del dropped[key]
        yield dropped
        for value in replacements:
            changed = dict(instance)
            changed[key] = value
            yield changed
        inner = instance[key]
        if isinstance(inner, dict):
            for sub in inner:
                nested = copy.deepcopy(instance)
                nested[key][sub] = None
                yield nested
                del nested[key][sub]
                yield nested
    yield {**instance, "x_unknown": 1}
    yield {**instance, "type": 7}


SCHEMAS = sorted(_documents())
INSTANCES = [m for i in _instances() for m in _mutations(i)]


def test_every_v1_schema_compiles() -> None:
    """Nothing falls back to jsonschema on the server's path: every document compiles."""
    documents = _documents()
    for uri in SCHEMAS:
        assert compile_schema(documents[uri], documents, uri) is not None, uri


@pytest.mark.parametrize("uri", SCHEMAS, ids=lambda uri: uri.rsplit("/v1/", 1)[-1])
def test_compiled_check_agrees_with_jsonschema(uri: str) -> None:
    assert len(INSTANCES) > 1000
    validator = Draft202012Validator(_documents()[uri], registry=registry())
    check = check_for(uri)
    answers = set()
    # A message schema sees the instances of its own type (others fail on `type` in both).
    kind = uri.rsplit("/messages/", 1)[-1].removesuffix(".json") if "/messages/" in uri else None
    mine = [
        i
        for i in INSTANCES
        if kind is None or not isinstance(i, dict) or i.get("type") in (kind, 7)
    ]
    for instance in mine:
        expected = validator.is_valid(instance)
        assert check(instance) is expected, (uri, instance)
        answers.add(expected)
    if "messages/" in uri:
        assert answers == {True, False}  # the instances exercise both answers


def test_event_type_registry_still_reports_the_failing_pointer() -> None:
    schema = {
        "type": "object",
        "required": ["qty"],
        "properties": {"qty": {"type": "integer", "minimum": 1}, "tags": {"$ref": "#/$defs/t"}},
        "$defs": {"t": {"type": "array", "items": {"type": "string"}, "uniqueItems": True}},
    }
    registry_ = EventTypeRegistry({"order": schema})
    registry_.check("order", {"qty": 2, "tags": ["a", "b"]})
    for bad, pointer in (({"qty": 0}, "/data/qty"), ({"qty": 1, "tags": ["a", "a"]}, "/data/tags")):
        with pytest.raises(InvalidEventData) as caught:
            registry_.check("order", bad)
        assert caught.value.pointer == pointer
        assert best_match(Draft202012Validator(schema).iter_errors(bad)) is not None


def test_unknown_keywords_fall_back_to_jsonschema() -> None:
    assert compile_schema({"type": "string", "format": "email"}) is None
    assert compile_schema({"patternProperties": {"^a": {}}}) is None
    assert compile_schema({"$ref": "https://elsewhere.example/x.json"}) is None


@pytest.mark.parametrize(
    ("schema", "value", "expected"),
    [
        ({"type": "integer"}, 1.0, True),
        ({"type": "integer"}, True, False),
        ({"type": "number"}, False, False),
        ({"enum": [1, "a"]}, True, False),
        ({"enum": [1, "a"]}, 1.0, True),
        ({"const": {"a": [1]}}, {"a": [1.0]}, True),
        ({"uniqueItems": True}, [1, True], True),
        ({"uniqueItems": True}, [1, 1.0], False),
        ({"oneOf": [{"type": "integer"}, {"minimum": 0}]}, 3, False),
        ({"if": {"type": "string"}, "then": {"minLength": 2}}, "a", False),
        ({"prefixItems": [{"type": "string"}], "items": {"type": "integer"}}, ["a", 1], True),
        ({"prefixItems": [{"type": "string"}], "items": {"type": "integer"}}, ["a", "b"], False),
        ({"contains": {"const": 2}}, [], False),
        ({"maxLength": 1}, "\U0001f600", True),
    ],
)
def test_edge_cases_agree_with_jsonschema(schema: Any, value: Any, expected: bool) -> None:
    check = compile_schema(schema)
    assert check is not None
    assert Draft202012Validator(schema).is_valid(value) is expected
    assert check(value) is expected
