"""Every absolute requirement has a conformance check (spec 14.5).

Server requirements need a check in the server suite; client requirements need a check of
the client suite, one of its parts, or a rule the client suite checks on every frame or
adapter line; broadcaster requirements need one in the server suite or among what a
``--role broadcaster`` run of the client suite grades. The scan reads the check sources and
the client suite's registry, so a MUST without a check fails here before anything is run;
the run-time report grades the same requirement ``untested``. The only exemptions are
requirements the registry marks ``"verification": "inspection"``: no behaviour on the wire
can show them (spec 14.2), and that list is fixed here.
"""

from __future__ import annotations

from unisock_conformance.client_suite.framework import CHECKS, scan_parts
from unisock_conformance.client_suite.runner import (
    ADAPTER_EXIT_IDS,
    ADAPTER_LINES_IDS,
    ADAPTER_NODE,
    DERIVED,
    TIERS_FOR_ROLE,
)
from unisock_conformance.grading import VERIFICATION_INSPECTION
from unisock_conformance.markers import scan_checks, scan_tests
from unisock_conformance.paths import SPEC_DIR
from unisock_conformance.spectext import load_registry

REGISTRY = load_registry(SPEC_DIR)["requirements"]
IDS = {entry["id"] for entry in REGISTRY}
# Claims and conformance as a whole (UNI-CONF-2 to -7, -9, -11), a client's test adapter adding
# no behaviour of its own (UNI-CONF-10), where a broadcaster keeps its token (UNI-SEC-8) and the
# refusal to start with a short HS256 secret (UNI-AUTH-28), which no client can observe.
INSPECTION = {
    "UNI-CONF-2",
    "UNI-CONF-3",
    "UNI-CONF-4",
    "UNI-CONF-5",
    "UNI-CONF-6",
    "UNI-CONF-7",
    "UNI-CONF-9",
    "UNI-CONF-10",
    "UNI-CONF-11",
    "UNI-SEC-8",
    "UNI-AUTH-28",
}


def _client_suite_run_ids(role: str) -> dict[str, list[str]]:
    """Requirement ID -> what grades it in a ``--role ROLE`` run of the client suite.

    The checks of the role's tiers and their parts (read from the sources: a part's IDs are
    known only when its check runs), the rules checked on every frame, and the adapter's own.
    """
    selected = {spec.nodeid for spec in CHECKS if spec.tier in TIERS_FOR_ROLE[role]}
    found: dict[str, list[str]] = {}
    for spec in CHECKS:
        if spec.nodeid in selected:
            for ident in spec.requirements:
                found.setdefault(ident, []).append(spec.nodeid)
    for ident, parts in scan_parts().items():
        for part in parts:
            if part.split("[", 1)[0] in selected:
                found.setdefault(ident, []).append(part)
    for name, ids in DERIVED:
        for ident in ids:
            found.setdefault(ident, []).append(name)
    for ident in (*ADAPTER_LINES_IDS, *ADAPTER_EXIT_IDS):
        found.setdefault(ident, []).append(ADAPTER_NODE)
    return found


def _musts_without(role: str, covered: set[str]) -> list[str]:
    return [
        entry["id"]
        for entry in REGISTRY
        if entry["level"] == "MUST"
        and entry["role"] == role
        and not entry.get("removed_in")
        and entry.get("verification") != VERIFICATION_INSPECTION
        and entry["id"] not in covered
    ]


def test_every_server_must_has_a_server_suite_check() -> None:
    missing = _musts_without("server", set(scan_checks()))
    assert not missing, f"{len(missing)} server MUST(s) without a check: {missing}"


def test_every_client_must_has_a_client_suite_check() -> None:
    missing = _musts_without("client", set(_client_suite_run_ids("all")))
    assert not missing, f"{len(missing)} client MUST(s) without a check: {missing}"


def test_every_broadcaster_must_has_a_check_in_either_suite() -> None:
    covered = set(scan_checks()) | set(_client_suite_run_ids("broadcaster"))
    missing = _musts_without("broadcaster", covered)
    assert not missing, f"{len(missing)} broadcaster MUST(s) without a check: {missing}"


def test_only_requirements_no_run_can_observe_are_verified_by_inspection() -> None:
    marked = {
        entry["id"]
        for entry in REGISTRY
        if entry.get("verification", "suite") == VERIFICATION_INSPECTION
    }
    assert marked == INSPECTION


def test_no_check_claims_to_verify_an_inspection_requirement() -> None:
    """A check on an inspection requirement would never be graded: it is a mistake."""
    client = {ident for spec in CHECKS for ident in spec.requirements} | set(scan_parts())
    cited = (set(scan_checks()) | client) & INSPECTION
    assert not cited, f"checks cite requirements verified by inspection: {sorted(cited)}"


def test_every_part_read_from_the_sources_belongs_to_a_registered_check() -> None:
    """Parts are named after their check, so that a run selects them with it."""
    checks = {spec.nodeid for spec in CHECKS}
    parts = {part for found in scan_parts().values() for part in found}
    assert parts, "no ctx.part(...) call found in the client suite's sources"
    strays = sorted(part for part in parts if part.split("[", 1)[0] not in checks)
    assert not strays, f"parts outside a registered check: {strays}"


def test_conformance_checks_cite_only_registry_ids() -> None:
    unknown = {ident: tests for ident, tests in scan_checks().items() if ident not in IDS}
    assert not unknown, f"checks cite IDs missing from spec/requirements.json: {unknown}"


def test_every_conformance_check_carries_a_requirement_id() -> None:
    unmarked = [test for test, ids in scan_tests().items() if not ids]
    assert not unmarked, f"checks without @pytest.mark.requirement: {unmarked}"
