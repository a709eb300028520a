"""The candle value type and its invariants (docs/protocol.md, "Series and candles").

``Candle`` is a NamedTuple on purpose: it is the hottest value in klined (the log decodes thousands per
read), and a tuple builds in a third of the time of a frozen attrs instance. Building one directly does
not validate; values from outside go through :func:`make_candle` or :func:`check_candle`.
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple

from protocol.errors import CandleError
from protocol.timeframes import Timeframe

# Binance's quantities are decimals of at most 8 places. A volume summed from floats (derived timeframes,
# trades) is rounded to them: the noise of a float sum (127.07172999999999 for 127.07173) made a derived 5m
# differ from the exchange's own 5m kline, and each replacing the other was a correction of nothing.
VOLUME_PLACES: Final = 8


def summed_volume(total: float) -> float:
    """A sum of volumes at the exchange's precision."""
    return round(total, VOLUME_PLACES)


class Candle(NamedTuple):
    """One OHLCV candle; ``candle_time`` is its open time in integer UTC seconds."""

    candle_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    synthetic: bool = False

    def same_values(self, other: Candle) -> bool:
        """Equal in every field, the synthetic flag included (a real candle replacing a flat
        synthetic one with the same numbers is still a correction)."""
        return tuple.__eq__(self, other)


def check_candle(candle: Candle, timeframe: Timeframe | None = None) -> Candle:
    """Return ``candle`` if it is valid, else raise :class:`CandleError` naming the broken rule."""
    t, o, h, low, c, v, synthetic = candle
    if type(t) is not int:  # bool is an int subclass and not a time
        raise CandleError(f"candle_time must be an integer, got {t!r}")
    if t < 0:
        raise CandleError(f"candle_time must be >= 0, got {t}")
    if type(synthetic) is not bool:
        raise CandleError(f"synthetic must be a boolean, got {synthetic!r}")
    for name, value in (("open", o), ("high", h), ("low", low), ("close", c), ("volume", v)):
        if type(value) is not float and type(value) is not int:
            raise CandleError(f"{name} must be a number, got {value!r}")
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an int beyond float range
            finite = False
        if not finite:
            raise CandleError(f"{name} must be finite, got {value!r}")
    if v < 0:
        raise CandleError(f"volume must be >= 0, got {v!r}")
    if not low <= min(o, c):
        raise CandleError(f"low {low!r} must be <= min(open, close) = {min(o, c)!r}")
    if not max(o, c) <= h:
        raise CandleError(f"high {h!r} must be >= max(open, close) = {max(o, c)!r}")
    if timeframe is not None and not timeframe.is_aligned(t):
        raise CandleError(f"candle_time {t} is not aligned to timeframe {timeframe.name}")
    return candle


def make_candle(
    candle_time: int,
    open: float,
    high: float,
    low: float,
    close: float,
    volume: float,
    *,
    synthetic: bool = False,
    timeframe: Timeframe | None = None,
) -> Candle:
    """Build a validated candle; prices are stored as floats."""
    candle = Candle(candle_time, open, high, low, close, volume, synthetic)
    check_candle(candle, timeframe)
    return Candle(candle_time, float(open), float(high), float(low), float(close), float(volume), synthetic)


def synthetic_after(previous: Candle, candle_time: int) -> Candle:
    """The flat candle of a period with no trade: every price is the previous close, volume 0."""
    p = previous.close
    return Candle(candle_time, p, p, p, p, 0.0, True)
