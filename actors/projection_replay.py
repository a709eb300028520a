"""Per-series projection work: apply closed candles, rewind and replay from the log's index, snapshots.

Everything here runs under the projector's lock, on the event loop or in one worker thread at a time, inside
one :class:`ProjectionWrite` (see ``actors.projector`` for the life cycle around it).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import attrs
import orjson

from actors.ports import CandleLog, ProjectionWrite
from protocol.candle import Candle
from protocol.factors.base import Factor, FactorEngine, FactorEvent
from protocol.logrecords import EventKind, LogEvent
from protocol.overlays import MOVING, InstructionChange, OverlayBuilder
from protocol.series import SeriesId

SNAPSHOT_EVERY: Final = 256  # candles between state snapshots of a series (rewinds replay at most this)
REBUILD_READ: Final = 20_000  # candles read from the log per step of a replay


@attrs.define
class SeriesProjection:
    """One series' live projection state (in memory; persisted as snapshots)."""

    sid: str
    num: int
    tf: int
    engine: FactorEngine
    builder: OverlayBuilder
    applied_seq: int = 0
    last_time: int | None = None
    since_snapshot: int = 0
    snapshot_from: int = 0  # no periodic snapshot before this time (a long replay keeps only its last two)
    heads: dict[str, dict[str, Any]] = attrs.field(factory=dict)  # as of last_time, to skip unchanged ones
    max_version: int = 0


@attrs.define
class ProjectorStats:
    applied: int = 0
    rewinds: int = 0
    rebuilds: int = 0
    failures: int = 0
    chunks: int = 0
    evicted: int = 0


class SeriesReplayer:
    """Holds every series' state in memory and moves it forward, back and from scratch."""

    def __init__(
        self,
        eventlog: CandleLog,
        classes: Sequence[type[Factor]],
        settings: Mapping[str, Mapping[str, Any]],
        stats: ProjectorStats,
    ) -> None:
        self.log = eventlog
        self.classes = classes
        self.settings = settings
        self.stats = stats
        self.rank = {cls.name: i for i, cls in enumerate(classes)}
        self.mem: dict[str, SeriesProjection] = {}

    def apply_events(
        self, w: ProjectionWrite, sid: str, events: Iterable[LogEvent], notes: list[tuple[str, str]]
    ) -> None:
        state = self.load(w, sid)
        for e in events:
            if e.seq <= state.applied_seq:
                continue  # already in a replay from the index
            t = e.candle[0]
            if state.last_time is None or t > state.last_time:
                self.tick(w, state, e.candle)
                state.applied_seq = e.seq
            else:  # a correction, or a backfilled candle behind the projected head
                self.stats.rewinds += 1
                if e.kind is EventKind.CANDLE_CORRECTED:
                    notes.append((sid, f"candle_corrected at {t}"))
                self.replay_from(w, state, t, at_seq=e.seq)
        self.save_record(w, state)

    def load(self, w: ProjectionWrite, sid: str, *, restore: bool = True) -> SeriesProjection:
        state = self.mem.pop(sid, None)
        if state is not None:
            self.mem[sid] = state  # to the end: ``mem`` is in least-recently-used order
            return state
        record = w.series(sid)
        series = SeriesId.parse(sid)
        state = self.fresh(sid, record["num"], series.timeframe.seconds)
        last_time = record.get("last_time")
        if restore and last_time is not None:
            snap = w.snapshot_before(state.num, last_time + 1)
            if snap is not None:
                self.restore(state, snap[0], snap[1])
                self.silent_feed(state, snap[0], last_time)
                state.applied_seq = int(record["applied_seq"])
                state.max_version = int(record.get("max_version", 0))
            else:  # no snapshot: rebuild the series from its first candle
                self.replay_from(w, state, None)
        self.mem[sid] = state
        return state

    def evict(self, w: ProjectionWrite, keep: int) -> int:
        """Drop the least recently used series beyond ``keep`` from memory, snapshotted first so that their
        next candle reloads them without a replay. Returns how many were dropped."""
        dropped = 0
        while keep and len(self.mem) > keep:
            sid = next(iter(self.mem))
            state = self.mem.pop(sid)
            if state.last_time is not None and state.since_snapshot:
                self.snapshot(w, state)
            dropped += 1
        return dropped

    def fresh(self, sid: str, num: int, tf: int) -> SeriesProjection:
        return SeriesProjection(sid, num, tf, FactorEngine(tf, self.classes, self.settings), OverlayBuilder())

    def restore(self, state: SeriesProjection, snap_time: int, blob: bytes) -> None:
        engine, builder, heads = pickle.loads(blob)
        state.engine, state.builder, state.heads = engine, builder, heads
        state.last_time = snap_time
        state.since_snapshot = 0

    def silent_feed(self, state: SeriesProjection, after: int, until: int) -> None:
        """Advance state over candles whose outputs are already stored (after a snapshot restore)."""
        engine, builder = state.engine, state.builder
        for c in self.log.range(state.sid, after, until, None):
            builder.update(c[0], engine.apply(c), engine.heads())
            state.last_time = c[0]
        state.heads = engine.heads()

    def replay_from(
        self,
        w: ProjectionWrite,
        state: SeriesProjection,
        start: int | None,
        *,
        at_seq: int = 0,
        progress: Callable[[int], object] | None = None,
    ) -> int:
        """Rewind ``state`` to before ``start`` (None: the beginning) and apply the log's candles from there.

        The replay reads the log's index as it is now, so it also takes in this series' events that are still
        queued after ``at_seq`` (the event being applied): those are skipped afterwards, so the rewind must start at or
        before the earliest of them (else one below ``start`` would be folded into the silent part unseen).
        """
        seq_before = self.log.last_seq()  # read first: anything newer is applied (again) when its event comes
        if start is not None:
            start = self.earliest_pending(state.sid, start, at_seq, seq_before)
        cut = self.rewind(w, state, start)
        suspects = dict(w.instructions_since(state.num, 0 if cut is None else cut))
        if cut is None:
            w.delete_series_outputs(state.num)
        else:
            w.delete_from(state.num, cut)
            w.drop_snapshots_from(state.num, cut)
        emitted: set[str] = set()
        # From the beginning nothing is stored to compare a definition with.
        applied = self.replay_candles(w, state, emitted, compare=cut is not None, progress=progress)
        self.settle_untouched(w, state, suspects, emitted)
        state.applied_seq = seq_before
        state.snapshot_from = 0
        if state.last_time is not None:
            self.snapshot(w, state)
        return applied

    def rewind(self, w: ProjectionWrite, state: SeriesProjection, start: int | None) -> int | None:
        """Reset ``state`` to the newest snapshot before ``start``, fed silently up to it: the time from which
        stored outputs are replaced, or None when no snapshot is that old (the replay starts from scratch)."""
        snap = None if start is None else w.snapshot_before(state.num, start)
        fresh = self.fresh(state.sid, state.num, state.tf)
        state.engine, state.builder, state.last_time = fresh.engine, fresh.builder, None
        state.heads = {}
        if snap is None or start is None:
            return None
        self.restore(state, snap[0], snap[1])
        self.silent_feed(state, snap[0], start - 1)
        return start

    def replay_candles(
        self,
        w: ProjectionWrite,
        state: SeriesProjection,
        emitted: set[str],
        *,
        compare: bool,
        progress: Callable[[int], object] | None,
    ) -> int:
        """Apply the log's candles after ``state.last_time``, read in steps of ``REBUILD_READ``; their count."""
        applied = 0
        after = state.last_time
        head = self.log.head(state.sid)
        if head is not None:  # only the newest two snapshots are kept: skip making the others
            state.snapshot_from = head.head_time - 2 * SNAPSHOT_EVERY * state.tf
        while True:
            candles = self.log.range(state.sid, after, None, REBUILD_READ)
            for c in candles:
                self.tick(w, state, c, emitted, compare=compare)
            applied += len(candles)
            if progress is not None:
                progress(applied)
            if len(candles) < REBUILD_READ:
                return applied
            after = candles[-1][0]

    def settle_untouched(
        self, w: ProjectionWrite, state: SeriesProjection, suspects: Mapping[str, bytes], emitted: set[str]
    ) -> None:
        """Instructions the old timeline changed after the cut and the new one did not touch: bring the
        stored latest definition in line with what the builder holds now (removed if it holds nothing)."""
        for iid, stored in suspects.items():
            if iid in emitted:
                continue
            current = state.builder.current(iid)
            wanted = orjson.dumps(current)
            if wanted != stored:
                kind = "removed" if current is None else str(current.get("type", "polyline"))
                state.max_version = w.put_version(state.num, iid, kind, state.last_time or 0, wanted)

    def earliest_pending(self, sid: str, start: int, after_seq: int, until_seq: int) -> int:
        for event in self.log.iter_events(after_seq):
            if event.seq > until_seq:
                break
            if event.series_id == sid and event.candle[0] < start:
                start = event.candle[0]
        return start

    def tick(
        self,
        w: ProjectionWrite,
        state: SeriesProjection,
        candle: Candle,
        emitted: set[str] | None = None,
        *,
        compare: bool = False,
    ) -> None:
        """Apply one candle and store what changed. ``emitted`` is given during a replay: it collects the
        instructions the new timeline touched. With ``compare`` (a replay from a snapshot) a definition equal
        to the stored one is not stored again (the builder restarted from that snapshot)."""
        t = candle[0]
        engine = state.engine
        events = engine.apply(candle)
        heads = engine.heads()
        changes = state.builder.update(t, events, heads)
        num = state.num
        if events:
            rank = self.rank
            for ev in events:
                w.put_event(num, ev.visible_time, rank[ev.factor], ev.event_key, _event_json(ev))
        before = state.heads
        for name, head in heads.items():
            prev = before.get(name)
            if prev is head or prev == head:
                continue
            if name == "zhongshu" and prev is not None and _same_zones(prev, head):
                continue  # only the alive zone's end moved: re-derived at read time
            w.put_head(num, self.rank[name], t, _head_json(name, head))
        state.heads = heads
        moved = False
        for change in changes:
            moved = moved or change.instruction_id in MOVING
            self.store_change(w, state, change, emitted, compare)
        if not moved and heads.get("zhongshu", _NONE).get("alive"):
            # The alive box reached this candle: a new version of it, without storing it again.
            for iid in MOVING:
                state.max_version = w.touch(num, iid, t)
        state.last_time = t
        self.stats.applied += 1
        state.since_snapshot += 1
        if state.since_snapshot >= SNAPSHOT_EVERY and t >= state.snapshot_from:
            self.snapshot(w, state)

    def store_change(
        self,
        w: ProjectionWrite,
        state: SeriesProjection,
        change: InstructionChange,
        emitted: set[str] | None,
        compare: bool = False,
    ) -> None:
        num, iid = state.num, change.instruction_id
        encoded = orjson.dumps(change.definition)
        if emitted is not None:
            emitted.add(iid)
        if compare and w.latest_definition(num, iid) == encoded:
            return
        state.max_version = w.put_version(num, iid, change.kind, change.visible_time, encoded)

    def snapshot(self, w: ProjectionWrite, state: SeriesProjection) -> None:
        assert state.last_time is not None
        blob = pickle.dumps((state.engine, state.builder, state.heads), protocol=pickle.HIGHEST_PROTOCOL)
        w.put_snapshot(state.num, state.last_time, blob)
        state.since_snapshot = 0

    def save_record(self, w: ProjectionWrite, state: SeriesProjection) -> None:
        w.put_series(
            state.sid,
            {
                "num": state.num,
                "applied_seq": state.applied_seq,
                "last_time": state.last_time,
                "max_version": state.max_version,
            },
        )


_MOVING: Final = frozenset({"end_time", "visible_time"})
_NONE: Final[dict[str, Any]] = {}


def _still(alive: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Alive zones without the fields that move every candle."""
    return [{k: v for k, v in z.items() if k not in _MOVING} for z in alive]


def _head_json(name: str, head: Mapping[str, Any]) -> bytes:
    """A head as stored: the alive zone's end and visible time move every candle and are re-derived at read
    time, so a record is written only when something else changed."""
    if name == "zhongshu" and head.get("alive"):
        head = {**head, "alive": _still(head["alive"])}
    return orjson.dumps(head)


_ZONE_KEYS: Final = ("start_time", "zg", "zd", "entry_direction", "formed_time", "formed_reason")


def _same_zones(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """The same alive zones, whatever their end (compared in place: this runs for every candle)."""
    za, zb = a.get("alive") or (), b.get("alive") or ()
    if len(za) != len(zb):
        return False
    for x, y in zip(za, zb, strict=True):
        for k in _ZONE_KEYS:
            if x[k] != y[k]:
                return False
    return True


def _event_json(ev: FactorEvent) -> bytes:
    return orjson.dumps(
        {
            "factor_name": ev.factor,
            "kind": ev.kind,
            "event_key": ev.event_key,
            "candle_time": ev.visible_time,
            "payload": ev.payload,
        }
    )
