"""Series ids: ``{exchange}:{market}:{symbol}:{timeframe}`` (docs/protocol.md, "Series and candles").

Parsing is strict and every error names the part that is wrong, because the same message goes back to a
WebSocket client as ``invalid series_id: <why>``.
"""

from __future__ import annotations

import re
from typing import Final, Literal

import attrs

from protocol.errors import SeriesIdError, TimeframeError
from protocol.timeframes import TIMEFRAME_NAMES, Timeframe, parse_timeframe

Market = Literal["spot", "futures"]
MARKETS: Final[tuple[Market, ...]] = ("spot", "futures")

_EXCHANGE_RE: Final = re.compile(r"[a-z0-9]+")
_SYMBOL_RE: Final = re.compile(r"([A-Z0-9]+)/([A-Z0-9]+)")
# Generous for any real id, small enough that an id can never blow up a key or a log line.
MAX_SERIES_ID_LENGTH: Final = 128


@attrs.frozen
class SeriesId:
    """A validated series id; ``str()`` gives its canonical text form."""

    exchange: str
    market: Market
    symbol: str
    timeframe: Timeframe
    # The canonical text, built once: ids are formatted on every log write and every frame.
    _text: str = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_text", f"{self.exchange}:{self.market}:{self.symbol}:{self.timeframe.name}")

    @property
    def base_asset(self) -> str:
        return self.symbol.partition("/")[0]

    @property
    def quote_asset(self) -> str:
        return self.symbol.partition("/")[2]

    @property
    def symbol_id(self) -> str:
        """The exchange's own symbol, e.g. ``BTCUSDT`` for ``BTC/USDT``."""
        return self.symbol.replace("/", "")

    def with_timeframe(self, timeframe: Timeframe) -> SeriesId:
        return attrs.evolve(self, timeframe=timeframe)

    def candle_id(self, candle_time: int) -> str:
        return f"{self}:{candle_time}"

    def __str__(self) -> str:
        return self._text

    @classmethod
    def parse(cls, text: object) -> SeriesId:
        """Parse and validate; raise :class:`SeriesIdError` naming the bad part."""
        if not isinstance(text, str):
            raise SeriesIdError(f"must be a string, got {type(text).__name__}")
        if not text:
            raise SeriesIdError("empty")
        if len(text) > MAX_SERIES_ID_LENGTH:
            raise SeriesIdError(f"longer than {MAX_SERIES_ID_LENGTH} characters")
        parts = text.split(":")
        if len(parts) != 4:
            raise SeriesIdError(f"expected 4 parts exchange:market:symbol:timeframe, got {len(parts)} in {text!r}")
        exchange, market, symbol, timeframe = parts
        return cls(
            exchange=check_exchange(exchange),
            market=check_market(market),
            symbol=check_symbol(symbol),
            timeframe=_check_timeframe(timeframe),
        )


def check_exchange(exchange: str) -> str:
    if not _EXCHANGE_RE.fullmatch(exchange):
        raise SeriesIdError(f"bad exchange {exchange!r} (expected lower-case [a-z0-9]+)")
    return exchange


def check_market(market: str) -> Market:
    if market not in MARKETS:
        raise SeriesIdError(f"bad market {market!r} (expected spot or futures)")
    return market


def check_symbol(symbol: str) -> str:
    if not _SYMBOL_RE.fullmatch(symbol):
        raise SeriesIdError(f"bad symbol {symbol!r} (expected BASE/QUOTE, upper-case [A-Z0-9]+/[A-Z0-9]+)")
    return symbol


def _check_timeframe(timeframe: str) -> Timeframe:
    try:
        return parse_timeframe(timeframe)
    except TimeframeError:
        raise SeriesIdError(f"bad timeframe {timeframe!r} (expected one of {' '.join(TIMEFRAME_NAMES)})") from None


def parse_series_id(text: object) -> SeriesId:
    """Function form of :meth:`SeriesId.parse`."""
    return SeriesId.parse(text)
