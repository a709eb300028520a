"""Central zones (docs/factors.md): the worked examples, both formation paths, death and reseeding,
against a scripted pen factor (so these tests do not depend on pivot or pen)."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any, ClassVar

from protocol.candle import Candle
from protocol.factors.base import Factor, FactorContext, FactorEngine, FactorEvent, FactorTick
from protocol.factors.zhongshu import Zhongshu
from tests.protocol.factors.bars import TF, flat


def pen(start: int, end: int, p0: float, p1: float, visible: int, tf: int = TF) -> dict[str, Any]:
    """A pen.confirmed payload; bar indexes assume the series starts at time ``tf`` (index 0)."""
    return {
        "start_time": start,
        "end_time": end,
        "start_price": p0,
        "end_price": p1,
        "direction": 1 if p1 > p0 else -1,
        "visible_time": visible,
        "start_idx": start // tf - 1,
        "end_idx": end // tf - 1,
    }


class ScriptedPen(Factor):
    """Stands in for the pen factor: emits the given pen payloads at their visible times and keeps the
    attributes downstream factors read (``last_confirmed``, ``confirmed_count``, ``effective``)."""

    name = "pen"
    version = 1
    defaults: ClassVar[dict[str, Any]] = {"pens": ()}

    def __init__(self, ctx: FactorContext, settings: dict[str, Any]) -> None:
        super().__init__(ctx, settings)
        self.last_confirmed: dict[str, Any] | None = None
        self.confirmed_count = 0
        self.effective: list[dict[str, Any]] = []

    def apply(self, tick: FactorTick) -> list[FactorEvent]:
        out = []
        for p in self.settings["pens"]:
            if p["visible_time"] == tick.time:
                key = f"confirmed:{p['start_time']}:{p['end_time']}:{p['direction']}"
                out.append(FactorEvent("pen", "pen.confirmed", key, tick.time, p))
                self.last_confirmed = p
                self.confirmed_count += 1
        return out


def engine(pens: Sequence[dict[str, Any]], tf: int = TF) -> FactorEngine:
    return FactorEngine(tf, [ScriptedPen, Zhongshu], {"pen": {"pens": list(pens)}})


def run(eng: FactorEngine, candles: Sequence[Candle]) -> list[FactorEvent]:
    return [ev for c in candles for ev in eng.apply(c) if ev.factor == "zhongshu"]


def zone(eng: FactorEngine) -> dict[str, Any]:
    alive = eng.heads()["zhongshu"]["alive"]
    assert len(alive) == 1
    return alive[0]  # type: ignore[no-any-return]


# docs/factors.md: pen ranges [90,110], [100,130], [105,125], [102,140] -> zd 105, zg 125; then [108,124]
# extends it and [130,150] kills it. Candles sit at 115, never reaching P1's end (100): no price cross.
EXAMPLE = [
    pen(60, 120, 90, 110, visible=240),
    pen(120, 180, 130, 100, visible=300),
    pen(180, 240, 105, 125, visible=360),
    pen(240, 300, 140, 102, visible=420),
    pen(300, 360, 108, 124, visible=480),
    pen(360, 420, 150, 130, visible=540),
]


def test_example_forms_on_the_p3_pen_extends_then_dies() -> None:
    eng = engine(EXAMPLE)
    zs: Zhongshu = eng.ctx.get("zhongshu")
    assert run(eng, [flat(t, 115) for t in range(60, 420, 60)]) == []
    assert eng.heads()["zhongshu"] == {"alive": []}
    assert zs.pending is not None  # entry, P1, P2 wait for P3

    run(eng, [flat(420, 115)])
    assert zs.formed_this_tick == EXAMPLE[0]
    assert zone(eng) == {
        "start_time": 60,
        "end_time": 420,
        "zg": 125,
        "zd": 105,
        "entry_direction": 1,
        "formed_time": 420,
        "death_time": None,
        "formed_reason": "pen_confirmed",
        "visible_time": 420,
    }

    run(eng, [flat(480, 115)])  # [108, 124] meets the zone: it extends
    assert zs.formed_this_tick is None
    assert zone(eng)["end_time"] == 480
    assert zone(eng)["visible_time"] == 480

    (dead,) = run(eng, [flat(540, 115)])  # [130, 150] is entirely above zg: it kills
    assert dead.kind == "zhongshu.dead"
    assert dead.visible_time == 540
    assert dead.event_key == "dead:60:420:540:125.00000000:105.00000000:pen_confirmed"
    assert dead.payload == {
        "start_time": 60,
        "end_time": 480,
        "zg": 125,
        "zd": 105,
        "entry_direction": 1,
        "formed_time": 420,
        "death_time": 540,
        "formed_reason": "pen_confirmed",
        "visible_time": 540,
    }
    assert eng.heads()["zhongshu"] == {"alive": []}
    assert zs.reseed_floor == 300  # the start of the pen before the killer
    assert zs.pending is None  # its entry ([102,140], start 240) starts before the floor


def test_a_pen_just_touching_the_zone_does_not_kill() -> None:
    touching = [*EXAMPLE[:4], pen(300, 360, 125, 160, visible=480), pen(360, 420, 105, 80, visible=540)]
    eng = engine(touching)
    assert run(eng, [flat(t, 115) for t in range(60, 600, 60)]) == []
    assert zone(eng)["end_time"] == 540


# docs/factors.md: pens 100->130, 130->110, 110->125 and a candle at 350 with low 109 (trigger 110) -> formed at
# 350 by price_cross, zd 110, zg 125. A 50 s timeframe puts a candle at 350.
CROSS = [
    pen(50, 100, 100, 130, visible=200, tf=50),
    pen(100, 150, 130, 110, visible=250, tf=50),
    pen(150, 200, 110, 125, visible=300, tf=50),
]


def test_example_forms_by_price_cross_then_awaits_its_p3_pen() -> None:
    p3 = pen(200, 350, 125, 105, visible=450, tf=50)
    p5 = pen(350, 400, 105, 128, visible=500, tf=50)
    eng = engine([*CROSS, p3, p5], tf=50)
    zs: Zhongshu = eng.ctx.get("zhongshu")
    assert run(eng, [flat(t, 120) for t in range(50, 350, 50)]) == []
    assert eng.heads()["zhongshu"] == {"alive": []}

    eng.apply(Candle(350, 115, 115, 109, 112, 1.0))
    assert zs.formed_this_tick == CROSS[0]
    assert zone(eng) == {
        "start_time": 50,
        "end_time": 350,
        "zg": 125,
        "zd": 110,
        "entry_direction": 1,
        "formed_time": 350,
        "death_time": None,
        "formed_reason": "price_cross",
        "visible_time": 350,
    }
    # Its own P3 pen (range [105, 125]) only clears the wait; the next pen extends it.
    assert run(eng, [flat(t, 112) for t in (400, 450, 500)]) == []
    assert zone(eng)["end_time"] == 500
    assert zone(eng)["formed_time"] == 350


def test_the_awaited_p3_pen_cannot_kill_the_zone_it_formed() -> None:
    above = pen(200, 350, 140, 126, visible=450, tf=50)  # any other pen over [126, 140] would kill
    eng = engine([*CROSS, above], tf=50)
    run(eng, [flat(t, 120) for t in range(50, 350, 50)])
    assert run(eng, [Candle(350, 115, 115, 109, 112, 1.0), *(flat(t, 112) for t in (400, 450))]) == []
    assert zone(eng)["end_time"] == 450


def test_the_cross_needs_the_trigger_and_counts_candles_only_while_pending() -> None:
    eng = engine(CROSS, tf=50)
    zs: Zhongshu = eng.ctx.get("zhongshu")
    run(eng, [flat(t, 120) for t in range(50, 250, 50)])
    run(eng, [Candle(250, 120, 120, 100, 110, 1.0)])  # after P3's start, but before P2 is confirmed
    assert zs.pending is None
    run(eng, [Candle(300, 112, 112, 110.5, 111, 1.0)])  # P3 reaches 110.5; the trigger is 110
    assert zs.pending is not None
    assert zs.pending.extreme == 110.5
    assert eng.heads()["zhongshu"] == {"alive": []}
    run(eng, [Candle(350, 111, 111, 110, 110, 1.0)])  # low == trigger: crosses
    assert zone(eng)["formed_time"] == 350
    assert zone(eng)["zd"] == 110


def test_a_failed_formation_slides_the_window_one_pen() -> None:
    pens = [
        pen(60, 120, 200, 260, visible=240),  # entry far above the rest: no common intersection
        pen(120, 180, 130, 100, visible=300),
        pen(180, 240, 105, 125, visible=360),
        pen(240, 300, 140, 102, visible=420),  # P3 of the first structure: fails
        pen(300, 360, 108, 124, visible=480),  # P3 of (100-130, 105-125, 102-140): forms
    ]
    eng = engine(pens)
    zs: Zhongshu = eng.ctx.get("zhongshu")
    run(eng, [flat(t, 115) for t in range(60, 480, 60)])
    assert eng.heads()["zhongshu"] == {"alive": []}
    assert zs.pending is not None
    assert zs.pending.entry == pens[1]
    run(eng, [flat(480, 115)])
    z = zone(eng)
    assert (z["start_time"], z["zd"], z["zg"], z["formed_time"]) == (120, 108, 124, 480)
    assert z["entry_direction"] == -1


def test_after_a_death_the_next_zone_starts_no_earlier_than_the_reseed_floor() -> None:
    pens = [
        *EXAMPLE,
        pen(420, 480, 130, 170, visible=600),  # tail: [108,124] [130,150] [130,170]: entry starts at 300
        pen(480, 540, 170, 140, visible=660),  # P3 of ([108,124] ...): no common price, slide
        pen(540, 600, 140, 160, visible=720),
        pen(600, 660, 160, 135, visible=780),
    ]
    eng = engine(pens)
    zs: Zhongshu = eng.ctx.get("zhongshu")
    run(eng, [flat(t, 140) for t in range(60, 600, 60)])
    assert zs.reseed_floor == 300
    run(eng, [flat(600, 140)])
    assert zs.pending is not None
    assert zs.pending.entry == EXAMPLE[4]
    run(eng, [flat(t, 140) for t in (660, 720, 780)])
    z = zone(eng)  # formed at 720 by [130,150] [130,170] [140,170] + [140,160]; [135,160] extends it
    assert (z["start_time"], z["zd"], z["zg"]) == (360, 140, 160)


def test_pickle_mid_stream_continues_identically() -> None:
    pens = [*EXAMPLE, pen(420, 480, 130, 170, visible=600), pen(480, 540, 170, 140, visible=660)]
    candles = [flat(t, 115 + (t // 60) % 3) for t in range(60, 900, 60)]
    whole = engine(pens)
    expected = run(whole, candles)
    first = engine(pens)
    got = run(first, candles[:6])
    second = pickle.loads(pickle.dumps(first))
    got += run(second, candles[6:])
    assert got == expected
    assert second.heads() == whole.heads()
