"""One series actor: owns the series' head cursor and its clock tick.

Parsed kline updates arrive through :meth:`SeriesActor.deliver`, called synchronously by the upstream
reader: a closed candle is handed to the shared writer and a forming one to the fan-out (which throttles
every source of forming candles per series), without a task switch per message (the minute-close burst
of a thousand series is a thousand of them). A failure there crashes this actor, never the reader.
On each tick of its timeframe checks, after a grace period, that the period's closed candle arrived; if
not, it asks the exchange (``fetch_closed``, REST in production) and appends what the exchange has. What
is still missing stays a recorded hole. A hole the exchange could not be asked about (it was unreachable)
is asked again on later ticks, with jittered backoff, until the exchange answers: an outage of REST and
the stream together heals once REST is back.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import structlog
import trio

from actors.clock import ClockTick, ExchangeClock, run_ticker
from actors.pipeline import ClosedCandleWriter
from protocol.backoff import Backoff, Jitter
from protocol.binance import KlineUpdate
from protocol.candle import Candle
from protocol.series import SeriesId
from protocol.upstream import Hole, HoleTracker

log = structlog.get_logger(__name__)

FetchClosed = Callable[[SeriesId, int, int], Awaitable[list[Candle]]]
"""(series, first_open, last_open) -> the exchange's closed candles in that inclusive range."""
RepairHole = Callable[[SeriesId, int, int], Awaitable[tuple[int, bool]]]
"""(series, expected_next_time, actual_time) -> (candles filled, whether every source answered) (gap backfill:
freqtrade, then the exchange)."""
BroadcastForming = Callable[[SeriesId, Candle], None]
"""Hand a forming candle to subscribers; never blocks (the fan-out throttles it per series, then queues or drops
it per subscriber)."""
TICK_GRACE_S: Final = 3.0  # Binance sends the final kline within about a second of the close
MAX_HOLES_KEPT: Final = 100
HOLE_RETRY_FIRST_S: Final = 60.0
HOLE_RETRY_MAX_DELAY_S: Final = 300.0  # an unanswered hole is asked again after (jittered) 1, 2, 4, 5, 5 ... minutes
HOLE_RETRY_LIMIT: Final = 300  # asks, then it stays a recorded hole (most of a day: jittered waits average half)


@attrs.define
class PendingHole:
    """A hole the exchange has not answered for yet (fetch failed): asked again at the first tick whose
    boundary is at or after ``retry_at_s``."""

    hole: Hole
    attempts: int = 0
    retry_at_s: int = 0


@attrs.define
class SeriesState:
    """What the actor knows; the debug endpoints and health read it."""

    head_time: int | None
    closed_seen: int = 0
    forming_sent: int = 0  # handed to the fan-out, which throttles them
    fills_requested: int = 0
    fills_appended: int = 0
    holes: list[Hole] = attrs.field(factory=list)
    pending_holes: list[PendingHole] = attrs.field(factory=list)
    holes_healed: int = 0
    last_fill_error: str | None = None


class SeriesActor:
    def __init__(
        self,
        series: SeriesId,
        *,
        head_time: int | None,
        writer: ClosedCandleWriter,
        broadcast_forming: BroadcastForming,
        fetch_closed: FetchClosed,
        clock: ExchangeClock,
        grace_s: float = TICK_GRACE_S,
        repair_hole: RepairHole | None = None,
        jitter: Jitter = random.random,
    ) -> None:
        self.series = series
        self.state = SeriesState(head_time=head_time)
        self._writer = writer
        self._broadcast = broadcast_forming
        self._fetch = fetch_closed
        self._clock = clock
        self._grace_s = grace_s
        self._holes = HoleTracker(series.timeframe, head_time)
        self._repair_hole = repair_hole
        self._hole_backoff = Backoff(first_s=HOLE_RETRY_FIRST_S, cap_s=HOLE_RETRY_MAX_DELAY_S)
        self._jitter = jitter
        self._nursery: trio.Nursery | None = None
        self._retrying = False  # a _retry_holes run is in progress
        self._filling = False  # a tick's _fill is in progress
        self._failed: BaseException | None = None
        self._failure = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(
                functools.partial(run_ticker, lag_ms=round(self._grace_s * 1000)), self._clock, self._on_tick
            )
            task_status.started()
            await self._failure.wait()
            assert self._failed is not None
            raise self._failed

    # -- stream updates (synchronous: called by the upstream reader) --------------------------------

    def deliver(self, update: KlineUpdate) -> None:
        """Take one update; a failure crashes this actor (its supervisor restarts it), not the caller."""
        if self._failed is not None:
            return
        try:
            self._on_update(update)
        except Exception as e:
            self._failed = e
            self._failure.set()

    def _on_update(self, update: KlineUpdate) -> None:
        candle = update.candle
        if update.is_final:
            self._on_closed([candle], sent_ms=update.event_time_ms)
            return
        head = self.state.head_time
        if head is not None and candle.candle_time <= head:
            return  # a late forming update of a period already closed
        self.state.forming_sent += 1
        self._broadcast(self.series, candle)

    def _on_closed(self, candles: list[Candle], *, sent_ms: int | None = None) -> None:
        for c in candles:
            hole = self._holes.observe_closed(c.candle_time)
            if hole is not None:
                self._record_hole(hole)
                # A late close revealed it: repair in the background (or leave it to the next tick's retry).
                self._spawn(functools.partial(self._repair, hole))
        self.state.closed_seen += len(candles)
        latest = max(c.candle_time for c in candles)
        if self.state.head_time is None or latest > self.state.head_time:
            self.state.head_time = latest
        if not self._writer.submit_nowait(self.series, candles, sent_ms=sent_ms):
            # The writer's queue is full (the disk is stalling): wait for room in a task, never drop a close.
            self._spawn(functools.partial(self._writer.submit, self.series, candles, sent_ms=sent_ms))

    def _spawn(self, fn: Callable[[], Awaitable[object]]) -> bool:
        """Run ``fn`` in this actor's task tree; an actor going down (crashed, evicted) takes no new work."""
        if self._nursery is None or self._failed is not None:
            return False
        try:
            self._nursery.start_soon(fn)
        except RuntimeError:  # the nursery is closing: the actor is stopping
            log.info("actor_stopping_work_dropped", series_id=str(self.series))
            return False
        return True

    def _record_hole(self, hole: Hole) -> None:
        self.state.holes.append(hole)
        del self.state.holes[:-MAX_HOLES_KEPT]
        log.warning(
            "gap_detected",
            series_id=str(self.series),
            expected_next_time=hole.expected_next_time,
            actual_time=hole.actual_time,
            missing=hole.missing(self.series.timeframe),
        )

    # -- reconnects --------------------------------------------------------------------------------

    def stream_resumed(self) -> None:
        """The upstream connection carrying this series (re)connected; see :meth:`_check_resumed`."""
        self._spawn(self._check_resumed)

    async def _check_resumed(self) -> None:
        """Periods that closed while the stream was down never arrive on the new one: record the hole
        (``expected_next_time .. actual_time``, actual being the first period the stream will deliver)
        and ask the exchange for it now, rather than at the next tick."""
        tf, head = self.series.timeframe, self.state.head_time
        if head is None:
            return
        expected, live_from = tf.next_open(head), tf.floor(self._clock.now_s())
        if live_from <= expected:
            return
        hole = Hole(expected, live_from)
        self._record_hole(hole)
        # Recorded here, once: the stream's next close (live_from) must not report the same hole again.
        self._holes.last_closed = max(self._holes.last_closed or head, tf.prev_open(live_from))
        await self._repair(hole)

    async def _repair(self, hole: Hole) -> None:
        """Repair a hole now; one the exchange could not be asked about is kept for :meth:`_retry_holes`."""
        if not await self._ask(hole):
            self._keep_pending(hole)

    async def _ask(self, hole: Hole) -> bool:
        """Gap backfill of a known hole (freqtrade files first, then the exchange) when it is switched on,
        else a REST fill. False when the exchange could not be asked (a retry may succeed)."""
        tf = self.series.timeframe
        if self._repair_hole is None:
            return await self._fill(hole.expected_next_time, tf.prev_open(hole.actual_time))
        try:
            filled, answered = await self._repair_hole(self.series, hole.expected_next_time, hole.actual_time)
        except Exception as e:  # best effort: the retry, the clock's REST fill and the subscribers' gap follow
            self.state.last_fill_error = repr(e)
            log.warning("gap_repair_failed", series_id=str(self.series), error=repr(e))
            return False
        self.state.fills_appended += filled
        return answered

    def _keep_pending(self, hole: Hole) -> None:
        pending = self.state.pending_holes
        if any(p.hole == hole for p in pending):
            return
        pending.append(PendingHole(hole))  # asked again at the next tick
        del pending[:-MAX_HOLES_KEPT]

    async def _retry_holes(self, boundary_s: int) -> None:
        """Ask the exchange again for the holes it did not answer for; each is done once it answers (what it
        lacks then stays a recorded hole), or after :data:`HOLE_RETRY_LIMIT` attempts. Runs beside the ticks
        (a REST call that retries for half a minute must not make them late), one run at a time: the tick
        that spawned it set ``_retrying``."""
        try:
            due = [p for p in self.state.pending_holes if p.retry_at_s <= boundary_s]
            for pending in due:
                pending.attempts += 1
                answered = await self._ask(pending.hole)
                if answered or pending.attempts >= HOLE_RETRY_LIMIT:
                    self.state.pending_holes.remove(pending)
                    self.state.holes_healed += answered
                    log.info("hole_retried", series_id=str(self.series), answered=answered, attempts=pending.attempts)
                    continue
                delay = self._hole_backoff.delay(pending.attempts - 1, self._jitter())
                later = boundary_s + math.ceil(delay)
                for p in due:  # the exchange cannot be asked now: the others wait as long, not asked in vain
                    p.retry_at_s = later
                break
        finally:
            self._retrying = False

    # -- the clock --------------------------------------------------------------------------------

    async def _on_tick(self, tick: ClockTick) -> None:
        if self.state.pending_holes and not self._retrying:
            self._retrying = self._spawn(functools.partial(self._retry_holes, tick.boundary_s))
        tf = self.series.timeframe
        boundary = tick.boundary_s
        if not tf.is_aligned(boundary):
            return  # this tick closes no period of our timeframe
        if self._clock.now_ms() >= tf.next_open(boundary) * 1000 + tick.lag_ms:
            return  # catching up after a clock step or a stall: our next tick is due too and fills it all
        # The ticker fires grace_s after the boundary: by now the final kline should have arrived.
        last_closed = tf.prev_open(boundary)
        head = self.state.head_time
        if head is not None and head >= last_closed:
            return
        first = last_closed if head is None else tf.next_open(head)
        if self._filling:
            return  # the last tick's fill still waits on the exchange; it, or the next tick, covers this
        self._filling = self._spawn(functools.partial(self._tick_fill, first, last_closed))

    async def _tick_fill(self, first: int, last: int) -> None:
        """The tick's fill, beside the ticker: a REST call retrying for half a minute must not make the next
        ticks late (on a fast demo clock, or a stalled exchange)."""
        try:
            await self._fill(first, last)
        finally:
            self._filling = False

    async def _fill(self, first: int, last: int) -> bool:
        """Ask the exchange for closed periods that did not arrive; keep what it lacks as a hole. False when
        the exchange could not be asked (it is unreachable): the caller retries."""
        self.state.fills_requested += 1
        try:
            candles = await self._fetch(self.series, first, last)
        except Exception as e:  # the exchange is unreachable: say so, keep serving, retry next tick
            self.state.last_fill_error = repr(e)
            log.warning("fill_failed", series_id=str(self.series), first=first, last=last, error=repr(e))
            return False
        candles = sorted((c for c in candles if first <= c.candle_time <= last), key=lambda c: c.candle_time)
        if candles:
            self.state.fills_appended += len(candles)
            log.info("fill_from_exchange", series_id=str(self.series), first=first, last=last, got=len(candles))
            self._on_closed(candles)
        got_last = candles[-1].candle_time if candles else None
        if got_last != last:
            log.warning("fill_incomplete", series_id=str(self.series), first=first, last=last, got=len(candles))
        return True
