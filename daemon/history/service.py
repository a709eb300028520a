"""The three repairs of the past, each behind its own flag, each best-effort and visible:

- gap backfill: a known hole ``expected_next_time..actual_time`` from freqtrade files, then the exchange;
- tail coverage: the reader wants N candles up to a time: freqtrade -> derive from the base timeframe ->
  the exchange (ccxt; on the read path only when ``enable_ccxt_backfill_on_read`` too), checking after each
  level, capped by ``market_auto_tail_backfill_max_candles``;
- startup sync: every whitelist series brought to its latest closed period before the daemon is ready, for a
  bounded wait: past it, or once the exchange proves unreachable, the daemon serves and the sync goes on.

Every repair is tracked (:class:`ProgressTracker`) for health. Repaired candles are appended through the
store like any other (derived timeframes follow through the derive stage); subscribers get them by
healing or catchup, never as live frames out of order.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final, Literal

import attrs
import structlog
import trio

from actors.ports import NotWriterError
from actors.store import Store
from daemon.config import Settings
from daemon.history.exchange import CcxtSource, HistoryError
from daemon.history.freqtrade import ReadStats, data_file, read_candles
from daemon.history.progress import Progress, ProgressTracker
from protocol.aggregate import aggregate
from protocol.candle import Candle
from protocol.coverage import count_missing, missing_ranges, tail_window_start
from protocol.logrecords import AppendResult
from protocol.series import SeriesId
from protocol.timeframes import Timeframe

log = structlog.get_logger(__name__)

HEAL_WAIT_S: Final = 5.0  # a subscriber waits this long for a gap backfill before it gets the gap
TAIL_WAIT_S: Final = 5.0  # GET /candles waits this long for tail coverage, then answers what is stored
STARTUP_CONCURRENCY: Final = 4

Derive = Callable[[AppendResult], object]
StartupWait = Literal["done", "exchange_unreachable", "deadline"]


@attrs.define
class CoverageResult:
    series_id: str
    target: int
    had: int
    filled: dict[str, int]
    still_missing: int
    error: str | None = None  # a level that could not be asked (the exchange unreachable): worth a retry

    @property
    def note(self) -> str:
        return "tail_coverage_done" if self.still_missing == 0 else "tail_coverage_partial"


def _always() -> bool:
    return True


class History:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        source: CcxtSource,
        derive_stage: Callable[[AppendResult], object] | None = None,
        base: Timeframe,
        derived: Sequence[Timeframe],
        now_s: Callable[[], int],
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        self.settings = settings
        self._store = store
        self.source = source
        self._derive_stage = derive_stage
        self._base = base
        self._derived = set(derived)
        self._now_s = now_s
        self.progress = ProgressTracker(now_ms or (lambda: time.time_ns() // 1_000_000))
        self.gaps_repaired = 0  # gap backfills that filled their hole completely
        self.candles_repaired = 0  # candles any repair appended
        self._running: dict[tuple[str, str], trio.Event] = {}
        self.nursery: trio.Nursery | None = None
        # In a cluster, only the lease holder repairs: a replica's log is the stream's, filled by the writer.
        self.may_write: Callable[[], bool] = _always
        # A replica asks the writer for a reader's tail coverage, and waits until its log holds the result.
        self.coverage_elsewhere: Callable[[SeriesId, int], Awaitable[None]] | None = None
        self.startup_synced = trio.Event()  # the startup sync is over (before ready, or after it)
        self.startup_wait: StartupWait | None = None  # what ended the wait for it before ready

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # -- appends ------------------------------------------------------------------------------------

    async def _append(self, series: SeriesId, candles: Sequence[Candle]) -> int:
        if not candles:
            return 0
        result = await self._store.append({series: list(candles)})
        self.candles_repaired += result.appended + result.corrected
        if self._derive_stage is not None:
            # Whole even when the repair is being stopped (shutdown): these base candles are durable, and a
            # bucket they complete must not be left underived.
            with trio.CancelScope(shield=True):
                await self._derive_stage(result)  # type: ignore[misc]
        return result.appended + result.corrected

    # -- levels -------------------------------------------------------------------------------------

    async def from_freqtrade(self, series: SeriesId, ranges: Sequence[tuple[int, int]]) -> int:
        """Import the file's candles in ``ranges``; streamed from a worker thread, batch by batch."""
        datadir = self.settings.freqtrade_data_dir
        if not datadir or not ranges:
            return 0
        path = await trio.to_thread.run_sync(lambda: data_file(Path(datadir).expanduser(), series))
        if path is None:
            return 0
        stats = ReadStats()
        filled = 0
        for first, last in ranges:
            filled += await self._import_range(path, series, first, last, stats)
        log.info("freqtrade_imported", series_id=str(series), path=str(path), candles=filled, skipped=stats.skipped)
        return filled

    async def _import_range(self, path: Path, series: SeriesId, first: int, last: int, stats: ReadStats) -> int:
        # Read a batch, append it, read the next: in turns, each in a worker thread. Reading ahead in a
        # second thread was slower (471k vs 500k+ candles/s): both halves hold the GIL and fight for it.
        batches = read_candles(path, series, first, last, stats=stats)
        filled = 0
        try:
            while (batch := await trio.to_thread.run_sync(next, batches, None)) is not None:
                filled += await self._append(series, batch)
        finally:
            batches.close()
        return filled

    async def by_derivation(self, series: SeriesId, ranges: Sequence[tuple[int, int]]) -> int:
        """Complete buckets of a derived timeframe, built from the stored base candles."""
        tf = series.timeframe
        if tf not in self._derived or tf == self._base or not ranges:
            return 0
        base_series = series.with_timeframe(self._base)
        filled = 0
        for first, last in ranges:
            base = await self._store.range(base_series, first - 1, tf.next_open(last) - 1, None)
            filled += await self._append(series, list(aggregate(self._base, tf, base)))
        return filled

    async def from_exchange(
        self,
        series: SeriesId,
        ranges: Sequence[tuple[int, int]],
        cap: int | None = None,
        progress: Progress | None = None,
        *,
        patient: bool = True,
    ) -> int:
        filled = 0
        for first, last in ranges:
            async with contextlib.aclosing(self.source.pages(series, first, last, patient=patient)) as pages:
                async for page in pages:
                    got = await self._append(series, page)
                    filled += got
                    if progress is not None:
                        self.progress.advance(progress, got)  # page by page: klinectl shows it live
                    if cap is not None and filled >= cap:
                        return filled
        return filled

    # -- repairs ------------------------------------------------------------------------------------

    async def _missing(self, series: SeriesId, first: int, last: int) -> list[tuple[int, int]]:
        stored = await self._store.range(series, first - 1, last, None)
        return missing_ranges(series.timeframe, (c.candle_time for c in stored), first, last)

    async def gap_backfill(self, series: SeriesId, expected_next_time: int, actual_time: int) -> int:
        """Fill the hole before ``actual_time`` (freqtrade, derivation, then the exchange); candles filled."""
        filled, _ = await self.repair_hole(series, expected_next_time, actual_time)
        return filled

    async def repair_hole(self, series: SeriesId, expected_next_time: int, actual_time: int) -> tuple[int, bool]:
        """:meth:`gap_backfill` for a series actor: (candles filled, whether every source answered). A hole
        whose exchange could not be asked is asked again later; one it answered is done, filled or not."""
        if not self.settings.enable_market_gap_backfill:
            return 0, True
        last = series.timeframe.prev_open(actual_time)
        result = await self.repair_range(
            series, expected_next_time, last, reason="gap_backfill", exchange=True, notes=("gap_filled", "gap_partial")
        )
        self.gaps_repaired += bool(result.filled) and result.still_missing == 0
        return sum(result.filled.values()), result.error is None

    async def heal(self, series: SeriesId, after: int, before: int) -> list[Candle]:
        """For the WebSocket gate: candles strictly between two times, from the log, after a bounded gap
        backfill when that is on."""
        candles = await self._store.range(series, after, before - 1, None)
        tf = series.timeframe
        complete = len(candles) == tf.count_between(tf.next_open(after), tf.prev_open(before))
        if not complete and self.settings.enable_market_gap_backfill and self.may_write():
            with trio.move_on_after(HEAL_WAIT_S):
                await self.gap_backfill(series, tf.next_open(after), before)
            candles = await self._store.range(series, after, before - 1, None)
        return candles

    async def ensure_tail_coverage(
        self, series: SeriesId, target: int, to_time: int, *, on_read: bool = False, exchange: bool | None = None
    ) -> CoverageResult:
        """Walk freqtrade -> derivation -> exchange until ``target`` candles end at ``to_time``. A reader's
        (``on_read``) asks an exchange it cannot reach once, not with retries: the reader waits seconds at most,
        and with no network every chart would wait them out."""
        tf = series.timeframe
        target = min(target, self.settings.market_auto_tail_backfill_max_candles)
        last = tf.floor(to_time)
        first = tail_window_start(tf, last, target)
        use_exchange = exchange
        if use_exchange is None:
            use_exchange = self.settings.enable_ccxt_backfill and (
                not on_read or self.settings.enable_ccxt_backfill_on_read
            )
        result = await self.repair_range(
            series,
            first,
            last,
            reason="tail_coverage",
            exchange=use_exchange,
            notes=("tail_coverage_done", "tail_coverage_partial"),
            patient=not on_read,
        )
        result.target = target
        return result

    async def repair_range(
        self,
        series: SeriesId,
        first: int,
        last: int,
        *,
        reason: str,
        exchange: bool,
        notes: tuple[str, str] = ("repair_done", "repair_partial"),
        patient: bool = True,
    ) -> CoverageResult:
        """Fill what ``[first, last]`` lacks, cheapest source first, checking after each level. ``notes``: what
        progress says when it is complete, and when something is still missing."""
        tf = series.timeframe
        ranges = await self._missing(series, first, last)
        missing = count_missing(tf, ranges)
        total = tf.count_between(first, last)
        result = CoverageResult(str(series), total, total - missing, {}, missing)
        if not ranges:
            return result
        progress = self.progress.begin(series, reason, missing)
        levels: list[tuple[str, Callable[[SeriesId, Sequence[tuple[int, int]]], Awaitable[int]]]] = [
            ("freqtrade", self.from_freqtrade),
            ("derived", self.by_derivation),
        ]
        if exchange:
            levels.append(("exchange", functools.partial(self.from_exchange, progress=progress, patient=patient)))
        try:
            for name, level in levels:
                got = await level(series, ranges)
                result.filled[name] = got
                if name != "exchange":
                    self.progress.advance(progress, got)
                ranges = await self._missing(series, first, last)
                if not ranges:
                    break
        except (HistoryError, NotWriterError) as e:  # the source failed, or this node stopped being the writer
            self.progress.fail(progress, str(e))
            result.still_missing = count_missing(tf, ranges)
            result.error = str(e)
            log.warning("repair_failed", series_id=str(series), reason=reason, error=str(e))
            return result
        result.still_missing = count_missing(tf, ranges)
        note = notes[0] if not result.still_missing else notes[1]
        self.progress.succeed(progress, result.still_missing, note)
        log.info(note, series_id=str(series), filled=result.filled, missing=result.still_missing)
        return result

    async def tail_for_read(self, series: SeriesId, target: int) -> None:
        """``GET /candles``: start (or join) tail coverage in the background and wait for it, bounded."""
        if not self.settings.enable_market_auto_tail_backfill or self.nursery is None:
            return
        if not self.may_write():
            if self.coverage_elsewhere is not None:
                with trio.move_on_after(TAIL_WAIT_S):
                    await self.coverage_elsewhere(series, target)
            return
        key = (str(series), "tail")
        done = self._running.get(key)
        if done is None:
            done = self._running[key] = trio.Event()
            to_time = series.timeframe.last_closed_open(self._now_s())
            self.nursery.start_soon(self._tail_job, series, target, to_time, key, done)
        with trio.move_on_after(TAIL_WAIT_S):
            await done.wait()

    async def _tail_job(
        self, series: SeriesId, target: int, to_time: int, key: tuple[str, str], done: trio.Event
    ) -> None:
        try:
            await self.ensure_tail_coverage(series, target, to_time, on_read=True)
        except Exception as e:  # best effort: the reader gets what is stored; the error is visible in health
            log.warning("tail_coverage_error", series_id=str(series), error=repr(e))
        finally:
            self._running.pop(key, None)
            done.set()

    async def startup_sync_before_ready(self, series_list: Sequence[SeriesId], wait_s: float) -> bool:
        """Start the startup sync in the background and wait for it, until it is done, the exchange proves
        unreachable, or ``wait_s`` passes: whether it is done. A start never hangs on the exchange (ccxt's
        retries with backoff take half a minute to give up); the sync goes on, and what it brings reaches
        subscribers by catchup and healing like any repair."""
        if self.nursery is None:
            raise RuntimeError("History.run must be started before the startup sync")
        done = self.startup_synced = trio.Event()  # a new one per sync: a cluster node syncs at each writer term

        async def sync() -> None:
            try:
                await self.startup_sync(series_list)
            finally:
                done.set()

        self.nursery.start_soon(sync)
        with trio.move_on_after(wait_s):
            await _first_of(done.wait, self.source.wait_unreachable)
        if done.is_set():
            self.startup_wait = "done"
            return True
        self.startup_wait = "exchange_unreachable" if self.source.unreachable else "deadline"
        log.warning("startup_sync_continues", series=len(series_list), why=self.startup_wait, wait_s=wait_s)
        return False

    async def startup_sync(self, series_list: Sequence[SeriesId]) -> dict[str, list[str]]:
        """Before ready: each series up to its latest closed period (a window of the configured size)."""
        summary: dict[str, list[str]] = {"synced": [], "lagging": [], "errors": []}
        limiter = trio.CapacityLimiter(STARTUP_CONCURRENCY)
        target = self.settings.startup_kline_sync_target_candles

        async def one(series: SeriesId) -> None:
            async with limiter:
                try:
                    tf = series.timeframe
                    to_time = tf.last_closed_open(self._now_s())
                    if tf in self._derived and tf != self._base:
                        # A derived timeframe is built from the base, never asked of the exchange: over the
                        # span the base's sync covers (what a crash left underived there is rebuilt).
                        span = max(1, target * self._base.seconds // tf.seconds)
                        result = await self.ensure_tail_coverage(series, span, to_time, exchange=False)
                    else:
                        result = await self.ensure_tail_coverage(series, target, to_time, exchange=True)
                except Exception as e:  # one series failing never stops the others (nor the start)
                    summary["errors"].append(f"{series}: {e!r}")
                    return
                summary["synced" if result.still_missing == 0 else "lagging"].append(str(series))

        # The series of the exchange first, then the derived ones: those are built from the synced base.
        derived = [s for s in series_list if s.timeframe in self._derived and s.timeframe != self._base]
        for group in ([s for s in series_list if s not in derived], derived):
            async with trio.open_nursery() as nursery:
                for series in group:
                    nursery.start_soon(one, series)
        log.info(
            "startup_sync_done",
            synced=len(summary["synced"]),
            lagging=summary["lagging"],
            errors=summary["errors"],
        )
        return summary


async def _first_of(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return once any of ``waits`` returns (the others are cancelled)."""
    async with trio.open_nursery() as nursery:

        async def one(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(one, wait)
