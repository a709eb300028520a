"""Overlay instructions: factor events and heads in, chart drawing-instruction changes out (docs/factors.md).

An :class:`OverlayBuilder` runs after the factors once per closed candle ("tick") and returns only the
instructions that are new, changed, or gone since the previous tick; the daemon stores each change as one
overlay version. Event-driven instructions (pivots, dead zones, anchor switches and history) never change,
so they are emitted once and forgotten. Head-driven ones (pens being drawn, the alive zone, the current
anchor, sr levels) and the confirmed-pen chain are kept and diffed, so the state stays small and bounded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any, ClassVar, Final, NamedTuple

from protocol.factors.base import FactorEvent

MAX_PEN_POINTS: Final = 100  # the confirmed-pen chain keeps its latest points only

MARKER: Final = "marker"
POLYLINE: Final = "polyline"

# Colours. Any change to a definition's shape or colour must bump OverlayBuilder.version.
_RED: Final = "#ef4444"
_GREEN: Final = "#22c55e"
_RED_SOFT: Final = "rgba(239,68,68,0.6)"
_GREEN_SOFT: Final = "rgba(34,197,94,0.6)"
_PEN: Final = "#ffffff"
_PEN_LIVE: Final = "#94a3b8"
_ANCHOR: Final = "#f59e0b"
_ANCHOR_HISTORY: Final = "rgba(59,130,246,0.55)"
_SR_BROKEN: Final = "rgba(148,163,184,0.6)"

_EMPTY: Final[Mapping[str, Any]] = {}
_BY_ID: Final = itemgetter(0)


# Instructions whose last point follows the newest candle (an alive zone's box): a new definition only when
# the zone changes; in between, their end is "the candle the reader reads for".
MOVING: Final = frozenset({"zhongshu.alive:top", "zhongshu.alive:bottom"})


class InstructionChange(NamedTuple):
    """One new, changed or removed instruction. ``definition`` is shared with the builder's state: read-only."""

    instruction_id: str
    kind: str  # MARKER | POLYLINE
    visible_time: int
    definition: dict[str, Any] | None  # None: the instruction is removed


def _segment(
    feature: str, t0: int, v0: float, t1: int, v1: float, color: str, width: int, dashed: bool = False
) -> dict[str, Any]:
    d: dict[str, Any] = {
        "type": POLYLINE,
        "feature": feature,
        "points": [{"time": t0, "value": v0}, {"time": t1, "value": v1}],
        "color": color,
        "lineWidth": width,
    }
    if dashed:
        d["lineStyle"] = "dashed"
    return d


def _item_line(feature: str, item: Mapping[str, Any], color: str, width: int, dashed: bool) -> dict[str, Any]:
    """A two-point line of a pen-like item or anchor ref: (start_time, start_price) -> (end_time, end_price)."""
    return _segment(
        feature, item["start_time"], item["start_price"], item["end_time"], item["end_price"], color, width, dashed
    )


def _zone_color(entry_direction: int, alive: bool) -> str:
    if alive:
        return "rgba(22,163,74,0.72)" if entry_direction >= 0 else "rgba(220,38,38,0.72)"
    return "rgba(74,222,128,0.58)" if entry_direction >= 0 else "rgba(248,113,113,0.58)"


def _zone_lines(feature: str, zone: Mapping[str, Any], alive: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The zone's (top, bottom) horizontal lines at zg and zd from its start to its end."""
    start, end, entry = zone["start_time"], zone["end_time"], zone["entry_direction"]
    color = _zone_color(entry, alive)
    width = 2 if alive else 1
    top = _segment(feature, start, zone["zg"], end, zone["zg"], color, width)
    bottom = _segment(feature, start, zone["zd"], end, zone["zd"], color, width)
    top["entryDirection"] = bottom["entryDirection"] = entry
    return top, bottom


def _pivot_marker(feature: str, p: Mapping[str, Any]) -> dict[str, Any]:
    high = p["direction"] == "resistance"
    major = feature == "pivot.major"
    return {
        "type": MARKER,
        "feature": feature,
        "time": p["pivot_time"],
        "position": "aboveBar" if high else "belowBar",
        "color": (_RED if high else _GREEN) if major else (_RED_SOFT if high else _GREEN_SOFT),
        "shape": "arrowDown" if high else "arrowUp",
        "text": "H" if high else "L",
        "size": 2 if major else 1,
    }


def _sr_line(level: Mapping[str, Any]) -> dict[str, Any]:
    status = level["status"]
    price = level["price"]
    end = level["death_time"] or level["last_time"]
    if status == "broken":
        return _segment("sr.broken", level["first_time"], price, end, price, _SR_BROKEN, 1, dashed=True)
    color = _RED if level["side"] == "resistance" else _GREEN
    # a level being flipped through ("flip") is still drawn, thinner and dashed
    if status == "flip":
        return _segment("sr.active", level["first_time"], price, end, price, color, 1, dashed=True)
    return _segment("sr.active", level["first_time"], price, end, price, color, 2)


class OverlayBuilder:
    """Incremental overlay instructions of one series. Pure; pickles; feed ticks in ascending time."""

    version: ClassVar[int] = 1  # bump when any definition's shape or colour changes: stored outputs get rebuilt

    __slots__ = ("_anchor", "_live", "_pen_candidate", "_pen_extending", "_pen_points", "_sr_synced", "_zone")

    def __init__(self) -> None:
        # latest definition of every live head-driven instruction, by id (what removals and diffs need)
        self._live: dict[str, dict[str, Any]] = {}
        # the confirmed-pen chain, at most MAX_PEN_POINTS (time, price) pairs: tuples, not dicts, since a
        # thousand series each hold theirs; the definition's point dicts are built when it changes
        self._pen_points: list[tuple[int, float]] = []
        # copies of the head parts last drawn: an equal head part means no work at all this tick
        self._pen_extending: dict[str, Any] | None = None
        self._pen_candidate: dict[str, Any] | None = None
        self._zone: tuple[Any, ...] | None = None
        self._anchor: dict[str, Any] | None = None
        self._sr_synced = False  # sr levels only move on ticks with an sr.snapshot (after the first tick)

    def update(
        self, tick_time: int, events: Sequence[FactorEvent], heads: Mapping[str, Mapping[str, Any]]
    ) -> list[InstructionChange]:
        """The instruction changes of one tick, sorted by id: its factor events and the heads after it."""
        out: list[InstructionChange] = []
        sr_moved = not self._sr_synced
        if events:
            sr_moved = self._events(events, out) or sr_moved

        pen = heads.get("pen", _EMPTY)
        item = pen.get("extending") or None
        if item != self._pen_extending:
            self._pen_extending = dict(item) if item else None
            line = _item_line("pen.extending", item, _PEN_LIVE, 2, False) if item else None
            self._put("pen.extending", tick_time, line, out)
        item = pen.get("candidate") or None
        if item != self._pen_candidate:
            self._pen_candidate = dict(item) if item else None
            line = _item_line("pen.candidate", item, _PEN_LIVE, 1, True) if item else None
            self._put("pen.candidate", tick_time, line, out)

        alive = heads.get("zhongshu", _EMPTY).get("alive")
        if alive:
            # Not keyed on end_time: an alive box reaches every new candle, and that move is not a new
            # definition (readers draw its end at the candle they read for; see ``MOVING``).
            z = alive[-1]
            key: tuple[Any, ...] | None = (z["start_time"], z["zg"], z["zd"], z["entry_direction"])
        else:
            key = None
        if key != self._zone:
            self._zone = key
            top, bottom = _zone_lines("zhongshu.alive", alive[-1], True) if alive else (None, None)
            self._put("zhongshu.alive:bottom", tick_time, bottom, out)
            self._put("zhongshu.alive:top", tick_time, top, out)

        ref = heads.get("anchor", _EMPTY).get("current_anchor_ref") or None
        if ref != self._anchor:
            self._anchor = dict(ref) if ref else None
            line = _item_line("anchor.current", ref, _ANCHOR, 2, ref["kind"] == "candidate") if ref else None
            self._put("anchor.current", tick_time, line, out)

        if sr_moved:
            self._sr(tick_time, heads.get("sr", _EMPTY), out)

        if len(out) > 1:
            out.sort(key=_BY_ID)
        return out

    def current(self, instruction_id: str) -> dict[str, Any] | None:
        """The definition of a long-lived instruction as of the latest tick; None for one that does not exist
        now or is event-driven (immutable ones are not kept). A rewind uses it to reconcile stored versions."""
        if instruction_id == "pen.confirmed":
            return self._pen_chain() if self._pen_points else None
        return self._live.get(instruction_id)

    def _pen_chain(self) -> dict[str, Any]:
        return {
            "type": POLYLINE,
            "feature": "pen.confirmed",
            "points": [{"time": t, "value": v} for t, v in self._pen_points],
            "color": _PEN,
            "lineWidth": 2,
        }

    def _put(
        self, iid: str, visible_time: int, definition: dict[str, Any] | None, out: list[InstructionChange]
    ) -> None:
        """Record a head-driven instruction's definition (None: gone) and emit it if it differs."""
        if definition is None:
            gone = self._live.pop(iid, None)
            if gone is not None:
                out.append(InstructionChange(iid, gone["type"], visible_time, None))
        elif self._live.get(iid) != definition:
            self._live[iid] = definition
            out.append(InstructionChange(iid, definition["type"], visible_time, definition))

    def _events(self, events: Sequence[FactorEvent], out: list[InstructionChange]) -> bool:
        """Emit the event-driven instructions; returns whether an sr snapshot came (sr levels may move)."""
        pen_visible: int | None = None
        sr_moved = False
        for ev in events:
            kind, p, vt = ev.kind, ev.payload, ev.visible_time
            if kind == "pivot.major" or kind == "pivot.minor":
                iid = f"{kind}:{p['pivot_time']}:{p['direction']}:{p['window']}"
                out.append(InstructionChange(iid, MARKER, vt, _pivot_marker(kind, p)))
            elif kind == "pen.confirmed":
                points = self._pen_points
                if not points or points[-1][0] != p["start_time"]:
                    points.append((p["start_time"], p["start_price"]))
                points.append((p["end_time"], p["end_price"]))
                pen_visible = vt
            elif kind == "zhongshu.dead":
                base = f"zhongshu.dead:{p['start_time']}:{p['end_time']}:{p['zg']:.6f}:{p['zd']:.6f}"
                top, bottom = _zone_lines("zhongshu.dead", p, False)
                out.append(InstructionChange(f"{base}:top", POLYLINE, vt, top))
                out.append(InstructionChange(f"{base}:bottom", POLYLINE, vt, bottom))
            elif kind == "anchor.switch":
                self._anchor_switch(p, vt, out)
            elif kind == "sr.snapshot":
                sr_moved = True
        if pen_visible is not None:
            points = self._pen_points
            if len(points) > MAX_PEN_POINTS:
                del points[: len(points) - MAX_PEN_POINTS]
            out.append(InstructionChange("pen.confirmed", POLYLINE, pen_visible, self._pen_chain()))
        return sr_moved

    @staticmethod
    def _anchor_switch(p: Mapping[str, Any], vt: int, out: list[InstructionChange]) -> None:
        t, new, old = p["switch_time"], p["new_anchor"], p["old_anchor"]
        direction = new["direction"] if new else 0
        marker = {
            "type": MARKER,
            "feature": "anchor.switch",
            "time": t,
            "position": "belowBar" if direction >= 0 else "aboveBar",
            "color": _ANCHOR,
            "shape": "circle",
            "text": "A",
            "size": 1,
        }
        out.append(InstructionChange(f"anchor.switch:{t}:{direction}:{p['reason']}", MARKER, vt, marker))
        if old:
            iid = f"anchor.history:{t}:{old['start_time']}:{old['end_time']}:{old['direction']}"
            line = _item_line("anchor.history", old, _ANCHOR_HISTORY, 1, False)
            out.append(InstructionChange(iid, POLYLINE, vt, line))

    def _sr(self, tick_time: int, head: Mapping[str, Any], out: list[InstructionChange]) -> None:
        """Diff the sr level lines against the head's levels; a level keeps its id (its stable key) for life."""
        self._sr_synced = True
        wanted = {f"sr.level:{level['key']}": level for level in head.get("levels") or ()}
        for iid in [i for i in self._live if i.startswith("sr.level:") and i not in wanted]:
            self._put(iid, tick_time, None, out)
        for iid, level in wanted.items():
            self._put(iid, tick_time, _sr_line(level), out)
