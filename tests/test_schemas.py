"""The JSON Schemas, examples and registries under schemas/v1 are consistent and correct."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry

from unisock import schemas

ROOT = Path(__file__).resolve().parent.parent / "schemas" / "v1"
BASE = "https://unisock.dev/schemas/v1/"
DRAFT = "https://json-schema.org/draft/2020-12/schema"

SCHEMA_FILES = sorted(
    path for path in ROOT.rglob("*.json") if "examples" not in path.relative_to(ROOT).parts
)
SCHEMA_FILES = [
    path
    for path in SCHEMA_FILES
    if path.parent.name != "registries" or path.name.endswith(".schema.json")
]
EXAMPLE_FILES = sorted((ROOT / "examples").glob("*.json"))
EVENT_FILES = sorted((ROOT / "events").glob("*.json"))

# Wire contract section 12 and section 9: the codes every implementation knows.
SPEC_ERROR_CODES = {
    "invalid_json", "invalid_message", "unknown_type", "already_authenticated",
    "invalid_channel", "invalid_filter", "forbidden", "already_subscribed", "not_subscribed",
    "subscription_limit", "rate_limited", "unknown_event_type", "invalid_event_data",
    "invalid_position", "token_invalid", "token_mismatch", "internal_error", "unavailable",
}  # fmt: skip
SPEC_CLOSE_CODES = {
    1000: ("normal", "never"), 1001: ("going_away", "backoff"),
    1002: ("protocol_error", "never"), 1003: ("unsupported_data", "never"),
    1006: ("abnormal", "backoff"), 1007: ("invalid_payload", "never"),
    1008: ("policy_violation", "never"), 1009: ("message_too_big", "backoff"),
    1011: ("internal_error", "backoff"), 1012: ("service_restart", "now"),
    1013: ("try_again_later", "backoff"), 4000: ("protocol_violation", "never"),
    4001: ("superseded", "never"), 4100: ("auth_failed", "new_token"),
    4101: ("token_expired", "new_token"), 4102: ("auth_timeout", "new_token"),
    4200: ("slow_consumer", "backoff"), 4201: ("heartbeat_timeout", "backoff"),
    4202: ("overloaded", "backoff"), 4300: ("drain", "now"),
}  # fmt: skip


def load(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def schema_name_for_examples(stem: str) -> str:
    """examples/<type>.json holds messages; other example files name a top-level schema."""
    return f"messages/{stem}" if stem in schemas.ALL_MESSAGE_TYPES else stem


def example_cases(kind: str, *, messages_only: bool = False) -> list[Any]:
    cases = []
    for path in EXAMPLE_FILES:
        name = schema_name_for_examples(path.stem)
        if messages_only and not name.startswith("messages/"):
            continue
        for index, case in enumerate(load(path)[kind]):
            if kind == "valid":
                cases.append(pytest.param(name, case, id=f"{path.stem}[{index}]"))
            else:
                cases.append(pytest.param(name, case["message"], id=case["description"]))
    return cases


def def_validator(name: str) -> Draft202012Validator:
    """A validator for one definition of defs.json, resolved through the package registry."""
    return Draft202012Validator(
        {"$ref": f"{BASE}defs.json#/$defs/{name}"}, registry=schemas.registry()
    )


# --- schema documents -----------------------------------------------------------------------


def test_schema_tree_has_every_expected_document() -> None:
    names = {rel(path) for path in SCHEMA_FILES}
    expected = {
        "defs.json", "client-message.json", "server-message.json", "token-claims.json",
        "filter.json", "registries/error-codes.schema.json",
        "registries/close-codes.schema.json", "events/task.created.json",
        "events/task.updated.json", "events/form.submitted.json",
        "adapter/request.json", "adapter/reply.json", "adapter/notification.json",
        "adapter/output.json", "token-command/request.json", "token-command/reply.json",
    } | {f"messages/{t}.json" for t in schemas.ALL_MESSAGE_TYPES}  # fmt: skip
    assert names == expected


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=rel)
def test_schema_is_valid_against_the_2020_12_metaschema(path: Path) -> None:
    document = load(path)
    assert document.get("$schema") == DRAFT
    Draft202012Validator.check_schema(document)


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=rel)
def test_schema_id_is_versioned_and_matches_its_path(path: Path) -> None:
    assert load(path)["$id"] == BASE + rel(path)


def test_schema_ids_are_unique() -> None:
    ids = [load(path)["$id"] for path in SCHEMA_FILES]
    assert len(ids) == len(set(ids))


def test_package_registry_holds_every_schema() -> None:
    for path in SCHEMA_FILES:
        assert schemas.registry().contents(BASE + rel(path)) == load(path)


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=rel)
def test_every_ref_resolves_offline(path: Path) -> None:
    """No $ref may point outside the registry: validation never touches the network."""
    registry: Registry[Any] = schemas.registry()
    document = load(path)
    resolver = registry.resolver(base_uri=document["$id"])

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                resolver.lookup(ref)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)


@pytest.mark.parametrize("message_type", schemas.ALL_MESSAGE_TYPES)
def test_message_schema_fixes_its_type_and_describes_every_property(message_type: str) -> None:
    document = schemas.message_schema_for_type(message_type)
    assert document is not None
    assert document["title"] == message_type
    assert document["properties"]["type"]["const"] == message_type
    assert "type" in document["required"]
    undescribed = [name for name, sub in document["properties"].items() if "description" not in sub]
    assert undescribed == []
    assert document.get("additionalProperties", True) is not False


@pytest.mark.parametrize("message_type", schemas.ALL_MESSAGE_TYPES)
def test_message_schema_ignores_unknown_fields(message_type: str) -> None:
    valid = load(ROOT / "examples" / f"{message_type}.json")["valid"][0]
    extended = {**valid, "x_added_in_a_minor_version": {"nested": [1, 2]}}
    assert schemas.validator_for(f"messages/{message_type}").is_valid(extended)


def test_message_type_lists_match_the_wire_registry() -> None:
    assert set(schemas.CLIENT_MESSAGE_TYPES) == {
        "hello", "refresh", "subscribe", "unsubscribe", "publish", "ping", "pong",
    }  # fmt: skip
    assert set(schemas.SERVER_MESSAGE_TYPES) == {
        "welcome", "refreshed", "subscribed", "unsubscribed", "ack", "event", "gap", "error",
        "token_expiring", "drain", "ping", "pong",
    }  # fmt: skip
    assert set(schemas.ALL_MESSAGE_TYPES) == set(schemas.CLIENT_MESSAGE_TYPES) | set(
        schemas.SERVER_MESSAGE_TYPES
    )
    assert len(schemas.ALL_MESSAGE_TYPES) == 17


def test_message_schema_for_an_unknown_type_is_none() -> None:
    assert schemas.message_schema_for_type("presence") is None
    assert schemas.message_schema_for_type("defs") is None


def test_validators_are_cached() -> None:
    assert schemas.validator_for("client-message") is schemas.validator_for("client-message.json")


# --- examples -------------------------------------------------------------------------------


@pytest.mark.parametrize("message_type", schemas.ALL_MESSAGE_TYPES)
def test_every_message_type_has_enough_examples(message_type: str) -> None:
    examples = load(ROOT / "examples" / f"{message_type}.json")
    assert len(examples["valid"]) >= 3
    assert len(examples["invalid"]) >= 4


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda path: path.stem)
def test_examples_file_names_an_existing_schema(path: Path) -> None:
    name = schema_name_for_examples(path.stem)
    assert (ROOT / f"{name}.json").is_file()
    assert set(load(path)) == {"valid", "invalid"}


def test_invalid_example_descriptions_are_unique_and_declarative() -> None:
    descriptions = [case["description"] for path in EXAMPLE_FILES for case in load(path)["invalid"]]
    assert len(descriptions) == len(set(descriptions))
    for description in descriptions:
        assert description.endswith(" is rejected") or description.endswith(" are rejected")
        assert not re.search(r"\b(should|must|test)\b", description, re.IGNORECASE)


@pytest.mark.parametrize(("name", "message"), example_cases("valid"))
def test_valid_example_is_accepted(name: str, message: Any) -> None:
    assert schemas.format_errors(schemas.validator_for(name), message) == []


@pytest.mark.parametrize(("name", "message"), example_cases("invalid"))
def test_invalid_example_is_rejected(name: str, message: Any) -> None:
    assert schemas.format_errors(schemas.validator_for(name), message) != []


@pytest.mark.parametrize(("name", "message"), example_cases("valid", messages_only=True))
def test_valid_message_example_is_accepted_by_its_direction(name: str, message: Any) -> None:
    message_type = message["type"]
    assert (schemas.validate_client_message(message) == []) == (
        message_type in schemas.CLIENT_MESSAGE_TYPES
    )
    assert (schemas.validate_server_message(message) == []) == (
        message_type in schemas.SERVER_MESSAGE_TYPES
    )


@pytest.mark.parametrize(("name", "message"), example_cases("invalid", messages_only=True))
def test_invalid_message_example_is_rejected_by_both_directions(name: str, message: Any) -> None:
    assert schemas.validate_client_message(message) != []
    assert schemas.validate_server_message(message) != []


@pytest.mark.parametrize("message_type", schemas.ALL_MESSAGE_TYPES)
def test_direction_schemas_accept_exactly_their_types(message_type: str) -> None:
    message = load(ROOT / "examples" / f"{message_type}.json")["valid"][0]
    client_ok = schemas.validate_client_message(message) == []
    server_ok = schemas.validate_server_message(message) == []
    assert client_ok == (message_type in schemas.CLIENT_MESSAGE_TYPES)
    assert server_ok == (message_type in schemas.SERVER_MESSAGE_TYPES)


@pytest.mark.parametrize(
    "message",
    [{"type": "presence"}, {"type": 7}, {"channel": "tasks.42"}, [], "hello", None, 3],
    ids=["unknown type", "numeric type", "no type", "array", "string", "null", "number"],
)
def test_direction_schemas_reject_messages_without_a_known_type(message: Any) -> None:
    assert schemas.validate_client_message(message) != []
    assert schemas.validate_server_message(message) != []


def test_validation_errors_name_the_failing_location() -> None:
    errors = schemas.validate_client_message(
        {"type": "subscribe", "id": "s1", "channel": "Tasks.42"}
    )
    assert errors == ["/channel: 'Tasks.42' is not a valid channel pattern"]
    errors = schemas.validate_server_message(
        {"type": "error", "code": "forbidden", "message": "no", "retry_after_ms": 5}
    )
    assert errors == ["/: 'retry_after_ms' is not allowed here"]


def test_a_message_of_the_other_direction_is_reported_by_its_type() -> None:
    assert schemas.validate_server_message({"type": "hello", "token": "a.b.c"}) == [
        "/type: 'hello' is not one of " + repr(list(schemas.SERVER_MESSAGE_TYPES)).replace('"', "'")
    ]


# --- channel grammar (wire section 4) -------------------------------------------------------

NAMES_AND_PATTERNS = [
    "tasks", "tasks.42", "a-b_c.0", "$me", "$me.inbox", "$me.a.b", "$sys.maintenance",
    ".".join(["s"] * 16), "$me." + ".".join(["s"] * 16), "$sys." + ".".join(["s"] * 16),
    "x" * 64, ".".join(["a" * 63, "b" * 64, "c" * 64, "d" * 61]),
]  # fmt: skip
PATTERNS_ONLY = [
    "*", ">", "tasks.*", "tasks.>", "*.updates.>", "$me.>", "$me.*", "$sys.>", "$sys.*.alerts",
]  # fmt: skip
NEITHER = [
    "", "Tasks", "tasks..42", ".tasks", "tasks.", "tasks\uff0e42", "t\u0430sks", "tasks 42",
    "tasks/42", "tasks\\42", "tasks:42", "tasks%2e42", "tasks#42", "tasks.$me", "$acme",
    "$sys", "$Me", "$me$", "$$me", "tasks.>.x", ">.x", "ab*", "tasks.4>", "*.$me", ">.$sys",
    "$me..x", "$sys.", "tasks.42\n", "\ntasks", "tasks\t", "caf\u00e9", "x" * 65,
    ".".join(["s"] * 17), "$sys." + ".".join(["s"] * 17),
    ".".join(["a" * 63, "b" * 64, "c" * 64, "d" * 62]), "TASKS.42", "ta\u200bsks",
    "\uff54asks",
]  # fmt: skip


@pytest.mark.parametrize("text", NAMES_AND_PATTERNS)
def test_canonical_channel_name_is_accepted_as_name_and_pattern(text: str) -> None:
    assert def_validator("channel").is_valid(text)
    assert def_validator("channel_pattern").is_valid(text)


@pytest.mark.parametrize("text", PATTERNS_ONLY)
def test_wildcard_pattern_is_accepted_as_pattern_but_rejected_as_name(text: str) -> None:
    assert def_validator("channel_pattern").is_valid(text)
    assert not def_validator("channel").is_valid(text)


@pytest.mark.parametrize("text", NEITHER, ids=repr)
def test_non_canonical_name_is_rejected_as_name_and_pattern(text: str) -> None:
    assert not def_validator("channel").is_valid(text)
    assert not def_validator("channel_pattern").is_valid(text)


DEFINITION_CASES: dict[str, tuple[list[str], list[str]]] = {
    "tenant": (
        ["acme", "0", "a-b_c", "a" * 64],
        ["", "Acme", "-acme", "_a", "a.b", "a" * 65, "acme\n"],
    ),
    "event_type": (
        ["task.updated", "a", "form_v2.submitted"],
        ["Task", "task.", ".task", "task..x", "1task", "task.2x", "e" * 65],
    ),
    "attribute_name": (
        ["priority", "a", "a" + "b" * 31],
        ["Priority", "_a", "1a", "a-b", "a" * 33, "$event"],
    ),
    "filter_field": (["$event", "priority"], ["$channel", "Priority", "$event\n"]),
    "subject": (
        ["alice", "a" * 128, "b\u00f6b"],
        ["", "a" * 129, "al\u0000ice", "alice\n", "a\u0085"],
    ),
    "jwt": (["a.b.c", "a.b."], ["a.b", "a.b.c.d", "a b.c.d", "a.b.c\n", ".b.c"]),
    "close_reason": (
        ["drain", "drain;window_ms=30000", "overloaded;retry_after_ms=5000",
         "x;window_ms=1;retry_after_ms=2"],
        ["Drain", "drain;", "drain;window_ms=", "drain;foo=1", "drain;window_ms=1;window_ms=2",
         "x" * 124],
    ),
}  # fmt: skip


@pytest.mark.parametrize("definition", sorted(DEFINITION_CASES))
def test_definition_accepts_and_rejects(definition: str) -> None:
    good, bad = DEFINITION_CASES[definition]
    validator = def_validator(definition)
    assert [text for text in good if not validator.is_valid(text)] == []
    assert [text for text in bad if validator.is_valid(text)] == []


def test_filter_schema_enforces_list_lengths_but_leaves_node_count_to_runtime() -> None:
    validator = schemas.validator_for("filter")
    leaf = {"exists": "a"}
    assert validator.is_valid({"and": [leaf] * 16})
    assert not validator.is_valid({"and": [leaf] * 17})
    assert validator.is_valid({"in": ["a", list(range(32))]})
    assert not validator.is_valid({"in": ["a", list(range(33))]})
    deep: dict[str, Any] = leaf
    for _ in range(12):
        deep = {"not": deep}
    # Depth (8) and node count (max_filter_nodes) are checked by the server, not the schema.
    assert validator.is_valid(deep)


# --- event-type registry --------------------------------------------------------------------


@pytest.mark.parametrize("path", EVENT_FILES, ids=lambda path: path.stem)
def test_event_type_schema_is_titled_by_its_type_and_its_examples_validate(path: Path) -> None:
    document = load(path)
    assert document["title"] == path.stem
    assert def_validator("event_type").is_valid(document["title"])
    validator = schemas.validator_for(f"events/{path.name}")
    assert document["examples"]
    for example in document["examples"]:
        assert schemas.format_errors(validator, example) == []


def test_task_updated_schema_rejects_a_numeric_status() -> None:
    validator = schemas.validator_for("events/task.updated")
    data = load(ROOT / "events" / "task.updated.json")["examples"][0]
    assert validator.is_valid(data)
    assert not validator.is_valid({**data, "changes": {"status": 3}})


# --- registries -----------------------------------------------------------------------------


def registry_validator(name: str) -> Draft202012Validator:
    return schemas.validator_for(f"registries/{name}.schema")


def test_error_code_registry_validates_against_its_schema() -> None:
    assert schemas.format_errors(registry_validator("error-codes"), load_error_codes()) == []


def test_close_code_registry_validates_against_its_schema() -> None:
    assert schemas.format_errors(registry_validator("close-codes"), load_close_codes()) == []


def load_error_codes() -> Any:
    return load(ROOT / "registries" / "error-codes.json")


def load_close_codes() -> Any:
    return load(ROOT / "registries" / "close-codes.json")


def test_error_codes_are_unique_and_exactly_the_specified_ones() -> None:
    codes = [entry["code"] for entry in load_error_codes()["codes"]]
    assert len(codes) == len(set(codes))
    assert set(codes) == SPEC_ERROR_CODES


def test_every_error_code_leaves_the_connection_open() -> None:
    assert all(entry["connection_survives"] for entry in load_error_codes()["codes"])


def test_only_rate_limited_and_unavailable_carry_retry_after() -> None:
    with_retry = {entry["code"] for entry in load_error_codes()["codes"] if entry["retry_after"]}
    assert with_retry == {"rate_limited", "unavailable"}


def test_error_schema_accepts_every_registered_code() -> None:
    validator = schemas.validator_for("messages/error")
    for entry in load_error_codes()["codes"]:
        message = {"type": "error", "code": entry["code"], "message": "x"}
        if entry["code"] == "rate_limited":
            message["retry_after_ms"] = 1
        assert schemas.format_errors(validator, message) == []


def test_close_codes_and_names_are_unique_and_exactly_the_specified_ones() -> None:
    entries = load_close_codes()["codes"]
    codes = [entry["code"] for entry in entries]
    names = [entry["name"] for entry in entries]
    assert len(codes) == len(set(codes))
    assert len(names) == len(set(names))
    assert {entry["code"]: (entry["name"], entry["class"]) for entry in entries} == (
        SPEC_CLOSE_CODES
    )


def test_close_code_ranges_are_ordered_and_disjoint() -> None:
    ranges = load_close_codes()["ranges"]
    bounds = [(entry["from"], entry["to"]) for entry in ranges]
    assert all(low <= high for low, high in bounds)
    assert all(prev[1] < nxt[0] for prev, nxt in itertools.pairwise(bounds))
    assert [(entry["from"], entry["to"], entry["class"]) for entry in ranges] == [
        (4000, 4099, "never"), (4100, 4199, "new_token"),
        (4200, 4299, "backoff"), (4300, 4399, "now"),
    ]  # fmt: skip
    assert load_close_codes()["default_class"] == "backoff"


def test_close_code_classes_agree_with_their_ranges() -> None:
    registry = load_close_codes()
    for entry in registry["codes"]:
        if not 4000 <= entry["code"] <= 4999:
            continue
        matching = [r for r in registry["ranges"] if r["from"] <= entry["code"] <= r["to"]]
        expected = matching[0]["class"] if matching else registry["default_class"]
        assert entry["class"] == expected, entry["code"]


def test_close_codes_with_a_retry_after_or_window_declare_that_parameter() -> None:
    params = {entry["code"]: entry["params"] for entry in load_close_codes()["codes"]}
    assert "retry_after_ms" in params[1013]
    assert "retry_after_ms" in params[4202]
    assert "window_ms" in params[4300]


def test_every_close_reason_built_from_the_registry_is_valid() -> None:
    validator = def_validator("close_reason")
    for entry in load_close_codes()["codes"]:
        reason = entry["name"] + "".join(f";{param}=1000" for param in entry["params"])
        assert validator.is_valid(reason), reason
        assert len(reason.encode()) <= 123
