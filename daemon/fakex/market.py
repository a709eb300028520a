"""A deterministic market: any symbol's candle of any minute in O(1), so streams and REST agree.

Prices follow a hash-noise walk anchored every minute: ``close(m)`` depends only on (symbol, m), and
``open(m) = close(m - 1)`` keeps candles continuous. Higher timeframes are exact aggregates of the 1m
candles (as Binance's are). A quiet minute has no trade: volume 0 and open = high = low = close =
previous close, exactly what Binance emits for such a minute. Time is always an argument.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterator

import attrs

from protocol.aggregate import aggregate_bucket
from protocol.candle import Candle
from protocol.timeframes import TIMEFRAMES, Timeframe

M1 = TIMEFRAMES["1m"]
CACHE_MINUTES = 4096


def _unit(*parts: object) -> float:
    """A deterministic draw in [0, 1) from its inputs."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return float(struct.unpack(">Q", digest)[0]) / 2**64


@attrs.define
class Symbol:
    symbol_id: str  # BTCUSDT
    base: str
    quote: str
    base_price: float
    listed_at: int = 0  # first minute with candles (UTC seconds)
    quiet: list[tuple[int, int]] = attrs.field(factory=list)  # [start, end) minute ranges with no trade
    decimals: int = 2
    # Minute candles are pure functions of the minute: memoised, since every 2 s update rebuilds them.
    _cache: dict[int, Candle] = attrs.field(factory=dict, repr=False, eq=False)

    @property
    def symbol(self) -> str:
        return f"{self.base}/{self.quote}"

    def is_quiet(self, minute: int) -> bool:
        return any(start <= minute < end for start, end in self.quiet)

    def _level(self, minute: int) -> float:
        """The traded price at the end of ``minute``: slow waves plus per-minute noise."""
        m = minute // 60
        wave = 0.03 * math.sin(m / 180.0 + _unit(self.symbol_id) * 6.283) + 0.01 * math.sin(m / 17.0)
        noise = 0.002 * (_unit(self.symbol_id, m) - 0.5)
        return round(self.base_price * (1 + wave + noise), self.decimals)

    def close_of(self, minute: int) -> float:
        """Close of ``minute``: a quiet minute keeps the last traded price."""
        m = minute
        while self.is_quiet(m) and m > self.listed_at:
            m -= 60
        return self._level(m)

    def candle_1m(self, minute: int) -> Candle:
        cached = self._cache.get(minute)
        if cached is None:
            cached = self._cache[minute] = self._compute_1m(minute)
            if len(self._cache) > CACHE_MINUTES:
                self._cache.pop(next(iter(self._cache)))
        return cached

    def _compute_1m(self, minute: int) -> Candle:
        if minute < self.listed_at:
            raise ValueError(f"{self.symbol_id} was listed at {self.listed_at}, no candle at {minute}")
        close = self.close_of(minute)
        open_ = self.close_of(minute - 60) if minute > self.listed_at else close
        if self.is_quiet(minute):
            return Candle(minute, open_, open_, open_, open_, 0.0)
        spread = self.base_price * 0.0008 * (0.2 + _unit(self.symbol_id, minute, "range"))
        high = round(max(open_, close) + spread * _unit(self.symbol_id, minute, "h"), self.decimals)
        low = round(min(open_, close) - spread * _unit(self.symbol_id, minute, "l"), self.decimals)
        volume = round(1 + 50 * _unit(self.symbol_id, minute, "v"), 5)
        return Candle(minute, open_, high, low, close, volume)

    def trades_1m(self, minute: int) -> list[tuple[int, float, float]]:
        """The minute's trades ``(time_ms, price, quantity)``, consistent with its kline: the first at the
        open, the extremes in the middle, the last at the close, quantities summing to its volume. A quiet
        minute has none (its kline is flat at the previous close with volume 0, as Binance's)."""
        c = self.candle_1m(minute)
        if c.volume == 0:
            return []
        quarter = round(c.volume / 4, 5)
        rest = round(c.volume - 3 * quarter, 5)
        base = minute * 1000
        times = [
            base + int(9_000 * _unit(self.symbol_id, minute, "t0")),
            base + 10_000 + int(19_000 * _unit(self.symbol_id, minute, "t1")),
            base + 30_000 + int(19_000 * _unit(self.symbol_id, minute, "t2")),
            base + 50_000 + int(9_999 * _unit(self.symbol_id, minute, "t3")),
        ]
        middle = [c.high, c.low] if _unit(self.symbol_id, minute, "hl") < 0.5 else [c.low, c.high]
        prices = [c.open, *middle, c.close]
        return [(t, p, q) for t, p, q in zip(times, prices, (quarter, quarter, quarter, rest), strict=True)]

    def partial_1m(self, minute: int, elapsed_ms: int) -> Candle:
        """The minute's candle so far, ``elapsed_ms`` into it: a deterministic path to its final values."""
        final = self.candle_1m(minute)
        frac = max(0.0, min(1.0, elapsed_ms / 60_000))
        if final.volume == 0 or frac >= 1:
            return final if frac >= 1 else Candle(minute, final.open, final.open, final.open, final.open, 0.0)
        close = round(final.open + (final.close - final.open) * frac, self.decimals)
        high = max(
            final.open, close, round(final.open + (final.high - final.open) * min(1.0, frac * 1.5), self.decimals)
        )
        low = min(final.open, close, round(final.open + (final.low - final.open) * min(1.0, frac * 1.5), self.decimals))
        return Candle(
            minute, final.open, min(high, final.high), max(low, final.low), close, round(final.volume * frac, 5)
        )

    def candle(self, timeframe: Timeframe, open_time: int) -> Candle:
        """A closed candle of any timeframe: the exact aggregate of its 1m candles."""
        if timeframe is M1 or timeframe.name == "1m":
            return self.candle_1m(open_time)
        minutes = [self.candle_1m(t) for t in self._minutes(timeframe, open_time)]
        derived = aggregate_bucket(M1, timeframe, open_time, minutes)
        assert derived is not None
        return derived

    def forming(self, timeframe: Timeframe, now_ms: int) -> Candle:
        """The current period's candle at ``now_ms`` (the last minute partially progressed)."""
        now = now_ms // 1000
        period = timeframe.floor(now)
        minute = M1.floor(now)
        done = [self.candle_1m(t) for t in range(max(period, self.listed_at), minute, 60)]
        current = self.partial_1m(minute, now_ms - minute * 1000)
        parts = [*done, current]
        return Candle(
            period,
            parts[0].open,
            max(c.high for c in parts),
            min(c.low for c in parts),
            parts[-1].close,
            round(sum(c.volume for c in parts), 5),
        )

    def _minutes(self, timeframe: Timeframe, open_time: int) -> Iterator[int]:
        return iter(range(open_time, timeframe.next_open(open_time), 60))


@attrs.define
class Market:
    """The symbols of one fake exchange, per market type."""

    spot: dict[str, Symbol] = attrs.field(factory=dict)
    futures: dict[str, Symbol] = attrs.field(factory=dict)

    def symbols(self, market: str) -> dict[str, Symbol]:
        return self.spot if market == "spot" else self.futures

    @classmethod
    def default(cls, spot: list[str] | None = None, futures: list[str] | None = None) -> Market:
        """A market of well-known pairs quoted in USDT (base prices roughly realistic)."""
        prices = {"BTC": 65000.0, "ETH": 3400.0, "BNB": 580.0, "SOL": 150.0, "XRP": 0.55, "DOGE": 0.12}

        def make(ids: list[str]) -> dict[str, Symbol]:
            out = {}
            for symbol_id in ids:
                base = symbol_id.removesuffix("USDT")
                price = prices.get(base, 10.0 + 90 * _unit(base))
                decimals = 2 if price >= 10 else 5
                out[symbol_id] = Symbol(symbol_id, base, "USDT", price, decimals=decimals)
            return out

        return cls(spot=make(spot or ["BTCUSDT", "ETHUSDT"]), futures=make(futures or ["BTCUSDT", "ETHUSDT"]))
