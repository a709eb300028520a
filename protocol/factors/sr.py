"""Support and resistance levels (docs/factors.md): lines where the bar ranges of two major pivots of
one side overlap, scored by how many pivots touch them and aged by how often closes flip across.

It runs only on ticks that add a major pivot. A level belongs to its newer pivot S and is fixed when S
arrives (the pair, line, band and tolerance depend only on older bars), so each run pairs the new pivots
only; touches are counted as pivots come and go, and a level's flips resume from the previous run.

Choices where the rules leave room:
- ATR of a bar = mean true range of the ``atr_period`` bars ending at it; a pivot keeps its own, computed
  when it arrives. Bars no longer held in ``ctx.bars`` are out of reach: a pair whose closes in between
  are gone is not formed, and a status scan starts at the oldest held bar.
- Status flips are counted against the level's own (pair) tolerance, so a broken level stays broken
  (death at the 3rd flip) and the count is incremental; ``flip_dir`` is the side of the last flip.
- Duplicates: levels of one side, newest S first; a level within the dedup distance of a kept one is
  dropped, unless the kept one is broken and it is not (then it takes its place).
- Every run writes a snapshot, empty or not; ``pivots`` lists the pivots that define the listed levels.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any, ClassVar, Final

from protocol.factors.base import Bars, Factor, FactorContext, FactorEvent, FactorTick

ALGORITHM: Final = "pivot_wick_overlap"
TOLERANCE_ATR: Final = 0.5  # tolerance = this x ATR; touches use it per pivot, pairs per mean of the two
MAX_PAIR_FLIPS: Final = 3  # a pair with more flips between its pivots is no level
BROKEN_FLIPS: Final = 3  # the flip after the last touch that breaks a level


class _Pivot:
    """A major pivot with what SR needs of its bar, read once when it arrives."""

    __slots__ = ("atr", "high", "idx", "low", "out", "reach_high", "reach_low", "resistance", "time")

    def __init__(self, p: Mapping[str, Any], high: float, low: float, atr: float) -> None:
        self.idx: int = p["pivot_idx"]
        self.time: int = p["pivot_time"]
        self.resistance = p["direction"] == "resistance"
        self.high = high
        self.low = low
        self.atr = atr
        self.out = {
            "pivot_time": self.time,
            "pivot_price": p["pivot_price"],
            "direction": p["direction"],
            "major": True,
        }
        # It touches a level whose band meets [reach_low, reach_high]: its range widened by its tolerance.
        tol = TOLERANCE_ATR * atr if atr > 0 else abs(p["pivot_price"]) * 0.002
        self.reach_low = low - tol
        self.reach_high = high + tol


class _Level:
    """The level defined by pivot ``s`` and the older pivot ``c`` it paired with; ``out`` caches its dict
    (replaced, never changed in place, since published snapshots share it)."""

    __slots__ = (
        "band_high",
        "band_low",
        "c",
        "death_time",
        "dedup",
        "flips",
        "line",
        "out",
        "pos",
        "s",
        "tol",
        "touches",
    )

    def __init__(self, s: _Pivot, c: _Pivot, ov_lo: float, ov_hi: float, line: float, tol: float) -> None:
        self.s = s
        self.c = c
        self.line = line
        self.tol = tol
        self.dedup = max(abs(line) * 0.001, tol / 2)
        atrs = [a for a in (s.atr, c.atr) if a > 0]
        ref = sum(atrs) / len(atrs) if atrs else abs(line) * 0.02
        if ref <= 0:
            ref = 1e-9
        lo, hi = min(ov_lo, ov_hi), max(ov_lo, ov_hi)
        width = min(max(hi - lo, 0.5 * ref), 3.0 * ref)
        mid = (lo + hi) / 2
        self.band_low = mid - width / 2
        self.band_high = mid + width / 2
        self.touches = 0  # pivots of its side whose range meets the band
        self.pos = 0  # side of the last close outside line +- tol: 1 above, -1 below, 0 none yet
        self.flips = 0
        self.death_time: int | None = None
        self.out: dict[str, Any] | None = None

    def scan(self, closes: array[float], times: array[int], a: int, b: int) -> None:
        """Count flips over closes[a:b] (positions in the bar columns) until the level breaks."""
        pos, flips, stop = _flips(closes, a, b, self.line, self.tol, self.pos, self.flips, BROKEN_FLIPS)
        if stop >= 0:
            self.death_time = times[stop]
        if pos != self.pos or flips != self.flips:
            self.out = None
        self.pos = pos
        self.flips = flips

    def render(self) -> dict[str, Any]:
        out = self.out
        if out is None:
            side = "resistance" if self.s.resistance else "support"
            touches = max(2, self.touches)
            if self.death_time is not None:
                status, flip_dir = "broken", None
            elif self.flips:
                status, flip_dir = "flip", "up" if self.pos > 0 else "down"
            else:
                status, flip_dir = "active", None
            out = self.out = {
                "key": f"{side}:{self.c.time}:{self.s.time}",
                "side": side,
                "price": self.line,
                "band_low": self.band_low,
                "band_high": self.band_high,
                "touches": touches,
                "score": 0.5 * min(1.0, touches / 4) + 0.5,  # every pivot is a major: major share 1
                "status": status,
                "flip_dir": flip_dir,
                "first_time": self.c.time,
                "last_time": self.s.time,
                "death_time": self.death_time,
            }
        return out


def _setting(name: str, value: Any) -> int:
    if type(value) is not int or value < 1:
        raise ValueError(f"sr: {name} must be an integer >= 1, got {value!r}")
    return value


def _atr(bars: Bars, index: int, period: int) -> float:
    """Mean true range of the ``period`` bars ending at absolute ``index`` (held bars only)."""
    off = bars.offset
    highs, lows, closes = bars.highs, bars.lows, bars.closes
    first = max(index - period + 1, off)
    total = 0.0
    for j in range(first - off, index - off + 1):
        h, lo = highs[j], lows[j]
        pc = closes[j - 1] if j > 0 else closes[j]  # the first bar (or first held one) is its own previous
        total += max(h - lo, abs(h - pc), abs(lo - pc))
    return total / (index - first + 1)


def _flips(
    closes: array[float], a: int, b: int, line: float, tol: float, pos: int, flips: int, limit: int
) -> tuple[int, int, int]:
    """Go on counting flips of closes[a:b] across ``line +- tol`` from side ``pos`` (1 above, -1 below, 0 not
    yet outside) and ``flips`` so far. Returns the new side and count, and the position where the count
    reached ``limit`` (it stops there), else -1."""
    up = line + tol
    dn = line - tol
    for j in range(a, b):
        c = closes[j]
        q = 1 if c > up else -1 if c < dn else 0
        if q == 0 or q == pos:
            continue
        if pos:
            flips += 1
            if flips >= limit:
                return pos, flips, j
        pos = q
    return pos, flips, -1


class _Side:
    """The levels of one side, in the order of their S pivots, and their de-duplicated set (cached until a
    level comes, goes or breaks)."""

    __slots__ = ("kept", "levels")

    def __init__(self) -> None:
        self.levels: list[_Level] = []
        self.kept: list[_Level] | None = []

    def dedup(self) -> list[_Level]:
        """Newest S first, a level within its dedup distance of a kept one is dropped, unless that one is
        broken and it is not (then it takes the kept one's place).

        Only levels chained by price gaps <= the side's largest dedup distance can meet, so the greedy pass
        runs per such cluster of the price-sorted levels, and nearly every cluster is a single level.
        """
        if self.kept is not None:
            return self.kept
        out: list[_Level] = []
        levels = sorted(self.levels, key=_by_line)
        if levels:
            reach = max(lv.dedup for lv in levels)
            first = 0
            for i in range(1, len(levels) + 1):
                if i < len(levels) and levels[i].line - levels[i - 1].line <= reach:
                    continue
                if i - first == 1:
                    out.append(levels[first])
                else:
                    _greedy(levels[first:i], out)
                first = i
        self.kept = out
        return out


_by_line = attrgetter("line")


def _greedy(cluster: list[_Level], out: list[_Level]) -> None:
    kept: list[_Level] = []
    cluster.sort(key=_newest_first)
    for lv in cluster:
        broken = lv.death_time is not None
        for i, other in enumerate(kept):
            if abs(other.line - lv.line) <= lv.dedup:
                if other.death_time is not None and not broken:
                    kept[i] = lv
                break
        else:
            kept.append(lv)
    out.extend(kept)


def _newest_first(level: _Level) -> int:
    return -level.s.idx


def _nearest_to(price: float) -> Callable[[_Level], tuple[float, int]]:
    """Sort key: nearest to ``price`` first; on equal distance the level whose newest pivot (its S) is more
    recent, so the last slots of a capped list go to the fresher of two equally near levels."""
    return lambda level: (abs(level.line - price), -level.s.idx)


class SupportResistance(Factor):
    """Emits ``sr.snapshot`` on ticks that add a major pivot; the head is the latest snapshot."""

    name = "sr"
    # 2: broken levels capped at max_levels, like the active ones; 3: equal distances ordered by newest pivot
    version = 3
    depends = ("pivot",)
    defaults: ClassVar[Mapping[str, Any]] = {"atr_period": 14, "max_levels": 10, "max_pivots": 200}

    def __init__(self, ctx: FactorContext, settings: Mapping[str, Any]) -> None:
        super().__init__(ctx, settings)
        self.atr_period = _setting("atr_period", self.settings["atr_period"])
        self.max_levels = _setting("max_levels", self.settings["max_levels"])
        self.max_pivots = _setting("max_pivots", self.settings["max_pivots"])
        self.pivots: list[_Pivot] = []  # the newest max_pivots majors, oldest first
        self._seen: set[tuple[int, bool]] = set()  # (pivot_time, resistance) of self.pivots
        self.supports = _Side()
        self.resistances = _Side()
        self._scanned = -1  # absolute index of the last close the levels' flips were counted to
        self.snapshot: dict[str, Any] | None = None

    def _side(self, resistance: bool) -> _Side:
        return self.resistances if resistance else self.supports

    def apply(self, tick: FactorTick) -> list[FactorEvent]:
        events = tick.emitted.get("pivot")
        if not events:
            return []
        new = [p for ev in events if ev.kind == "pivot.major" and (p := self._add(ev.payload)) is not None]
        if not new:
            return []
        while len(self.pivots) > self.max_pivots:
            self._drop()
        bars = self.ctx.bars
        self._advance(bars)
        for s in new:
            if (s.time, s.resistance) in self._seen:  # not dropped already (a tiny max_pivots)
                self._pair(s, bars)
        self._scanned = tick.index
        t = tick.time
        self.snapshot = self._snapshot(t, bars.closes[-1])
        return [FactorEvent("sr", "sr.snapshot", f"snapshot:{t}", t, self.snapshot)]

    def _add(self, payload: Mapping[str, Any]) -> _Pivot | None:
        key = (payload["pivot_time"], payload["direction"] == "resistance")
        if key in self._seen:
            return None
        bars = self.ctx.bars
        try:
            pos = bars.at(payload["pivot_idx"])
        except IndexError:  # its bar is out of reach
            return None
        p = _Pivot(payload, bars.highs[pos], bars.lows[pos], _atr(bars, payload["pivot_idx"], self.atr_period))
        self.pivots.append(p)
        self._seen.add(key)
        for level in self._side(p.resistance).levels:
            if p.reach_high >= level.band_low and p.reach_low <= level.band_high:
                level.touches += 1
                level.out = None
        return p

    def _drop(self) -> None:
        """Forget the oldest pivot: the levels it pairs in go (it is the older C of any such), touches drop."""
        p = self.pivots.pop(0)
        self._seen.discard((p.time, p.resistance))
        side = self._side(p.resistance)
        keep: list[_Level] = []
        for level in side.levels:
            if level.c is p or level.s is p:
                side.kept = None
                continue
            if p.reach_high >= level.band_low and p.reach_low <= level.band_high:
                level.touches -= 1
                level.out = None
            keep.append(level)
        side.levels = keep

    def _advance(self, bars: Bars) -> None:
        """Count the flips of every unbroken level over the closes since the last run."""
        closes = bars.closes
        a = max(self._scanned + 1 - bars.offset, 0)
        b = len(closes)
        if a >= b:
            return
        seg = closes[a:b]
        lo = min(seg)
        hi = max(seg)
        for side in (self.resistances, self.supports):
            for level in side.levels:
                if level.death_time is not None:
                    continue
                # Mostly no close gets to the other side of a level: the min/max of the new closes decide.
                if level.pos > 0:
                    if lo >= level.line - level.tol:
                        continue
                elif level.pos < 0:
                    if hi <= level.line + level.tol:
                        continue
                else:
                    below = lo < level.line - level.tol
                    above = hi > level.line + level.tol
                    if not (below and above):
                        level.pos = 1 if above else -1 if below else 0
                        continue
                level.scan(closes, bars.times, a, b)
                if level.death_time is not None:
                    side.kept = None

    def _pair(self, s: _Pivot, bars: Bars) -> None:
        """Pair a new pivot with the nearest older one of its side that overlaps it with few flips between."""
        closes = bars.closes
        off = bars.offset
        res = s.resistance
        for c in reversed(self.pivots):
            if c.resistance is not res or c.idx >= s.idx:
                continue
            if c.idx + 1 < off:  # the closes in between are out of reach, as are older pivots'
                return
            ov_lo = max(c.low, s.low)
            ov_hi = min(c.high, s.high)
            line = ov_hi if res else ov_lo
            atrs = [a for a in (s.atr, c.atr) if a > 0]
            tol = TOLERANCE_ATR * sum(atrs) / len(atrs) if atrs else (line if line > 0 else 1.0) * 0.002
            if ov_lo > ov_hi + tol:
                continue
            if _flips(closes, c.idx + 1 - off, s.idx - off, line, tol, 0, 0, MAX_PAIR_FLIPS + 1)[2] >= 0:
                continue
            level = _Level(s, c, ov_lo, ov_hi, line, tol)
            lo, hi = level.band_low, level.band_high
            level.touches = sum(
                1 for p in self.pivots if p.resistance is res and p.reach_high >= lo and p.reach_low <= hi
            )
            level.scan(closes, bars.times, max(s.idx + 1 - off, 0), len(closes))
            side = self._side(res)
            side.levels.append(level)
            side.kept = None
            return

    def _snapshot(self, t: int, price: float) -> dict[str, Any]:
        live: list[_Level] = []
        dead: list[_Level] = []
        for side in (self.resistances, self.supports):
            for lv in side.dedup():
                (live if lv.death_time is None else dead).append(lv)
        nearest = _nearest_to(price)
        live.sort(key=nearest)
        dead.sort(key=nearest)
        # Broken levels are capped too: every snapshot is stored, and listing every broken level since the
        # start made each one ~21 KB; the nearest ``max_levels`` remain.
        chosen = live[: self.max_levels] + dead[: self.max_levels]
        pivots = {p.idx * 2 + p.resistance: p for lv in chosen for p in (lv.c, lv.s)}
        return {
            "visible_time": t,
            "algorithm": ALGORITHM,
            "levels": [lv.render() for lv in chosen],
            "pivots": [pivots[k].out for k in sorted(pivots)],
        }

    def head(self) -> dict[str, Any]:
        snap = self.snapshot
        if snap is None:
            return {}
        return {"algorithm": snap["algorithm"], "levels": snap["levels"], "pivots": snap["pivots"]}
