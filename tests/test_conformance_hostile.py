"""The robustness group's seeded stream: deterministic, and every answer it demands is the
one the reference core gives (the stream is written from the spec; this cross-checks it)."""

from __future__ import annotations

import pytest

from fuzz.core import CoreHarness
from unisock_conformance.hostile import CATEGORIES, stream


def test_stream_is_the_same_for_the_same_seed_and_differs_across_seeds() -> None:
    for category in CATEGORIES:
        assert stream(7, category, 20) == stream(7, category, 20)
    assert any(stream(7, c, 20) != stream(8, c, 20) for c in CATEGORIES)


@pytest.mark.parametrize("category", CATEGORIES)
def test_reference_core_gives_every_answer_the_stream_demands(category: str) -> None:
    for seed in range(5):
        harness = CoreHarness()
        for case in stream(seed, category, 40):
            frames = harness.send(case.text)
            assert len(frames) == 1, (case, frames)
            reply = frames[0]
            got = reply.get("code", reply["type"])
            assert got in (sorted(case.codes) or ["pong"]), (case, reply)
            assert reply.get("id") == case.echo, (case, reply)
