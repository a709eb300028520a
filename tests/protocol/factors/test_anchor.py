"""The anchor (docs/factors.md, "Anchor"): strict strength against the tick's baseline, earlier wins ties, the
candidate's running extreme, zone entries; scripted pens, plus the worked example on the real pivot and pen."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

import pytest

from protocol.candle import Candle
from protocol.factors.anchor import Anchor
from protocol.factors.base import FactorEngine, FactorEvent
from protocol.factors.zhongshu import Zhongshu
from tests.protocol.factors.bars import flat
from tests.protocol.factors.test_zhongshu import ScriptedPen, pen


def engine(pens: Sequence[dict[str, Any]]) -> FactorEngine:
    return FactorEngine(60, [ScriptedPen, Zhongshu, Anchor], {"pen": {"pens": list(pens)}})


def switches(eng: FactorEngine, candles: Sequence[Candle]) -> list[FactorEvent]:
    return [ev for c in candles for ev in eng.apply(c) if ev.factor == "anchor"]


def ref(p: dict[str, Any], kind: str = "confirmed") -> dict[str, Any]:
    keys = ("start_time", "end_time", "direction", "start_price", "end_price")
    return {"kind": kind, **{k: p[k] for k in keys}}


def current(eng: FactorEngine) -> dict[str, Any] | None:
    head: dict[str, Any] | None = eng.heads()["anchor"]["current_anchor_ref"]
    assert head == eng.ctx.get("anchor").current
    return head


def test_example_only_a_strictly_stronger_pen_moves_the_anchor() -> None:
    # Strengths 15, then 15 and 14.9 (no switch), then 20 (switch); candles at 107 keep candidates weak.
    pens = [
        pen(60, 180, 100, 115, visible=300),
        pen(180, 300, 115, 100, visible=420),
        pen(300, 420, 100, 114.9, visible=540),
        pen(420, 540, 114.9, 94.9, visible=660),
    ]
    eng = engine(pens)
    assert current(eng) is None
    events = switches(eng, [flat(t, 107) for t in range(60, 720, 60)])
    assert [ev.event_key for ev in events] == [
        "strong_pen:300:confirmed:60:180:1",
        "strong_pen:660:confirmed:420:540:-1",
    ]
    first, second = events
    assert first.visible_time == 300
    assert first.payload == {
        "switch_time": 300,
        "reason": "strong_pen",
        "old_anchor": None,
        "new_anchor": ref(pens[0]),
        "visible_time": 300,
    }
    assert second.payload["old_anchor"] == ref(pens[0])
    assert second.payload["new_anchor"] == ref(pens[3])
    assert current(eng) == ref(pens[3])


def test_earlier_contender_wins_ties() -> None:
    a = pen(60, 120, 100, 130, visible=240)
    b = pen(120, 180, 130, 100, visible=240)  # as strong as a, confirmed in the same tick
    eng = engine([a, b])
    # The candidate after b reaches 130 at 240: strength 30 as well, and it comes after the pens.
    (ev,) = switches(eng, [flat(60, 100), flat(120, 130), flat(180, 100), Candle(240, 100, 130, 100, 110, 1.0)])
    assert ev.event_key == "strong_pen:240:confirmed:60:120:1"
    assert current(eng) == ref(a)


def test_the_candidate_follows_its_running_extreme_and_switches_once() -> None:
    a = pen(60, 180, 100, 110, visible=300)
    eng = engine([a])
    events = switches(eng, [flat(t, 110) for t in range(60, 360, 60)])
    assert [ev.event_key for ev in events] == ["strong_pen:300:confirmed:60:180:1"]
    lows = {360: 105, 420: 95, 480: 90, 540: 92}  # strength 5 (no), 15 (switch), 20 (moves), 18 (no)
    events = switches(eng, [Candle(t, 110, 110, low, 110, 1.0) for t, low in lows.items()])
    assert [ev.event_key for ev in events] == ["strong_pen:420:candidate:180:420:-1"]
    assert events[0].payload["new_anchor"] == {
        "kind": "candidate",
        "start_time": 180,
        "end_time": 420,
        "direction": -1,
        "start_price": 110,
        "end_price": 95,
    }
    assert current(eng) == {
        "kind": "candidate",
        "start_time": 180,
        "end_time": 480,  # moved without an event: same start
        "direction": -1,
        "start_price": 110,
        "end_price": 90,
    }
    assert eng.ctx.get("anchor").strength == 20


def test_a_zone_makes_its_entry_pen_the_anchor() -> None:
    pens = [
        pen(60, 120, 190, 130, visible=240),  # strength 60, outside the later zone
        pen(120, 180, 100, 130, visible=300),  # the entry
        pen(180, 240, 130, 110, visible=360),
        pen(240, 300, 110, 125, visible=420),
    ]
    eng = engine(pens)
    events = switches(eng, [flat(t, 120) for t in range(60, 480, 60)])
    assert [ev.event_key for ev in events] == ["strong_pen:240:confirmed:60:120:-1"]
    (ev,) = switches(eng, [Candle(480, 120, 120, 109, 115, 1.0)])  # price cross: the zone forms
    assert ev.event_key == "zhongshu_entry:480:120:180:1"
    assert ev.payload["reason"] == "zhongshu_entry"
    assert ev.payload["old_anchor"] == ref(pens[0])
    assert ev.payload["new_anchor"] == ref(pens[1])
    # The candidate after the last pen (125 -> 109, strength 16) did not beat the tick's baseline (60).
    assert current(eng) == ref(pens[1])
    (ev,) = switches(eng, [Candle(540, 115, 115, 90, 100, 1.0)])  # 125 -> 90: 35 beats the entry's 30
    assert ev.event_key == "strong_pen:540:candidate:300:540:-1"


def test_pickle_mid_stream_continues_identically() -> None:
    pens = [pen(60, 180, 100, 110, visible=300), pen(180, 420, 110, 95, visible=540)]
    candles = [Candle(t, 110, 110 + (t // 60) % 4, 100 - (t // 60) % 5, 105, 1.0) for t in range(60, 1200, 60)]
    whole = engine(pens)
    expected = switches(whole, candles)
    first = engine(pens)
    got = switches(first, candles[:5])
    second = pickle.loads(pickle.dumps(first))
    got += switches(second, candles[5:])
    assert got == expected
    assert second.heads() == whole.heads()


def test_worked_example_on_the_real_pivot_and_pen() -> None:
    pivot = pytest.importorskip("protocol.factors.pivot")
    pen_mod = pytest.importorskip("protocol.factors.pen")
    eng = FactorEngine(
        60,
        [pivot.Pivot, pen_mod.Pen, Zhongshu, Anchor],
        {"pivot": {"major_window": 2, "minor_window": 1}},
    )
    prices = [1, 2, 5, 2, 1, 2, 9, 2, 1, 2, 8, 2, 1]
    events = switches(eng, [flat(60 * (i + 1), p) for i, p in enumerate(prices)])
    # At 540 the candidate 300 -> 420 (strength 8) beats the confirmed 180 -> 300 (4); 8 never beats 8 later.
    assert [ev.event_key for ev in events] == ["strong_pen:540:candidate:300:420:1"]
    assert current(eng) == {
        "kind": "candidate",
        "start_time": 300,
        "end_time": 420,
        "direction": 1,
        "start_price": 1,
        "end_price": 9,
    }
