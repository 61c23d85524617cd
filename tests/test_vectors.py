"""The conformance vectors: valid files, linted descriptions, real IDs and a runner that grades."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from unisock_conformance.vector_lint import lint_documents, load_documents, registry_ids
from unisock_conformance.vectors import FEATURES, load_vectors, main, run_vectors

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "conformance" / "vectors"
SCHEMA = VECTORS / "vectors.schema.json"
REGISTRY = REPO / "spec" / "requirements.json"
VECTOR_FILES = sorted(p for p in VECTORS.glob("*.json") if p != SCHEMA)


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def test_vector_schema_is_a_valid_2020_12_schema() -> None:
    Draft202012Validator.check_schema(_load(SCHEMA))


@pytest.mark.parametrize("path", VECTOR_FILES, ids=lambda p: p.stem)
def test_vector_file_validates_against_vector_schema(path: Path) -> None:
    validator = Draft202012Validator(_load(SCHEMA))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(_load(path))]
    assert errors == []


def test_vector_schema_rejects_a_case_shaped_for_another_feature() -> None:
    document = _load(VECTORS / "matching.json")
    document["cases"][0]["expected"] = {"valid": True}
    assert not Draft202012Validator(_load(SCHEMA)).is_valid(document)


def test_every_feature_has_exactly_one_vector_file() -> None:
    assert sorted(p.stem for p in VECTOR_FILES) == sorted(FEATURES)


def test_vectors_hold_at_least_150_cases() -> None:
    assert sum(len(f.cases) for f in load_vectors(VECTORS)) >= 150


def test_vector_descriptions_and_citations_pass_lint() -> None:
    assert lint_documents(load_documents(VECTORS)) == []


def test_vectors_cite_only_requirement_ids_of_the_registry() -> None:
    if not REGISTRY.exists():
        pytest.fail(f"{REGISTRY.relative_to(REPO)} is missing: cited IDs cannot be checked")
    known = registry_ids(REGISTRY)
    assert lint_documents(load_documents(VECTORS), known) == []


def test_vector_lint_reports_each_kind_of_problem() -> None:
    good = {"description": "`*` matches one segment", "requirements": ["UNI-CH-1"]}
    cases = [
        good,
        dict(good),
        {"description": "Wildcards should match", "requirements": ["UNI-CH-1"]},
        {"description": "A name is rejected.", "requirements": ["UNI-CH-1"]},
        {"description": "lowercase start is rejected", "requirements": ["UNI-CH-1"]},
        {"description": "A" * 91, "requirements": ["UNI-CH-1"]},
        {"description": "A case without citations", "requirements": []},
        {"description": "A case citing a malformed ID", "requirements": ["CH-1"]},
        {"description": "A case citing an unknown ID", "requirements": ["UNI-CH-999"]},
    ]
    problems = lint_documents(
        {"matching.json": {"feature": "patterns", "cases": cases}}, known_ids={"UNI-CH-1"}
    )
    expected_fragments = [
        "does not match the file name",
        "duplicate description",
        '"should"',
        "ends with a period",
        "starts neither with a capital",
        "longer than 90",
        "cites no requirement",
        "malformed requirement ID 'CH-1'",
        "UNI-CH-999 is not in the registry",
    ]
    for fragment in expected_fragments:
        assert any(fragment in p for p in problems), fragment
    assert len(problems) == len(expected_fragments)


class _AlwaysMatches:
    def matches(self, pattern: str, channel: str) -> bool:
        return True


def test_runner_fails_a_rule_set_whose_matching_always_matches() -> None:
    results = run_vectors(_AlwaysMatches(), ["matching"], VECTORS)
    must_not_match = [
        c
        for f in load_vectors(VECTORS)
        if f.feature == "matching"
        for c in f.cases
        if not c.expected["matches"]
    ]
    failed = [r for r in results if r.outcome == "fail"]
    assert must_not_match
    assert len(failed) == len(must_not_match)
    assert {r.outcome for r in results} == {"pass", "fail"}


def test_runner_grades_an_object_without_methods_as_unimplemented() -> None:
    results = run_vectors(object(), directory=VECTORS)
    assert len(results) == sum(len(f.cases) for f in load_vectors(VECTORS))
    assert {r.outcome for r in results} == {"unimplemented"}


class _Raising:
    def close_action(self, code: int) -> str:
        raise KeyError(code)


def test_runner_grades_an_exception_as_error_with_its_type() -> None:
    results = run_vectors(_Raising(), ["close-codes"], VECTORS)
    assert results
    assert all(r.outcome == "error" and r.detail.startswith("KeyError") for r in results)


class _IntNotBool:
    def channel_valid(self, name: str) -> int:
        return 1


def test_runner_fails_a_non_boolean_answer() -> None:
    results = run_vectors(_IntNotBool(), ["channel-names"], VECTORS)
    assert results
    assert {r.outcome for r in results} == {"fail"}


def test_runner_cli_prints_summary_and_exits_zero_without_failures(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["json", "--feature", "close-codes", "--vectors", str(VECTORS)]) == 0
    lines = capsys.readouterr().out.splitlines()
    cases = len(_load(VECTORS / "close-codes.json")["cases"])
    assert lines[-1].split() == ["total", "0", "0", "0", str(cases)]


def test_runner_cli_exits_one_on_failures(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([f"{__name__}:_AlwaysMatches", "--vectors", str(VECTORS)]) == 1
    assert "FAIL" in capsys.readouterr().out


class _ReferenceSchemas:
    """Message validity as decided by the published JSON Schemas (via ``unisock.schemas``)."""

    def message_valid(self, direction: str, message: Any) -> bool:
        from unisock.schemas import validate_client_message, validate_server_message

        validate = validate_client_message if direction == "client" else validate_server_message
        return not validate(message)


def test_message_vectors_pass_against_the_published_schemas() -> None:
    results = run_vectors(_ReferenceSchemas(), ["messages"], VECTORS)
    assert results
    failures = [f"{r.description}: {r.outcome} {r.detail}" for r in results if r.outcome != "pass"]
    assert failures == []
