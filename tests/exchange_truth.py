"""What a run against the fake exchange is checked against: the exchange's klines, and the rules every
subscriber's frames obey (ascending, each candle once, equal to what the log held, a ``gap`` frame exactly
at each hole). Shared by the chaos run and the cluster's writer-kill run."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import attrs

from daemon.fakex.market import Market
from protocol.binance import format_decimal
from protocol.candle import Candle
from protocol.series import SeriesId

Frames = Mapping[str, Sequence[dict[str, Any]]]  # series id -> the frames one connection received, in order


def wire(c: Candle) -> Candle:
    """The exchange's kline as it publishes it: Binance's fixed-point text, 8 places."""
    return c._replace(**{f: float(format_decimal(getattr(c, f))) for f in ("open", "high", "low", "close", "volume")})


def matches(stored: tuple[Any, ...], kline: Candle) -> bool:
    """The exchange's kline in every number; flagged synthetic only where the exchange had no trade (a
    flat candle at the previous close with volume 0, as Binance's own kline of such a period)."""
    if tuple(stored[:6]) != tuple(kline[:6]):
        return False
    return not stored[6] or kline.volume == 0


def exchange_kline(market: Market, series: SeriesId, t: int) -> Candle:
    return wire(market.spot[series.symbol.replace("/", "")].candle(series.timeframe, t))


@attrs.define
class FrameCheck:
    """The subscriber invariants over every connection's frames; ``unequal`` names each candle that broke one."""

    sent: int = 0
    bad_order: int = 0
    bad_value: int = 0
    bad_gap: int = 0
    unequal: list[tuple[Any, ...]] = attrs.field(factory=list)


def check_frames(
    sessions: Iterable[Frames],
    market: Market,
    provisional: AbstractSet[tuple[str, int, tuple[float, ...]]] = frozenset(),
) -> FrameCheck:
    """``provisional``: (series, time, candle) a trade-built series sent and the log corrected later."""
    out = FrameCheck()
    for frames_of in sessions:
        for sid, frames in frames_of.items():
            series = SeriesId.parse(sid)
            tf = series.timeframe
            last: int | None = None
            pending_gap: dict[str, Any] | None = None
            for frame in frames:
                if frame["type"] == "gap":
                    pending_gap = frame
                    continue
                if frame["type"] not in ("candle_closed", "candles_batch"):
                    continue
                for c in frame["candles"] if frame["type"] == "candles_batch" else [frame["candle"]]:
                    out.sent += 1
                    t = c["candle_time"]
                    if last is not None and t <= last:
                        out.bad_order += 1
                    got = (t, c["open"], c["high"], c["low"], c["close"], c["volume"], c.get("synthetic", False))
                    # What the log held when it was sent: the exchange's kline, or (built from trades) a candle
                    # the log corrected later (the gate never sends a time twice).
                    kline = exchange_kline(market, series, t)
                    if not matches(got, kline) and (sid, t, got[1:6]) not in provisional:
                        out.bad_value += 1
                        seen = [p[2] for p in provisional if p[:2] == (sid, t)]
                        out.unequal.append((sid, t, got, tuple(kline), seen, frame["type"]))
                    if last is not None and t > tf.next_open(last):
                        want = {"expected_next_time": tf.next_open(last), "actual_time": t}
                        if pending_gap is None or {k: pending_gap[k] for k in want} != want:
                            out.bad_gap += 1
                    elif pending_gap is not None and last is not None:
                        out.bad_gap += 1  # a gap frame where there was no hole
                    pending_gap = None
                    last = t
    return out
