"""Pivots (docs/factors.md, "Pivot"): the worked example, plateaus, gaps, the minor rules, and a brute-force oracle."""

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
from protocol.factors.pivot import Pivot
from tests.protocol.factors.bars import SMALL, TF, bar, flat


def run(candles: Sequence[Candle], cfg: dict[str, dict[str, Any]] | None = None) -> dict[int, list[FactorEvent]]:
    """Events of each tick, by candle time."""
    engine = FactorEngine(TF, [Pivot], cfg or SMALL)
    return {c[0]: engine.apply(c) for c in candles}


def pivot(level: str, t: int, price: float, direction: str, visible: int, window: int, idx: int) -> FactorEvent:
    return FactorEvent(
        factor="pivot",
        kind=f"pivot.{level}",
        event_key=f"{level}:{t}:{direction}:{window}",
        visible_time=visible,
        payload={
            "pivot_time": t,
            "pivot_price": price,
            "direction": direction,
            "visible_time": visible,
            "window": window,
            "pivot_idx": idx,
        },
    )


def test_worked_example_major_resistance_visible_two_bars_later() -> None:
    ticks = run([flat(60 * (k + 1), p) for k, p in enumerate([1, 2, 5, 2, 1])])
    assert ticks[240] == []  # a slice at 240 shows no pivot
    assert ticks[300] == [pivot("major", 180, 5, "resistance", 300, 2, 2)]


def test_defaults() -> None:
    engine = FactorEngine(TF, [Pivot])
    p = engine.ctx.get("pivot")
    assert (p.major_window, p.minor_window, p.latest_major_idx) == (50, 5, None)
    assert engine.heads() == {"pivot": {}}


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_bad_window_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="major_window"):
        FactorEngine(TF, [Pivot], {"pivot": {"major_window": bad}})


def test_window_larger_than_held_bars_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bars"):
        FactorEngine(TF, [Pivot], max_bars=100)


def test_a_bar_may_be_both_resistance_then_support() -> None:
    # The centre bar's high is the highest and its low the lowest: an outside bar.
    ticks = run([bar(60, 2, 1.5), bar(120, 2, 1.5), bar(180, 5, 0.5), bar(240, 2, 1.5), bar(300, 2, 1.5)])
    assert ticks[300] == [
        pivot("major", 180, 5, "resistance", 300, 2, 2),
        pivot("major", 180, 0.5, "support", 300, 2, 2),
    ]


def test_plateau_only_the_earliest_bar_is_a_major() -> None:
    prices = [1, 2, 5, 5, 5, 2, 1]
    ticks = run([flat(60 * (k + 1), p) for k, p in enumerate(prices)], {"pivot": {"major_window": 2}})
    majors = [e for events in ticks.values() for e in events if e.kind == "pivot.major"]
    assert majors == [pivot("major", 180, 5, "resistance", 300, 2, 2)]


def test_plateau_every_bar_may_be_a_minor() -> None:
    # Major support at 180 (1), then a plateau of 4s at 300 and 360: both are minor resistances.
    prices = [5, 4, 1, 2, 4, 4, 2, 3]
    ticks = run([flat(60 * (k + 1), p) for k, p in enumerate(prices)])
    assert ticks[300] == [pivot("major", 180, 1, "support", 300, 2, 2)]
    minors = [e for events in ticks.values() for e in events if e.kind == "pivot.minor"]
    assert [(e.payload["pivot_time"], e.payload["direction"]) for e in minors] == [
        (300, "resistance"),
        (360, "resistance"),
        (420, "support"),
    ]


def test_missing_candle_means_no_pivot_that_tick() -> None:
    # The worked example with the candle at 240 missing: 180 has no consecutive right window.
    ticks = run([flat(t, p) for t, p in [(60, 1), (120, 2), (180, 5), (300, 2), (360, 1)]])
    assert all(events == [] for events in ticks.values())
    # A gap further left does not matter once the whole 2w+1 window is consecutive again.
    ticks = run([flat(t, p) for t, p in [(0, 9), (120, 1), (180, 2), (240, 5), (300, 2), (360, 1)]])
    assert ticks[360] == [pivot("major", 240, 5, "resistance", 360, 2, 3)]


def test_no_minor_before_any_major() -> None:
    ticks = run([flat(60 * (k + 1), p) for k, p in enumerate([3, 1, 3, 4, 5])])
    assert all(events == [] for events in ticks.values())


def test_majors_of_the_tick_come_first_and_enable_its_minors() -> None:
    # The first major (resistance 5 at 180) and a minor support at 240 become visible together at 300.
    ticks = run([flat(60 * (k + 1), p) for k, p in enumerate([1, 2, 5, 3, 4])])
    assert ticks[300] == [pivot("major", 180, 5, "resistance", 300, 2, 2), pivot("minor", 240, 3, "support", 300, 1, 3)]
    assert ticks[240] == []


def test_minor_needs_its_left_window_at_or_after_the_latest_major() -> None:
    cfg = {"pivot": {"major_window": 2, "minor_window": 2}}
    ticks = run([flat(60 * (k + 1), p) for k, p in enumerate([1, 2, 5, 2, 1, 2, 3, 3.5, 1, 0.5])], cfg)
    # 180 and 300 would be minors too, but each one's left window starts before the major found at the
    # same tick (majors are computed first): refused.
    assert ticks[300] == [pivot("major", 180, 5, "resistance", 300, 2, 2)]
    assert ticks[420] == [pivot("major", 300, 1, "support", 420, 2, 4)]
    # Likewise 480: its left window starts at 360, after the major at 300, but 480 is itself found a
    # major first at 600. With equal windows a major's own bar is never also a minor.
    assert ticks[600] == [pivot("major", 480, 3.5, "resistance", 600, 2, 7)]
    assert [e for events in ticks.values() for e in events if e.kind == "pivot.minor"] == []


def test_latest_major_idx_is_public_state() -> None:
    engine = FactorEngine(TF, [Pivot], SMALL)
    for k, p in enumerate([1, 2, 5, 2, 1, 2, 9]):
        engine.apply(flat(60 * (k + 1), p))
    assert engine.ctx.get("pivot").latest_major_idx == 4  # the support at 300, visible at 420


def reference(candles: Sequence[Candle], major: int, minor: int) -> list[FactorEvent]:
    """The pivot rules applied by brute force on the whole history."""
    times = [c[0] for c in candles]
    highs = [c[2] for c in candles]
    lows = [c[3] for c in candles]
    out: list[FactorEvent] = []
    latest: int | None = None

    def consecutive(a: int, b: int) -> bool:
        return a >= 0 and all(times[j + 1] - times[j] == TF for j in range(a, b))

    for i in range(len(candles)):
        v = times[i]
        c, w = i - major, major
        if consecutive(c - w, i):
            left, right = range(c - w, c), range(c + 1, i + 1)
            found = False
            if all(highs[j] < highs[c] for j in left) and all(highs[j] <= highs[c] for j in right):
                out.append(pivot("major", times[c], highs[c], "resistance", v, w, c))
                found = True
            if all(lows[j] > lows[c] for j in left) and all(lows[j] >= lows[c] for j in right):
                out.append(pivot("major", times[c], lows[c], "support", v, w, c))
                found = True
            if found:
                latest = c
        c, w = i - minor, minor
        if latest is not None and c - w >= latest and consecutive(c - w, i):
            if highs[c] >= max(highs[c - w : i + 1]):
                out.append(pivot("minor", times[c], highs[c], "resistance", v, w, c))
            if lows[c] <= min(lows[c - w : i + 1]):
                out.append(pivot("minor", times[c], lows[c], "support", v, w, c))
    return out


def build(steps: Sequence[tuple[int, int, int]]) -> list[Candle]:
    """Candles from (time step in bars, high, range) triples: small integers, so ties and gaps are common."""
    out, t = [], 0
    for step, high, spread in steps:
        t += step * TF
        out.append(bar(t, float(high), float(high - spread)))
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([1, 1, 1, 1, 1, 1, 2]), st.integers(0, 6), st.integers(0, 3)), max_size=120),
    st.integers(1, 4),
    st.integers(1, 4),
)
def test_matches_brute_force(steps: list[tuple[int, int, int]], major: int, minor: int) -> None:
    candles = build(steps)
    engine = FactorEngine(TF, [Pivot], {"pivot": {"major_window": major, "minor_window": minor}}, max_bars=10)
    got = [e for c in candles for e in engine.apply(c)]
    assert got == reference(candles, major, minor)


@pytest.mark.parametrize("seed", range(6))
def test_long_walks_match_brute_force(seed: int) -> None:
    # Hypothesis keeps lists short; these walks reach many pivots, plateaus and gaps.
    rnd = random.Random(seed)
    steps, high = [], 50
    for _ in range(800):
        high += rnd.choice((-2, -1, 0, 0, 1, 2))
        steps.append((1 if rnd.random() > 0.01 else 2, high, rnd.randint(0, 3)))
    major, minor = rnd.randint(1, 6), rnd.randint(1, 3)
    candles = build(steps)
    engine = FactorEngine(TF, [Pivot], {"pivot": {"major_window": major, "minor_window": minor}}, max_bars=50)
    got = [e for c in candles for e in engine.apply(c)]
    assert got == reference(candles, major, minor)
    assert sum(e.kind == "pivot.major" for e in got) > 20


def test_pickle_mid_stream_continues_identically() -> None:
    candles = build([(1 if k % 37 else 2, (k * 7919) % 11, k % 3) for k in range(400)])
    engine = FactorEngine(TF, [Pivot], SMALL)
    for c in candles[:200]:
        engine.apply(c)
    clone = pickle.loads(pickle.dumps(engine))
    for c in candles[200:]:
        assert clone.apply(c) == engine.apply(c)
    assert clone.ctx.get("pivot").latest_major_idx == engine.ctx.get("pivot").latest_major_idx
