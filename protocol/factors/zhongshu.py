"""Central zones (中枢, docs/factors.md): the overlap of three pens after an entry pen, alive until a
pen leaves it entirely.

Each tick feeds the newly confirmed pens, then the closed candle. A pending structure (entry, P1, P2) forms a
zone either when its P3 pen is confirmed or, earlier, when the running P3 crosses P1's end price; both paths
keep O(1) state (running extremes, pre-intersected ranges), so a candle costs a few comparisons.

A choice where the rules leave room: P3's running extreme covers only candles processed while the pending
structure exists (those after P3's start that close at or after the tick which built it), so a zone is never
dated before it could be seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Final

from protocol.factors.base import Factor, FactorContext, FactorEvent, FactorTick

TAIL_PENS: Final = 4  # confirmed pens remembered: a pending structure needs the last three


class _Pending:
    """Entry, P1 and P2 waiting for P3 (direction ``-P2.direction``, starting at P2's end)."""

    __slots__ = (
        "cross_time",
        "entry",
        "extreme",
        "hi4",
        "lo4",
        "p3_down",
        "p3_start_price",
        "p3_start_time",
        "trigger",
        "zd2",
        "zg2",
    )

    def __init__(self, entry: dict[str, Any], p1: dict[str, Any], p2: dict[str, Any]) -> None:
        e_lo, e_hi = _range(entry)
        a_lo, a_hi = _range(p1)
        b_lo, b_hi = _range(p2)
        self.entry = entry
        self.zd2 = max(a_lo, b_lo)  # P1 and P2 pre-intersected: the zone bounds before P3
        self.zg2 = min(a_hi, b_hi)
        self.lo4 = max(e_lo, self.zd2)  # entry included: the formation test before P3
        self.hi4 = min(e_hi, self.zg2)
        self.p3_down = p2["direction"] > 0
        self.p3_start_time: int = p2["end_time"]
        self.p3_start_price: float = p2["end_price"]
        self.extreme: float = p2["end_price"]
        self.trigger: float = p1["end_price"]
        self.cross_time: int | None = None


class _Zone:
    """The alive zone; ``zg``/``zd`` never change, ``end_time`` follows the candles and pens."""

    __slots__ = (
        "awaiting_p3",
        "end_time",
        "entry_direction",
        "formed_reason",
        "formed_time",
        "p3_start_time",
        "start_time",
        "zd",
        "zg",
    )

    def __init__(self, p: _Pending, zd: float, zg: float, end_time: int, formed_time: int, reason: str) -> None:
        self.start_time: int = p.entry["start_time"]
        self.end_time = end_time
        self.zd = zd
        self.zg = zg
        self.entry_direction: int = p.entry["direction"]
        self.formed_time = formed_time
        self.formed_reason = reason
        self.awaiting_p3 = reason == "price_cross"  # formed before its P3 pen was confirmed
        self.p3_start_time = p.p3_start_time

    def fields(self) -> dict[str, Any]:
        return {
            "start_time": self.start_time,
            "end_time": self.end_time,
            "zg": self.zg,
            "zd": self.zd,
            "entry_direction": self.entry_direction,
            "formed_time": self.formed_time,
        }


def _range(pen: Mapping[str, Any]) -> tuple[float, float]:
    a: float = pen["start_price"]
    b: float = pen["end_price"]
    return (a, b) if a <= b else (b, a)


def _form(p: _Pending, lo: float, hi: float) -> tuple[float, float] | None:
    """(zd, zg) if entry, P1, P2 and a P3 over ``[lo, hi]`` share a price, else None."""
    if max(p.lo4, lo) > min(p.hi4, hi):
        return None
    return max(p.zd2, lo), min(p.zg2, hi)


class Zhongshu(Factor):
    """Emits ``zhongshu.dead``; the head is the alive zone. ``formed_this_tick`` is the entry pen payload of
    a zone formed in the current tick (None otherwise), for the anchor."""

    name = "zhongshu"
    version = 1
    depends = ("pen",)
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, ctx: FactorContext, settings: Mapping[str, Any]) -> None:
        super().__init__(ctx, settings)
        self.tail: list[dict[str, Any]] = []  # the last TAIL_PENS confirmed pen payloads
        self.alive: _Zone | None = None
        self.pending: _Pending | None = None
        self.reseed_floor = 0  # a new pending structure's entry may not start before this (0: no floor)
        self.formed_this_tick: dict[str, Any] | None = None
        self.now: int | None = None

    def apply(self, tick: FactorTick) -> list[FactorEvent]:
        self.formed_this_tick = None
        candle = tick.candle
        t = candle[0]
        self.now = t
        out: list[FactorEvent] = []
        pens = tick.emitted.get("pen")
        if pens:
            for ev in pens:
                if ev.kind == "pen.confirmed":
                    self._feed_pen(ev.payload, out)
        zone = self.alive
        if zone is not None:
            if t > zone.end_time:
                zone.end_time = t
            return out
        p = self.pending
        if p is None or t <= p.p3_start_time:
            return out
        if p.p3_down:
            low = candle[3]
            if low < p.extreme:
                p.extreme = low
            if p.cross_time is None and low <= p.trigger:
                p.cross_time = t
        else:
            high = candle[2]
            if high > p.extreme:
                p.extreme = high
            if p.cross_time is None and high >= p.trigger:
                p.cross_time = t
        if p.cross_time is not None:
            a, b = p.p3_start_price, p.extreme
            bounds = _form(p, a, b) if a <= b else _form(p, b, a)
            if bounds is not None:
                self.alive = _Zone(p, bounds[0], bounds[1], t, p.cross_time, "price_cross")
                self.pending = None
                self.formed_this_tick = p.entry
        return out

    def _feed_pen(self, pen: dict[str, Any], out: list[FactorEvent]) -> None:
        tail = self.tail
        tail.append(pen)
        if len(tail) > TAIL_PENS:
            del tail[0]
        zone = self.alive
        if zone is None:
            p = self.pending
            if p is not None and pen["start_time"] == p.p3_start_time:
                # P3 itself: form or give up; either way the window then slides one pen.
                self.pending = None
                lo, hi = _range(pen)
                bounds = _form(p, lo, hi)
                if bounds is not None:
                    self.alive = _Zone(p, bounds[0], bounds[1], pen["end_time"], pen["visible_time"], "pen_confirmed")
                    self.formed_this_tick = p.entry
                    return
            if self.pending is None:
                self._reseed()
            return
        if zone.awaiting_p3 and pen["start_time"] == zone.p3_start_time:
            zone.awaiting_p3 = False
            zone.end_time = max(zone.end_time, pen["end_time"])
            return
        lo, hi = _range(pen)
        if hi < zone.zd or lo > zone.zg:
            out.append(self._death(zone, pen))
            self.reseed_floor = tail[-2]["start_time"] if len(tail) >= 2 else pen["start_time"]
            self.alive = None
            self._reseed()
        else:
            zone.end_time = max(zone.end_time, pen["end_time"])

    def _reseed(self) -> None:
        """A pending structure from the last three pens, unless its entry starts before the reseed floor."""
        tail = self.tail
        if len(tail) < 3:
            return
        entry = tail[-3]
        if self.reseed_floor > 0 and entry["start_time"] < self.reseed_floor:
            return
        self.pending = _Pending(entry, tail[-2], tail[-1])

    @staticmethod
    def _death(zone: _Zone, pen: dict[str, Any]) -> FactorEvent:
        death: int = pen["visible_time"]
        payload = zone.fields()
        payload["death_time"] = death
        payload["formed_reason"] = zone.formed_reason
        payload["visible_time"] = death
        key = f"dead:{zone.start_time}:{zone.formed_time}:{death}:{zone.zg:.8f}:{zone.zd:.8f}:{zone.formed_reason}"
        return FactorEvent("zhongshu", "zhongshu.dead", key, death, payload)

    def head(self) -> dict[str, Any]:
        zone = self.alive
        if zone is None:
            return {"alive": []}
        item = zone.fields()
        item["death_time"] = None
        item["formed_reason"] = zone.formed_reason
        item["visible_time"] = self.now
        return {"alive": [item]}
