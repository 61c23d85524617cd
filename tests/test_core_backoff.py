"""Reconnection policy: backoff bounds, jitter, drain spreading and close codes (UNI-CLOSE)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unisock.backoff import (
    ABSOLUTE_FLOOR_MS,
    DEFAULTS,
    BackoffParams,
    backoff_bounds,
    backoff_delay,
    drain_delay,
)
from unisock.closecodes import (
    CloseCode,
    CloseReason,
    ReconnectClass,
    close_class,
    close_name,
    format_close_reason,
    parse_close_reason,
)
from unisock.resources import load_json


def test_defaults_apply_before_any_welcome() -> None:
    expected = BackoffParams(base_ms=500, cap_ms=30000, floor_ms=250, reset_after_ms=10000)
    assert expected == DEFAULTS
    assert ABSOLUTE_FLOOR_MS == 100


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(0, (250, 500)), (1, (250, 1000)), (5, (250, 16000)), (6, (250, 30000)), (60, (250, 30000))],
)
def test_backoff_ceiling_doubles_per_attempt_up_to_the_cap(
    attempt: int, expected: tuple[int, int]
) -> None:
    assert backoff_bounds(DEFAULTS, attempt) == expected


def test_backoff_never_goes_below_the_absolute_floor() -> None:
    params = BackoffParams(base_ms=0, cap_ms=0, floor_ms=0, reset_after_ms=0)
    assert backoff_bounds(params, 0) == (100, 100)
    assert backoff_delay(params, 0, random.Random(1)) == 100
    assert drain_delay(0, params, random.Random(1)) == 100
    assert BackoffParams(10, 20, 50, 0).floor == 100
    assert BackoffParams(10, 20, 500, 0).floor == 500


def test_backoff_honours_retry_after_as_a_lower_bound() -> None:
    assert backoff_bounds(DEFAULTS, 0, retry_after_ms=5000) == (5000, 5000)
    assert backoff_bounds(DEFAULTS, 6, retry_after_ms=5000) == (5000, 30000)
    assert backoff_bounds(DEFAULTS, 0, retry_after_ms=0) == (250, 500)
    assert backoff_delay(DEFAULTS, 0, random.Random(3), retry_after_ms=45000) == 45000


def test_backoff_handles_huge_attempt_counts_without_overflow() -> None:
    assert backoff_bounds(DEFAULTS, 10**12) == (250, 30000)
    big_cap = BackoffParams(base_ms=1, cap_ms=2**70, floor_ms=0, reset_after_ms=0)
    assert backoff_bounds(big_cap, 69) == (100, 2**69)
    assert backoff_bounds(big_cap, 71) == (100, 2**70)


@pytest.mark.parametrize(
    "call",
    [
        lambda: backoff_bounds(DEFAULTS, -1),
        lambda: backoff_bounds(DEFAULTS, 0, retry_after_ms=-1),
        lambda: drain_delay(-1, DEFAULTS, random.Random(0)),
        lambda: BackoffParams(-1, 1, 1, 1),
        lambda: BackoffParams(1, 1.5, 1, 1),  # type: ignore[arg-type]
        lambda: BackoffParams(1, 1, True, 1),
    ],
)
def test_backoff_rejects_negative_or_non_integer_inputs(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


def test_backoff_jitter_spreads_over_the_whole_range() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(DEFAULTS, 6, rng) for _ in range(2000)]
    assert min(delays) < 1500
    assert max(delays) > 28500
    assert sum(delays) / len(delays) == pytest.approx(15000, rel=0.1)


params_st = st.builds(
    BackoffParams,
    base_ms=st.integers(0, 10_000),
    cap_ms=st.integers(0, 120_000),
    floor_ms=st.integers(0, 5_000),
    reset_after_ms=st.integers(0, 60_000),
)


@given(params_st, st.integers(0, 200), st.none() | st.integers(0, 100_000), st.integers())
def test_backoff_delay_always_falls_within_its_bounds_and_above_the_floor(
    params: BackoffParams, attempt: int, retry_after: int | None, seed: int
) -> None:
    low, high = backoff_bounds(params, attempt, retry_after)
    delay = backoff_delay(params, attempt, random.Random(seed), retry_after)
    assert low <= delay <= high
    assert delay >= ABSOLUTE_FLOOR_MS
    assert delay >= params.floor_ms
    assert retry_after is None or delay >= retry_after
    assert high <= max(low, params.cap_ms)


@given(params_st, st.none() | st.integers(0, 600_000), st.integers())
def test_drain_delay_stays_within_the_window_and_above_the_floor(
    params: BackoffParams, window: int | None, seed: int
) -> None:
    delay = drain_delay(window, params, random.Random(seed))
    limit = params.cap_ms if window is None else window
    assert params.floor <= delay <= max(params.floor, limit)


def test_drain_without_a_window_spreads_over_the_cap() -> None:
    rng = random.Random(11)
    delays = [drain_delay(None, DEFAULTS, rng) for _ in range(500)]
    assert max(delays) > 25000
    assert all(250 <= d <= 30000 for d in delays)


# Close codes.


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (1000, ReconnectClass.NEVER),
        (1001, ReconnectClass.BACKOFF),
        (1006, ReconnectClass.BACKOFF),
        (1012, ReconnectClass.NOW),
        (4000, ReconnectClass.NEVER),
        (4001, ReconnectClass.NEVER),
        (4100, ReconnectClass.NEW_TOKEN),
        (4101, ReconnectClass.NEW_TOKEN),
        (4201, ReconnectClass.BACKOFF),
        (4300, ReconnectClass.NOW),
        # Unlisted codes act by range, then by the default.
        (4050, ReconnectClass.NEVER),
        (4199, ReconnectClass.NEW_TOKEN),
        (4250, ReconnectClass.BACKOFF),
        (4399, ReconnectClass.NOW),
        (4400, ReconnectClass.BACKOFF),
        (1005, ReconnectClass.BACKOFF),
        (3000, ReconnectClass.BACKOFF),
    ],
)
def test_close_code_maps_to_its_reconnect_class(code: int, expected: ReconnectClass) -> None:
    assert close_class(code) is expected


def test_superseded_never_reconnects_so_two_tabs_cannot_loop() -> None:
    assert close_class(CloseCode.SUPERSEDED) is ReconnectClass.NEVER


def test_close_code_constants_agree_with_the_registry() -> None:
    registry = load_json("v1/registries/close-codes.json")
    listed = {entry["code"]: entry for entry in registry["codes"]}
    assert {int(code) for code in CloseCode} == set(listed)
    for code in CloseCode:
        assert close_name(code) == listed[code]["name"] == code.name.lower()
        assert close_class(code).value == listed[code]["class"]
    assert close_name(4999) is None


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("drain", CloseReason("drain")),
        ("drain;window_ms=30000", CloseReason("drain", window_ms=30000)),
        ("overloaded;retry_after_ms=5000", CloseReason("overloaded", retry_after_ms=5000)),
        (
            "try_again_later;retry_after_ms=1;window_ms=2",
            CloseReason("try_again_later", retry_after_ms=1, window_ms=2),
        ),
        ("drain;colour=3;window_ms=7", CloseReason("drain", window_ms=7)),
        ("drain;window_ms=abc", CloseReason("drain")),
        ("drain;window_ms=-5", CloseReason("drain")),
        ("drain;window_ms=1;retry_after_ms", CloseReason("drain")),
        ("drain;", CloseReason("drain")),
        ("", CloseReason("")),
    ],
)
def test_close_reason_parses_leniently(reason: str, expected: CloseReason) -> None:
    assert parse_close_reason(reason) == expected


def test_close_reason_formats_within_123_bytes_and_round_trips() -> None:
    reason = format_close_reason("drain", window_ms=30000)
    assert reason == "drain;window_ms=30000"
    assert parse_close_reason(reason) == CloseReason("drain", window_ms=30000)
    both = format_close_reason("overloaded", retry_after_ms=5, window_ms=6)
    assert both == "overloaded;retry_after_ms=5;window_ms=6"
    assert format_close_reason("normal") == "normal"
    with pytest.raises(ValueError):
        format_close_reason("a" * 124)
    with pytest.raises(ValueError):
        format_close_reason("drain;x")
    with pytest.raises(ValueError):
        format_close_reason("drain", window_ms=-1)
    with pytest.raises(ValueError):
        format_close_reason("drain", retry_after_ms=True)
    assert len(format_close_reason("a" * 123).encode()) == 123


@given(
    st.from_regex(r"[a-z][a-z0-9_]{0,40}", fullmatch=True),
    st.none() | st.integers(0, 10**12),
    st.none() | st.integers(0, 10**12),
)
def test_formatted_close_reason_parses_back_to_the_same_values(
    name: str, retry_after: int | None, window: int | None
) -> None:
    reason = format_close_reason(name, retry_after_ms=retry_after, window_ms=window)
    assert len(reason.encode()) <= 123
    assert parse_close_reason(reason) == CloseReason(name, retry_after, window)


@given(st.text(max_size=130))
def test_close_reason_parser_never_raises(reason: str) -> None:
    parsed = parse_close_reason(reason)
    assert reason.startswith(parsed.name)
