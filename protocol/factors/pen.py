"""Pens (笔, docs/factors.md, "Pen"): strokes between alternating major pivots, confirmed one pivot late.

The head (``extending`` and ``candidate``) follows running extremes updated once per candle; they are
rescanned from the bars only when the effective pivots change, which is rare.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from protocol.factors.base import Factor, FactorContext, FactorEvent, FactorTick

KEEP_EFFECTIVE: Final = 8  # effective pivots kept; the rules and the head only look at the last three


class Pen(Factor):
    """Emits ``pen.confirmed``; ``effective``, ``last_confirmed`` and ``confirmed_count`` are public state."""

    name = "pen"
    version = 1
    depends = ("pivot",)

    def __init__(self, ctx: FactorContext, settings: Mapping[str, Any]) -> None:
        super().__init__(ctx, settings)
        self.effective: list[dict[str, Any]] = []  # major pivot payloads, the last KEEP_EFFECTIVE of them
        self.last_confirmed: dict[str, Any] | None = None  # payload of the latest confirmed pen
        self.confirmed_count = 0
        # Head tracking, valid while len(effective) >= 2. Extending runs from effective[-2] to the
        # earliest extreme after it (up from a support); candidate from there to the opposite extreme
        # after it. An index of -1 means no such bar yet.
        self._tracking = False
        self._up = True
        self._ext_price = 0.0
        self._ext_idx = -1
        self._ext_time = 0
        self._cand_price = 0.0
        self._cand_idx = -1
        self._cand_time = 0

    def apply(self, tick: FactorTick) -> list[FactorEvent]:
        pivots = tick.emitted.get("pivot")
        out: list[FactorEvent] = []
        if pivots:
            changed = False
            for ev in pivots:
                if ev.kind == "pivot.major":
                    changed = self._add_major(ev.payload, out) or changed
            if changed:
                self._tracking = len(self.effective) >= 2
                if self._tracking:
                    self._rescan()
                return out
        if self._tracking:
            self._advance(tick)
        return out

    def _add_major(self, p: dict[str, Any], out: list[FactorEvent]) -> bool:
        """Apply one new major pivot to the effective list; returns whether the list changed."""
        eff = self.effective
        if eff and eff[-1]["direction"] == p["direction"]:
            last = eff[-1]["pivot_price"]
            price = p["pivot_price"]
            if (price > last) if p["direction"] == "resistance" else (price < last):
                eff[-1] = p
                return True
            return False
        eff.append(p)
        if len(eff) > KEEP_EFFECTIVE:
            del eff[0]
        if len(eff) >= 3:
            start, end = eff[-3], eff[-2]
            direction = 1 if end["pivot_price"] > start["pivot_price"] else -1
            payload = {
                "start_time": start["pivot_time"],
                "end_time": end["pivot_time"],
                "start_price": start["pivot_price"],
                "end_price": end["pivot_price"],
                "direction": direction,
                "visible_time": p["visible_time"],
                "start_idx": start["pivot_idx"],
                "end_idx": end["pivot_idx"],
            }
            out.append(
                FactorEvent(
                    factor="pen",
                    kind="pen.confirmed",
                    event_key=f"confirmed:{payload['start_time']}:{payload['end_time']}:{direction}",
                    visible_time=p["visible_time"],
                    payload=payload,
                )
            )
            self.last_confirmed = payload
            self.confirmed_count += 1
        return True

    def _advance(self, tick: FactorTick) -> None:
        """Extend the head's running extremes by the tick's candle (O(1))."""
        candle = tick.candle
        if self._up:
            high = candle[2]
            if self._ext_idx < 0 or high > self._ext_price:
                self._ext_price, self._ext_idx, self._ext_time = high, tick.index, candle[0]
                self._cand_idx = -1
            elif self._cand_idx < 0 or candle[3] < self._cand_price:
                self._cand_price, self._cand_idx, self._cand_time = candle[3], tick.index, candle[0]
        else:
            low = candle[3]
            if self._ext_idx < 0 or low < self._ext_price:
                self._ext_price, self._ext_idx, self._ext_time = low, tick.index, candle[0]
                self._cand_idx = -1
            elif self._cand_idx < 0 or candle[2] > self._cand_price:
                self._cand_price, self._cand_idx, self._cand_time = candle[2], tick.index, candle[0]

    def _rescan(self) -> None:
        """Recompute the head's extremes after effective[-2] from the held bars (on pivot changes only).

        Bars older than the held history (``max_bars``) cannot be rescanned; the scan starts at the oldest
        held bar then.
        """
        bars = self.ctx.bars
        start = self.effective[-2]
        self._up = up = start["direction"] == "support"
        ext_col, cand_col = (bars.highs, bars.lows) if up else (bars.lows, bars.highs)
        a = max(start["pivot_idx"] + 1 - bars.offset, 0)
        self._ext_idx = self._cand_idx = -1
        seg = ext_col[a:]
        if not seg:
            return
        price = max(seg) if up else min(seg)
        pos = a + seg.index(price)  # earliest on ties
        self._ext_price, self._ext_idx, self._ext_time = price, bars.offset + pos, bars.times[pos]
        seg = cand_col[pos + 1 :]
        if not seg:
            return
        price = min(seg) if up else max(seg)
        pos += 1 + seg.index(price)
        self._cand_price, self._cand_idx, self._cand_time = price, bars.offset + pos, bars.times[pos]

    def head(self) -> dict[str, Any]:
        if self.confirmed_count < 1 or not self._tracking or self._ext_idx < 0:
            return {}
        start = self.effective[-2]
        if self._ext_price == start["pivot_price"]:
            return {}
        direction = 1 if self._up else -1
        out: dict[str, Any] = {
            "extending": {
                "start_time": start["pivot_time"],
                "end_time": self._ext_time,
                "start_price": start["pivot_price"],
                "end_price": self._ext_price,
                "direction": direction,
            }
        }
        if self._cand_idx >= 0 and self._cand_price != self._ext_price:
            out["candidate"] = {
                "start_time": self._ext_time,
                "end_time": self._cand_time,
                "start_price": self._ext_price,
                "end_price": self._cand_price,
                "direction": -direction,
            }
        return out
