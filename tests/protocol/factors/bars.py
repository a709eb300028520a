"""Candles the factor tests build: one 1m bar of a price, or with a high and a low."""

from __future__ import annotations

from typing import Any, Final

from protocol.candle import Candle

TF: Final = 60
SMALL: Final[dict[str, dict[str, Any]]] = {"pivot": {"major_window": 2, "minor_window": 1}}


def flat(t: int, price: float) -> Candle:
    p = float(price)
    return Candle(t, p, p, p, p, 1.0)


def bar(t: int, high: float, low: float) -> Candle:
    return Candle(t, low, high, low, high, 1.0)
