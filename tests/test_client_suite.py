"""The client conformance suite passes the reference client and fails broken ones.

The reference client runs behind its adapter (``python -m unisock.adapter``); each broken
variant in ``tests/broken_clients/variants.py`` patches one rule out of it. A variant is
run with the checks that concern its rule (the smoke tier always runs too).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from unisock import schemas
from unisock_conformance.client_suite.driver import OutputWatch
from unisock_conformance.client_suite.framework import CHECKS
from unisock_conformance.client_suite.reporting import build_client_report, write_client_reports
from unisock_conformance.client_suite.runner import (
    DERIVED,
    EXIT_ADAPTER_BROKEN,
    ClientRun,
    add_client_parser,
    run_suite,
    select_checks,
)
from unisock_conformance.paths import SPEC_DIR
from unisock_conformance.report import SCHEMA_PATH
from unisock_conformance.spectext import load_registry

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = [sys.executable, "-m", "unisock.adapter"]
VARIANTS = ROOT / "tests" / "broken_clients" / "variants.py"
ADAPTER_EXAMPLES = ROOT / "schemas" / "v1" / "adapter" / "examples"
SCALE = float(os.environ.get("UNISOCK_TIME_SCALE", "1.0"))


def variant(name: str) -> list[str]:
    return [sys.executable, str(VARIANTS), name]


def run(command: list[str], keywords: tuple[str, ...] = (), **options: Any) -> ClientRun:
    return asyncio.run(run_suite(command, keywords=keywords, **options))


def outcome(result: ClientRun, ident: str) -> str:
    assert result.grades is not None
    return result.grades.requirements[ident].outcome


def failed_checks(result: ClientRun) -> list[str]:
    return sorted(node for node, r in result.results.items() if r.status == "failed")


@pytest.mark.slow
def test_reference_client_passes_the_whole_client_suite_in_under_four_minutes(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    result = run(REFERENCE, time_scale=SCALE, jobs=2)
    elapsed = time.monotonic() - started
    problems = {node: r.message for node, r in result.results.items() if r.status != "passed"}
    assert problems == {}
    assert result.exit_status == 0
    # Two checks at a time: about a minute and a half on an idle machine.
    assert elapsed < 240
    paths = write_client_reports(tmp_path, result, "all")
    report = json.loads(paths["json"].read_text("utf-8"))
    schema = json.loads(SCHEMA_PATH.read_text("utf-8"))
    assert [e.message for e in Draft202012Validator(schema).iter_errors(report)] == []
    assert report["summary"]["verdict"] == "conforming"
    assert report["role"] == "client"
    assert report["target"]["adapter"]["client"]["name"] == "unisock-python"
    graded = {entry["id"]: entry["outcome"] for entry in report["requirements"]}
    adp = [ident for ident in graded if ident.startswith("UNI-ADP-")]
    assert len(adp) == 13
    assert {graded[ident] for ident in adp} == {"pass"}
    assert graded["UNI-CLOSE-13"] == "pass"
    assert graded["UNI-HB-1"] == "not-applicable"  # a server requirement


# (variant, checks to run, requirement that must fail, grade of that requirement)
BROKEN = [
    ("no_jitter", "backoff_delays", "UNI-CLOSE-13", "fail"),
    ("no_backoff_cap", "backoff_delays", "UNI-CLOSE-13", "fail"),
    ("reconnect_on_fatal", "never_class", "UNI-CLOSE-2", "fail"),
    ("supersede_loop", "superseded", "UNI-CLOSE-24", "fail"),
    ("wrong_resume_offset", "resume_presents", "UNI-DEL-20", "fail"),
    ("no_refresh", "refreshes_before_expiry", "UNI-AUTH-24", "non-strict"),
    ("no_heartbeat_timeout", "silent_server", "UNI-HB-9", "fail"),
    ("no_dedup", "duplicate_and_stale", "UNI-DEL-30", "fail"),
    ("no_floor", "now_class", "UNI-CLOSE-16", "fail"),
    ("fixed_seed", "jitter_differs", "UNI-CLOSE-14", "fail"),
    ("new_message_id_on_retry", "lost_ack", "UNI-PUB-33", "fail"),
    ("pings_only_liveness", "any_message_renews", "UNI-HB-10", "fail"),
    ("drain_at_window_end", "departures_are_spread", "UNI-CLOSE-22", "fail"),
    ("now_window_ignores_drain", "window_comes_from_reason", "UNI-CLOSE-23", "fail"),
    ("dedup_age_from_last_send", "age_counts_from_its_first", "UNI-SEC-12", "fail"),
    ("revoked_comes_back", "revoked_subscription", "UNI-SUB-16", "fail"),
    ("resume_takes_subscribed_head", "resumed_position_is_not", "UNI-DEL-29", "fail"),
    ("size_in_characters", "size_limit_counts", "UNI-LIM-3", "fail"),
    ("ignores_the_subprotocol", "selects_no_subprotocol", "UNI-TR-6", "fail"),
    ("normalizes_channels", "channel_names_are_sent", "UNI-CH-6", "fail"),
    ("drops_own_event_before_ack", "own_event", "UNI-PUB-29", "fail"),
    ("ignores_unknown_error_codes", "unknown_error_code", "UNI-ERR-13", "fail"),
    ("keeps_first_backoff", "replaces_the_backoff", "UNI-LC-15", "fail"),
    ("no_welcome_deadline", "without_welcome_is_abandoned", "UNI-HB-12", "non-strict"),
    ("stops_on_a_bad_welcome", "first_message_other", "UNI-LC-21", "fail"),
    ("skips_a_bad_first_message", "first_message_other", "UNI-LC-21", "fail"),
    ("close_leaves_reconnect_pending", "close_while_waiting", "UNI-CLOSE-7", "fail"),
    ("ignores_request_limits", "over_announced_limits", "UNI-LIM-4", "non-strict"),
    ("stable_from_handshake", "holds_until_reset_after", "UNI-CLOSE-15", "fail"),
    ("logs_refused_token", "writes_no_token", "UNI-SEC-7", "fail"),
    ("logs_token_signature", "writes_no_token", "UNI-SEC-7", "fail"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "keyword", "ident", "grade"), BROKEN, ids=[b[0] for b in BROKEN])
def test_client_suite_fails_a_broken_client(
    name: str, keyword: str, ident: str, grade: str
) -> None:
    result = run(variant(name), (keyword,), strict=True)
    assert outcome(result, ident) == grade, failed_checks(result)
    assert result.exit_status == 1
    smoke = [node for node, r in result.results.items() if "/smoke.py::" in node]
    assert smoke and all(result.results[node].status == "passed" for node in smoke)
    assert result.adapter_broken is None


def test_exitfirst_runs_nothing_after_the_first_failed_check() -> None:
    result = run(
        variant("reconnect_on_fatal"), ("never_class", "application_close"), exitfirst=True
    )
    assert result.exit_status == 1
    statuses = {node.split("::")[1]: r.status for node, r in result.results.items()}
    assert statuses["never_class_closes_are_not_followed_by_a_reconnect"] == "failed"
    assert statuses["application_close_is_not_followed_by_a_reconnect"] == "skipped"
    skipped = result.results[
        "client_suite/reconnect.py::application_close_is_not_followed_by_a_reconnect"
    ]
    assert "stopped after the first failure" in skipped.message


def test_non_strict_grades_do_not_fail_the_run_unless_strict() -> None:
    lenient = run(variant("no_refresh"), ("refreshes_before_expiry",))
    assert outcome(lenient, "UNI-AUTH-24") == "non-strict"
    assert lenient.exit_status == 0
    assert lenient.grades is not None


def test_broken_adapter_is_reported_as_adapter_broken_not_as_client_failures() -> None:
    result = run(variant("garbage_adapter"))
    assert result.exit_status == EXIT_ADAPTER_BROKEN
    assert result.adapter_broken is not None and "not JSON" in result.adapter_broken
    client_checks = [
        r for node, r in result.results.items() if "/smoke.py::" not in node and "::" in node
    ]
    assert client_checks
    assert all(r.status != "failed" for r in client_checks if "adapter.py::" not in r.nodeid)
    assert outcome(result, "UNI-ADP-1") == "fail"
    assert outcome(result, "UNI-CLOSE-13") == "not-run"
    report = build_client_report(result, "client")
    assert report["summary"]["adapter_broken"]


def test_validate_mode_checks_and_shows_every_adapter_line() -> None:
    out = io.StringIO()
    result = run(REFERENCE, ("no_such_check",), validate=True, verbose=True, stream=out)
    text = out.getvalue()
    assert result.exit_status == 0
    assert '  adapter > {"seq":1,"cmd":"hello"' in text
    assert '  adapter < {"seq":1,"outcome":"result"' in text
    assert {node.split("::")[0] for node in result.results} >= {"client_suite/smoke.py"}


def test_every_check_carries_registered_requirement_ids() -> None:
    registry = {entry["id"]: entry for entry in load_registry(SPEC_DIR)["requirements"]}
    carried = {ident for spec in CHECKS for ident in spec.requirements}
    carried |= {ident for _, ids in DERIVED for ident in ids}
    assert sorted(carried - set(registry)) == []
    assert {registry[ident]["role"] for ident in carried} <= {"client", "broadcaster"}
    names = [spec.name for spec in CHECKS]
    assert len(names) == len(set(names))


def test_every_adapter_requirement_has_a_check() -> None:
    from unisock_conformance.client_suite import framework, runner

    registry = load_registry(SPEC_DIR)["requirements"]
    adp = {entry["id"] for entry in registry if entry["id"].startswith("UNI-ADP-")}
    carried = {ident for spec in framework.CHECKS for ident in spec.requirements}
    carried |= set(runner.ADAPTER_LINES_IDS) | set(runner.ADAPTER_EXIT_IDS)
    carried |= set(framework.scan_parts())
    assert sorted(adp - carried) == []


@pytest.mark.parametrize("size", [1, 2, 5, 4096])
def test_output_watch_finds_a_token_however_the_output_is_split(size: int) -> None:
    first, second = "eyJh.eyJz.c2lnbmF0dXJl", "eyJh.eyJ5.b3RoZXJzaWduYXR1cmU"
    stderr = f"INFO connecting\nWARNING refused: {first}\n".encode()
    stdout = b'{"notify":"state"}\n{"seq":2,"note":"b3RoZXJzaWduYXR1cmU"}\n'
    watch = OutputWatch()
    for label, token in (("first", first), ("second", second)):
        watch.add(token, label)
        watch.add(token.rsplit(".", 1)[-1], f"signature of {label}")
    watch.add("never-written", "other")
    for at in range(0, max(len(stderr), len(stdout)), size):
        watch.feed("stderr", stderr[at : at + size])
        watch.feed("stdout", stdout[at : at + size])
    found = {label: stream for label, (stream, _line) in watch.found.items()}
    assert found == {
        "first": "stderr",
        "signature of first": "stderr",
        "signature of second": "stdout",
    }
    if size == 4096:
        assert watch.found["first"] == ("stderr", "WARNING refused: <first>")
        assert watch.found["signature of second"][1] == '{"seq":2,"note":"<signature of second>"}'


def test_output_watch_does_not_join_the_two_streams() -> None:
    watch = OutputWatch()
    watch.add("abc.def", "token")
    watch.feed("stdout", b"abc")
    watch.feed("stderr", b".def")
    assert watch.found == {}


def test_broadcaster_role_selects_no_client_only_checks() -> None:
    tiers = {spec.tier for spec in select_checks("broadcaster")}
    assert tiers == {"smoke", "broadcaster"}
    assert {spec.tier for spec in select_checks("client", ["backoff"])} == {"smoke", "client"}


@pytest.mark.parametrize("kind", ["request", "reply", "notification"])
def test_adapter_schema_examples_validate_as_documented(kind: str) -> None:
    examples = json.loads((ADAPTER_EXAMPLES / f"{kind}.json").read_text("utf-8"))
    validator = schemas.validator_for(f"adapter/{kind}")
    assert [m for m in examples["valid"] if schemas.format_errors(validator, m)] == []
    for case in examples["invalid"]:
        assert case["description"].endswith(" is rejected")
        assert schemas.format_errors(validator, case["message"]) != []
    if kind != "request":
        output = schemas.validator_for("adapter/output")
        assert [m for m in examples["valid"] if schemas.format_errors(output, m)] == []


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unisock conformance")
    add_client_parser(parser.add_subparsers(dest="target"))
    return parser


def test_cli_lists_the_checks_with_their_requirements(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["client", "--list"])
    assert args.conformance_handler(args) == 0
    listed = capsys.readouterr().out
    assert "backoff_delays_have_full_jitter_growth_and_cap" in listed
    assert "UNI-CLOSE-13" in listed


def test_cli_without_an_adapter_command_is_a_usage_error() -> None:
    args = _parser().parse_args(["client", "--"])
    assert args.conformance_handler(args) == 2
    args = _parser().parse_args(["client", "--jobs", "0", "--", *REFERENCE])
    assert args.conformance_handler(args) == 2


def test_cli_runs_the_smoke_tier_and_writes_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junit = tmp_path / "junit.xml"
    argv = [
        "client",
        "--report-dir",
        str(tmp_path),
        "--junit",
        str(junit),
        "-k",
        "nothing",
        "--",
        *REFERENCE,
    ]
    args = _parser().parse_args(argv)
    assert args.conformance_handler(args) == 0
    report = json.loads((tmp_path / "report.json").read_text("utf-8"))
    assert report["summary"]["exit_status"] == 0
    assert 'name="unisock-conformance.all"' in junit.read_text("utf-8")
    assert (tmp_path / "report.html").is_file() and (tmp_path / "report.md").is_file()
    assert "Verdict: conforming" in capsys.readouterr().out
