"""Typed errors of the pure core; each message names the part that is wrong."""

from __future__ import annotations


class ProtocolError(ValueError):
    """Base of every validation error raised by ``protocol``."""


class SeriesIdError(ProtocolError):
    """A series id (or one of its parts) is malformed."""


class TimeframeError(ProtocolError):
    """An unknown timeframe, or a time that is not aligned to it."""


class CandleError(ProtocolError):
    """A candle breaks an invariant (finite, ordered OHLC, volume >= 0, aligned time)."""


class ExchangeInfoError(ProtocolError):
    """An ``exchangeInfo`` answer that is not a listing of symbols."""
