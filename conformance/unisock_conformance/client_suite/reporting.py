"""Reports of a client run, written with the server suite's writers.

The JSON report has the same versioned format (``report.schema.json``) with ``role``
``client`` or ``broadcaster``; ``target.url`` is the harness's loopback URL and
``target.adapter`` names the adapter and client that were tested (spec UNI-CONF-9).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unisock_conformance import report as writers
from unisock_conformance.client_suite.runner import ClientRun
from unisock_conformance.deployment import Deployment
from unisock_conformance.paths import SPEC_DIR
from unisock_conformance.progress import summary_lines
from unisock_conformance.spectext import load_registry

__all__ = ["build_client_report", "summary", "write_client_junit", "write_client_reports"]

HARNESS_URL = "ws://127.0.0.1/"


def _deployment() -> Deployment:
    return Deployment(url=HARNESS_URL)


def _run_info(run: ClientRun) -> writers.RunInfo:
    return writers.RunInfo(
        deployment=_deployment(),
        started_at=run.started_at,
        finished_at=run.finished_at,
        server_info=None,
        exit_status=run.exit_status,
    )


def build_client_report(run: ClientRun, role: str) -> dict[str, Any]:
    """The JSON report of ``run`` (roles: ``client``, ``broadcaster`` or ``all``)."""
    assert run.grades is not None
    registry = load_registry(SPEC_DIR)
    report = writers.build_report(registry, run.grades, run.results, _run_info(run))
    report["role"] = "broadcaster" if role == "broadcaster" else "client"
    report["target"] = {
        "url": HARNESS_URL,
        "spec_version": None,
        "features": None,
        "limits": None,
        "adapter": {
            "command": run.command[0].rsplit("/", 1)[-1] if run.command else "",
            **run.adapter_info,
        },
    }
    report["run"]["token_source"] = "none"
    if run.adapter_broken is not None:
        report["summary"]["adapter_broken"] = writers.sanitize_text(
            run.adapter_broken, _deployment()
        )
    return report


def write_client_reports(directory: Path, run: ClientRun, role: str) -> dict[str, Path]:
    """``report.json``, ``report.html`` and ``report.md`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    report = build_client_report(run, role)
    paths = {
        "json": directory / "report.json",
        "html": directory / "report.html",
        "md": directory / "report.md",
    }
    paths["json"].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", "utf-8")
    paths["html"].write_text(writers.render_html(report), "utf-8")
    paths["md"].write_text(writers.render_markdown(report), "utf-8")
    return paths


def write_client_junit(path: Path, run: ClientRun, role: str) -> None:
    assert run.grades is not None
    writers.write_junit(path, run.grades, run.results, _run_info(run))
    text = path.read_text("utf-8").replace(
        f'name="{writers.SUITE_NAME}.server"', f'name="{writers.SUITE_NAME}.{role}"', 1
    )
    path.write_text(text, "utf-8")


def summary(run: ClientRun) -> list[str]:
    """The end-of-run table, as the server suite prints it, plus the adapter verdict."""
    assert run.grades is not None
    lines = summary_lines(run.grades, run.results, _deployment())
    if run.adapter_broken is not None:
        lines += [
            "",
            "The adapter is broken (not a finding about the client): " + run.adapter_broken,
            "Run with --validate to see every adapter line checked against the schemas.",
        ]
    lines.append(f"Run time: {run.finished_at - run.started_at:.1f} s")
    return lines
