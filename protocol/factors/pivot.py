"""Major and minor pivots (docs/factors.md, "Pivot"): swing highs and lows confirmed ``window`` bars later.

Each tick tests one centre bar, the one ``window`` bars back, against the ``2*window + 1`` bars around it.
Sliding-window extremes come from monotonic deques, so a tick costs O(1) amortised whatever the window.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any, ClassVar

from protocol.factors.base import Factor, FactorContext, FactorEvent, FactorTick


class _Extremes:
    """Earliest maximum (or minimum, with ``sign`` -1) of the last ``span`` values, by absolute index.

    Values and indices sit in two parallel deques, strictly decreasing in value (increasing with
    ``sign`` -1): an equal newcomer does not evict the older bar, so the front is the earliest extreme.
    """

    __slots__ = ("idx", "span", "val")

    def __init__(self, span: int) -> None:
        self.span = span
        self.val: deque[float] = deque()
        self.idx: deque[int] = deque()

    def push(self, i: int, v: float) -> None:
        """Add bar ``i`` with value ``v``; the bar ``span`` back leaves the window."""
        val = self.val
        idx = self.idx
        while val and val[-1] < v:
            val.pop()
            idx.pop()
        val.append(v)
        idx.append(i)
        if idx[0] <= i - self.span:  # one bar leaves per push, and only ever the front one
            val.popleft()
            idx.popleft()

    def clear(self) -> None:
        self.val.clear()
        self.idx.clear()

    def __getstate__(self) -> tuple[int, deque[float], deque[int]]:
        return (self.span, self.val, self.idx)

    def __setstate__(self, state: tuple[int, deque[float], deque[int]]) -> None:
        self.span, self.val, self.idx = state


def _check_window(name: str, value: Any) -> int:
    if type(value) is not int or value < 1:
        raise ValueError(f"pivot: {name} must be an integer >= 1, got {value!r}")
    return value


class Pivot(Factor):
    """Emits ``pivot.major`` and ``pivot.minor`` events; ``latest_major_idx`` is the latest major's bar."""

    name = "pivot"
    version = 1
    depends = ()
    defaults: ClassVar[Mapping[str, Any]] = {"major_window": 50, "minor_window": 5}

    def __init__(self, ctx: FactorContext, settings: Mapping[str, Any]) -> None:
        super().__init__(ctx, settings)
        self.major_window = _check_window("major_window", self.settings["major_window"])
        self.minor_window = _check_window("minor_window", self.settings["minor_window"])
        span = 2 * max(self.major_window, self.minor_window) + 1
        if span > ctx.bars.max_bars:
            raise ValueError(f"pivot: a window of {span} bars needs max_bars >= {span}, got {ctx.bars.max_bars}")
        self._tf = ctx.tf
        self.latest_major_idx: int | None = None  # absolute bar index of the latest major pivot
        self._last_time: int | None = None
        self._run = 0  # consecutive bars (times exactly tf apart) ending at the latest one
        # Maxima of highs use the values as they are; minima of lows store them negated, so one
        # "pop while smaller" rule keeps all four deques and the earliest extreme stays in front.
        self._major_high = _Extremes(2 * self.major_window + 1)
        self._major_low = _Extremes(2 * self.major_window + 1)
        self._minor_high = _Extremes(2 * self.minor_window + 1)
        self._minor_low = _Extremes(2 * self.minor_window + 1)

    def apply(self, tick: FactorTick) -> list[FactorEvent]:
        candle = tick.candle
        t = candle[0]
        high = candle[2]
        neg_low = -candle[3]
        i = tick.index
        if self._last_time is not None and t - self._last_time == self._tf:
            self._run += 1
        else:  # first bar or a missing candle: every window starts over
            self._run = 1
            for ext in (self._major_high, self._major_low, self._minor_high, self._minor_low):
                ext.clear()
        self._last_time = t
        self._major_high.push(i, high)
        self._major_low.push(i, neg_low)
        self._minor_high.push(i, high)
        self._minor_low.push(i, neg_low)

        out: list[FactorEvent] = []
        run = self._run
        w = self.major_window
        if run > 2 * w:
            # The centre is a major resistance iff it is the window's earliest highest high: every
            # high on its left is strictly lower and none on its right is higher. Mirror for support.
            centre = i - w
            if self._major_high.idx[0] == centre:
                out.append(self._event("major", centre, w, t, "resistance"))
            if self._major_low.idx[0] == centre:
                out.append(self._event("major", centre, w, t, "support"))
            if out:
                self.latest_major_idx = centre
        w = self.minor_window
        latest = self.latest_major_idx
        if latest is not None and run > 2 * w and i - 2 * w >= latest:
            # Ties allowed: the centre only has to reach the window's extreme (front of the deque).
            bars = self.ctx.bars
            if bars.highs[-1 - w] >= self._minor_high.val[0]:
                out.append(self._event("minor", i - w, w, t, "resistance"))
            if -bars.lows[-1 - w] >= self._minor_low.val[0]:
                out.append(self._event("minor", i - w, w, t, "support"))
        return out

    def _event(self, level: str, centre: int, window: int, visible_time: int, direction: str) -> FactorEvent:
        """The event of a pivot at absolute bar ``centre`` (``level`` major|minor)."""
        bars = self.ctx.bars
        pos = bars.at(centre)
        pivot_time = bars.times[pos]
        price = bars.highs[pos] if direction == "resistance" else bars.lows[pos]
        return FactorEvent(
            factor="pivot",
            kind=f"pivot.{level}",
            event_key=f"{level}:{pivot_time}:{direction}:{window}",
            visible_time=visible_time,
            payload={
                "pivot_time": pivot_time,
                "pivot_price": price,
                "direction": direction,
                "visible_time": visible_time,
                "window": window,
                "pivot_idx": centre,
            },
        )
