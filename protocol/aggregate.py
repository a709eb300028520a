"""Derived timeframes: build 5m/15m/1h/... candles from base (1m) candles.

A derived candle exists only when every base candle of its bucket is present: open of the first, max
high, min low, close of the last, summed volume. It is synthetic only if every base candle was.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from protocol.candle import Candle, summed_volume
from protocol.errors import TimeframeError
from protocol.timeframes import Timeframe, can_derive


def _check_derivable(base: Timeframe, target: Timeframe) -> None:
    if not can_derive(base, target):
        raise TimeframeError(f"{target.name} cannot be built from {base.name} candles")


def expected_base_count(base: Timeframe, target: Timeframe, bucket_open: int) -> int:
    """How many base candles make the target bucket that opens at ``bucket_open`` (months vary)."""
    _check_derivable(base, target)
    return (target.next_open(bucket_open) - bucket_open) // base.seconds


def aggregate_bucket(base: Timeframe, target: Timeframe, bucket_open: int, candles: Sequence[Candle]) -> Candle | None:
    """The derived candle if ``candles`` (ascending, inside the bucket) are its complete base set, else None."""
    if len(candles) != expected_base_count(base, target, bucket_open):
        return None
    t = bucket_open
    for c in candles:
        if c[0] != t:
            return None
        t += base.seconds
    return Candle(
        bucket_open,
        candles[0][1],
        max(c[2] for c in candles),
        min(c[3] for c in candles),
        candles[-1][4],
        summed_volume(sum(c[5] for c in candles)),
        all(c[6] for c in candles),
    )


class Aggregator:
    """Incremental aggregation for the live path: push ascending base candles, get completed buckets.

    Holds only the running OHLCV of the current bucket. A hole (a missing base candle) spoils the bucket it
    falls in, which then never yields; an out-of-order or repeated candle raises ``ValueError`` because the
    caller feeds it from the log in time order and anything else is a bug upstream.
    """

    def __init__(self, base: Timeframe, target: Timeframe) -> None:
        _check_derivable(base, target)
        self.base, self.target = base, target
        self._last_time: int | None = None
        self._bucket: int | None = None
        self._next_expected = 0
        self._open = self._high = self._low = self._close = self._volume = 0.0
        self._synthetic = True
        self._spoiled = False

    @property
    def pending_bucket_open(self) -> int | None:
        """Open time of the bucket being built (None before the first candle)."""
        return self._bucket

    def push(self, candle: Candle) -> list[Candle]:
        t = candle[0]
        if self._last_time is not None and t <= self._last_time:
            raise ValueError(f"base candles must ascend: {t} after {self._last_time}")
        self._last_time = t
        bucket = self.target.floor(t)
        if bucket != self._bucket:
            self._start(bucket, candle)
        elif t != self._next_expected:
            self._spoiled = True  # a hole inside the bucket
        else:
            self._high = max(self._high, candle[2])
            self._low = min(self._low, candle[3])
            self._close = candle[4]
            self._volume += candle[5]
            self._synthetic = self._synthetic and candle[6]
        self._next_expected = t + self.base.seconds
        if self._next_expected == self.target.next_open(bucket) and not self._spoiled:
            volume = summed_volume(self._volume)
            return [Candle(bucket, self._open, self._high, self._low, self._close, volume, self._synthetic)]
        return []

    def _start(self, bucket: int, candle: Candle) -> None:
        self._bucket = bucket
        self._spoiled = candle[0] != bucket  # joined mid-bucket: its start is missing
        self._open, self._high, self._low, self._close = candle[1], candle[2], candle[3], candle[4]
        self._volume = candle[5]
        self._synthetic = candle[6]


def aggregate(base: Timeframe, target: Timeframe, candles: Iterable[Candle]) -> Iterator[Candle]:
    """Stream ascending base candles (holes allowed) into derived candles of complete buckets, in one pass."""
    agg = Aggregator(base, target)
    for c in candles:
        yield from agg.push(c)
