"""Every absolute server and broadcaster requirement has a conformance check (spec 14.5).

Server requirements need a check in the server suite; broadcaster requirements need one in
the server suite or among the client suite's checks that a broadcaster run selects. The scan
reads the check sources and the client suite's registry, so a MUST without a check fails
here before anything is run; the run-time report grades the same requirement ``untested``.
The only exemptions are requirements the registry marks ``"verification": "inspection"``:
no behaviour on the wire can show them (spec 14.2), and that list is fixed here.
"""

from __future__ import annotations

from unisock_conformance.client_suite.framework import CHECKS
from unisock_conformance.client_suite.runner import DERIVED, TIERS_FOR_ROLE
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


def _broadcaster_run_ids() -> dict[str, list[str]]:
    """Requirement ID -> the client-suite checks a ``--role broadcaster`` run grades it by."""
    found: dict[str, list[str]] = {}
    for spec in CHECKS:
        if spec.tier in TIERS_FOR_ROLE["broadcaster"]:
            for ident in spec.requirements:
                found.setdefault(ident, []).append(spec.nodeid)
    for name, ids in DERIVED:
        for ident in ids:
            found.setdefault(ident, []).append(name)
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


def test_every_broadcaster_must_has_a_check_in_either_suite() -> None:
    covered = set(scan_checks()) | set(_broadcaster_run_ids())
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
    client = {ident for spec in CHECKS for ident in spec.requirements}
    cited = (set(scan_checks()) | client) & INSPECTION
    assert not cited, f"checks cite requirements verified by inspection: {sorted(cited)}"


def test_conformance_checks_cite_only_registry_ids() -> None:
    unknown = {ident: tests for ident, tests in scan_checks().items() if ident not in IDS}
    assert not unknown, f"checks cite IDs missing from spec/requirements.json: {unknown}"


def test_every_conformance_check_carries_a_requirement_id() -> None:
    unmarked = [test for test, ids in scan_tests().items() if not ids]
    assert not unmarked, f"checks without @pytest.mark.requirement: {unmarked}"
