"""Derived timeframes from base candles: complete buckets only, Binance alignment, one pass."""

from __future__ import annotations

import calendar
from collections import defaultdict
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.aggregate import Aggregator, aggregate, aggregate_bucket, expected_base_count
from protocol.candle import Candle, check_candle
from protocol.errors import TimeframeError
from protocol.timeframes import TIMEFRAMES

M1, M5, H1, H4, D1, W1, MO = (TIMEFRAMES[n] for n in ("1m", "5m", "1h", "4h", "1d", "1w", "1M"))
T0 = 1_700_000_100  # a 5m boundary (2023-11-14 22:15 UTC)


def c(t: int, o: float = 10.0, h: float = 12.0, low: float = 9.0, close: float = 11.0, v: float = 1.0) -> Candle:
    return Candle(t, o, h, low, close, v)


def ts(y: int, m: int, d: int) -> int:
    return calendar.timegm((y, m, d, 0, 0, 0))


def test_five_1m_make_one_5m() -> None:
    base = [c(T0, o=10, h=11, low=9.5), c(T0 + 60, h=15), c(T0 + 120, low=7), c(T0 + 180), c(T0 + 240, close=13, v=2)]
    assert list(aggregate(M1, M5, base)) == [Candle(T0, 10.0, 15.0, 7.0, 13.0, 6.0)]
    assert aggregate_bucket(M1, M5, T0, base) == Candle(T0, 10.0, 15.0, 7.0, 13.0, 6.0)


def test_a_hole_makes_the_bucket_incomplete() -> None:
    base = [c(T0 + 60 * i) for i in (0, 1, 3, 4)]
    assert list(aggregate(M1, M5, base)) == []
    assert aggregate_bucket(M1, M5, T0, base) is None
    assert aggregate_bucket(M1, M5, T0, [c(T0 + 60 * i) for i in (0, 1, 2, 3, 3)]) is None


def test_partial_first_and_last_buckets_are_dropped() -> None:
    base = [c(T0 + 60 * i) for i in range(2, 13)]  # starts mid-bucket, ends mid-bucket
    assert [x.candle_time for x in aggregate(M1, M5, base)] == [T0 + 300]


def test_hour_day_and_four_hours() -> None:
    hour = ts(2024, 3, 1) + 5 * 3600
    assert [x.candle_time for x in aggregate(M1, H1, [c(hour + 60 * i) for i in range(60)])] == [hour]
    day = ts(2024, 3, 1)
    assert len(list(aggregate(M1, D1, [c(day + 60 * i) for i in range(1440)]))) == 1
    assert [x.candle_time for x in aggregate(H1, H4, [c(day + 3600 * i) for i in range(8)])] == [day, day + 4 * 3600]


def test_weeks_start_on_monday() -> None:
    monday = ts(2024, 1, 1)  # a Monday
    days = [c(monday - 86400 * 3 + 86400 * i) for i in range(10)]  # Fri .. Sun of the next week
    assert [x.candle_time for x in aggregate(D1, W1, days)] == [monday]
    assert expected_base_count(M1, W1, monday) == 7 * 1440


@pytest.mark.parametrize(("year", "days"), [(2024, 29), (2023, 28), (2000, 29), (2100, 28)])
def test_february_months(year: int, days: int) -> None:
    start = ts(year, 2, 1)
    assert expected_base_count(D1, MO, start) == days
    full = [c(start + 86400 * i) for i in range(days)]
    assert [x.candle_time for x in aggregate(D1, MO, full)] == [start]
    assert list(aggregate(D1, MO, full[:-1])) == []


def test_synthetic_only_if_every_base_is() -> None:
    flat = [Candle(T0 + 60 * i, 5.0, 5.0, 5.0, 5.0, 0.0, True) for i in range(5)]
    assert aggregate_bucket(M1, M5, T0, flat) == Candle(T0, 5.0, 5.0, 5.0, 5.0, 0.0, True)
    mixed = [*flat[:4], c(T0 + 240, o=5, h=6, low=5, close=6)]
    derived = aggregate_bucket(M1, M5, T0, mixed)
    assert derived is not None
    assert derived.synthetic is False


def test_underivable_pairs_are_refused() -> None:
    with pytest.raises(TimeframeError, match="1w cannot be built from 3d"):
        Aggregator(TIMEFRAMES["3d"], W1)
    with pytest.raises(TimeframeError, match="1m cannot be built from 1m"):
        expected_base_count(M1, M1, 0)


def test_out_of_order_push_is_a_bug() -> None:
    agg = Aggregator(M1, M5)
    agg.push(c(T0 + 60))
    with pytest.raises(ValueError, match="must ascend"):
        agg.push(c(T0 + 60))
    assert agg.pending_bucket_open == T0


# -- properties: the one-pass aggregation equals a brute-force grouping ----------------------------

TARGETS = [TIMEFRAMES[n] for n in ("3m", "5m", "15m", "30m", "1h")]


@st.composite
def minute_sets(draw: st.DrawFn) -> list[Candle]:
    start = draw(st.integers(0, 10_000)) * 60
    present = draw(st.lists(st.booleans(), min_size=0, max_size=400))
    out = []
    for i, keep in enumerate(present):
        if keep or draw(st.integers(0, 9)) > 0:  # mostly complete, with holes
            o, cl = float(draw(st.integers(1, 50))), float(draw(st.integers(1, 50)))
            out.append(c(start + 60 * i, o, max(o, cl) + 1, min(o, cl) - 0.5, cl, float(draw(st.integers(0, 9)))))
    return out


def brute_force(target_name: str, candles: list[Candle]) -> list[Candle]:
    target = TIMEFRAMES[target_name]
    groups: dict[int, list[Candle]] = defaultdict(list)
    for x in candles:
        groups[target.floor(x.candle_time)].append(x)
    out = []
    for bucket in sorted(groups):
        rows = groups[bucket]
        if [x.candle_time for x in rows] == list(range(bucket, target.next_open(bucket), 60)):
            out.append(
                Candle(
                    bucket,
                    rows[0].open,
                    max(x.high for x in rows),
                    min(x.low for x in rows),
                    rows[-1].close,
                    sum(x.volume for x in rows),
                    all(x.synthetic for x in rows),
                )
            )
    return out


@given(minute_sets(), st.sampled_from([t.name for t in TARGETS]))
def test_aggregate_equals_brute_force(candles: list[Candle], target_name: str) -> None:
    target = TIMEFRAMES[target_name]
    derived = list(aggregate(M1, target, candles))
    assert derived == brute_force(target_name, candles)
    for x in derived:
        check_candle(x, target)


@given(minute_sets())
def test_incremental_equals_batch(candles: list[Candle]) -> None:
    agg = Aggregator(M1, M5)
    pushed = [d for x in candles for d in agg.push(x)]
    assert pushed == list(aggregate(M1, M5, candles))


def test_month_boundaries_match_datetime() -> None:
    for year in (2023, 2024):
        for month in range(1, 13):
            start = ts(year, month, 1)
            days = calendar.monthrange(year, month)[1]
            assert expected_base_count(D1, MO, start) == days
            assert datetime.fromtimestamp(MO.next_open(start), UTC).day == 1
