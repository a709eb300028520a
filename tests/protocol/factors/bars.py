"""What the factor tests share: candles (one 1m bar of a price, or with a high and a low) and a scripted
stand-in for the pivot factor."""

from __future__ import annotations

from typing import Any, ClassVar, Final

from protocol.candle import Candle
from protocol.factors.base import Factor, FactorEvent, FactorTick

TF: Final = 60
SMALL: Final[dict[str, dict[str, Any]]] = {"pivot": {"major_window": 2, "minor_window": 1}}


def flat(t: int, price: float) -> Candle:
    p = float(price)
    return Candle(t, p, p, p, p, 1.0)


def bar(t: int, high: float, low: float) -> Candle:
    return Candle(t, low, high, low, high, 1.0)


class ScriptedPivot(Factor):
    """Stands in for the pivot factor: emits the given ``majors`` payloads at their visible times; with
    ``minors``, a pivot.minor rides along with them (dependants must ignore it)."""

    name = "pivot"
    version = 1
    defaults: ClassVar[dict[str, Any]] = {"majors": (), "minors": False}

    def apply(self, tick: FactorTick) -> list[FactorEvent]:
        out = [
            FactorEvent("pivot", "pivot.major", f"major:{p['pivot_time']}:{p['direction']}:{p['window']}", tick.time, p)
            for p in self.settings["majors"]
            if p["visible_time"] == tick.time
        ]
        if out and self.settings["minors"]:
            out.append(FactorEvent("pivot", "pivot.minor", f"minor:{tick.time}", tick.time, {**out[0].payload}))
        return out
