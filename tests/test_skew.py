"""The clock offset estimate behind publish deadlines: the tightest round trip wins."""

from __future__ import annotations

from unisock.skew import ClockSkew


def test_the_first_sample_sets_the_offset_within_half_its_round_trip() -> None:
    skew = ClockSkew()
    assert skew.error_ms is None and skew.offset_ms == 0
    assert skew.sample(1_000.0, 1_503.0, 1_004.0)
    assert (skew.offset_ms, skew.error_ms) == (501.0, 2.0)


def test_a_slow_round_trip_does_not_replace_a_tight_one() -> None:
    """A reply read 1.8 s late (a loaded node) would put the offset 900 ms off."""
    skew = ClockSkew()
    skew.sample(1_000.0, 1_001.0, 1_002.0)
    assert not skew.sample(4_000.0, 4_001.0, 5_800.0)
    assert (skew.offset_ms, skew.error_ms) == (0, 1.0)
    assert skew.sample(7_000.0, 7_250.5, 7_001.0)  # tighter still: a stepped clock shows
    assert skew.offset_ms == 250


def test_an_old_sample_gives_way_as_its_bound_grows_with_age() -> None:
    skew = ClockSkew()
    skew.sample(0.0, 1.0, 2.0)
    # Ten minutes later the old bound is 1 + 600 ms: a 1 s round trip (bound 500 ms) wins.
    assert skew.sample(600_000.0, 600_500.0 + 3_000.0, 601_000.0)
    assert (skew.offset_ms, skew.error_ms) == (3_000, 500.0)
