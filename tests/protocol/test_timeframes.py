"""Timeframes and bucket math (docs/protocol.md): names, Binance alignment, and properties for every timeframe."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ProtocolError, TimeframeError
from protocol.timeframes import (
    DAY,
    TIMEFRAME_NAMES,
    TIMEFRAMES,
    WEEK,
    Timeframe,
    can_derive,
    parse_timeframe,
)

ALL_NAMES = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M")
FIXED_SECONDS = {
    "1m": 60,
    "3m": 180,
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1h": 3600,
    "2h": 7200,
    "4h": 14400,
    "6h": 21600,
    "8h": 28800,
    "12h": 43200,
    "1d": 86400,
    "3d": 259200,
}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Up to 2**34 s (year ~2514) and a stretch before the epoch; all within datetime's range.
times = st.integers(min_value=-(2**31), max_value=2**34)
timeframes = st.sampled_from(ALL_NAMES).map(parse_timeframe)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))


def to_datetime(t: int) -> datetime:
    return EPOCH + timedelta(seconds=t)


def from_datetime(d: datetime) -> int:
    return (d - EPOCH) // timedelta(seconds=1)


def month_floor_oracle(t: int) -> int:
    d = to_datetime(t)
    return from_datetime(datetime(d.year, d.month, 1, tzinfo=UTC))


def next_month_oracle(t: int) -> int:
    d = to_datetime(t)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return from_datetime(datetime(year, month, 1, tzinfo=UTC))


def week_floor_oracle(t: int) -> int:
    d = to_datetime(t)
    monday = datetime(d.year, d.month, d.day, tzinfo=UTC) - timedelta(days=d.weekday())
    return from_datetime(monday)


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_timeframe_parses(name: str) -> None:
    tf = parse_timeframe(name)
    assert isinstance(tf, Timeframe)
    assert tf.name == name
    assert str(tf) == name
    assert TIMEFRAMES[name] is tf


def test_timeframe_names_are_exactly_the_spec_list_in_order() -> None:
    assert TIMEFRAME_NAMES == ALL_NAMES


@pytest.mark.parametrize(("name", "seconds"), sorted(FIXED_SECONDS.items()))
def test_fixed_timeframe_seconds(name: str, seconds: int) -> None:
    tf = parse_timeframe(name)
    assert tf.seconds == seconds
    assert not tf.is_calendar


def test_week_and_month_seconds_and_calendar_flag() -> None:
    assert parse_timeframe("1w").seconds == WEEK == 7 * DAY
    assert not parse_timeframe("1w").is_calendar
    month = parse_timeframe("1M")
    assert month.is_calendar
    assert month.seconds == 30 * DAY  # nominal


@pytest.mark.parametrize(
    "name", ["2m", "1H", "1D", "", "1mm", "1W", "3M", "60m", " 1m", "1m ", "1 m", "m1", "1s", "1y"]
)
def test_unknown_names_raise_timeframe_error_naming_the_value(name: str) -> None:
    with pytest.raises(TimeframeError) as excinfo:
        parse_timeframe(name)
    assert repr(name) in str(excinfo.value)
    assert isinstance(excinfo.value, ProtocolError)
    assert isinstance(excinfo.value, ValueError)


@pytest.mark.parametrize("value", [None, 1, 60, 1.0, b"1m", ["1m"], ("1m",), {"1m": 1}, object])
def test_non_string_names_raise_timeframe_error(value: object) -> None:
    with pytest.raises(TimeframeError) as excinfo:
        parse_timeframe(value)  # type: ignore[arg-type]
    assert repr(value) in str(excinfo.value)


def test_minute_and_month_are_case_sensitive() -> None:
    minute, month = parse_timeframe("1m"), parse_timeframe("1M")
    assert minute != month
    assert minute.seconds == 60
    assert month.is_calendar
    assert not minute.is_calendar


@given(st.text(max_size=6))
def test_parse_arbitrary_text_is_known_or_timeframe_error(text: str) -> None:
    if text in ALL_NAMES:
        assert parse_timeframe(text).name == text
    else:
        with pytest.raises(TimeframeError):
            parse_timeframe(text)


# ---------------------------------------------------------------- alignment examples


@pytest.mark.parametrize(("name", "seconds"), sorted(FIXED_SECONDS.items()))
@pytest.mark.parametrize("t", [0, 1, 59, 60, 1_700_000_000, 1_700_000_040, 1_499_990_400, 2**34 - 1, -1, -86_401])
def test_fixed_frames_floor_on_the_epoch(name: str, seconds: int, t: int) -> None:
    tf = parse_timeframe(name)
    assert tf.floor(t) == t // seconds * seconds
    assert tf.next_open(t) == t // seconds * seconds + seconds
    assert tf.prev_open(t) == t // seconds * seconds - seconds


def test_one_day_is_utc_midnight() -> None:
    day = parse_timeframe("1d")
    assert day.floor(utc(2024, 3, 15, 23, 59, 59)) == utc(2024, 3, 15)
    assert day.next_open(utc(2024, 3, 15, 12)) == utc(2024, 3, 16)


def test_three_days_align_on_epoch_multiples_like_binance() -> None:
    three = parse_timeframe("3d")
    # Binance's 3d kline opening 2017-07-14 00:00 UTC.
    assert utc(2017, 7, 14) == 1_499_990_400
    assert three.is_aligned(1_499_990_400)
    assert 1_499_990_400 % 259_200 == 0
    assert three.floor(1_499_990_400 + 259_199) == 1_499_990_400
    assert three.next_open(1_499_990_400) == 1_499_990_400 + 259_200
    assert three.prev_open(1_499_990_400) == 1_499_990_400 - 259_200
    assert not three.is_aligned(utc(2017, 7, 15))
    assert three.floor(0) == 0
    assert three.floor(-1) == -259_200


def test_week_opens_monday_2024_01_01() -> None:
    week = parse_timeframe("1w")
    assert utc(2024, 1, 1) == 1_704_067_200
    assert calendar.weekday(2024, 1, 1) == calendar.MONDAY
    for t in (1_704_067_200, utc(2024, 1, 2, 13), utc(2024, 1, 5), utc(2024, 1, 7, 23, 59, 59)):
        assert week.floor(t) == 1_704_067_200
    assert week.floor(utc(2024, 1, 8)) == utc(2024, 1, 8)
    assert week.floor(1_704_067_199) == utc(2023, 12, 25)
    assert week.next_open(1_704_067_200) == utc(2024, 1, 8)
    assert week.prev_open(utc(2024, 1, 3)) == utc(2023, 12, 25)
    assert week.is_aligned(1_704_067_200)
    assert not week.is_aligned(utc(2024, 1, 2))  # a Tuesday


def test_week_origin_is_1970_01_05() -> None:
    week = parse_timeframe("1w")
    assert week.floor(utc(1970, 1, 5)) == utc(1970, 1, 5) == 4 * DAY
    assert week.floor(utc(1970, 1, 11, 23, 59, 59)) == 4 * DAY
    # 1970-01-01 .. 1970-01-04 belong to the week opening Monday 1969-12-29.
    for t in (0, 1, utc(1970, 1, 2), 4 * DAY - 1):
        assert week.floor(t) == -259_200 == utc(1969, 12, 29)
    assert week.next_open(0) == 4 * DAY
    assert week.prev_open(4 * DAY) == -259_200
    assert not week.is_aligned(0)


@pytest.mark.parametrize(
    ("t", "expected_open", "expected_next"),
    [
        (utc(2024, 2, 29, 23, 59, 59), utc(2024, 2, 1), utc(2024, 3, 1)),  # leap February
        (utc(2024, 2, 1), utc(2024, 2, 1), utc(2024, 3, 1)),
        (utc(2023, 2, 28, 12), utc(2023, 2, 1), utc(2023, 3, 1)),  # 28 days
        (utc(2023, 12, 31, 23, 59, 59), utc(2023, 12, 1), utc(2024, 1, 1)),  # Dec -> Jan
        (utc(2024, 1, 1), utc(2024, 1, 1), utc(2024, 2, 1)),
        (utc(2100, 2, 28, 23, 59, 59), utc(2100, 2, 1), utc(2100, 3, 1)),  # 2100 is not a leap year
        (utc(2100, 3, 1), utc(2100, 3, 1), utc(2100, 4, 1)),
        (utc(2000, 2, 29, 6), utc(2000, 2, 1), utc(2000, 3, 1)),  # 2000 is
        (0, 0, utc(1970, 2, 1)),
        (-1, utc(1969, 12, 1), 0),
    ],
)
def test_month_buckets(t: int, expected_open: int, expected_next: int) -> None:
    month = parse_timeframe("1M")
    assert month.floor(t) == expected_open
    assert month.next_open(t) == expected_next
    assert month.prev_open(expected_next) == expected_open
    assert month.is_aligned(expected_open)


def test_month_lengths_follow_the_calendar() -> None:
    month = parse_timeframe("1M")
    assert month.next_open(utc(2024, 2, 1)) - utc(2024, 2, 1) == 29 * DAY
    assert month.next_open(utc(2023, 2, 1)) - utc(2023, 2, 1) == 28 * DAY
    assert month.next_open(utc(2100, 2, 1)) - utc(2100, 2, 1) == 28 * DAY
    assert month.next_open(utc(2000, 2, 1)) - utc(2000, 2, 1) == 29 * DAY
    assert month.next_open(utc(2024, 1, 1)) - utc(2024, 1, 1) == 31 * DAY
    assert month.next_open(utc(2024, 4, 1)) - utc(2024, 4, 1) == 30 * DAY
    assert month.prev_open(utc(2024, 1, 1)) == utc(2023, 12, 1)
    assert not month.is_aligned(utc(2024, 1, 2))
    assert not month.is_aligned(utc(2024, 1, 1, 0, 0, 1))


def test_check_aligned() -> None:
    minute = parse_timeframe("1m")
    minute.check_aligned(1_700_000_040)
    with pytest.raises(TimeframeError) as excinfo:
        minute.check_aligned(1_700_000_001)
    assert "1700000001" in str(excinfo.value)
    assert "1m" in str(excinfo.value)


def test_last_closed_open_examples() -> None:
    minute = parse_timeframe("1m")
    assert minute.last_closed_open(120) == 60  # the bucket [60, 120) has just closed
    assert minute.last_closed_open(179) == 60
    assert minute.last_closed_open(180) == 120
    month = parse_timeframe("1M")
    assert month.last_closed_open(utc(2024, 3, 1)) == utc(2024, 2, 1)
    assert month.last_closed_open(utc(2024, 3, 31, 23)) == utc(2024, 2, 1)
    assert month.last_closed_open(utc(2024, 1, 15)) == utc(2023, 12, 1)


def test_count_between_examples() -> None:
    minute = parse_timeframe("1m")
    assert minute.count_between(60, 60) == 1
    assert minute.count_between(60, 180) == 3
    assert minute.count_between(180, 60) == 0
    month = parse_timeframe("1M")
    assert month.count_between(utc(2023, 11, 1), utc(2024, 2, 1)) == 4
    assert month.count_between(utc(2024, 2, 1), utc(2023, 11, 1)) == 0
    week = parse_timeframe("1w")
    assert week.count_between(utc(2024, 1, 1), utc(2024, 1, 29)) == 5


# ---------------------------------------------------------------- properties for every timeframe


@settings(max_examples=400)
@given(tf=timeframes, t=times)
def test_floor_contains_t(tf: Timeframe, t: int) -> None:
    start = tf.floor(t)
    assert start <= t < tf.next_open(start)
    assert tf.next_open(t) == tf.next_open(start)
    assert tf.prev_open(t) == tf.prev_open(start)


@settings(max_examples=400)
@given(tf=timeframes, t=times)
def test_floor_is_idempotent_and_aligned(tf: Timeframe, t: int) -> None:
    start = tf.floor(t)
    assert tf.floor(start) == start
    assert tf.is_aligned(start)
    tf.check_aligned(start)
    assert tf.is_aligned(t) == (t == start)


@settings(max_examples=400)
@given(tf=timeframes, t=times)
def test_next_and_prev_open_are_inverse(tf: Timeframe, t: int) -> None:
    x = tf.floor(t)
    nxt, prv = tf.next_open(x), tf.prev_open(x)
    assert prv < x < nxt
    assert tf.is_aligned(nxt)
    assert tf.is_aligned(prv)
    assert tf.next_open(prv) == x
    assert tf.prev_open(nxt) == x
    if not tf.is_calendar:
        assert nxt - x == tf.seconds
        assert x - prv == tf.seconds


@settings(max_examples=300)
@given(tf=timeframes, t=times)
def test_no_aligned_time_strictly_inside_a_bucket(tf: Timeframe, t: int) -> None:
    start = tf.floor(t)
    if t != start:
        assert not tf.is_aligned(t)
    assert tf.floor(tf.next_open(start) - 1) == start


@settings(max_examples=400)
@given(t=times)
def test_month_floor_matches_datetime(t: int) -> None:
    month = parse_timeframe("1M")
    assert month.floor(t) == month_floor_oracle(t)
    assert month.next_open(t) == next_month_oracle(t)
    assert month.prev_open(t) == month_floor_oracle(month_floor_oracle(t) - 1)


@settings(max_examples=200)
@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2500, 12, 31)))
def test_month_floor_matches_datetime_from_dates(d: datetime) -> None:
    t = from_datetime(d.replace(tzinfo=UTC, microsecond=0))
    start = from_datetime(datetime(d.year, d.month, 1, tzinfo=UTC))
    length = calendar.monthrange(d.year, d.month)[1] * DAY
    month = parse_timeframe("1M")
    assert month.floor(t) == start
    assert month.next_open(t) == start + length


@settings(max_examples=400)
@given(t=times)
def test_week_floor_matches_datetime_monday(t: int) -> None:
    week = parse_timeframe("1w")
    start = week.floor(t)
    assert start == week_floor_oracle(t)
    assert to_datetime(start).weekday() == calendar.MONDAY
    assert to_datetime(start).time() == datetime.min.time()


@settings(max_examples=300)
@given(tf=timeframes, t=times, steps=st.integers(min_value=0, max_value=40))
def test_count_between_counts_next_open_steps(tf: Timeframe, t: int, steps: int) -> None:
    a = tf.floor(t)
    b = a
    for _ in range(steps):
        b = tf.next_open(b)
    assert tf.count_between(a, b) == steps + 1
    assert tf.count_between(a, tf.prev_open(a)) == 0
    assert tf.count_between(b, a) == (1 if steps == 0 else 0)


@settings(max_examples=200)
@given(tf=timeframes, a=times, b=times)
def test_count_between_matches_stepping_in_small_ranges(tf: Timeframe, a: int, b: int) -> None:
    first, last = tf.floor(a), tf.floor(b)
    if last < first:
        assert tf.count_between(first, last) == 0
        return
    if tf.count_between(first, last) > 200:
        # Only small ranges are walked; a long one must agree with its own two halves.
        mid = first
        for _ in range(100):
            mid = tf.next_open(mid)
        assert tf.count_between(first, last) == 100 + tf.count_between(mid, last)
        return
    n, x = 0, first
    while x <= last:
        n += 1
        x = tf.next_open(x)
    assert tf.count_between(first, last) == n


@settings(max_examples=400)
@given(tf=timeframes, now=times)
def test_last_closed_open_is_latest_closed_bucket(tf: Timeframe, now: int) -> None:
    closed = tf.last_closed_open(now)
    assert tf.is_aligned(closed)
    assert tf.next_open(closed) <= now
    assert tf.next_open(tf.next_open(closed)) > now
    assert closed == tf.prev_open(tf.floor(now))


# ---------------------------------------------------------------- can_derive


@pytest.mark.parametrize("target", [n for n in ALL_NAMES if n != "1m"])
def test_one_minute_derives_every_other_frame(target: str) -> None:
    assert can_derive(parse_timeframe("1m"), parse_timeframe(target))


@pytest.mark.parametrize("name", ALL_NAMES)
def test_a_frame_does_not_derive_itself(name: str) -> None:
    assert not can_derive(parse_timeframe(name), parse_timeframe(name))


@pytest.mark.parametrize("target", ALL_NAMES)
def test_month_derives_nothing(target: str) -> None:
    assert not can_derive(parse_timeframe("1M"), parse_timeframe(target))


@pytest.mark.parametrize(
    ("base", "target", "expected"),
    [
        ("1d", "1w", True),
        ("1d", "1M", True),
        ("3d", "1w", False),
        ("3d", "1M", False),
        ("1w", "1M", False),
        ("1h", "3d", True),
        ("2h", "1d", True),
        ("8h", "1w", True),
        ("12h", "1w", True),
        ("8h", "1M", True),
        ("1d", "3d", True),
        ("4h", "1d", True),
        ("1h", "1m", False),
        ("1d", "1h", False),
        ("1w", "3d", False),
        ("1w", "1d", False),
    ],
)
def test_can_derive_examples(base: str, target: str, expected: bool) -> None:
    assert can_derive(parse_timeframe(base), parse_timeframe(target)) is expected


def _tiles(base: Timeframe, target: Timeframe, start: int, steps: int) -> bool:
    """Every target boundary met while walking ``steps`` target buckets from ``start`` is a base boundary."""
    x = target.floor(start)
    for _ in range(steps):
        if not base.is_aligned(x):
            return False
        x = target.next_open(x)
    return True


@pytest.mark.parametrize("base", ALL_NAMES)
@pytest.mark.parametrize("target", ALL_NAMES)
def test_can_derive_matches_brute_force_tiling(base: str, target: str) -> None:
    b, t = parse_timeframe(base), parse_timeframe(target)
    # Base buckets tile the line, so a target bucket is a union of whole base buckets exactly when
    # both its boundaries are base boundaries.
    tiles = all(_tiles(b, t, start, 120) for start in (-(2**30), 0, utc(1999, 11, 20), 1_704_067_200))
    assert can_derive(b, t) == (b != t and tiles)
