"""The log's two candle checks (scalar, vectorised over packed bytes) accept and reject the same candles."""

from __future__ import annotations

from itertools import starmap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.storage.validate import VECTOR_MIN, check_candles, check_packed
from protocol.candle import Candle
from protocol.errors import CandleError
from protocol.logrecords import CANDLE_BODY
from protocol.series import SeriesId

SERIES = [SeriesId.parse(f"binance:spot:BTC/USDT:{tf}") for tf in ("1m", "5m", "1w", "1M", "3d")]
numbers = st.sampled_from([0.0, 1.0, 2.0, 3.5, -1.0, float("nan"), float("inf"), float("-inf"), 1e308])


@st.composite
def candle_runs(draw: st.DrawFn) -> tuple[SeriesId, list[Candle]]:
    series = draw(st.sampled_from(SERIES))
    tf = series.timeframe
    start = tf.floor(1_700_000_000)
    good = [Candle(start + tf.seconds * i, 1.0, 2.0, 0.5, 1.5, 3.0) for i in range(VECTOR_MIN + 6)]
    if tf.is_calendar:
        good = [Candle(t, 1.0, 2.0, 0.5, 1.5, 3.0) for t in _months(start, len(good))]
    index = draw(st.integers(0, len(good) - 1))
    t, *values = good[index][:6]
    if draw(st.booleans()):
        values = [draw(numbers) for _ in range(5)]
    else:
        t += draw(st.sampled_from([0, 1, 60, 86400]))
    good[index] = Candle(t, *values)
    return series, good


def _months(start: int, n: int) -> list[int]:
    tf = SeriesId.parse("binance:spot:X/Y:1M").timeframe
    out = [start]
    while len(out) < n:
        out.append(tf.next_open(out[-1]))
    return out


def _verdict(fn: object, *args: object) -> str | None:
    try:
        fn(*args)  # type: ignore[operator]
    except CandleError as e:
        return str(e)
    return None


@given(candle_runs())
def test_vectorised_and_scalar_agree(run: tuple[SeriesId, list[Candle]]) -> None:
    series, candles = run
    packed = b"".join(starmap(CANDLE_BODY.pack, candles))
    assert _verdict(check_packed, series, candles, packed) == _verdict(check_candles, series, candles)


def test_vectorised_names_the_first_bad_candle() -> None:
    series = SERIES[0]
    candles = [Candle(60 * i, 1.0, 2.0, 0.5, 1.5, 3.0) for i in range(1, 200)]
    candles[150] = Candle(60 * 151, 1.0, 2.0, 0.5, 1.5, -3.0)
    candles[170] = Candle(60 * 171, 1.0, 0.0, 0.5, 1.5, 3.0)
    with pytest.raises(CandleError, match=r"binance:spot:BTC/USDT:1m @ 9060: volume must be >= 0"):
        check_packed(series, candles, b"".join(starmap(CANDLE_BODY.pack, candles)))
