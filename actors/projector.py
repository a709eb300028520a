"""The projector: factor and overlay projections that follow the event log (docs/factors.md).

It reads the log after its checkpoint, in seq order, and for each series feeds the closed candles to that
series' :class:`FactorEngine` and :class:`OverlayBuilder`; outputs and the checkpoint they reach commit in
one projection-store transaction. The writer calls :meth:`Projector.stage` between the append and the
publish, so nothing is published before its factors and overlays are stored; a follower
task picks up appends made elsewhere (history imports, derived timeframes).

Projections are a function of each series' candles in time order. A candle that lands at or behind the
projected head (a ``candle_corrected`` event, a backfilled hole) rewinds that series: its state is restored
from the newest snapshot older than the candle, replayed silently up to it, its outputs from that time on
are dropped, and every candle from there is applied again from the log's index. So the projections always
equal a from-scratch replay, whatever order the log's events came in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import attrs
import orjson
import structlog
import trio

from actors.ports import CandleLog, ProjectionStorage, ProjectionWrite
from actors.projection_replay import ProjectorStats, SeriesReplayer
from protocol.factors.base import Factor, fingerprint, resolve_order
from protocol.factors.registry import DEFAULT_FACTORS
from protocol.logrecords import AppendResult, LogEvent, append_events
from protocol.overlays import OverlayBuilder
from protocol.series import SeriesId

log = structlog.get_logger(__name__)

CHUNK_EVENTS: Final = 5_000  # log events per projection transaction
INLINE_EVENTS: Final = 2_000  # up to this many, a chunk runs on the event loop (the live path)

Notify = Callable[[SeriesId, str, str, dict[str, Any]], None]


@attrs.frozen
class RebuildProgress:
    series_id: str
    done: int
    total: int


class Projector:
    """Owns every series' projection state; all mutation happens under one lock."""

    def __init__(
        self,
        eventlog: CandleLog,
        pstore: ProjectionStorage,
        *,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        classes: Sequence[type[Factor]] = DEFAULT_FACTORS,
        notify: Notify | None = None,
        max_in_memory: int = 0,
    ) -> None:
        self.log = eventlog
        self.max_in_memory = max_in_memory  # series states kept in memory (0: all)
        self.pstore = pstore
        self.classes = resolve_order(classes)
        self.settings = {k: dict(v) for k, v in (settings or {}).items()}
        self.notify = notify
        self._lock = trio.Lock()
        self._advanced = trio.Event()
        self._ready = trio.Event()
        self.stats = ProjectorStats()
        self.replay = SeriesReplayer(eventlog, self.classes, self.settings, self.stats)
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
        self._ready.set()
        return stale

    async def wait_ready(self) -> None:
        """Return once :meth:`start` is done (with a rebuild, that can be well after the daemon is up)."""
        await self._ready.wait()

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
                for state in self.replay.mem.values():
                    if state.last_time is not None and state.since_snapshot:
                        self.replay.snapshot(w, state)

    async def sync(self, result: AppendResult | None = None) -> None:
        """Apply every log event after the checkpoint (one transaction per chunk). ``result``, the batch
        just appended, saves reading its events back when it is exactly what comes next."""
        async with self._lock:
            while True:
                after = self.pstore.checkpoint()
                if result is not None and result.first_seq == after + 1 and result.last_seq is not None:
                    events = append_events(result)
                    result = None
                else:  # appends made elsewhere: read back from the log, off the event loop
                    events = await trio.to_thread.run_sync(self.log.events_since, after, CHUNK_EVENTS)
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
            # Events after it are applied by sync (or skipped if replayed). Log reads run off the event loop.
            start_seq = await trio.to_thread.run_sync(self.log.last_seq)
            if series is None:
                await trio.to_thread.run_sync(self.pstore.drop_all)
                self.replay.mem.clear()
                self.failed.clear()
                targets = self.log.series_ids()
                self._write_fingerprints()
            else:
                targets = [str(s) for s in series]
            heads = await trio.to_thread.run_sync(self.log.heads)
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
            self.replay.mem.pop(sid, None)
            try:
                with self.pstore.write() as w:
                    state = self.replay.load(w, sid, restore=False)
                    self.replay.replay_from(w, state, None, progress=advance)
                    self.replay.save_record(w, state)
            except self.pstore.full_error:
                self.pstore.grow()
            except BaseException:
                self.replay.mem.pop(sid, None)
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
                            self.replay.apply_events(w, sid, evs, notes)
                        except self.pstore.full_error:
                            raise
                        except Exception as e:  # a factor bug: that series stops, the others go on
                            self._fail(w, sid, e)
                    w.set_checkpoints(events[-1].seq)
                    self.stats.evicted += self.replay.evict(w, self.max_in_memory)
            except BaseException as e:
                for sid in touched:  # the transaction is gone: in-memory state reloads from what is stored
                    self.replay.mem.pop(sid, None)
                if not isinstance(e, self.pstore.full_error):
                    raise
                notes.clear()
                self.pstore.grow()
            else:
                return notes

    def _fail(self, w: ProjectionWrite, sid: str, error: Exception) -> None:
        self.stats.failures += 1
        self.failed[sid] = repr(error)
        self.replay.mem.pop(sid, None)
        log.exception("projection_failed", series_id=sid, error=repr(error))

    def _announce(self, notes: Sequence[tuple[str, str]]) -> None:
        for sid, why in notes:
            self._notify(sid, "factor.rebuild", f"factor projections replayed after a {why}")

    def _notify(self, sid: str, event: str, message: str) -> None:
        if self.notify is not None:
            self.notify(SeriesId.parse(sid), event, message, {"series_id": sid})


__all__ = ["Projector", "RebuildProgress"]
