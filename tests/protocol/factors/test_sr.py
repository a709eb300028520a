"""Support / resistance (docs/factors.md): the worked example, flips and breaks, duplicates,
bounds, and a from-scratch oracle of the same rules over random walks; scripted pivots, plus runs on the real
pivot and pen."""

from __future__ import annotations

import pickle
import random
from collections.abc import Sequence
from typing import Any

import pytest

from protocol.candle import Candle
from protocol.factors.anchor import Anchor
from protocol.factors.base import FactorEngine
from protocol.factors.sr import SupportResistance
from protocol.factors.zhongshu import Zhongshu
from tests.protocol.factors.bars import TF, ScriptedPivot, flat


def major(idx: int, price: float, direction: str, w: int = 2) -> dict[str, Any]:
    """A pivot.major payload for the bar at ``idx`` (time ``TF * (idx + 1)``), visible ``w`` bars later."""
    return {
        "pivot_time": TF * (idx + 1),
        "pivot_price": price,
        "direction": direction,
        "visible_time": TF * (idx + 1 + w),
        "window": w,
        "pivot_idx": idx,
    }


def engine(majors: Sequence[dict[str, Any]], max_bars: int = 1000, **settings: Any) -> FactorEngine:
    return FactorEngine(
        TF,
        [ScriptedPivot, SupportResistance],
        {"pivot": {"majors": list(majors), "minors": True}, "sr": settings},
        max_bars=max_bars,
    )


def snapshots(eng: FactorEngine, candles: Sequence[Candle]) -> dict[int, dict[str, Any]]:
    return {ev.visible_time: ev.payload for c in candles for ev in eng.apply(c) if ev.factor == "sr"}


def by_key(snap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {level["key"]: level for level in snap["levels"]}


PRICES = [1, 2, 5, 2, 1, 2, 9, 2, 1, 2, 8, 2, 1]  # docs/factors.md's 13-price example, t = 60..780
EXAMPLE_MAJORS = [
    major(2, 5, "resistance"),
    major(4, 1, "support"),
    major(6, 9, "resistance"),
    major(8, 1, "support"),
    major(10, 8, "resistance"),
]


def check_example(snaps: dict[int, dict[str, Any]]) -> None:
    last = snaps[780]
    assert last["visible_time"] == 780
    assert last["algorithm"] == "pivot_wick_overlap"
    support, resistance = last["levels"]  # the nearest to the close (1) first
    assert support == {
        "key": "support:300:540",
        "side": "support",
        "price": 1.0,
        "band_low": pytest.approx(1 - 0.5 * 0.5 * (1.6 + 24 / 9) / 2),
        "band_high": pytest.approx(1 + 0.5 * 0.5 * (1.6 + 24 / 9) / 2),
        "touches": 2,
        "score": 0.75,
        "status": "active",
        "flip_dir": None,
        "first_time": 300,
        "last_time": 540,
        "death_time": None,
    }
    assert resistance["key"] == "resistance:420:660"
    assert (resistance["price"], resistance["touches"], resistance["score"]) == (8.0, 2, 0.75)
    assert (resistance["status"], resistance["first_time"], resistance["last_time"]) == ("active", 420, 660)
    assert [(p["pivot_time"], p["pivot_price"], p["direction"]) for p in last["pivots"]] == [
        (300, 1, "support"),
        (420, 9, "resistance"),
        (540, 1, "support"),
        (660, 8, "resistance"),
    ]
    assert all(p["major"] is True for p in last["pivots"])


def test_example_at_780() -> None:
    eng = engine(EXAMPLE_MAJORS)
    snaps = snapshots(eng, [flat(TF * (i + 1), p) for i, p in enumerate(PRICES)])
    assert sorted(snaps) == [300, 420, 540, 660, 780]  # one snapshot per tick with a new major
    assert [len(snaps[t]["levels"]) for t in (300, 420, 540, 660)] == [0, 0, 0, 1]
    assert snaps[660]["levels"][0] == snaps[780]["levels"][0]  # the same level keeps its key
    check_example(snaps)
    head = eng.heads()["sr"]
    assert head == {k: snaps[780][k] for k in ("algorithm", "levels", "pivots")}


def test_example_on_the_real_pivot_and_pen() -> None:
    pivot = pytest.importorskip("protocol.factors.pivot")
    pen = pytest.importorskip("protocol.factors.pen")
    eng = FactorEngine(
        TF,
        [pivot.Pivot, pen.Pen, Zhongshu, Anchor, SupportResistance],
        {"pivot": {"major_window": 2, "minor_window": 1}},
    )
    snaps = snapshots(eng, [flat(TF * (i + 1), p) for i, p in enumerate(PRICES)])
    check_example(snaps)


def test_closes_flipping_across_a_level_make_it_flip_then_broken() -> None:
    # Supports at 100 (bars 2 and 6); tolerance 0.5 x mean ATR = 0.76. After bar 6 the closes go above,
    # below (flip 1), above (flip 2), below (flip 3: broken). Resistances only trigger the runs.
    prices = [104, 103, 100, 103, 104, 103, 100, 103, 104, 96, 104, 96, 104, 103, 104]
    majors = [
        major(2, 100, "support"),
        major(6, 100, "support"),
        major(8, 104, "resistance"),
        major(10, 104, "resistance"),
        major(12, 104, "resistance"),
    ]
    eng = engine(majors)
    snaps = snapshots(eng, [flat(TF * (i + 1), p) for i, p in enumerate(prices)])
    key = "support:180:420"
    assert by_key(snaps[540])[key]["status"] == "active"  # closes 103, 104 after bar 6: above, no flip
    flipped = by_key(snaps[660])[key]
    assert (flipped["status"], flipped["flip_dir"], flipped["death_time"]) == ("flip", "up", None)
    broken = by_key(snaps[780])[key]
    assert (broken["status"], broken["flip_dir"], broken["death_time"]) == ("broken", None, 720)
    sr: SupportResistance = eng.ctx.get("sr")
    assert sr.supports.levels[0].death_time == 720  # final: later closes are not counted again
    broken_last = snaps[780]["levels"][-1]
    assert broken_last["key"] == key  # broken levels come after the live ones


def test_a_pair_with_too_many_flips_between_is_no_level() -> None:
    prices = [104, 103, 100, 104, 96, 104, 96, 104, 96, 104, 100, 103, 104]
    eng = engine([major(2, 100, "support"), major(10, 100, "support")])
    snaps = snapshots(eng, [flat(TF * (i + 1), p) for i, p in enumerate(prices)])
    assert snaps[780]["levels"] == []


def test_duplicate_levels_keep_the_newer_one() -> None:
    prices = [104, 103, 100, 103, 104, 103, 100, 103, 104, 103, 100.05, 103, 104]
    majors = [major(2, 100, "support"), major(6, 100, "support"), major(10, 100.05, "support")]
    eng = engine(majors)
    snaps = snapshots(eng, [flat(TF * (i + 1), p) for i, p in enumerate(prices)])
    assert list(by_key(snaps[540])) == ["support:180:420"]
    assert list(by_key(snaps[780])) == ["support:420:660"]  # 100.05 vs 100: within the dedup distance
    sr: SupportResistance = eng.ctx.get("sr")
    assert len(sr.supports.levels) == 2  # both kept, one listed
    assert by_key(snaps[780])["support:420:660"]["touches"] == 3


def test_pivots_are_bounded_and_a_level_goes_with_its_older_pivot() -> None:
    prices = [104, 103, 100, 103, 104, 103, 100, 103, 104, 103, 100, 103, 104, 103, 100, 103, 104]
    majors = [major(i, 100, "support") for i in (2, 6, 10, 14)]
    eng = engine(majors, max_pivots=3)
    snaps = snapshots(eng, [flat(TF * (i + 1), p) for i, p in enumerate(prices)])
    sr: SupportResistance = eng.ctx.get("sr")
    assert [p.time for p in sr.pivots] == [420, 660, 900]
    assert [lv.c.time for lv in sr.supports.levels] == [420, 660]  # "180:420" left with the pivot at 180
    assert list(by_key(snaps[1020])) == ["support:660:900"]  # duplicates of it: the newest wins
    assert by_key(snaps[1020])["support:660:900"]["touches"] == 3  # touches count the kept pivots only


def test_pivots_and_pairs_out_of_reach_are_skipped() -> None:
    prices = [104, 103, 100, 103, 104, 103, 100, 103, 104, 103, 100, 103, 104] * 2
    # max_bars 4: at most 7 bars are held. A major on a trimmed bar is dropped; the pair 10-19 needs the
    # closes between them, which are gone; 19-23 is in reach.
    majors = [major(10, 100, "support"), major(2, 100, "support", w=14), major(19, 100, "support")]
    majors.append(major(23, 100, "support"))
    eng = engine(majors, max_bars=4)
    snaps = snapshots(eng, [flat(TF * (i + 1), p) for i, p in enumerate(prices)])
    sr: SupportResistance = eng.ctx.get("sr")
    assert [p.idx for p in sr.pivots] == [10, 19, 23]
    assert snaps[TF * 22]["levels"] == []
    assert list(by_key(snaps[TF * 26])) == ["support:1200:1440"]


def ladder(first: str) -> tuple[list[Candle], list[dict[str, Any]]]:
    """Resistance pivots with highs 101, 102, 103, 104, 106, 107 and support pivots with lows 99 .. 93, every
    close 100, each pivot 14 flat bars after the last (so its ATR is its own range / 14 and no two levels
    are duplicates). Each pivot pairs with the previous one of its side at the nearer price: resistance
    levels 101..104 and 106, support levels 99..94. Nine are nearer the close than 6; resistance 106 and
    support 94 tie at 6 for the 10th slot. ``first``: the side whose pivots all come first, so the other
    side's level holds the more recent newest pivot."""
    highs = [("resistance", float(h)) for h in (101, 102, 103, 104, 106, 107)]
    lows = [("support", float(lo)) for lo in (99, 98, 97, 96, 95, 94, 93)]
    order = highs + lows if first == "resistance" else lows + highs
    majors = [major(14 * (n + 1), price, side) for n, (side, price) in enumerate(order)]
    candles = [flat(TF * (i + 1), 100) for i in range(14 * (len(order) + 1))]
    for m in majors:
        i = m["pivot_idx"]
        high, low = max(100.0, m["pivot_price"]), min(100.0, m["pivot_price"])
        candles[i] = Candle(TF * (i + 1), 100.0, high, low, 100.0, 1.0)
    return candles, majors


@pytest.mark.parametrize(("first", "winner", "loser"), [("support", 106.0, 94.0), ("resistance", 94.0, 106.0)])
def test_on_equal_distance_the_level_with_the_more_recent_newest_pivot_takes_the_last_slot(
    first: str, winner: float, loser: float
) -> None:
    candles, majors = ladder(first)
    eng = engine(majors)
    snaps = snapshots(eng, candles)
    last = snaps[max(snaps)]
    prices = [lv["price"] for lv in last["levels"]]
    assert all(lv["status"] == "active" for lv in last["levels"])
    assert sorted(prices) == sorted([95.0, 96.0, 97.0, 98.0, 99.0, 101.0, 102.0, 103.0, 104.0, winner])
    assert prices[9] == winner
    assert loser not in prices
    # The same rule orders every tie: at distances 1..4 the side built last comes first.
    assert prices[:2] == ([101.0, 99.0] if first == "support" else [99.0, 101.0])


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_pivots"):
        engine([], max_pivots=0)
    with pytest.raises(ValueError, match="unknown"):
        engine([], window=3)


# -- the same rules computed from scratch at every snapshot -------------------------------------------------


def random_walk(n: int, seed: int) -> list[Candle]:
    rng = random.Random(seed)
    price = 100.0
    out = []
    for i in range(n):
        o = price
        c = price = o + rng.gauss(0, 0.5)
        high = max(o, c) + abs(rng.gauss(0, 0.2))
        low = min(o, c) - abs(rng.gauss(0, 0.2))
        out.append(Candle(TF * (i + 1), o, high, low, c, 1.0))
    return out


def brute_majors(candles: Sequence[Candle], w: int) -> list[dict[str, Any]]:
    """Major pivots by brute force (all bars consecutive)."""
    out = []
    for i in range(w, len(candles) - w):
        left, right = candles[i - w : i], candles[i + 1 : i + w + 1]
        h, lo = candles[i].high, candles[i].low
        if all(c.high < h for c in left) and all(c.high <= h for c in right):
            out.append(major(i, h, "resistance", w))
        if all(c.low > lo for c in left) and all(c.low >= lo for c in right):
            out.append(major(i, lo, "support", w))
    return out


def oracle(candles: Sequence[Candle], majors: Sequence[dict[str, Any]], max_pivots: int, max_levels: int) -> list[Any]:
    """SR over all bars so far (nothing trimmed), as the module docstring reads it."""
    closes = [c.close for c in candles]
    tr = [
        max(c.high - c.low, abs(c.high - pc), abs(c.low - pc))
        for c, pc in zip(candles, [candles[0].close, *closes[:-1]], strict=True)
    ]
    atr = [sum(tr[max(0, i - 13) : i + 1]) / (i + 1 - max(0, i - 13)) for i in range(len(tr))]

    def tol_of(a: int, b: int, ref: float) -> float:
        vals = [atr[i] for i in (a, b) if atr[i] > 0]
        return 0.5 * sum(vals) / len(vals) if vals else (ref if ref > 0 else 1.0) * 0.002

    def positions(lo: int, hi: int, line: float, tol: float) -> list[tuple[int, int]]:
        """Runs of closes outside ``line +- tol``: (side, first bar); flips = runs - 1."""
        out: list[tuple[int, int]] = []
        for j in range(lo, hi):
            q = 1 if closes[j] > line + tol else -1 if closes[j] < line - tol else 0
            if q and (not out or out[-1][0] != q):
                out.append((q, j))
        return out

    pivots = list(majors)[-max_pivots:]
    levels = []
    for res in (True, False):
        side = sorted((p for p in pivots if (p["direction"] == "resistance") == res), key=lambda p: -p["pivot_idx"])
        kept: list[dict[str, Any]] = []
        for n, s in enumerate(side):
            si = s["pivot_idx"]
            for c in side[n + 1 :]:
                ci = c["pivot_idx"]
                ov_lo = max(candles[si].low, candles[ci].low)
                ov_hi = min(candles[si].high, candles[ci].high)
                line = ov_hi if res else ov_lo
                tol = tol_of(si, ci, line)
                if ov_lo > ov_hi + tol or len(positions(ci + 1, si, line, tol)) - 1 > 3:
                    continue
                ref = sum(a for a in (atr[si], atr[ci]) if a > 0) / len([a for a in (atr[si], atr[ci]) if a > 0])
                width = min(max(abs(ov_hi - ov_lo), 0.5 * ref), 3 * ref)
                mid = (ov_lo + ov_hi) / 2
                band = (mid - width / 2, mid + width / 2)
                touches = sum(
                    1
                    for p in side
                    if candles[p["pivot_idx"]].high + 0.5 * atr[p["pivot_idx"]] >= band[0]
                    and candles[p["pivot_idx"]].low - 0.5 * atr[p["pivot_idx"]] <= band[1]
                )
                runs = positions(si + 1, len(closes), line, tol)
                if len(runs) >= 4:
                    status, flip_dir, death = "broken", None, candles[runs[3][1]].candle_time
                elif len(runs) >= 2:
                    status, flip_dir, death = "flip", "up" if runs[-1][0] > 0 else "down", None
                else:
                    status, flip_dir, death = "active", None, None
                level = {
                    "key": f"{'resistance' if res else 'support'}:{c['pivot_time']}:{s['pivot_time']}",
                    "price": line,
                    "band": pytest.approx(band),
                    "touches": max(2, touches),
                    "status": status,
                    "flip_dir": flip_dir,
                    "death_time": death,
                    "dedup": max(abs(line) * 0.001, tol / 2),
                    "s_idx": si,
                }
                for i, other in enumerate(kept):
                    if abs(other["price"] - line) <= level["dedup"]:
                        if other["status"] == "broken" and status != "broken":
                            kept[i] = level
                        break
                else:
                    kept.append(level)
                break
        levels += kept
    now = closes[-1]

    def nearest(lv: dict[str, Any]) -> tuple[float, int]:
        return abs(lv["price"] - now), -lv["s_idx"]  # on equal distance, the more recent newest pivot first

    live = sorted((lv for lv in levels if lv["status"] != "broken"), key=nearest)
    dead = sorted((lv for lv in levels if lv["status"] == "broken"), key=nearest)
    return [
        (lv["key"], lv["price"], lv["band"], lv["touches"], lv["status"], lv["flip_dir"], lv["death_time"])
        for lv in live[:max_levels] + dead[:max_levels]
    ]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_incremental_levels_match_a_from_scratch_oracle(seed: int) -> None:
    candles = random_walk(700, seed)
    majors = brute_majors(candles, 3)
    eng = engine(majors, max_bars=10_000, max_pivots=40, max_levels=4)
    seen = 0
    for i, c in enumerate(candles):
        for ev in eng.apply(c):
            if ev.factor != "sr":
                continue
            known = [m for m in majors if m["visible_time"] <= c.candle_time]
            got = [
                (
                    lv["key"],
                    lv["price"],
                    (lv["band_low"], lv["band_high"]),
                    lv["touches"],
                    lv["status"],
                    lv["flip_dir"],
                    lv["death_time"],
                )
                for lv in ev.payload["levels"]
            ]
            assert got == oracle(candles[: i + 1], known, 40, 4), c.candle_time
            seen += 1
    assert seen > 100


def test_pickle_mid_stream_continues_identically() -> None:
    candles = random_walk(1200, 7)
    majors = brute_majors(candles, 3)
    whole = engine(majors, max_pivots=30)
    expected = snapshots(whole, candles)
    first = engine(majors, max_pivots=30)
    got = snapshots(first, candles[:600])
    second = pickle.loads(pickle.dumps(first))
    got.update(snapshots(second, candles[600:]))
    assert got == expected
    assert second.heads() == whole.heads()


def test_random_walk_through_the_real_factors_pickles_and_stays_bounded() -> None:
    pivot = pytest.importorskip("protocol.factors.pivot")
    pen = pytest.importorskip("protocol.factors.pen")
    classes = [pivot.Pivot, pen.Pen, Zhongshu, Anchor, SupportResistance]
    settings = {"pivot": {"major_window": 5, "minor_window": 2}, "sr": {"max_pivots": 60}}
    candles = random_walk(6000, 11)
    whole = FactorEngine(TF, classes, settings, max_bars=500)
    expected = [ev for c in candles for ev in whole.apply(c)]
    first = FactorEngine(TF, classes, settings, max_bars=500)
    got = [ev for c in candles[:3000] for ev in first.apply(c)]
    second = pickle.loads(pickle.dumps(first))
    got += [ev for c in candles[3000:] for ev in second.apply(c)]
    assert got == expected
    assert second.heads() == whole.heads()
    kinds = {ev.kind for ev in expected}
    assert {"zhongshu.dead", "anchor.switch", "sr.snapshot"} <= kinds
    sr: SupportResistance = whole.ctx.get("sr")
    assert len(sr.pivots) == 60
    snap = whole.heads()["sr"]
    live = [lv for lv in snap["levels"] if lv["status"] != "broken"]
    assert 0 < len(live) <= 10
    assert all(lv["status"] == "broken" for lv in snap["levels"][len(live) :])
    assert len({lv["key"] for lv in snap["levels"]}) == len(snap["levels"])
