"""The one backoff rule: growth to a cap, full jitter within bounds, resets, and Retry-After as a floor."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.backoff import Backoff, no_jitter, parse_retry_after


def test_backoff_grows_to_its_cap_with_jitter_and_resets() -> None:
    b = Backoff(first_s=1.0, cap_s=60.0)
    assert [b.next_delay(1.0 - 1e-9) for _ in range(8)] == pytest.approx([1, 2, 4, 8, 16, 32, 60, 60], rel=1e-6)
    assert b.next_delay(0.5) == 30.0
    assert b.next_delay(0.0) == 0.1  # never a hot loop
    b.reset()
    assert b.next_delay(0.5) == 0.5


def test_each_caller_keeps_its_first_delay_cap_and_factor() -> None:
    draw = no_jitter()
    pipeline = Backoff(first_s=0.5, cap_s=30.0)
    assert [pipeline.next_delay(draw) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    holes = Backoff(first_s=60.0, cap_s=300.0)
    assert [holes.delay(n, draw) for n in range(5)] == [60, 120, 240, 300, 300]
    tripled = Backoff(first_s=1.0, cap_s=100.0, factor=3.0)
    assert [tripled.next_delay(draw) for _ in range(6)] == [1, 3, 9, 27, 81, 100]


def test_delay_is_pure_and_next_delay_counts_attempts() -> None:
    b = Backoff(first_s=1.0, cap_s=60.0)
    assert b.delay(3, 1.0) == 8.0
    assert b.attempt == 0
    b.next_delay(1.0)
    b.next_delay(1.0)
    assert b.attempt == 2


def test_days_of_failures_stay_at_the_cap() -> None:
    b = Backoff(first_s=1.0, cap_s=60.0, attempt=5000)  # 2.0 ** 5000 overflows a float
    assert b.next_delay(1.0) == 60.0


@given(st.lists(st.floats(0, 1), min_size=1, max_size=30))
def test_jittered_delays_stay_within_bounds(draws: list[float]) -> None:
    b = Backoff(first_s=1.0, cap_s=60.0)
    for n, draw in enumerate(draws):
        delay = b.next_delay(draw)
        assert 0.1 <= delay <= min(60.0, 2.0**n)


def test_a_seeded_random_gives_spread_repeatable_delays() -> None:
    def delays(seed: int) -> list[float]:
        rng, b = random.Random(seed), Backoff(first_s=1.0, cap_s=60.0)
        return [b.next_delay(rng.random()) for _ in range(20)]

    assert delays(7) == delays(7)
    capped = delays(7)[6:]  # from the 7th on, the window is the whole cap
    assert len(set(capped)) == len(capped), "full jitter: no two retries in step"
    assert all(0.1 <= d <= 60.0 for d in capped)


def test_a_draw_outside_0_1_is_refused() -> None:
    with pytest.raises(ValueError, match="draw"):
        Backoff().next_delay(1.5)
    with pytest.raises(ValueError, match="draw"):
        Backoff().next_delay(-0.1)


def test_a_healthy_run_starts_the_delays_over_a_short_one_does_not() -> None:
    b = Backoff(first_s=1.0, cap_s=60.0, healthy_s=60.0)
    assert [b.next_delay(1.0) for _ in range(4)] == [1, 2, 4, 8]
    b.ran(59.9)
    assert b.next_delay(1.0) == 16
    b.ran(60.0)
    assert b.next_delay(1.0) == 1
    never = Backoff()  # without healthy_s only reset() starts over
    never.next_delay(1.0)
    never.ran(10**9)
    assert never.next_delay(1.0) == 2


def test_retry_after_is_a_floor_never_a_ceiling() -> None:
    b = Backoff(first_s=1.0, cap_s=60.0)
    assert b.next_delay(1.0, retry_after_s=5.0) == 5.0  # the server asked for longer than our 1 s
    assert b.next_delay(1.0, retry_after_s=0.5) == 2.0  # our own delay is longer: it stands
    assert b.next_delay(0.0, retry_after_s=3.0) == 3.0  # jitter never brings a retry before it
    assert b.next_delay(1.0, retry_after_s=600.0) == 600.0  # above the cap too: a ban is waited out
    assert b.next_delay(1.0) == 16.0  # and the growth goes on from where it was


@given(st.floats(0, 1), st.floats(0, 1e6))
def test_no_draw_retries_before_retry_after(draw: float, retry_after: float) -> None:
    assert Backoff().next_delay(draw, retry_after_s=retry_after) >= retry_after


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("2", 2.0), ("0", 0.0), (" 120 ", 120.0), ("1.5", 1.5), (None, None), ("", None), ("soon", None)],
)
def test_retry_after_header_in_seconds(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


@pytest.mark.parametrize("header", ["Wed, 21 Oct 2015 07:28:00 GMT", "-1", "nan", "inf"])
def test_retry_after_that_is_no_delay_is_ignored(header: str) -> None:
    assert parse_retry_after(header) is None
