"""The closed-candle write path, in a fixed order: append -> derive -> project -> publish.

Closed candles of every series share one queue, committed by group commit: the writer never waits for
more candles. A candle that finds it idle is committed at once; whatever arrives while a commit and its
stages run queues, and the next commit takes all of it (up to ``batch_max`` candles) as one batch. So a
lone POST pays one commit, and the minute-close burst of a thousand series is still a handful of
transactions, not a thousand.
A flush de-duplicates (last word per (series, time) wins) and orders each series ascending before the
append. Nothing reaches a stage after the append before the append has committed; a failing append is
retried with jittered backoff and its candles are kept, never dropped. The stages after an append are one
:class:`Stages` chain, which every other writer of the log (derived timeframes, imports) runs too.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

import attrs
import structlog
import trio

from actors.ports import NotWriterError, StoreError
from protocol.backoff import Backoff, Jitter
from protocol.candle import Candle, check_candle
from protocol.logrecords import AppendResult
from protocol.series import SeriesId

log = structlog.get_logger(__name__)

Stage = Callable[[AppendResult], Awaitable[None]]
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
LATENCY_SAMPLES = 10_000


class WriterClosedError(Exception):
    """The writer takes no more candles: the daemon is stopping."""


class CandleSink(Protocol):
    """What the writer appends to (``actors.store.Store``)."""

    async def append(self, batch: Mapping[SeriesId, Sequence[Candle]]) -> AppendResult: ...


async def no_op_stage(result: AppendResult) -> None:
    """A stage left out (tests, and the derived writes, which derive nothing further)."""


@attrs.frozen
class Stages:
    """What follows a committed append, in the fixed order.

    ``derive`` appends the derived timeframes the batch completes (they run their own chain, without a
    derive), ``project`` stores factors and overlays in one commit, ``publish`` hands what changed to the
    subscribers: nothing is published before it is durable and projected.
    """

    derive: Stage = no_op_stage
    project: Stage = no_op_stage
    publish: Stage = no_op_stage

    async def after_append(self, result: AppendResult, *, publish: bool = True) -> None:
        await self.derive(result)
        await self.project(result)
        if publish:
            await self.publish(result)


@attrs.define
class _Pending:
    series: SeriesId
    candles: Sequence[Candle]
    done: trio.Event | None = None
    result: AppendResult | None = None
    sent_ms: int | None = None  # exchange time the exchange sent it (kline ``E``), for latency
    more: Mapping[SeriesId, Sequence[Candle]] | None = None  # other series that must land in the same flush
    error: NotWriterError | None = None  # the batch was dropped: this node is not the cluster's writer

    async def outcome(self) -> AppendResult:
        assert self.done is not None
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@attrs.define
class WriterStats:
    submitted: int = 0
    flushes: int = 0
    written_events: int = 0
    duplicates_dropped: int = 0
    dropped_not_writer: int = 0  # candles dropped because this node lost (or never held) the cluster's lease
    append_failures: int = 0
    last_flush_size: int = 0


class ClosedCandleWriter:
    """One task that owns the buffer; producers hand candles over a bounded channel."""

    def __init__(
        self,
        sink: CandleSink,
        *,
        batch_max: int = 1000,
        stages: Stages = Stages(),
        queue_size: int = 10_000,
        now_ms: Callable[[], int] | None = None,
        jitter: Jitter = random.random,
    ) -> None:
        self._sink = sink
        self._jitter = jitter
        self._now_ms = now_ms  # exchange clock: send -> durable latency is measured when given
        self.latencies_ms: deque[int] = deque(maxlen=LATENCY_SAMPLES)
        self._batch_max = batch_max
        self.stages = stages
        # Bounded: a full queue makes producers wait (backpressure) rather than lose a closed candle.
        self._send, self._receive = trio.open_memory_channel[_Pending](queue_size)
        self.stats = WriterStats()
        self.finished = trio.Event()

    async def submit(self, series: SeriesId, candles: Sequence[Candle], *, sent_ms: int | None = None) -> None:
        """Queue closed candles; returns once queued. Invalid candles raise here, not in the batch."""
        _check(series, candles)
        self.stats.submitted += len(candles)
        await self._send.send(_Pending(series, candles, sent_ms=sent_ms))

    def submit_nowait(self, series: SeriesId, candles: Sequence[Candle], *, sent_ms: int | None = None) -> bool:
        """Queue closed candles without waiting; False (nothing queued) when the queue is full."""
        _check(series, candles)
        try:
            self._send.send_nowait(_Pending(series, candles, sent_ms=sent_ms))
        except trio.WouldBlock:
            return False
        self.stats.submitted += len(candles)
        return True

    async def write(self, series: SeriesId, candles: Sequence[Candle]) -> AppendResult:
        """Queue and wait until durable and through every stage (the HTTP ingest acknowledges after this)."""
        _check(series, candles)
        self.stats.submitted += len(candles)
        pending = _Pending(series, candles, trio.Event())
        await self._queue(pending)
        return await pending.outcome()

    def queue_depth(self) -> int:
        return self._receive.statistics().current_buffer_used

    async def write_batch(self, batch: Mapping[SeriesId, Sequence[Candle]]) -> AppendResult:
        """Several series in ONE transaction (a tick's closes of every timeframe), durable and through every
        stage when this returns."""
        items = [(s, c) for s, c in batch.items() if c]
        if not items:
            return AppendResult(None, None, 0, 0, 0, {}, [], {})
        for series, candles in items:
            _check(series, candles)
        self.stats.submitted += sum(len(c) for _, c in items)
        (first_series, first_candles), *rest = items
        pending = _Pending(first_series, first_candles, trio.Event(), more=dict(rest))
        await self._queue(pending)
        return await pending.outcome()

    async def _queue(self, pending: _Pending) -> None:
        try:
            await self._send.send(pending)
        except trio.ClosedResourceError:
            raise WriterClosedError("the daemon is stopping: no more writes") from None

    def statistics(self) -> dict[str, object]:
        samples = sorted(self.latencies_ms)
        latency = {}
        if samples:
            latency = {
                q: samples[min(len(samples) - 1, int(len(samples) * f))] for q, f in (("p50", 0.5), ("p99", 0.99))
            }
            latency["max"] = samples[-1]
            latency["samples"] = len(samples)
        return {
            **attrs.asdict(self.stats),
            "queued": self._receive.statistics().current_buffer_used,
            "send_to_durable_ms": latency,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            async with self._receive:
                while True:
                    try:
                        first = await self._receive.receive()
                    except trio.EndOfChannel:
                        return
                    await self._flush(self._take_queued([first]))
        finally:
            self.finished.set()

    def _take_queued(self, buffer: list[_Pending]) -> list[_Pending]:
        """Group commit: everything that queued while the last commit ran joins this one, up to ``batch_max``
        candles, without waiting for more."""
        count = sum(map(_size, buffer))
        while count < self._batch_max:
            try:
                item = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            buffer.append(item)
            count += _size(item)
        return buffer

    async def close(self) -> None:
        """Take no more candles; return once every queued one is durable and through its stages (shutdown)."""
        await self._send.aclose()
        await self.finished.wait()

    async def _flush(self, buffer: list[_Pending]) -> None:
        batch, dropped = merge(buffer)
        self.stats.duplicates_dropped += dropped
        try:
            result = await self._append_with_retry(batch)
        except NotWriterError as e:
            self._drop(buffer, batch, e)
            return
        if self._now_ms is not None:
            now = self._now_ms()
            self.latencies_ms.extend(now - p.sent_ms for p in buffer if p.sent_ms is not None)
        await self.stages.after_append(result)
        self.stats.flushes += 1
        self.stats.written_events += result.appended + result.corrected
        self.stats.last_flush_size = sum(len(c) for c in batch.values())
        for pending in buffer:
            if pending.done is not None:
                pending.result = result
                pending.done.set()

    def _drop(self, buffer: list[_Pending], batch: dict[SeriesId, list[Candle]], error: NotWriterError) -> None:
        """Not the cluster's writer (any more): the batch is the writer's to ingest, not this node's; a waiter
        (an HTTP write) is told who the writer is."""
        candles = sum(map(len, batch.values()))
        self.stats.dropped_not_writer += candles
        log.info("append_dropped_not_writer", candles=candles, writer=error.writer)
        for pending in buffer:
            if pending.done is not None:
                pending.error = error
                pending.done.set()

    async def _append_with_retry(self, batch: dict[SeriesId, list[Candle]]) -> AppendResult:
        backoff = Backoff(first_s=RETRY_FIRST_S, cap_s=RETRY_MAX_S)
        while True:
            try:
                return await self._sink.append(batch)
            except NotWriterError:
                raise
            except (OSError, StoreError) as e:  # disk trouble, an LMDB error: keep the batch, try again
                self.stats.append_failures += 1
                delay = backoff.next_delay(self._jitter())
                log.exception(
                    "append_failed", error=repr(e), candles=sum(map(len, batch.values())), retry_in_s=round(delay, 3)
                )
                await trio.sleep(delay)


def _check(series: SeriesId, candles: Sequence[Candle]) -> None:
    """Invalid candles raise at submit, before they can reach (and fail) a shared batch."""
    for c in candles:
        check_candle(c, series.timeframe)


def _size(pending: _Pending) -> int:
    return len(pending.candles) + sum(map(len, (pending.more or {}).values()))


def merge(buffer: Sequence[_Pending]) -> tuple[dict[SeriesId, list[Candle]], int]:
    """Per series: the last candle for each time, ascending. Returns the batch and how many were dropped."""
    by_series: dict[SeriesId, dict[int, Candle]] = {}
    total = 0
    for pending in buffer:
        for series, candles in [(pending.series, pending.candles), *(pending.more or {}).items()]:
            slot = by_series.setdefault(series, {})
            for c in candles:
                slot[c.candle_time] = c
                total += 1
    batch = {series: [slot[t] for t in sorted(slot)] for series, slot in by_series.items()}
    return batch, total - sum(map(len, batch.values()))
