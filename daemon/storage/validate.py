"""Candle checks run by the event log before a write: scalar for small runs, vectorised for bulk ones.

Bulk runs are validated as the bytes about to be written: a zero-copy numpy view over the packed bodies,
checked column by column, an order of magnitude faster than the scalar loop. Below ``VECTOR_MIN``
candles numpy's per-call overhead would cost more than it saves (the minute-close burst is 1 candle for
each of 1000 series), so the scalar loop runs. Either way a failure is re-explained by
:func:`protocol.candle.check_candle`, so the message names the series, the time and the rule.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Final, NoReturn

import numpy as np

from protocol.candle import Candle, check_candle
from protocol.errors import CandleError
from protocol.series import SeriesId
from protocol.timeframes import Timeframe

VECTOR_MIN: Final = 64
# The layout of protocol.logrecords.CANDLE_BODY (">Qddddd?"), unaligned.
BODY_DTYPE: Final = np.dtype(
    [("t", ">u8"), ("o", ">f8"), ("h", ">f8"), ("l", ">f8"), ("c", ">f8"), ("v", ">f8"), ("s", "?")]
)


def raise_invalid(series: SeriesId, candle: Candle) -> NoReturn:
    try:
        check_candle(candle, series.timeframe)
    except CandleError as e:
        raise CandleError(f"{series} @ {candle[0]}: {e}") from None
    raise CandleError(f"{series} @ {candle[0]}: invalid candle {candle!r}")


@functools.cache
def alignment(tf: Timeframe) -> tuple[int, int]:
    """(step, offset) with aligned <=> (t - offset) % step == 0; months need the calendar on top."""
    if tf.is_calendar:
        return 86400, 0
    return tf.seconds, tf.floor(0) % tf.seconds


def check_candles(series: SeriesId, candles: Sequence[Candle]) -> None:
    """Scalar check of every candle. Integer, non-negative times are left to the ``Q`` pack; NaN fails
    every comparison below, so only infinities need explicit bounds."""
    step, offset = alignment(series.timeframe)
    inf = math.inf
    for c in candles:
        t, o, h, low, close, v, _ = c
        if not ((t - offset) % step == 0 and -inf < low <= o <= h < inf and low <= close <= h and 0 <= v < inf):
            raise_invalid(series, c)
    _check_calendar(series, candles)


def check_packed(series: SeriesId, candles: Sequence[Candle], packed: bytes) -> None:
    """Vectorised check of ``packed`` (the concatenated bodies of ``candles``, same order)."""
    if len(candles) < VECTOR_MIN:
        check_candles(series, candles)
        return
    rows = np.frombuffer(packed, dtype=BODY_DTYPE)
    t = rows["t"].astype(np.int64)
    o, h, low, c, v = (rows[name].astype(np.float64) for name in ("o", "h", "l", "c", "v"))
    step, offset = alignment(series.timeframe)
    with np.errstate(invalid="ignore"):  # NaN compares False, which is the answer we want
        ok = (low <= o) & (o <= h) & (low <= c) & (c <= h) & (v >= 0)
        ok &= np.isfinite(h) & np.isfinite(low) & np.isfinite(v)
        ok &= (t - offset) % step == 0
    if not ok.all():
        raise_invalid(series, candles[int(np.argmin(ok))])
    _check_calendar(series, candles)


def _check_calendar(series: SeriesId, candles: Sequence[Candle]) -> None:
    tf = series.timeframe
    if tf.is_calendar:
        for c in candles:
            if not tf.is_aligned(c[0]):
                raise_invalid(series, c)
