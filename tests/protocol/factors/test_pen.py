"""Pens (docs/factors.md, "Pen"): the worked examples, the effective-pivot rules, the head, and a brute-force oracle."""

from __future__ import annotations

import pickle
import random
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.candle import Candle
from protocol.factors.base import FactorEngine, FactorEvent
from protocol.factors.pen import KEEP_EFFECTIVE, Pen
from protocol.factors.pivot import Pivot
from tests.protocol.factors.bars import SMALL, TF, ScriptedPivot, bar, flat


def major(t: int, price: float, direction: str, visible: int, idx: int) -> dict[str, Any]:
    return {
        "pivot_time": t,
        "pivot_price": price,
        "direction": direction,
        "visible_time": visible,
        "window": 1,
        "pivot_idx": idx,
    }


def pen(start: int, end: int, p0: float, p1: float, direction: int, visible: int, i0: int, i1: int) -> FactorEvent:
    return FactorEvent(
        factor="pen",
        kind="pen.confirmed",
        event_key=f"confirmed:{start}:{end}:{direction}",
        visible_time=visible,
        payload={
            "start_time": start,
            "end_time": end,
            "start_price": p0,
            "end_price": p1,
            "direction": direction,
            "visible_time": visible,
            "start_idx": i0,
            "end_idx": i1,
        },
    )


def item(start: int, end: int, p0: float, p1: float, direction: int) -> dict[str, Any]:
    return {"start_time": start, "end_time": end, "start_price": p0, "end_price": p1, "direction": direction}


def pen_events(events: list[FactorEvent]) -> list[FactorEvent]:
    return [e for e in events if e.factor == "pen"]


PRICES_13 = [1, 2, 5, 2, 1, 2, 9, 2, 1, 2, 8, 2, 1]


def test_thirteen_price_example() -> None:
    engine = FactorEngine(TF, [Pivot, Pen], SMALL)
    ticks = {60 * (k + 1): pen_events(engine.apply(flat(60 * (k + 1), p))) for k, p in enumerate(PRICES_13)}
    assert {t: e for t, e in ticks.items() if e} == {
        540: [pen(180, 300, 5, 1, -1, 540, 2, 4)],
        660: [pen(300, 420, 1, 9, 1, 660, 4, 6)],
        780: [pen(420, 540, 9, 1, -1, 780, 6, 8)],
    }
    assert engine.heads()["pen"] == {
        "extending": item(540, 660, 1, 8, 1),
        "candidate": item(660, 780, 8, 1, -1),
    }
    p = engine.ctx.get("pen")
    assert p.confirmed_count == 3
    assert p.last_confirmed == ticks[780][0].payload
    assert [(e["pivot_time"], e["direction"]) for e in p.effective] == [
        (180, "resistance"),
        (300, "support"),
        (420, "resistance"),
        (540, "support"),
        (660, "resistance"),
    ]


def test_head_example_with_real_pivots() -> None:
    # Window 1: supports 1@60 and 1@300, resistance 7@180; lows reach 0.5 at 420, highs 9 at 480. (0.5@420
    # also becomes a major at 480, replacing the support at 300; effective[-2] is still 7@180.)
    candles = [bar(0, 2, 1.5), bar(60, 2, 1), bar(120, 4, 2), bar(180, 7, 5), bar(240, 6, 3)]
    candles += [bar(300, 3, 1), bar(360, 3, 2), bar(420, 2.5, 0.5), bar(480, 9, 1)]
    engine = FactorEngine(TF, [Pivot, Pen], {"pivot": {"major_window": 1, "minor_window": 1}})
    majors = []
    for c in candles:
        majors += [
            (e.payload["pivot_time"], e.payload["pivot_price"]) for e in engine.apply(c) if e.kind == "pivot.major"
        ]
    assert majors == [(60, 1), (180, 7), (300, 1), (420, 0.5)]
    assert engine.heads()["pen"] == {
        "extending": item(180, 420, 7, 0.5, -1),
        "candidate": item(420, 480, 0.5, 9, 1),
    }


def test_head_example_verbatim() -> None:
    # Exactly the three majors of the example, scripted; the bars only need the prices it names.
    majors = [major(60, 1, "support", 120, 1), major(180, 7, "resistance", 240, 3), major(300, 1, "support", 360, 5)]
    candles = [bar(0, 2, 1.5), bar(60, 2, 1), bar(120, 4, 2), bar(180, 7, 5), bar(240, 6, 3)]
    candles += [bar(300, 3, 1), bar(360, 3, 2), bar(420, 2.5, 0.5), bar(480, 9, 1)]
    engine = FactorEngine(TF, [ScriptedPivot, Pen], {"pivot": {"majors": majors}})
    for c in candles[:-1]:
        engine.apply(c)
    assert engine.heads()["pen"] == {"extending": item(180, 420, 7, 0.5, -1)}  # nothing after 420 yet
    engine.apply(candles[-1])
    assert engine.heads()["pen"] == {
        "extending": item(180, 420, 7, 0.5, -1),
        "candidate": item(420, 480, 0.5, 9, 1),
    }


def test_no_head_before_a_confirmed_pen() -> None:
    majors = [major(60, 1, "support", 120, 1), major(180, 7, "resistance", 240, 3)]
    engine = FactorEngine(TF, [ScriptedPivot, Pen], {"pivot": {"majors": majors}})
    for k, p in enumerate([2, 1, 4, 7, 6, 8]):
        engine.apply(flat(60 * k, p))
    assert engine.heads()["pen"] == {}


def test_same_direction_major_replaces_only_if_strictly_more_extreme() -> None:
    majors = [
        major(60, 5, "resistance", 120, 1),
        major(180, 5, "resistance", 240, 3),  # equal: ignored
        major(300, 4, "resistance", 360, 5),  # lower: ignored
        major(420, 6, "resistance", 480, 7),  # higher: replaces 5@60
        major(540, 1, "support", 600, 9),
        major(660, 2, "support", 720, 11),  # higher support: ignored
        major(780, 0.5, "support", 840, 13),  # lower: replaces 1@540
        major(900, 3, "resistance", 960, 15),  # confirms 6@420 -> 0.5@780
    ]
    engine = FactorEngine(TF, [ScriptedPivot, Pen], {"pivot": {"majors": majors}})
    events = [e for k in range(17) for e in pen_events(engine.apply(flat(60 * k, 3)))]
    assert events == [pen(420, 780, 6, 0.5, -1, 960, 7, 13)]
    assert engine.ctx.get("pen").effective == [majors[3], majors[6], majors[7]]


def test_effective_list_stays_bounded() -> None:
    majors = [major(60 * k, 1 + k % 2, "resistance" if k % 2 else "support", 60 * k + 60, k) for k in range(30)]
    engine = FactorEngine(TF, [ScriptedPivot, Pen], {"pivot": {"majors": majors}})
    for k in range(32):
        engine.apply(flat(60 * k, 1.5))
    p = engine.ctx.get("pen")
    assert p.effective == majors[-KEEP_EFFECTIVE:]
    assert p.confirmed_count == 28


def reference_head(candles: Sequence[Candle], effective: list[dict[str, Any]], confirmed: int) -> dict[str, Any]:
    """The head by brute force over every bar (earliest extreme strictly after its start)."""
    if confirmed < 1 or len(effective) < 2:
        return {}
    start = effective[-2]
    up = start["direction"] == "support"
    after = [c for c in candles if c[0] > start["pivot_time"]]
    if not after:
        return {}
    best = after[0]
    for c in after:
        if (c[2] > best[2]) if up else (c[3] < best[3]):
            best = c
    end_price = best[2] if up else best[3]
    if end_price == start["pivot_price"]:
        return {}
    d = 1 if up else -1
    out = {"extending": item(start["pivot_time"], best[0], start["pivot_price"], end_price, d)}
    after = [c for c in candles if c[0] > best[0]]
    if after:
        nxt = after[0]
        for c in after:
            if (c[3] < nxt[3]) if up else (c[2] > nxt[2]):
                nxt = c
        price = nxt[3] if up else nxt[2]
        if price != end_price:
            out["candidate"] = item(best[0], nxt[0], end_price, price, -d)
    return out


def check_against_brute_force(candles: Sequence[Candle], window: int) -> int:
    """Run candles through Pivot and Pen and compare every tick with the rules applied by hand."""
    engine = FactorEngine(TF, [Pivot, Pen], {"pivot": {"major_window": window, "minor_window": 1}})
    effective: list[dict[str, Any]] = []
    confirmed: list[FactorEvent] = []
    for k, c in enumerate(candles):
        events = engine.apply(c)
        for e in events:
            if e.kind != "pivot.major":
                continue
            p = e.payload
            if effective and effective[-1]["direction"] == p["direction"]:
                last = effective[-1]["pivot_price"]
                if (p["pivot_price"] > last) if p["direction"] == "resistance" else (p["pivot_price"] < last):
                    effective[-1] = p
                continue
            effective.append(p)
            if len(effective) >= 3:
                a, b = effective[-3], effective[-2]
                d = 1 if b["pivot_price"] > a["pivot_price"] else -1
                prices = (a["pivot_price"], b["pivot_price"])
                idx = (a["pivot_idx"], b["pivot_idx"])
                confirmed.append(pen(a["pivot_time"], b["pivot_time"], *prices, d, c[0], *idx))
        assert pen_events(events) == [e for e in confirmed if e.visible_time == c[0]]
        assert engine.heads()["pen"] == reference_head(candles[: k + 1], effective, len(confirmed))
    return len(confirmed)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 3)), min_size=10, max_size=150), st.integers(1, 3))
def test_matches_brute_force(bars: list[tuple[int, int]], window: int) -> None:
    check_against_brute_force([bar(60 * k, float(h), float(h - s)) for k, (h, s) in enumerate(bars)], window)


@pytest.mark.parametrize("seed", range(4))
def test_long_walks_match_brute_force(seed: int) -> None:
    rnd = random.Random(seed)
    candles, high = [], 50
    for k in range(600):
        high += rnd.choice((-2, -1, 0, 0, 1, 2))
        candles.append(bar(60 * k, float(high), float(high - rnd.randint(0, 3))))
    assert check_against_brute_force(candles, rnd.randint(1, 4)) > 10


def test_pickle_mid_stream_continues_identically() -> None:
    prices = [float((k * 7919) % 13 + (k // 50) % 5) for k in range(600)]
    candles = [flat(60 * k, p) for k, p in enumerate(prices)]
    engine = FactorEngine(TF, [Pivot, Pen], SMALL)
    for c in candles[:300]:
        engine.apply(c)
    clone = pickle.loads(pickle.dumps(engine))
    for c in candles[300:]:
        assert clone.apply(c) == engine.apply(c)
        assert clone.heads() == engine.heads()
    a, b = clone.ctx.get("pen"), engine.ctx.get("pen")
    assert (a.effective, a.last_confirmed, a.confirmed_count) == (b.effective, b.last_confirmed, b.confirmed_count)
    assert a.confirmed_count > 10
