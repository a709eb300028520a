"""The anchor (docs/factors.md, "Anchor"): the pen that currently matters most, by strength |end - start|.

Each tick the anchor may move to a newly formed zone's entry pen, then to the strictly strongest contender
(newly confirmed pens, then the candidate pen after the last confirmed one) that beats the strength it had
when the tick started. The candidate's extreme is a running one: bars are rescanned only when a new pen is
confirmed, so a plain candle costs O(1).

Two details: the candidate exists once at least one bar follows the last confirmed pen's end (its
strength may then be 0); a move that keeps the start time updates the anchor without an event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from protocol.factors.base import Factor, FactorContext, FactorEvent, FactorTick


def _ref(kind: str, pen: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "kind": kind,
        "start_time": pen["start_time"],
        "end_time": pen["end_time"],
        "direction": pen["direction"],
        "start_price": pen["start_price"],
        "end_price": pen["end_price"],
    }


class Anchor(Factor):
    """Emits ``anchor.switch``; ``current`` is the anchor reference (None before the first one)."""

    name = "anchor"
    version = 1
    depends = ("pen", "zhongshu")
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, ctx: FactorContext, settings: Mapping[str, Any]) -> None:
        super().__init__(ctx, settings)
        self.current: dict[str, Any] | None = None
        self.strength: float | None = None  # the current anchor's strength
        # Candidate: from the last confirmed pen's end to the earliest extreme after it (lowest low after an
        # up pen, highest high after a down pen). ``_cand_time`` None: no bar after the end yet.
        self._base: dict[str, Any] | None = None  # the confirmed pen the candidate follows
        self._cand_up = False
        self._cand_price = 0.0
        self._cand_time: int | None = None

    def apply(self, tick: FactorTick) -> list[FactorEvent]:
        candle = tick.candle
        t = candle[0]
        base = self._base
        pens = tick.emitted.get("pen")
        confirmed = [ev.payload for ev in pens if ev.kind == "pen.confirmed"] if pens else []
        if confirmed:
            base = self._rebase()
        elif base is not None:
            if self._cand_up:
                if self._cand_time is None or candle[2] > self._cand_price:
                    self._cand_price, self._cand_time = candle[2], t
            elif self._cand_time is None or candle[3] < self._cand_price:
                self._cand_price, self._cand_time = candle[3], t

        baseline = self.strength
        out: list[FactorEvent] = []
        entry = self.ctx.get("zhongshu").formed_this_tick
        if entry is not None:
            self._move(
                _ref("confirmed", entry), abs(entry["end_price"] - entry["start_price"]), "zhongshu_entry", t, out
            )

        best: dict[str, Any] | None = None
        best_strength = 0.0
        for pen in confirmed:
            s = abs(pen["end_price"] - pen["start_price"])
            if (baseline is None or s > baseline) and (best is None or s > best_strength):
                best, best_strength = _ref("confirmed", pen), s
        if base is not None and self._cand_time is not None:
            s = abs(self._cand_price - base["end_price"])
            if (baseline is None or s > baseline) and (best is None or s > best_strength):
                best_strength = s
                best = {
                    "kind": "candidate",
                    "start_time": base["end_time"],
                    "end_time": self._cand_time,
                    "direction": 1 if self._cand_up else -1,
                    "start_price": base["end_price"],
                    "end_price": self._cand_price,
                }
        if best is not None:
            self._move(best, best_strength, "strong_pen", t, out)
        return out

    def _rebase(self) -> dict[str, Any] | None:
        """Follow the pen factor's latest confirmed pen: rescan the held bars after its end (once per pen)."""
        base: dict[str, Any] | None = self.ctx.get("pen").last_confirmed
        self._base = base
        self._cand_time = None
        if base is None:
            return None
        self._cand_up = up = base["direction"] < 0
        bars = self.ctx.bars
        a = max(base["end_idx"] + 1 - bars.offset, 0)  # bars no longer held are out of reach
        seg = bars.highs[a:] if up else bars.lows[a:]
        if seg:
            price = max(seg) if up else min(seg)
            self._cand_price = price
            self._cand_time = bars.times[a + seg.index(price)]  # earliest on ties
        return base

    def _move(self, new: dict[str, Any], strength: float, reason: str, t: int, out: list[FactorEvent]) -> None:
        old = self.current
        self.current = new
        self.strength = strength
        if old is not None and old["start_time"] == new["start_time"]:
            return
        if reason == "zhongshu_entry":
            key = f"zhongshu_entry:{t}:{new['start_time']}:{new['end_time']}:{new['direction']}"
        else:
            key = f"strong_pen:{t}:{new['kind']}:{new['start_time']}:{new['end_time']}:{new['direction']}"
        payload = {"switch_time": t, "reason": reason, "old_anchor": old, "new_anchor": new, "visible_time": t}
        out.append(FactorEvent("anchor", "anchor.switch", key, t, payload))

    def head(self) -> dict[str, Any]:
        return {"current_anchor_ref": self.current}
