"""The factor framework's pure core: closed candles in, factor events and heads out (docs/factors.md).

A :class:`FactorEngine` runs one series' factors once per closed candle ("tick") in dependency order.
Each factor is a plugin (:class:`Factor`): a name, a version, its dependencies and per-tick ``apply``.
The engine owns the bar history (:class:`Bars`) every factor reads; factors read the state of the
factors they depend on through :class:`FactorContext`. No I/O here: the daemon persists events, heads and
pickled engine state (so everything an engine holds must pickle, and stay bounded in size).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from array import array
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

import attrs
import orjson

from protocol.candle import Candle

_NO_HEAD: Final[dict[str, Any]] = {}
DEFAULT_MAX_BARS: Final = 1000  # bars kept in memory; factors never look further back than this
TRIM_CHUNK: Final = 256  # bars beyond max_bars before the oldest are dropped (in one slice, not per bar)


@attrs.frozen(slots=True)
class FactorEvent:
    """One output event. Unique per (series, factor, event_key): replaying a candle adds nothing."""

    factor: str  # plugin name, e.g. "pivot"
    kind: str  # e.g. "pivot.major"
    event_key: str
    visible_time: int  # the tick (candle open time) at which it became visible
    payload: dict[str, Any]


class Bars:
    """Closed candles of one series in columns (time, high, low, close: no factor reads the open), the
    latest ``max_bars`` of them and fewer than ``min(TRIM_CHUNK, max_bars)`` more.

    ``index`` numbers are absolute (0 = the first candle the engine applied), so they stay valid when old
    bars are trimmed; ``at(i)`` converts. Trimming happens in chunks so appends stay O(1) amortised.
    Columns are typed arrays (8 bytes a value, not a 32-byte float object): a thousand live series each
    hold their bars, and the state pickles as raw bytes.
    """

    __slots__ = ("closes", "count", "highs", "lows", "max_bars", "offset", "times")

    def __init__(self, max_bars: int = DEFAULT_MAX_BARS) -> None:
        self.max_bars = max_bars
        self.offset = 0  # absolute index of times[0]
        self.count = 0  # bars ever appended = absolute index of the next bar
        self.times = array("q")
        self.highs = array("d")
        self.lows = array("d")
        self.closes = array("d")

    def append(self, c: Candle) -> int:
        """Add the next closed candle; returns its absolute index."""
        self.times.append(c[0])
        self.highs.append(c[2])
        self.lows.append(c[3])
        self.closes.append(c[4])
        self.count += 1
        if len(self.times) >= self.max_bars + min(TRIM_CHUNK, self.max_bars):
            # New, exactly sized arrays: ``del a[:n]`` would keep the old capacity, and a thousand series
            # each holding twice what they use was most of the projector's memory.
            cut = len(self.times) - self.max_bars
            self.times = self.times[cut:]
            self.highs = self.highs[cut:]
            self.lows = self.lows[cut:]
            self.closes = self.closes[cut:]
            self.offset += cut
        return self.count - 1

    def at(self, index: int) -> int:
        """Position in the column lists of absolute ``index`` (IndexError when trimmed or not yet there)."""
        pos = index - self.offset
        if pos < 0 or index >= self.count:
            raise IndexError(f"bar {index} is not held (held: {self.offset}..{self.count - 1})")
        return pos

    def __len__(self) -> int:
        return len(self.times)

    @property
    def last_time(self) -> int | None:
        return self.times[-1] if self.times else None

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.max_bars, self.offset, self.count, self.times, self.highs, self.lows, self.closes)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (self.max_bars, self.offset, self.count, self.times, self.highs, self.lows, self.closes) = state


@attrs.define(slots=True)
class FactorTick:
    """One closed candle going through the factors; ``emitted`` holds what earlier factors produced."""

    candle: Candle
    index: int  # absolute bar index of ``candle``
    emitted: dict[str, list[FactorEvent]] = attrs.field(factory=dict)

    @property
    def time(self) -> int:
        return self.candle[0]


@attrs.define
class FactorContext:
    """What a factor sees besides the tick: the timeframe, the shared bars and its dependencies."""

    tf: int  # timeframe length in seconds
    bars: Bars
    factors: dict[str, Factor] = attrs.field(factory=dict)

    def get(self, name: str) -> Any:
        """A dependency's instance (typed ``Any`` so a factor reads its concrete state attributes)."""
        return self.factors[name]


class Factor(ABC):
    """A projection plugin. Subclasses set the class attributes and implement :meth:`apply`."""

    name: ClassVar[str]
    version: ClassVar[int]
    depends: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[Mapping[str, Any]] = {}  # settings and their defaults; part of the fingerprint

    def __init__(self, ctx: FactorContext, settings: Mapping[str, Any]) -> None:
        self.ctx = ctx
        unknown = set(settings) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.name}: unknown settings {sorted(unknown)}")
        self.settings: dict[str, Any] = {**self.defaults, **settings}

    @abstractmethod
    def apply(self, tick: FactorTick) -> list[FactorEvent]:
        """Advance by one closed candle (already in ``ctx.bars``); return the events visible at it."""

    def head(self) -> dict[str, Any]:
        """The still-moving part at the latest tick (docs/factors.md, "Ticks and times"); ``{}`` when there is none."""
        return {}


def fingerprint(cls: type[Factor], settings: Mapping[str, Any], deps: Sequence[str] = ()) -> str:
    """Identity of a factor's output: code version, resolved settings and its dependencies' fingerprints.
    A changed fingerprint means the stored outputs are stale and the projection must be rebuilt."""
    body = orjson.dumps(
        {"name": cls.name, "version": cls.version, "settings": {**cls.defaults, **settings}, "deps": list(deps)},
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(body).hexdigest()[:16]


def resolve_order(classes: Sequence[type[Factor]]) -> list[type[Factor]]:
    """Topological order of the factor DAG (stable: among ready factors, the given order wins)."""
    by_name = {c.name: c for c in classes}
    for c in classes:
        missing = [d for d in c.depends if d not in by_name]
        if missing:
            raise ValueError(f"factor {c.name} depends on unknown {missing}")
    done: list[type[Factor]] = []
    seen: set[str] = set()
    while len(done) < len(classes):
        ready = [c for c in classes if c.name not in seen and all(d in seen for d in c.depends)]
        if not ready:
            raise ValueError("factor dependencies form a cycle")
        done.append(ready[0])
        seen.add(ready[0].name)
    return done


class FactorEngine:
    """All factors of one series. Feed closed candles in strictly ascending time with :meth:`apply`."""

    def __init__(
        self,
        tf: int,
        classes: Sequence[type[Factor]],
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        max_bars: int = DEFAULT_MAX_BARS,
    ) -> None:
        settings = settings or {}
        self.ctx = FactorContext(tf, Bars(max_bars))
        self.order: list[Factor] = []
        for cls in resolve_order(classes):
            factor = cls(self.ctx, settings.get(cls.name, {}))
            self.ctx.factors[cls.name] = factor
            self.order.append(factor)
        # Factors with no head of their own (pivot) are not asked every tick; they share one empty dict.
        self._heads = [(f.name, f, type(f).head is not Factor.head) for f in self.order]

    @property
    def last_time(self) -> int | None:
        return self.ctx.bars.last_time

    def apply(self, candle: Candle) -> list[FactorEvent]:
        """Run every factor for one closed candle; returns all events of the tick in factor order."""
        last = self.ctx.bars.last_time
        if last is not None and candle[0] <= last:
            raise ValueError(f"candle {candle[0]} is not after the last applied {last}")
        tick = FactorTick(candle, self.ctx.bars.append(candle))
        out: list[FactorEvent] = []
        for factor in self.order:
            events = factor.apply(tick)
            if events:
                tick.emitted[factor.name] = events
                out.extend(events)
        return out

    def heads(self) -> dict[str, dict[str, Any]]:
        """Every factor's head, in factor order (a headless factor's is the shared, empty ``_NO_HEAD``)."""
        return {name: factor.head() if headed else _NO_HEAD for name, factor, headed in self._heads}
