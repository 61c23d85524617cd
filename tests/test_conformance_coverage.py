"""Every absolute server and broadcaster requirement has a conformance check (spec 14.5).

The scan reads the check sources, so a MUST without a check fails here before any server
is run; the run-time report grades the same requirement ``untested``.
"""

from __future__ import annotations

from unisock_conformance.markers import scan_checks, scan_tests
from unisock_conformance.paths import SPEC_DIR
from unisock_conformance.spectext import load_registry

REGISTRY = load_registry(SPEC_DIR)["requirements"]
IDS = {entry["id"] for entry in REGISTRY}


def test_every_server_and_broadcaster_must_has_a_conformance_check() -> None:
    covered = scan_checks()
    missing = [
        entry["id"]
        for entry in REGISTRY
        if entry["level"] == "MUST"
        and entry["role"] in ("server", "broadcaster")
        and entry["id"] not in covered
    ]
    assert not missing, f"{len(missing)} MUST requirement(s) without a check: {missing}"


def test_conformance_checks_cite_only_registry_ids() -> None:
    unknown = {ident: tests for ident, tests in scan_checks().items() if ident not in IDS}
    assert not unknown, f"checks cite IDs missing from spec/requirements.json: {unknown}"


def test_every_conformance_check_carries_a_requirement_id() -> None:
    unmarked = [test for test, ids in scan_tests().items() if not ids]
    assert not unmarked, f"checks without @pytest.mark.requirement: {unmarked}"
