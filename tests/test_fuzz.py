"""Bounded fuzz campaigns (CI): the session core, the live server, raw frames; plus the corpus.

Each campaign is seeded (``UNISOCK_FUZZ_SEED``, default fixed) and bounded by case count, so
a CI run is reproducible and short; ``make fuzz-long`` runs the same campaigns for longer
with fresh seeds (``tests/fuzz/long.py``). Rates are printed, never asserted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fuzz.campaigns import core_campaign, frame_campaign, live_campaign
from fuzz.core import CoreHarness

SEED = int(os.environ.get("UNISOCK_FUZZ_SEED", "20261206"))
CORPUS = Path(__file__).parent / "fuzz" / "corpus.json"


def _report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n{line} (seed {SEED})")


def test_core_survives_schema_driven_hostile_frames(capsys: pytest.CaptureFixture[str]) -> None:
    stats = core_campaign(examples=300, seed=SEED)
    assert stats.cases >= 300 and stats.replies > 0
    _report(capsys, stats.line())


def test_live_server_survives_hostile_frames_and_keeps_serving_others(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stats = live_campaign(examples=150, seed=SEED)
    assert stats.cases >= 150 and stats.replies > 0
    _report(capsys, stats.line())


def test_live_server_enforces_websocket_framing_at_every_boundary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stats = frame_campaign(random_cases=120, seed=SEED)
    assert stats.closes > 0
    _report(capsys, stats.line())


def _corpus() -> list[dict[str, object]]:
    return list(json.loads(CORPUS.read_text("utf-8"))["cases"])


@pytest.mark.parametrize("case", _corpus(), ids=lambda c: str(c["name"]))
def test_corpus_case_gets_its_recorded_answer(case: dict[str, object]) -> None:
    """Inputs fuzzing (or a report) once found misbehaving, replayed through the core."""
    harness = CoreHarness(authenticated=bool(case.get("authenticated", True)))
    frames: list[dict[str, object]] = []
    for text in case["frames"]:  # type: ignore[attr-defined]
        frames = harness.send(str(text))
    expected = str(case["expect"])
    if expected.startswith("close:"):
        assert harness.closed is not None and harness.closed[0] == int(expected[6:]), frames
        assert frames == [], frames
    elif expected in ("ack", "pong"):
        assert frames and frames[-1]["type"] == expected, frames
    else:
        assert frames and frames[-1].get("code") == expected, frames
