"""The overlay builder: factor events and heads in, instruction changes out (docs/factors.md, "Drawings")."""

from __future__ import annotations

import pickle
from typing import Any

from protocol.factors.base import FactorEvent
from protocol.factors.catalog import SUB_FEATURES
from protocol.overlays import MAX_PEN_POINTS, MOVING, InstructionChange, OverlayBuilder

Heads = dict[str, dict[str, Any]]
MARKER_KEYS = {"type", "feature", "time", "position", "color", "shape", "text", "size"}
POLYLINE_KEYS = {"type", "feature", "points", "color", "lineWidth"}
POLYLINE_OPTIONAL = {"lineStyle", "entryDirection"}


def ev(kind: str, at: int, /, **payload: Any) -> FactorEvent:
    return FactorEvent(kind.split(".")[0], kind, f"{kind}:{at}:{sorted(payload.items())}", at, payload)


def pivot(kind: str, t: int, price: float, direction: str, window: int, visible: int) -> FactorEvent:
    return ev(
        kind, visible, pivot_time=t, pivot_price=price, direction=direction, visible_time=visible, window=window,
        pivot_idx=t // 60,
    )  # fmt: skip


def pen(t0: int, t1: int, p0: float, p1: float, visible: int) -> FactorEvent:
    return ev(
        "pen.confirmed", visible, start_time=t0, end_time=t1, start_price=p0, end_price=p1,
        direction=1 if p1 > p0 else -1, visible_time=visible, start_idx=t0 // 60, end_idx=t1 // 60,
    )  # fmt: skip


def item(t0: int, t1: int, p0: float, p1: float) -> dict[str, Any]:
    return {"start_time": t0, "end_time": t1, "start_price": p0, "end_price": p1, "direction": 1 if p1 > p0 else -1}


def zone(start: int, end: int, zg: float = 125.0, zd: float = 105.0, death: int | None = None) -> dict[str, Any]:
    return {
        "start_time": start, "end_time": end, "zg": zg, "zd": zd, "entry_direction": 1, "formed_time": start + 240,
        "death_time": death, "formed_reason": "pen_confirmed", "visible_time": death or end,
    }  # fmt: skip


def ref(kind: str, t0: int, t1: int, p0: float, p1: float) -> dict[str, Any]:
    return {"kind": kind, **item(t0, t1, p0, p1)}


def level(key: str, price: float, status: str = "active", last: int = 600, death: int | None = None) -> dict[str, Any]:
    return {
        "key": key, "side": "support" if price < 5 else "resistance", "price": price, "band_low": price - 0.1,
        "band_high": price + 0.1, "touches": 2, "score": 0.75, "status": status, "flip_dir": None, "first_time": 300,
        "last_time": last, "death_time": death,
    }  # fmt: skip


def sr_head(*levels: dict[str, Any]) -> dict[str, Any]:
    return {"algorithm": "pivot_wick_overlap", "levels": list(levels), "pivots": []}


def by_id(changes: list[InstructionChange]) -> dict[str, InstructionChange]:
    ids = [c.instruction_id for c in changes]
    assert ids == sorted(ids), "changes of a tick come sorted by id"
    assert len(ids) == len(set(ids)), "at most one change per instruction per tick"
    return {c.instruction_id: c for c in changes}


def check_shape(change: InstructionChange) -> None:
    d = change.definition
    if d is None:
        return
    assert d["type"] == change.kind
    assert d["feature"] in SUB_FEATURES
    if change.kind == "marker":
        assert set(d) == MARKER_KEYS
        assert d["position"] in {"aboveBar", "belowBar"}
        assert d["shape"] in {"circle", "arrowUp", "arrowDown"}
    else:
        assert change.kind == "polyline"
        assert POLYLINE_KEYS <= set(d) <= POLYLINE_KEYS | POLYLINE_OPTIONAL
        assert d.get("lineStyle", "dashed") == "dashed"
        assert len(d["points"]) >= 2
        assert all(set(p) == {"time", "value"} for p in d["points"])


def test_pivots_become_immutable_markers() -> None:
    b = OverlayBuilder()
    events = [
        pivot("pivot.major", 180, 5.0, "resistance", 50, 3180),
        pivot("pivot.major", 180, 0.5, "support", 50, 3180),
        pivot("pivot.minor", 2880, 4.0, "resistance", 5, 3180),
    ]
    got = by_id(b.update(3180, events, {}))
    assert set(got) == {"pivot.major:180:resistance:50", "pivot.major:180:support:50", "pivot.minor:2880:resistance:5"}
    high, low, minor = (got[i] for i in sorted(got))
    for c in got.values():
        check_shape(c)
        assert c.kind == "marker"
        assert c.visible_time == 3180
    assert high.definition is not None
    assert {k: high.definition[k] for k in ("feature", "time", "position", "shape", "text")} == {
        "feature": "pivot.major", "time": 180, "position": "aboveBar", "shape": "arrowDown", "text": "H",
    }  # fmt: skip
    assert low.definition is not None
    assert (low.definition["position"], low.definition["shape"], low.definition["text"]) == ("belowBar", "arrowUp", "L")
    assert minor.definition is not None
    assert minor.definition["feature"] == "pivot.minor"
    assert minor.definition["size"] < high.definition["size"]
    assert b.update(3240, [], {}) == []


def test_confirmed_pens_form_one_growing_chain() -> None:
    b = OverlayBuilder()
    (c,) = b.update(540, [pen(180, 300, 5.0, 1.0, 540)], {})
    check_shape(c)
    assert (c.instruction_id, c.kind, c.visible_time) == ("pen.confirmed", "polyline", 540)
    assert c.definition is not None
    assert c.definition["feature"] == "pen.confirmed"
    assert c.definition["points"] == [{"time": 180, "value": 5.0}, {"time": 300, "value": 1.0}]
    assert b.update(600, [], {}) == []
    (c,) = b.update(660, [pen(300, 420, 1.0, 9.0, 660)], {})
    assert c.definition is not None
    assert [p["time"] for p in c.definition["points"]] == [180, 300, 420]
    # two pens confirmed on one tick: still one change, with both
    (c,) = b.update(900, [pen(420, 540, 9.0, 1.0, 900), pen(540, 660, 1.0, 8.0, 900)], {})
    assert c.definition is not None
    assert [p["time"] for p in c.definition["points"]] == [180, 300, 420, 540, 660]


def test_pen_chain_keeps_only_the_latest_points() -> None:
    b = OverlayBuilder()
    first = None
    for i in range(MAX_PEN_POINTS + 200):
        (c,) = b.update(60 * i + 600, [pen(60 * i, 60 * i + 60, float(i % 2), float((i + 1) % 2), 60 * i + 600)], {})
        first = first or c.definition
    assert c.definition is not None
    points = c.definition["points"]
    assert len(points) == MAX_PEN_POINTS
    assert points[-1]["time"] == 60 * (MAX_PEN_POINTS + 200)
    assert points[0]["time"] == points[-1]["time"] - 60 * (MAX_PEN_POINTS - 1)
    assert first is not None
    assert len(first["points"]) == 2, "an emitted definition never changes afterwards"


def test_pen_head_lines_appear_change_and_go() -> None:
    b = OverlayBuilder()
    got = by_id(b.update(480, [], {"pen": {"extending": item(180, 420, 7, 0.5), "candidate": item(420, 480, 0.5, 9)}}))
    assert set(got) == {"pen.extending", "pen.candidate"}
    for c in got.values():
        check_shape(c)
        assert (c.kind, c.visible_time) == ("polyline", 480)
    ext, cand = got["pen.extending"].definition, got["pen.candidate"].definition
    assert ext is not None
    assert cand is not None
    assert ext["points"] == [{"time": 180, "value": 7}, {"time": 420, "value": 0.5}]
    assert "lineStyle" not in ext
    assert cand["lineStyle"] == "dashed"
    # equal (freshly built) head: nothing
    assert b.update(540, [], {"pen": {"extending": item(180, 420, 7, 0.5), "candidate": item(420, 480, 0.5, 9)}}) == []
    # the candidate extends; the extending pen stays
    got = by_id(b.update(600, [], {"pen": {"extending": item(180, 420, 7, 0.5), "candidate": item(420, 600, 0.5, 10)}}))
    assert list(got) == ["pen.candidate"]
    # candidate omitted -> removed
    assert b.update(660, [], {"pen": {"extending": item(180, 420, 7, 0.5)}}) == [
        InstructionChange("pen.candidate", "polyline", 660, None)
    ]
    assert b.update(720, [], {"pen": {}}) == [InstructionChange("pen.extending", "polyline", 720, None)]
    assert b.update(780, [], {"pen": {}}) == []


def test_alive_zone_extends_then_dies_into_a_dead_pair() -> None:
    b = OverlayBuilder()
    got = by_id(b.update(600, [], {"zhongshu": {"alive": [zone(100, 600)]}}))
    assert set(got) == {"zhongshu.alive:top", "zhongshu.alive:bottom"}
    for c in got.values():
        check_shape(c)
        assert c.definition is not None
        assert c.definition["feature"] == "zhongshu.alive"
        assert c.definition["entryDirection"] == 1
    top, bottom = got["zhongshu.alive:top"].definition, got["zhongshu.alive:bottom"].definition
    assert top is not None
    assert bottom is not None
    assert top["points"] == [{"time": 100, "value": 125.0}, {"time": 600, "value": 125.0}]
    assert bottom["points"] == [{"time": 100, "value": 105.0}, {"time": 600, "value": 105.0}]
    # visible_time of the alive head moves every tick but the drawing does not: nothing
    assert b.update(630, [], {"zhongshu": {"alive": [{**zone(100, 600), "visible_time": 630}]}}) == []
    # the box reaching a new candle is not a new definition either (MOVING: readers draw its end)
    assert b.update(660, [], {"zhongshu": {"alive": [zone(100, 660)]}}) == []
    assert {"zhongshu.alive:top", "zhongshu.alive:bottom"} == MOVING

    dead = ev("zhongshu.dead", 720, **zone(100, 660, death=720))
    got = by_id(b.update(720, [dead], {"zhongshu": {"alive": []}}))
    base = "zhongshu.dead:100:660:125.000000:105.000000"
    assert got == {
        f"{base}:bottom": got[f"{base}:bottom"],
        f"{base}:top": got[f"{base}:top"],
        "zhongshu.alive:bottom": InstructionChange("zhongshu.alive:bottom", "polyline", 720, None),
        "zhongshu.alive:top": InstructionChange("zhongshu.alive:top", "polyline", 720, None),
    }
    for side, price in (("top", 125.0), ("bottom", 105.0)):
        c = got[f"{base}:{side}"]
        check_shape(c)
        assert (c.kind, c.visible_time) == ("polyline", 720)
        assert c.definition is not None
        assert c.definition["feature"] == "zhongshu.dead"
        assert c.definition["points"] == [{"time": 100, "value": price}, {"time": 660, "value": price}]
        assert c.definition["entryDirection"] == 1
    assert b.update(780, [], {"zhongshu": {"alive": []}}) == []


def test_anchor_switch_marks_and_keeps_history() -> None:
    b = OverlayBuilder()
    first = ev("anchor.switch", 540, switch_time=540, reason="strong_pen", old_anchor=None,
               new_anchor=ref("confirmed", 180, 300, 5.0, 1.0), visible_time=540)  # fmt: skip
    got = by_id(b.update(540, [first], {"anchor": {"current_anchor_ref": ref("confirmed", 180, 300, 5.0, 1.0)}}))
    assert set(got) == {"anchor.switch:540:-1:strong_pen", "anchor.current"}
    for c in got.values():
        check_shape(c)
    marker = got["anchor.switch:540:-1:strong_pen"]
    assert (marker.kind, marker.visible_time) == ("marker", 540)
    assert marker.definition is not None
    assert marker.definition["feature"] == "anchor.switch"
    assert marker.definition["time"] == 540
    current = got["anchor.current"].definition
    assert current is not None
    assert current["feature"] == "anchor.current"
    assert current["points"] == [{"time": 180, "value": 5.0}, {"time": 300, "value": 1.0}]
    assert "lineStyle" not in current

    assert b.update(600, [], {"anchor": {"current_anchor_ref": ref("confirmed", 180, 300, 5.0, 1.0)}}) == []

    second = ev("anchor.switch", 660, switch_time=660, reason="strong_pen",
                old_anchor=ref("confirmed", 180, 300, 5.0, 1.0), new_anchor=ref("candidate", 300, 660, 1.0, 9.0),
                visible_time=660)  # fmt: skip
    got = by_id(b.update(660, [second], {"anchor": {"current_anchor_ref": ref("candidate", 300, 660, 1.0, 9.0)}}))
    assert set(got) == {"anchor.switch:660:1:strong_pen", "anchor.history:660:180:300:-1", "anchor.current"}
    history = got["anchor.history:660:180:300:-1"]
    check_shape(history)
    assert (history.kind, history.visible_time) == ("polyline", 660)
    assert history.definition is not None
    assert history.definition["feature"] == "anchor.history"
    assert history.definition["points"] == [{"time": 180, "value": 5.0}, {"time": 300, "value": 1.0}]
    current = got["anchor.current"].definition
    assert current is not None
    assert current["lineStyle"] == "dashed"

    assert b.update(720, [], {"anchor": {"current_anchor_ref": None}}) == [
        InstructionChange("anchor.current", "polyline", 720, None)
    ]


def test_sr_levels_keep_a_stable_id_across_snapshots() -> None:
    b = OverlayBuilder()
    head = sr_head(level("s1", 1.0), level("r8", 8.0))
    got = by_id(b.update(780, [ev("sr.snapshot", 780, visible_time=780, **head)], {"sr": head}))
    assert set(got) == {"sr.level:s1", "sr.level:r8"}
    for c in got.values():
        check_shape(c)
        assert (c.kind, c.visible_time) == ("polyline", 780)
        assert c.definition is not None
        assert c.definition["feature"] == "sr.active"
    s1 = got["sr.level:s1"].definition
    assert s1 is not None
    assert s1["points"] == [{"time": 300, "value": 1.0}, {"time": 600, "value": 1.0}]

    # no snapshot, same levels: nothing
    assert b.update(840, [], {"sr": sr_head(level("s1", 1.0), level("r8", 8.0))}) == []
    # a new snapshot: s1 touched again (same id, new end), r8 unchanged, a new level appears
    head = sr_head(level("s1", 1.0, last=900), level("r8", 8.0), level("r9", 9.0))
    got = by_id(b.update(900, [ev("sr.snapshot", 900, visible_time=900, **head)], {"sr": head}))
    assert set(got) == {"sr.level:s1", "sr.level:r9"}
    s1 = got["sr.level:s1"].definition
    assert s1 is not None
    assert s1["points"][1] == {"time": 900, "value": 1.0}
    # r8 breaks (ends at its death, feature sr.broken), r9 leaves the head (removed)
    head = sr_head(level("s1", 1.0, last=900), level("r8", 8.0, status="broken", death=960))
    got = by_id(b.update(960, [ev("sr.snapshot", 960, visible_time=960, **head)], {"sr": head}))
    assert got["sr.level:r9"] == InstructionChange("sr.level:r9", "polyline", 960, None)
    r8 = got["sr.level:r8"]
    check_shape(r8)
    assert r8.definition is not None
    assert r8.definition["feature"] == "sr.broken"
    assert r8.definition["points"] == [{"time": 300, "value": 8.0}, {"time": 960, "value": 8.0}]
    assert set(got) == {"sr.level:r8", "sr.level:r9"}


def test_first_tick_draws_whatever_the_heads_already_hold() -> None:
    """A builder started against restored heads (no snapshot on its first tick) still draws the sr levels."""
    got = by_id(OverlayBuilder().update(60, [], {"sr": sr_head(level("s1", 1.0))}))
    assert set(got) == {"sr.level:s1"}


def scenario() -> list[tuple[int, list[FactorEvent], Heads]]:
    """A run through every kind of input, one entry per tick."""
    ticks: list[tuple[int, list[FactorEvent], Heads]] = []
    alive: list[dict[str, Any]] = []
    current = None
    levels: list[dict[str, Any]] = []
    for i in range(400):
        t = 60 * (i + 1)
        events: list[FactorEvent] = []
        if i % 7 == 0:
            events.append(pivot("pivot.major", t - 300, float(i), "resistance" if i % 2 else "support", 5, t))
        if i % 11 == 0:
            events.append(pivot("pivot.minor", t - 120, float(i), "support", 2, t))
        if i % 13 == 0 and i:
            events.append(pen(t - 780, t - 300, float(i % 5), float(i % 3 + 6), t))
        if i % 50 == 10:
            alive = [zone(t - 600, t)]
        elif alive and i % 50 == 40:
            events.append(ev("zhongshu.dead", t, **{**alive[0], "death_time": t}))
            alive = []
        elif alive:
            alive = [zone(alive[0]["start_time"], t)]
        if i % 17 == 0:
            new = ref("confirmed" if i % 2 else "candidate", t - 600, t - 60, 1.0, float(i % 9 + 2))
            events.append(ev("anchor.switch", t, switch_time=t, reason="strong_pen", old_anchor=current,
                             new_anchor=new, visible_time=t))  # fmt: skip
            current = new
        if i % 19 == 0:
            levels = [level(f"k{j}", float(j), last=t, status="broken" if (i + j) % 5 == 0 else "active")
                      for j in range(i % 4, i % 4 + 3)]  # fmt: skip
            events.append(ev("sr.snapshot", t, visible_time=t, **sr_head(*levels)))
        pen_head = {} if i % 23 == 0 else {"extending": item(t - 240, t - (i % 3) * 60, 1.0, 2.0 + i % 4)}
        if i % 3 == 0 and pen_head:
            pen_head["candidate"] = item(t - 120, t, 2.0, 1.0)
        ticks.append((t, events, {"pivot": {}, "pen": pen_head, "zhongshu": {"alive": list(alive)},
                                  "anchor": {"current_anchor_ref": current}, "sr": sr_head(*levels)}))  # fmt: skip
    return ticks


def test_every_change_is_well_formed_and_features_are_catalog_keys() -> None:
    b = OverlayBuilder()
    kinds = set()
    for t, events, heads in scenario():
        for c in by_id(b.update(t, events, heads)).values():
            check_shape(c)
            kinds.add(c.definition["feature"] if c.definition else None)
    assert kinds == SUB_FEATURES | {None}


def test_replaying_equal_heads_changes_nothing() -> None:
    b = OverlayBuilder()
    for t, events, heads in scenario():
        b.update(t, events, heads)
        again = pickle.loads(pickle.dumps(heads))  # equal, but not the same objects
        assert b.update(t, [], again) == []


def test_pickle_round_trip_continues_identically() -> None:
    ticks = scenario()
    a = OverlayBuilder()
    for t, events, heads in ticks[:200]:
        a.update(t, events, heads)
    b = pickle.loads(pickle.dumps(a))
    for t, events, heads in ticks[200:]:
        assert b.update(t, events, heads) == a.update(t, events, heads)


def test_state_stays_bounded() -> None:
    b = OverlayBuilder()
    sizes = []
    ticks = scenario()
    for rep in range(40):  # ~60 chain points a round: the chain reaches its cap half way
        for t, events, heads in ticks:
            b.update(t + rep * 60 * len(ticks), events, heads)
        sizes.append(len(pickle.dumps(b)))
    late = sizes[len(sizes) // 2 :]
    assert max(late) < 1.1 * min(late)
