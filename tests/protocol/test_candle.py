"""Candles (docs/protocol.md): validation rules, synthetic candles, value equality, and properties."""

from __future__ import annotations

import calendar
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.candle import Candle, check_candle, make_candle, synthetic_after
from protocol.errors import CandleError, ProtocolError
from protocol.timeframes import TIMEFRAME_NAMES, Timeframe, parse_timeframe

T0 = 1_700_000_040  # aligned to 1m
FIELDS = ("open", "high", "low", "close", "volume")

finite = st.floats(allow_nan=False, allow_infinity=False)
any_float = st.floats()
volumes = st.floats(min_value=0.0, allow_nan=False, allow_infinity=False)
candle_times = st.integers(min_value=0, max_value=2**34)
timeframes = st.sampled_from(TIMEFRAME_NAMES).map(parse_timeframe)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return calendar.timegm((year, month, day, hour, minute, 0, 0, 0, 0))


def candle(**changes: object) -> Candle:
    values: dict[str, object] = {
        "candle_time": T0,
        "open": 100.0,
        "high": 110.0,
        "low": 90.0,
        "close": 105.0,
        "volume": 12.5,
        "synthetic": False,
    }
    values.update(changes)
    return Candle(**values)  # type: ignore[arg-type]


def assert_rejected(c: Candle, *words: str, timeframe_name: str | None = None) -> str:
    tf = parse_timeframe(timeframe_name) if timeframe_name is not None else None
    with pytest.raises(CandleError) as excinfo:
        check_candle(c, tf)
    message = str(excinfo.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    with pytest.raises(CandleError):
        make_candle(*c[:6], synthetic=c.synthetic, timeframe=tf)
    return message


# ---------------------------------------------------------------- accepted candles


def test_valid_candle_passes_and_is_returned() -> None:
    c = candle()
    assert check_candle(c) is c
    assert check_candle(c, parse_timeframe("1m")) is c


def test_make_candle_builds_a_validated_candle() -> None:
    c = make_candle(T0, 100.0, 110.0, 90.0, 105.0, 12.5)
    assert c == Candle(T0, 100.0, 110.0, 90.0, 105.0, 12.5, False)
    assert c.synthetic is False
    assert c.candle_time == T0
    assert make_candle(T0, 1.0, 1.0, 1.0, 1.0, 0.0, synthetic=True).synthetic is True


def test_doji_and_zero_volume() -> None:
    c = make_candle(T0, 5.0, 5.0, 5.0, 5.0, 0.0, timeframe=parse_timeframe("1m"))
    assert (c.open, c.high, c.low, c.close, c.volume) == (5.0, 5.0, 5.0, 5.0, 0.0)
    check_candle(c)
    check_candle(candle(volume=0.0))
    check_candle(candle(volume=-0.0))
    check_candle(candle(open=0.0, high=0.0, low=0.0, close=0.0, volume=0.0))


def test_edge_equalities_are_allowed() -> None:
    check_candle(candle(open=90.0, low=90.0, close=110.0, high=110.0))  # open at low, close at high
    check_candle(candle(open=110.0, high=110.0, close=90.0, low=90.0))  # open at high, close at low


def test_make_candle_converts_ints_to_floats() -> None:
    c = make_candle(T0, 100, 110, 90, 105, 3)
    assert c == Candle(T0, 100.0, 110.0, 90.0, 105.0, 3.0, False)
    for name in FIELDS:
        assert type(getattr(c, name)) is float, name
    assert type(c.candle_time) is int


def test_check_candle_accepts_int_prices() -> None:
    c = Candle(T0, 100, 110, 90, 105, 3)
    assert check_candle(c) is c


@pytest.mark.parametrize(
    ("name", "t"),
    [
        ("1m", T0),
        ("1h", 1_699_999_200),
        ("1d", utc(2024, 3, 15)),
        ("3d", 1_499_990_400),
        ("1w", utc(2024, 1, 1)),  # a Monday
        ("1M", utc(2024, 2, 1)),
        ("1M", 0),
    ],
)
def test_aligned_times_pass(name: str, t: int) -> None:
    c = make_candle(t, 1.0, 2.0, 0.5, 1.5, 1.0, timeframe=parse_timeframe(name))
    assert c.candle_time == t


def test_time_zero_is_allowed_without_timeframe() -> None:
    check_candle(candle(candle_time=0))


# ---------------------------------------------------------------- rejected candles


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_rejected(field: str, bad: float) -> None:
    assert_rejected(candle(**{field: bad}), field, "finite")


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("bad", ["1.0", None, True, [1.0]])
def test_non_numbers_are_rejected(field: str, bad: object) -> None:
    assert_rejected(candle(**{field: bad}), field, "number")


@pytest.mark.parametrize("volume", [-1.0, -1e-300, -5])
def test_negative_volume_is_rejected(volume: float) -> None:
    assert_rejected(candle(volume=volume), "volume", ">= 0")


@pytest.mark.parametrize(
    ("open_", "close", "high"),
    [
        (100.0, 105.0, 104.0),  # below close
        (105.0, 100.0, 104.0),  # below open
        (100.0, 105.0, 89.0),  # below everything
        (100.0, 105.0, 104.999999),
    ],
)
def test_high_below_max_open_close_is_rejected(open_: float, close: float, high: float) -> None:
    assert_rejected(candle(open=open_, close=close, high=high, low=min(open_, close, high)), "high", "max(open, close)")


@pytest.mark.parametrize(
    ("open_", "close", "low"),
    [
        (100.0, 105.0, 101.0),  # above open
        (105.0, 100.0, 101.0),  # above close
        (100.0, 105.0, 120.0),  # above everything
        (100.0, 105.0, 100.000001),
    ],
)
def test_low_above_min_open_close_is_rejected(open_: float, close: float, low: float) -> None:
    assert_rejected(candle(open=open_, close=close, low=low, high=max(open_, close, low)), "low", "min(open, close)")


@pytest.mark.parametrize("t", [float(T0), 1.7e9, True, False, str(T0), None])
def test_non_int_candle_time_is_rejected(t: object) -> None:
    assert_rejected(candle(candle_time=t), "candle_time", "integer")


@pytest.mark.parametrize("t", [-1, -60, -(2**40)])
def test_negative_candle_time_is_rejected(t: int) -> None:
    assert_rejected(candle(candle_time=t), "candle_time", ">= 0", str(t))


@pytest.mark.parametrize(
    ("name", "t"),
    [
        ("1m", 1_700_000_001),
        ("1m", T0 + 30),
        ("5m", T0),  # aligned to 1m, not to 5m
        ("1h", T0),
        ("1d", utc(2024, 3, 15, 1)),
        ("3d", utc(2017, 7, 15)),
        ("1w", utc(2024, 1, 2)),  # a Tuesday
        ("1w", 0),  # 1970-01-01 was a Thursday
        ("1M", utc(2024, 2, 2)),  # the 2nd of a month
        ("1M", utc(2024, 2, 1, 0, 1)),
    ],
)
def test_misaligned_time_is_rejected(name: str, t: int) -> None:
    c = candle(candle_time=t)
    check_candle(c)  # fine without a timeframe
    assert_rejected(c, "candle_time", "aligned", name, str(t), timeframe_name=name)


@pytest.mark.parametrize("flag", [1, 0, "true", None, 1.0])
def test_non_bool_synthetic_is_rejected(flag: object) -> None:
    assert_rejected(candle(synthetic=flag), "synthetic", "boolean")


def test_candle_error_is_a_protocol_value_error() -> None:
    with pytest.raises(ProtocolError):
        check_candle(candle(volume=-1.0))
    with pytest.raises(ValueError, match="volume"):
        check_candle(candle(volume=-1.0))


@pytest.mark.parametrize("field", FIELDS)
def test_int_too_large_for_a_float_is_a_candle_error(field: str) -> None:
    huge = 10**400
    values = {"open": 1, "high": 1, "low": 1, "close": 1, "volume": 1}
    values[field] = huge
    if field in ("open", "close"):
        values["high"] = huge
    first_bad = "high" if field == "close" else field  # fields are checked open, high, low, close, volume
    with pytest.raises(CandleError, match=f"{first_bad} must be finite"):
        make_candle(T0, **values)  # type: ignore[arg-type]


# ---------------------------------------------------------------- synthetic candles and equality


def test_synthetic_after_is_flat_at_previous_close() -> None:
    prev = make_candle(T0, 100.0, 110.0, 90.0, 105.0, 12.5)
    syn = synthetic_after(prev, T0 + 60)
    assert syn == Candle(T0 + 60, 105.0, 105.0, 105.0, 105.0, 0.0, True)
    assert syn.synthetic is True
    assert syn.volume == 0.0
    assert check_candle(syn, parse_timeframe("1m")) is syn


def test_synthetic_after_a_synthetic_candle_stays_flat() -> None:
    prev = make_candle(T0, 100.0, 110.0, 90.0, 105.0, 12.5)
    first = synthetic_after(prev, T0 + 60)
    second = synthetic_after(first, T0 + 120)
    assert second == Candle(T0 + 120, 105.0, 105.0, 105.0, 105.0, 0.0, True)


def test_same_values_distinguishes_the_synthetic_flag() -> None:
    prev = make_candle(T0, 100.0, 110.0, 90.0, 105.0, 12.5)
    syn = synthetic_after(prev, T0 + 60)
    real = make_candle(T0 + 60, 105.0, 105.0, 105.0, 105.0, 0.0)
    assert not syn.same_values(real)
    assert not real.same_values(syn)
    assert syn.same_values(syn)
    assert real.same_values(make_candle(T0 + 60, 105, 105, 105, 105, 0))
    assert syn.same_values(real._replace(synthetic=True))


@pytest.mark.parametrize("field", ["candle_time", *FIELDS])
def test_same_values_compares_every_field(field: str) -> None:
    base = make_candle(T0, 100.0, 110.0, 90.0, 105.0, 12.5)
    changed = base._replace(**{field: getattr(base, field) + (60 if field == "candle_time" else 1.0)})
    assert not base.same_values(changed)
    assert base.same_values(base._replace())


# ---------------------------------------------------------------- properties


@st.composite
def valid_ohlcv(draw: st.DrawFn) -> tuple[float, float, float, float, float]:
    prices = sorted(draw(st.lists(finite, min_size=4, max_size=4)))
    low, a, b, high = prices
    open_, close = (a, b) if draw(st.booleans()) else (b, a)
    return open_, high, low, close, draw(volumes)


@settings(max_examples=500)
@given(valid_ohlcv(), candle_times, st.booleans())
def test_generated_valid_candles_pass(ohlcv: tuple[float, float, float, float, float], t: int, synthetic: bool) -> None:
    o, h, low, c, v = ohlcv
    candle_ = Candle(t, o, h, low, c, v, synthetic)
    assert check_candle(candle_) is candle_
    made = make_candle(t, o, h, low, c, v, synthetic=synthetic)
    assert made.same_values(candle_)


@settings(max_examples=300)
@given(valid_ohlcv(), timeframes, candle_times)
def test_generated_aligned_candles_pass_with_timeframe(
    ohlcv: tuple[float, float, float, float, float], tf: Timeframe, t: int
) -> None:
    aligned = tf.floor(t)
    if aligned < 0:
        aligned = tf.next_open(aligned)
    made = make_candle(aligned, *ohlcv, timeframe=tf)
    assert made.candle_time == aligned
    if aligned != t:
        with pytest.raises(CandleError, match="aligned"):
            make_candle(t, *ohlcv, timeframe=tf)


@settings(max_examples=300)
@given(
    st.integers(min_value=-(10**15), max_value=10**15),
    st.integers(min_value=0, max_value=10**15),
    st.integers(min_value=0, max_value=10**15),
    st.integers(min_value=0, max_value=10**15),
    st.integers(min_value=0, max_value=10**15),
    candle_times,
)
def test_generated_int_candles_become_floats(low: int, d1: int, d2: int, d3: int, v: int, t: int) -> None:
    o, c = low + d1, low + d2
    h = max(o, c) + d3
    made = make_candle(t, o, h, low, c, v)
    assert made == Candle(t, float(o), float(h), float(low), float(c), float(v), False)
    assert all(type(x) is float for x in made[1:6])
    check_candle(made)  # rounding to float keeps the order


@settings(max_examples=1000)
@given(any_float, any_float, any_float, any_float, any_float, candle_times)
def test_any_floats_pass_with_invariants_or_raise_candle_error(
    o: float, h: float, low: float, c: float, v: float, t: int
) -> None:
    candle_ = Candle(t, o, h, low, c, v)
    try:
        check_candle(candle_)
    except CandleError:
        assert not (all(math.isfinite(x) for x in (o, h, low, c, v)) and v >= 0 and low <= min(o, c) and max(o, c) <= h)
        return
    for x in (o, h, low, c, v):
        assert math.isfinite(x)
    assert v >= 0
    assert low <= min(o, c) <= max(o, c) <= h


@settings(max_examples=300)
@given(
    st.one_of(st.integers(min_value=-(2**40), max_value=2**40), st.floats(), st.booleans(), st.text(max_size=3)),
    st.one_of(finite, st.integers(min_value=-(10**6), max_value=10**6), st.booleans(), st.none()),
    st.one_of(st.booleans(), st.integers(min_value=-1, max_value=2), st.none()),
    st.sampled_from([None, *TIMEFRAME_NAMES]),
)
def test_arbitrary_fields_never_raise_anything_but_candle_error(
    t: object, value: object, synthetic: object, tf_name: str | None
) -> None:
    tf = parse_timeframe(tf_name) if tf_name is not None else None
    for field in FIELDS:
        candidate = candle(candle_time=t, synthetic=synthetic, **{field: value})
        try:
            check_candle(candidate, tf)
        except CandleError:
            continue
        assert type(candidate.candle_time) is int
        assert candidate.candle_time >= 0
        assert type(candidate.synthetic) is bool
        if tf is not None:
            assert tf.is_aligned(candidate.candle_time)


@settings(max_examples=300)
@given(valid_ohlcv(), candle_times, st.integers(min_value=1, max_value=10**6))
def test_synthetic_after_property(ohlcv: tuple[float, float, float, float, float], t: int, step: int) -> None:
    prev = make_candle(t, *ohlcv)
    syn = synthetic_after(prev, t + step)
    assert syn.candle_time == t + step
    assert syn.open == syn.high == syn.low == syn.close == prev.close
    assert syn.volume == 0.0
    assert syn.synthetic is True
    check_candle(syn)
    assert not syn.same_values(syn._replace(synthetic=False))
