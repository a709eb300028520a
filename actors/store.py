"""The trio face of the event log: every write one at a time, big work off the event loop.

py-lmdb requires a write transaction to begin and commit on one thread, so each batch runs whole in one
place. A small batch (the live path: a flush of at most a few thousand candles, a couple of ms with its
fsync) runs on the event loop itself. In a worker thread it would be slower, not faster: py-lmdb releases
the GIL around every put, and while the loop is busy with a minute-close burst each re-acquisition waits
for the interpreter's switch interval (docs/design.md has the measurement).
Big batches (backfill, imports) run in a worker thread so the loop keeps serving. A ``CapacityLimiter(1)``
keeps writes strictly serial either way. Reads use their own limiter so a long catchup read never queues
behind a write.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import trio

from actors.ports import CandleLog, CommitPoint
from protocol.candle import Candle
from protocol.logrecords import AppendResult, LogEvent, SeriesHead, append_events
from protocol.series import SeriesId

T = TypeVar("T")
INLINE_MAX_CANDLES = 2_000  # up to this, an append is a few ms on the loop; beyond it, a worker thread


class Store:
    """Async access to one :class:`CandleLog`; owns nothing else."""

    def __init__(self, log: CandleLog, *, max_readers: int = 4, commit_point: CommitPoint | None = None) -> None:
        self.log = log
        # In cluster mode, a batch's events are made durable there first, then committed here (or aborted).
        self._commit_point = commit_point
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(max_readers)
        self._batches = 0
        self._events = 0
        self._appended = trio.Event()
        self._versions: dict[str, int] = {}  # per series, bumped by every append that changes it

    async def append(self, batch: Mapping[SeriesId, Sequence[Candle]]) -> AppendResult:
        """Durably append one batch; returns only after the transaction has committed."""
        if self._commit_point is not None:
            async with self._write_limiter:  # the local transaction stays open while the stream takes it
                result = await self._append_through(self._commit_point, batch)
        elif sum(map(len, batch.values())) <= INLINE_MAX_CANDLES:
            async with self._write_limiter:  # a threaded write may be in progress: wait for it
                result = self.log.append(batch)
        else:
            # abandon_on_cancel=False (the default): a cancelled caller still waits for the commit, so a
            # batch is never half-known (written to disk but reported as lost).
            result = await trio.to_thread.run_sync(self.log.append, batch, limiter=self._write_limiter)
        self._committed(result)
        return result

    async def apply(self, events: Sequence[LogEvent]) -> list[AppendResult]:
        """Write another log's events at their seqs (a replica); one result per append they amount to."""
        async with self._write_limiter:
            results = self.log.apply(events)
        for result in results:
            self._committed(result)
        return results

    def _committed(self, result: AppendResult) -> None:
        self._batches += 1
        self._events += result.appended + result.corrected
        for series in result.changed:
            sid = str(series)
            self._versions[sid] = self._versions.get(sid, 0) + 1
        self._appended.set()
        self._appended = trio.Event()

    async def _append_through(
        self, commit_point: CommitPoint, batch: Mapping[SeriesId, Sequence[Candle]]
    ) -> AppendResult:
        pending = self.log.begin_append(batch)
        try:
            events = append_events(pending.result)
            if events:
                await commit_point.publish(events)
        except BaseException:
            pending.abort()
            raise
        return pending.commit()

    def version(self, series: SeriesId | str) -> int:
        """Changes whenever an append changes ``series``: readers key caches on it."""
        return self._versions.get(str(series), 0)

    async def wait_appended(self) -> None:
        """Return after the next batch commits (tests and pollers wait on the log, never on a timer)."""
        await self._appended.wait()

    async def _read(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._read_limiter)

    async def tail(self, series: SeriesId | str, n: int) -> list[Candle]:
        return await self._read(self.log.tail, series, n)

    async def range(
        self, series: SeriesId | str, since: int | None, until: int | None, limit: int | None
    ) -> list[Candle]:
        return await self._read(self.log.range, series, since, until, limit)

    async def count_between(self, series: SeriesId | str, start: int, end: int) -> int:
        return await self._read(self.log.count_between, series, start, end)

    async def head(self, series: SeriesId | str) -> SeriesHead | None:
        return await self._read(self.log.head, series)

    async def heads(self) -> dict[str, SeriesHead]:
        return await self._read(self.log.heads)

    async def events_since(self, after_seq: int, limit: int | None = None) -> list[LogEvent]:
        return await self._read(self.log.events_since, after_seq, limit)

    def statistics(self) -> dict[str, int]:
        return {
            "write_batches": self._batches,
            "write_events": self._events,
            "writes_waiting": self._write_limiter.statistics().tasks_waiting,
            "reads_waiting": self._read_limiter.statistics().tasks_waiting,
        }
