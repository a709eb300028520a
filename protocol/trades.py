"""Candles from trades, driven by the clock (sans-IO): the trade source of a series.

One :class:`TradeCandles` per symbol keeps an open candle per timeframe. Trades update the open candles
of every timeframe at once. At each tick (a whole minute of exchange time) :meth:`TradeCandles.tick`
does, for every timeframe whose period ended, the three steps of the clock-driven design:

1. finalise the open candle;
2. fill every whole period that had no trade with a synthetic flat candle (open = high = low = close =
   the previous close, volume 0, ``synthetic``);
3. open the new period's candle (flat at the last close until its first trade).

Everything one tick produces comes back as one list, to be persisted in one batch. A trade stamped
exactly on a boundary belongs to the new period; a trade of a period already finalised is refused
(counted), never folded into the wrong candle.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from protocol.binance import AggTrade
from protocol.candle import Candle, summed_volume, synthetic_after
from protocol.timeframes import Timeframe


@attrs.define
class _Open:
    """The forming candle of one timeframe; ``traded`` false means no trade yet (flat, volume 0)."""

    open_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0
    traded: bool = False

    def candle(self) -> Candle:
        if not self.traded:
            return Candle(self.open_time, self.open, self.open, self.open, self.open, 0.0, True)
        return Candle(self.open_time, self.open, self.high, self.low, self.close, summed_volume(self.volume))


@attrs.define
class TradeStats:
    trades: int = 0
    late_trades: int = 0  # for a period already finalised: refused
    synthetic: int = 0


class TradeCandles:
    """The trade-built candles of one symbol over ``timeframes`` (all must share whole-minute boundaries)."""

    def __init__(self, timeframes: Sequence[Timeframe], *, now_s: int, last_close: float) -> None:
        """Start at ``now_s`` with the latest known price (the previous close, or a seed price)."""
        self.timeframes = tuple(sorted(timeframes, key=lambda tf: tf.seconds))  # the smallest first
        self.stats = TradeStats()
        self._early: list[AggTrade] = []  # trades past the current minute whose tick has not fired yet
        self._open = {tf: _Open(tf.floor(now_s), last_close, last_close, last_close, last_close) for tf in timeframes}
        self._index()

    def _index(self) -> None:
        """What every trade looks at, kept ready: the open candles, and the smallest one's period."""
        self._opens = tuple(self._open.values())
        self._first = self._open[self.timeframes[0]]
        self._first_end = self.timeframes[0].next_open(self._first.open_time)

    @classmethod
    def seeded(
        cls, timeframes: Sequence[Timeframe], *, now_s: int, price: float
    ) -> tuple[TradeCandles, list[tuple[Timeframe, Candle]]]:
        """A newly listed symbol: its candles start at once from the latest price, before any trade.

        Returns the book and the seed (forming) candles to broadcast now.
        """
        book = cls(timeframes, now_s=now_s, last_close=price)
        return book, book.forming()

    def add(self, trade: AggTrade) -> bool:
        """Fold a trade into every timeframe's open candle; False (refused) for a period already closed."""
        t = trade.trade_time_ms // 1000
        if t < self._first.open_time:
            self.stats.late_trades += 1
            return False
        if t >= self._first_end:
            self._early.append(trade)  # the tick for that boundary is a moment late: it goes in after it
            return True
        self.stats.trades += 1
        price, quantity = trade.price, trade.quantity
        for o in self._opens:  # the smallest period lies inside every larger open period
            if not o.traded:
                o.open = o.high = o.low = price  # the first trade opens the period
                o.traded = True
            elif price > o.high:
                o.high = price
            elif price < o.low:
                o.low = price
            o.close = price
            o.volume += quantity
        return True

    def tick(self, boundary_s: int) -> list[tuple[Timeframe, Candle]]:
        """Every timeframe whose period ended by ``boundary_s``: finalised, flat-filled, and re-opened."""
        closed: list[tuple[Timeframe, Candle]] = []
        for tf, o in self._open.items():
            if tf.next_open(o.open_time) > boundary_s:
                continue  # still forming
            final = o.candle()
            closed.append((tf, final))
            self.stats.synthetic += final.synthetic
            previous = final
            t = tf.next_open(o.open_time)
            while tf.next_open(t) <= boundary_s:  # whole periods with no trade at all
                previous = synthetic_after(previous, t)
                closed.append((tf, previous))
                self.stats.synthetic += 1
                t = tf.next_open(t)
            p = previous.close
            self._open[tf] = _Open(t, p, p, p, p)
        if closed:
            self._index()
        early, self._early = self._early, []
        for trade in early:
            self.add(trade)
        return closed

    def rebase(self, price: float) -> None:
        """A better last price became known (the exchange's kline of a period we did not see): periods still
        without a trade open at it, so they finalise flat at the right level."""
        for o in self._open.values():
            if not o.traded:
                o.open = o.high = o.low = o.close = price

    def forming(self) -> list[tuple[Timeframe, Candle]]:
        """The open candle of every timeframe (display only, never stored)."""
        return [(tf, o.candle()) for tf, o in self._open.items()]
