"""The projector: factor and overlay projections that follow the event log (issue 8, FACTORS.md).

It reads the log after its checkpoint, in seq order, and for each series feeds the closed candles to that
series' :class:`FactorEngine` and :class:`OverlayBuilder`; outputs and the checkpoint they reach commit in
one projection-store transaction. The writer calls :meth:`Projector.stage` between the append and the
publish, so nothing is published before its factors and overlays are stored (SPEC §2 order); a follower
task picks up appends made elsewhere (history imports, derived timeframes).

Projections are a function of each series' candles in time order. A candle that lands at or behind the
projected head (a ``candle_corrected`` event, a backfilled hole) rewinds that series: its state is restored
from the newest snapshot older than the candle, replayed silently up to it, its outputs from that time on
are dropped, and every candle from there is applied again from the log's index. So the projections always
equal a from-scratch replay, whatever order the log's events came in.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import attrs
import lmdb
import orjson
import structlog
import trio

from daemon.eventlog import AppendResult, EventLog
from daemon.logformat import EventKind, LogEvent
from daemon.projection_store import ProjectionStore, ProjectionTxn
from protocol.candle import Candle
from protocol.factors.base import Factor, FactorEngine, FactorEvent, fingerprint, resolve_order
from protocol.factors.registry import DEFAULT_FACTORS
from protocol.overlays import MOVING, InstructionChange, OverlayBuilder
from protocol.series import SeriesId

log = structlog.get_logger(__name__)

CHUNK_EVENTS: Final = 5_000  # log events per projection transaction
INLINE_EVENTS: Final = 2_000  # up to this many, a chunk runs on the event loop (the live path)
SNAPSHOT_EVERY: Final = 256  # candles between state snapshots of a series (rewinds replay at most this)
REBUILD_READ: Final = 20_000  # candles read from the log per step of a rebuild

Notify = Callable[[SeriesId, str, str, dict[str, Any]], None]


@attrs.define
class _Series:
    """One series' live projection state (in memory; persisted as snapshots)."""

    sid: str
    num: int
    tf: int
    engine: FactorEngine
    builder: OverlayBuilder
    applied_seq: int = 0
    last_time: int | None = None
    since_snapshot: int = 0
    heads: dict[str, dict[str, Any]] = attrs.field(factory=dict)  # as of last_time, to skip unchanged ones
    max_version: int = 0


@attrs.define
class ProjectorStats:
    applied: int = 0
    rewinds: int = 0
    rebuilds: int = 0
    failures: int = 0
    chunks: int = 0


@attrs.frozen
class RebuildProgress:
    series_id: str
    done: int
    total: int


class Projector:
    """Owns every series' projection state; all mutation happens under one lock."""

    def __init__(
        self,
        eventlog: EventLog,
        pstore: ProjectionStore,
        *,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        classes: Sequence[type[Factor]] = DEFAULT_FACTORS,
        notify: Notify | None = None,
    ) -> None:
        self.log = eventlog
        self.pstore = pstore
        self.classes = resolve_order(classes)
        self.settings = {k: dict(v) for k, v in (settings or {}).items()}
        self.notify = notify
        self._mem: dict[str, _Series] = {}
        self._lock = trio.Lock()
        self._advanced = trio.Event()
        self._rank = {cls.name: i for i, cls in enumerate(self.classes)}
        self.stats = ProjectorStats()
        self.failed: dict[str, str] = {}  # series -> error of a factor that raised (its outputs stop there)
        self.fingerprints = self._fingerprints()
        self.progress: RebuildProgress | None = None  # of a running rebuild (read by klinectl's progress bar)

    # -- identity -----------------------------------------------------------------------------------

    def _fingerprints(self) -> dict[str, str]:
        prints: dict[str, str] = {}
        for cls in self.classes:
            prints[cls.name] = fingerprint(cls, self.settings.get(cls.name, {}), [prints[d] for d in cls.depends])
        factor = orjson.dumps(prints, option=orjson.OPT_SORT_KEYS).decode()
        return {"factor": factor, "overlay": f"{OverlayBuilder.version}:{factor}"}

    def stored_fingerprints(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for which in ("factor", "overlay"):
            raw = self.pstore.meta_value(f"fingerprint:{which}")
            out[which] = None if raw is None else raw.decode()
        return out

    def stale(self) -> list[str]:
        """Which projections' stored outputs came from other code or settings (must be rebuilt)."""
        stored = self.stored_fingerprints()
        has_outputs = self.pstore.checkpoint() > 0
        return [w for w in ("factor", "overlay") if has_outputs and stored[w] != self.fingerprints[w]]

    def needs_rebuild(self) -> list[str]:
        """``stale()``, or a log with candles and nothing projected (a new or wiped projection store): then
        a replay series by series is faster than following the log's events from seq 1."""
        stale = self.stale()
        if not stale and self.pstore.checkpoint() == 0 and self.log.last_seq() > 0:
            stale = ["factor", "overlay"]
        return stale

    # -- reading state --------------------------------------------------------------------------------

    def checkpoint(self) -> int:
        return self.pstore.checkpoint()

    def projected_time(self, series: SeriesId | str) -> int | None:
        """The latest candle time whose factors and overlays are stored (None: nothing projected)."""
        sid = str(series)
        mem = self._mem.get(sid)
        if mem is not None:
            return mem.last_time
        record = self.pstore.series_record(sid)
        return None if record is None else record.get("last_time")

    def series_num(self, series: SeriesId | str) -> int | None:
        sid = str(series)
        mem = self._mem.get(sid)
        if mem is not None:
            return mem.num
        record = self.pstore.series_record(sid)
        return None if record is None else int(record["num"])

    def statistics(self) -> dict[str, Any]:
        return {
            **attrs.asdict(self.stats),
            "checkpoint": self.pstore.checkpoint(),
            "log_last_seq": self.log.last_seq(),
            "series_in_memory": len(self._mem),
            "failed": dict(self.failed),
        }

    # -- life cycle -------------------------------------------------------------------------------------

    async def start(self) -> list[str]:
        """Check fingerprints: stale outputs are dropped and rebuilt by replaying the log. Returns which
        projections were rebuilt."""
        stale = self.needs_rebuild()
        if stale:
            log.warning("projections_stale", which=stale, fingerprints=self.fingerprints)
            await self.rebuild(None, reason="fingerprint")
        else:
            self._write_fingerprints()
        return stale

    def _write_fingerprints(self) -> None:
        with self.pstore.write() as w:
            for which, value in self.fingerprints.items():
                w.set_meta(f"fingerprint:{which}", value.encode())

    async def follow(
        self, wait_appended: Callable[[], Any], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep up with appends made outside the writer (history imports, derived timeframes)."""
        task_status.started()
        while True:
            await self.sync()
            await wait_appended()

    async def stage(self, result: AppendResult) -> None:
        """The writer's factor stage: project everything up to this batch before it is published.

        While a rebuild of everything runs (minutes for a big log), candles are published without waiting
        for it: reads answer ``ledger_out_of_sync`` meanwhile and subscribers get ``factor.rebuild`` after.
        """
        if result.last_seq is not None and self.progress is None:
            await self.sync(result)

    async def snapshot_all(self) -> None:
        """Snapshot every series held in memory (at shutdown), so a restart needs no replay to resume."""
        async with self._lock:
            with self.pstore.write() as w:
                for state in self._mem.values():
                    if state.last_time is not None and state.since_snapshot:
                        self._snapshot(w, state)

    async def sync(self, result: AppendResult | None = None) -> None:
        """Apply every log event after the checkpoint (one transaction per chunk). ``result``, the batch
        just appended, saves reading its events back when it is exactly what comes next."""
        async with self._lock:
            while True:
                after = self.pstore.checkpoint()
                if result is not None and result.first_seq == after + 1 and result.last_seq is not None:
                    events = _result_events(result)
                    result = None
                else:
                    events = self.log.events_since(after, CHUNK_EVENTS)
                if not events:
                    return
                if len(events) <= INLINE_EVENTS:
                    notes = self._process(events)
                else:
                    notes = await trio.to_thread.run_sync(self._process, events)
                self.stats.chunks += 1
                self._announce(notes)
                self._advanced.set()
                self._advanced = trio.Event()

    async def wait_projected(self, seq: int) -> None:
        """Return once the checkpoint has reached ``seq`` (tests and readers wait on this)."""
        while self.pstore.checkpoint() < seq:
            await self._advanced.wait()

    # -- rebuilds -----------------------------------------------------------------------------------------

    async def rebuild(self, series: Sequence[SeriesId] | None, *, reason: str = "operator") -> int:
        """Rebuild from the log: every series (``None``: outputs dropped first) or the given ones. Candles
        are never touched. Returns how many candles were replayed; ``progress`` shows it meanwhile."""
        async with self._lock:
            start_seq = self.log.last_seq()  # events after it are applied by sync (or skipped if replayed)
            if series is None:
                await trio.to_thread.run_sync(self.pstore.drop_all)
                self._mem.clear()
                self.failed.clear()
                targets = self.log.series_ids()
                self._write_fingerprints()
            else:
                targets = [str(s) for s in series]
            heads = self.log.heads()
            total = sum(heads[s].candle_count for s in targets if s in heads)
            self.progress = RebuildProgress("", 0, total)
            try:
                for sid in targets:
                    await trio.to_thread.run_sync(self._rebuild_series, sid)
                if series is None:
                    with self.pstore.write() as w:
                        w.set_checkpoints(start_seq)
            finally:
                done = self.progress.done
                self.progress = None
            self.stats.rebuilds += 1
            log.info("projections_rebuilt", series=len(targets), candles=done, reason=reason)
        for sid in targets:
            self._notify(sid, "factor.rebuild", f"factor projections rebuilt ({reason})")
        self._advanced.set()
        self._advanced = trio.Event()
        return done

    def _rebuild_series(self, sid: str) -> None:
        self.failed.pop(sid, None)
        base = self.progress.done if self.progress else 0

        def advance(n: int) -> None:
            if self.progress is not None:
                self.progress = attrs.evolve(self.progress, series_id=sid, done=base + n)

        while True:
            self._mem.pop(sid, None)
            try:
                with self.pstore.write() as w:
                    state = self._load(w, sid, restore=False)
                    self._replay_from(w, state, None, progress=advance)
                    self._save_record(w, state)
            except lmdb.MapFullError:
                self.pstore.grow()
            except BaseException:
                self._mem.pop(sid, None)
                raise
            else:
                return

    # -- processing (runs on the loop or in a worker thread; always under the lock) -------------------------

    def _process(self, events: Sequence[LogEvent]) -> list[tuple[str, str]]:
        notes: list[tuple[str, str]] = []
        by_series: dict[str, list[LogEvent]] = {}
        for e in events:
            by_series.setdefault(e.series_id, []).append(e)
        while True:
            touched: list[str] = []
            try:
                with self.pstore.write() as w:
                    for sid, evs in by_series.items():
                        if sid in self.failed:
                            continue
                        touched.append(sid)
                        try:
                            self._apply_events(w, sid, evs, notes)
                        except lmdb.MapFullError:
                            raise
                        except Exception as e:  # a factor bug: that series stops, the others go on
                            self._fail(w, sid, e)
                    w.set_checkpoints(events[-1].seq)
            except BaseException as e:
                for sid in touched:  # the transaction is gone: in-memory state reloads from what is stored
                    self._mem.pop(sid, None)
                if not isinstance(e, lmdb.MapFullError):
                    raise
                notes.clear()
                self.pstore.grow()
            else:
                return notes

    def _fail(self, w: ProjectionTxn, sid: str, error: Exception) -> None:
        self.stats.failures += 1
        self.failed[sid] = repr(error)
        self._mem.pop(sid, None)
        log.exception("projection_failed", series_id=sid, error=repr(error))

    def _apply_events(
        self, w: ProjectionTxn, sid: str, events: Iterable[LogEvent], notes: list[tuple[str, str]]
    ) -> None:
        state = self._load(w, sid)
        for e in events:
            if e.seq <= state.applied_seq:
                continue  # already in a replay from the index
            t = e.candle[0]
            if state.last_time is None or t > state.last_time:
                self._tick(w, state, e.candle)
                state.applied_seq = e.seq
            else:  # a correction, or a backfilled candle behind the projected head
                self.stats.rewinds += 1
                if e.kind is EventKind.CANDLE_CORRECTED:
                    notes.append((sid, f"candle_corrected at {t}"))
                self._replay_from(w, state, t, at_seq=e.seq)
        self._save_record(w, state)

    def _load(self, w: ProjectionTxn, sid: str, *, restore: bool = True) -> _Series:
        state = self._mem.get(sid)
        if state is not None:
            return state
        record = w.series(sid)
        series = SeriesId.parse(sid)
        state = self._fresh(sid, record["num"], series.timeframe.seconds)
        last_time = record.get("last_time")
        if restore and last_time is not None:
            snap = w.snapshot_before(state.num, last_time + 1)
            if snap is not None:
                self._restore(state, snap[0], snap[1])
                self._silent_feed(state, snap[0], last_time)
                state.applied_seq = int(record["applied_seq"])
                state.max_version = int(record.get("max_version", 0))
            else:  # no snapshot: rebuild the series from its first candle
                self._replay_from(w, state, None)
        self._mem[sid] = state
        return state

    def _fresh(self, sid: str, num: int, tf: int) -> _Series:
        return _Series(sid, num, tf, FactorEngine(tf, self.classes, self.settings), OverlayBuilder())

    def _restore(self, state: _Series, snap_time: int, blob: bytes) -> None:
        engine, builder, heads = pickle.loads(blob)
        state.engine, state.builder, state.heads = engine, builder, heads
        state.last_time = snap_time
        state.since_snapshot = 0

    def _silent_feed(self, state: _Series, after: int, until: int) -> None:
        """Advance state over candles whose outputs are already stored (after a snapshot restore)."""
        engine, builder = state.engine, state.builder
        for c in self.log.range(state.sid, after, until, None):
            builder.update(c[0], engine.apply(c), engine.heads())
            state.last_time = c[0]
        state.heads = engine.heads()

    def _replay_from(
        self,
        w: ProjectionTxn,
        state: _Series,
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
            start = self._earliest_pending(state.sid, start, at_seq, seq_before)
        snap = None if start is None else w.snapshot_before(state.num, start)
        fresh = self._fresh(state.sid, state.num, state.tf)
        state.engine, state.builder, state.last_time = fresh.engine, fresh.builder, None
        state.heads = {}
        if snap is not None:
            self._restore(state, snap[0], snap[1])
            if start is not None:
                self._silent_feed(state, snap[0], start - 1)
        cut = 0 if snap is None or start is None else start
        suspects = dict(w.instructions_since(state.num, cut))
        if snap is None:
            w.delete_series_outputs(state.num)
        else:
            w.delete_from(state.num, cut)
            w.drop_snapshots_from(state.num, cut)
        emitted: set[str] = set()
        applied = 0
        after = state.last_time
        while True:
            candles = self.log.range(state.sid, after, None, REBUILD_READ)
            for c in candles:
                self._tick(w, state, c, emitted)
            applied += len(candles)
            if progress is not None:
                progress(applied)
            if len(candles) < REBUILD_READ:
                break
            after = candles[-1][0]
        # Instructions the old timeline changed after the cut and the new one did not touch: bring the
        # stored latest definition in line with what the builder holds now (removed if it holds nothing).
        for iid, stored in suspects.items():
            if iid in emitted:
                continue
            current = state.builder.current(iid)
            wanted = orjson.dumps(current)
            if wanted != stored:
                kind = "removed" if current is None else str(current.get("type", "polyline"))
                state.max_version = w.put_version(state.num, iid, kind, state.last_time or 0, wanted)
        state.applied_seq = seq_before
        if state.last_time is not None:
            self._snapshot(w, state)
        return applied

    def _earliest_pending(self, sid: str, start: int, after_seq: int, until_seq: int) -> int:
        for event in self.log.iter_events(after_seq):
            if event.seq > until_seq:
                break
            if event.series_id == sid and event.candle[0] < start:
                start = event.candle[0]
        return start

    def _tick(self, w: ProjectionTxn, state: _Series, candle: Candle, emitted: set[str] | None = None) -> None:
        """Apply one candle and store what changed. ``emitted`` is given during a replay after a rewind:
        versions are then also compared with the stored ones (the builder restarted from a snapshot)."""
        t = candle[0]
        events = state.engine.apply(candle)
        heads = state.engine.heads()
        changes = state.builder.update(t, events, heads)
        num = state.num
        for ev in events:
            w.put_event(num, ev.visible_time, self._rank[ev.factor], ev.event_key, _event_json(ev))
        before = state.heads
        for name, head in heads.items():
            if _head_moved(name, before.get(name), head):
                w.put_head(num, self._rank[name], t, _head_json(name, head))
        state.heads = heads
        for change in changes:
            self._store_change(w, state, change, emitted)
        alive = heads["zhongshu"].get("alive") if "zhongshu" in heads else None
        if alive and not (changes and any(c.instruction_id in MOVING for c in changes)):
            # The alive box reached this candle: a new version of it, without storing it again.
            for iid in MOVING:
                state.max_version = w.touch(num, iid, t)
        state.last_time = t
        self.stats.applied += 1
        state.since_snapshot += 1
        if state.since_snapshot >= SNAPSHOT_EVERY:
            self._snapshot(w, state)

    def _store_change(
        self, w: ProjectionTxn, state: _Series, change: InstructionChange, emitted: set[str] | None
    ) -> None:
        num, iid = state.num, change.instruction_id
        encoded = orjson.dumps(change.definition)
        if emitted is not None:
            emitted.add(iid)
            if w.latest_definition(num, iid) == encoded:
                return
        state.max_version = w.put_version(num, iid, change.kind, change.visible_time, encoded)

    def _snapshot(self, w: ProjectionTxn, state: _Series) -> None:
        assert state.last_time is not None
        blob = pickle.dumps((state.engine, state.builder, state.heads), protocol=pickle.HIGHEST_PROTOCOL)
        w.put_snapshot(state.num, state.last_time, blob)
        state.since_snapshot = 0

    def _save_record(self, w: ProjectionTxn, state: _Series) -> None:
        w.put_series(
            state.sid,
            {
                "num": state.num,
                "applied_seq": state.applied_seq,
                "last_time": state.last_time,
                "max_version": state.max_version,
            },
        )

    def _announce(self, notes: Sequence[tuple[str, str]]) -> None:
        for sid, why in notes:
            self._notify(sid, "factor.rebuild", f"factor projections replayed after a {why}")

    def _notify(self, sid: str, event: str, message: str) -> None:
        if self.notify is not None:
            self.notify(SeriesId.parse(sid), event, message, {"series_id": sid})


_MOVING: Final = frozenset({"end_time", "visible_time"})
MOVING_INSTRUCTIONS: Final = MOVING


def _still(alive: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Alive zones without the fields that move every candle."""
    return [{k: v for k, v in z.items() if k not in _MOVING} for z in alive]


def _head_json(name: str, head: Mapping[str, Any]) -> bytes:
    """A head as stored: the alive zone's end and visible time move every candle and are re-derived at read
    time, so a record is written only when something else changed."""
    if name == "zhongshu" and head.get("alive"):
        head = {**head, "alive": _still(head["alive"])}
    return orjson.dumps(head)


def _head_moved(name: str, before: Mapping[str, Any] | None, head: Mapping[str, Any]) -> bool:
    if before is head:
        return False
    if before is None:
        return True
    if name == "zhongshu":
        return _zone_keys(before) != _zone_keys(head)
    return before != head


def _zone_keys(head: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (z["start_time"], z["zg"], z["zd"], z["entry_direction"], z["formed_time"], z["formed_reason"])
        for z in head.get("alive") or ()
    ]


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


def _result_events(result: AppendResult) -> list[LogEvent]:
    """The events an append wrote, rebuilt from its result: each written candle is one event, in the order
    of ``changed`` (series in batch order, candles in seq order); corrections carry the replaced candle."""
    assert result.first_seq is not None
    replaced = {(e.series_id, e.candle[0]): e for e in result.corrections}
    out: list[LogEvent] = []
    seq = result.first_seq
    for sid, candles in result.changed.items():
        for c in candles:
            corrected = replaced.get((sid, c[0])) if replaced else None
            out.append(corrected or LogEvent(seq, EventKind.CANDLE_CLOSED, sid, c))
            seq += 1
    if seq - 1 != result.last_seq:
        raise RuntimeError(
            f"append result does not add up: events {result.first_seq}..{seq - 1}, last {result.last_seq}"
        )
    return out


__all__ = ["MOVING_INSTRUCTIONS", "Projector", "RebuildProgress"]
