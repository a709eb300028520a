"""One symbol built from its trades: a trio actor around :class:`protocol.trades.TradeCandles`.

Trades arrive synchronously from the upstream reader (:meth:`TradeSeriesActor.deliver`), which only folds
them into the book: the forming candles (display only) are built and handed to the fan-out by a task of the
actor's, at most once per forming interval. The actor's own ticker fires ``grace_s`` after each whole minute
of exchange time (late trades of the ended minute still count; trades of the new one are held by the book),
and everything the tick produces (finalised, flat-filled) for every timeframe is written in ONE transaction
and published only once durable. At start the actor repairs the downtime from the exchange's klines where it
has them and fills only the rest synthetically; a new symbol gets a seed candle at once.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import attrs
import structlog
import trio

from actors.clock import ClockTick, ExchangeClock, run_ticker
from actors.pipeline import ClosedCandleWriter
from protocol.binance import AggTrade
from protocol.candle import Candle, synthetic_after
from protocol.series import SeriesId
from protocol.timeframes import Timeframe
from protocol.trades import TradeCandles

log = structlog.get_logger(__name__)

FetchClosed = Callable[[SeriesId, int, int], Awaitable[list[Candle]]]
ReadRecent = Callable[[SeriesId, int], Awaitable[list[Candle]]]
BroadcastForming = Callable[[SeriesId, Candle], None]
TRADE_GRACE_S: Final = 2.0  # Binance delivers a trade within a second or so of its time
FORMING_INTERVAL_S: Final = 0.25  # the fan-out's default: it sends no more often than that per series
CLOCK_WAIT_S: Final = 3.0  # how long a starting book waits for the exchange clock's first measurement
AUDIT_EVERY_MS: Final = 120_000  # exchange time between checks of the flat candles against the exchange
SILENCE_S: Final = 10  # exchange seconds without a trade: the periods around it are checked with the exchange
AUDIT_WINDOW: Final = 2000  # stored periods per timeframe looked through at start for flat candles to check
AUDIT_TAIL: Final = 60  # the last stored periods checked at start whatever they are (marks live in memory)


@attrs.define
class TradeState:
    ticks: int = 0
    last_tick_drift_ms: int = 0
    closed_written: int = 0
    synthetic_written: int = 0
    repaired_from_exchange: int = 0
    seeded: bool = False
    stream_connects: int = 0
    rechecked_after_reconnect: int = 0
    synthetic_checked: int = 0  # flat candles the exchange confirmed had no trade
    synthetic_corrected: int = 0  # flat candles the exchange had trades for: replaced


class TradeSeriesActor:
    def __init__(
        self,
        series: Sequence[SeriesId],
        *,
        heads: dict[SeriesId, Candle | None],
        writer: ClosedCandleWriter,
        broadcast_forming: BroadcastForming,
        fetch_closed: FetchClosed,
        clock: ExchangeClock,
        grace_s: float = TRADE_GRACE_S,
        read_recent: ReadRecent | None = None,
        forming_interval_s: float = FORMING_INTERVAL_S,
    ) -> None:
        self.series = {s.timeframe: s for s in series}
        self.symbol_id = series[0].symbol_id
        self._heads = heads  # per series, its last stored candle (None: a new symbol)
        self._writer = writer
        self._broadcast = broadcast_forming
        self._fetch = fetch_closed
        self._clock = clock
        self._grace_s = grace_s
        self.book: TradeCandles | None = None
        self._started_s = 0
        self._last_trade_s: int | None = None
        self._written_through: dict[Timeframe, int] = {}  # per timeframe, the last period a tick wrote
        # Flat candles written without a trade seen: a quiet market, or trades that never reached us (a stream
        # silent but connected, a drop). The exchange's klines settle which, in the audit.
        # (None: a late trade landed in it after it was written; the exchange's kline is taken as it is.)
        self._unverified: dict[Timeframe, dict[int, Candle | None]] = {tf: {} for tf in self.series}
        self._read_recent = read_recent
        self._silences: list[tuple[int, int]] = []  # stretches longer than SILENCE_S between two trades
        self._nursery: trio.Nursery | None = None
        self._forming_interval_s = forming_interval_s
        self._forming_due = False  # trades since the forming candles were last handed over
        self._forming_wanted = trio.Event()
        self.ready = trio.Event()  # set once the book (or, with no known price, its wait for a trade) has started
        self.repaired = trio.Event()  # set once the downtime before the start is repaired
        self.state = TradeState()

    # -- trades (synchronous: called by the upstream reader) ---------------------------------------

    def deliver(self, trade: AggTrade) -> None:
        """Fold one trade into the book; O(timeframes), with nothing built for display (see :meth:`_send_forming`)."""
        trade_s = trade.trade_time_ms // 1000
        book = self.book
        if book is None:
            # A new symbol whose seed price is not known (yet): its first trade starts the book.
            book = self.book = TradeCandles(list(self.series), now_s=trade_s, last_close=trade.price)
        last = self._last_trade_s
        if last is not None and trade_s - last > SILENCE_S:
            self._silences.append((last, trade_s))
        self._last_trade_s = max(trade_s, last or 0)
        if not book.add(trade):
            # Late, past the grace: its period is written without it. The audit takes the exchange's kline.
            for tf in self.series:
                self._unverified[tf].setdefault(tf.floor(trade_s), None)
            return
        if not self._forming_due:
            self._forming_due = True
            self._forming_wanted.set()

    # -- life ----------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start at once from the stored heads; the downtime repair and a new symbol's seed price (both REST,
        which may be slow or down) run beside the ticker, never before it. The book does wait (briefly) for
        the exchange clock's first measurement: which periods it saw whole is judged on exchange time."""
        await self._clock.wait_measured(CLOCK_WAIT_S)
        now = self._started_s = self._clock.now_s()
        stored = [h for h in self._heads.values() if h is not None]
        if stored:
            self.book = TradeCandles(list(self.series), now_s=now, last_close=max(stored).close)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(
                functools.partial(run_ticker, lag_ms=round(self._grace_s * 1000)), self._clock, self._on_tick
            )
            nursery.start_soon(self._repair_then_rebase, now)
            nursery.start_soon(self._send_forming)
            nursery.start_soon(self._audit_synthetic)
            if self.book is None:
                nursery.start_soon(self._seed, now)
            else:
                self.ready.set()
            task_status.started()
            await trio.sleep_forever()

    async def _send_forming(self) -> None:
        """Hand the forming candles to the fan-out once trades have changed them, and then not again for
        ``forming_interval_s``: more often, the fan-out's throttle (one per series per interval, the latest
        wins) would only replace them unseen, and building them for every trade cost more than the trade."""
        while True:
            await self._forming_wanted.wait()
            self._forming_wanted = trio.Event()
            self._forming_due = False
            if self.book is not None:
                for tf, candle in self.book.forming():
                    self._broadcast(self.series[tf], candle)
            await trio.sleep(self._forming_interval_s)

    async def _seed(self, now: int) -> None:
        """A new symbol: a seed candle at once from the exchange's latest price (else its first trade starts it)."""
        price = await self._latest_price(now)
        if self.book is None and price is not None:  # (a trade may have started it meanwhile)
            self.book = TradeCandles(list(self.series), now_s=now, last_close=price)
            self.state.seeded = True
            for tf, candle in self.book.forming():  # before any trade
                self._broadcast(self.series[tf], candle)
            log.info("symbol_seeded", symbol=self.symbol_id, price=price)
        self.ready.set()

    async def _repair_then_rebase(self, now: int) -> None:
        last_close = await self._repair_downtime(now)
        if last_close is not None and self.book is not None:
            self.book.rebase(last_close)
        self.repaired.set()

    async def _on_tick(self, tick: ClockTick) -> None:
        if self.book is None:
            return  # waiting for the first trade of a symbol with no known price
        self.state.ticks += 1
        self.state.last_tick_drift_ms = tick.drift_ms
        closed = self.book.tick(tick.boundary_s)
        if not closed:
            return
        batch: dict[SeriesId, list[Candle]] = {}
        for tf, candle in closed:
            self._written_through[tf] = max(self._written_through.get(tf, -1), candle.candle_time)
            if candle.candle_time < self._started_s:
                # A period already running when klined started: its early trades were never seen, so the
                # exchange's own kline is the truth for it (when the exchange has it).
                candle = await self._exchange_kline(self.series[tf], candle)
            batch.setdefault(self.series[tf], []).append(candle)
        await self._writer.write_batch(batch)  # one transaction; published only once it is durable
        self.state.closed_written += len(closed)
        self.state.synthetic_written += sum(c.synthetic for _, c in closed)
        for series, candles in batch.items():
            tf = series.timeframe
            self._unverified[tf].update((c.candle_time, c) for c in candles if c.synthetic or self._silent_in(tf, c))
        horizon = tick.boundary_s - max(tf.seconds for tf in self.series)
        self._silences = [(a, b) for a, b in self._silences if b >= horizon]

    def _silent_in(self, tf: Timeframe, candle: Candle) -> bool:
        """Whether trades may have gone missing in ``candle``'s period: a stretch with none longer than
        ``SILENCE_S`` inside it (a quiet market, or a stream silent but connected: the audit tells which)."""
        start, end = candle.candle_time, tf.next_open(candle.candle_time)
        last = self._last_trade_s
        if last is None or last < end - SILENCE_S:
            return True  # no trade in the period's last seconds (or none at all)
        return any(a < end and b > start for a, b in self._silences)

    def stream_resumed(self) -> None:
        """The aggTrade stream (re)connected. After a drop, periods closed meanwhile were built without the
        trades they missed (flat, or short): the exchange's klines replace them (``candle_corrected``)."""
        self.state.stream_connects += 1
        if self.state.stream_connects > 1 and self._nursery is not None:
            with contextlib.suppress(RuntimeError):  # the actor is stopping
                self._nursery.start_soon(self._recheck_after_drop)

    async def _recheck_after_drop(self) -> None:
        since = self._last_trade_s if self._last_trade_s is not None else self._started_s
        # Periods still open were built blind too: like those running at start-up, they are taken from the
        # exchange's klines when they close. Those already written are fetched and corrected now.
        self._started_s = self._clock.now_s()
        batch: dict[SeriesId, list[Candle]] = {}
        for tf, series in self.series.items():
            first, last = tf.floor(since), self._written_through.get(tf, -1)
            if first > last:
                continue
            try:
                fetched = await self._fetch(series, first, last)
            except Exception as e:  # still offline: the audit retries these periods until it can
                log.warning("trade_recheck_failed", series_id=str(series), error=repr(e))
                for t in range(first, last + 1, tf.seconds) if not tf.is_calendar else ():
                    self._unverified[tf].setdefault(t, None)
                continue
            batch[series] = [c for c in fetched if first <= c.candle_time <= last]
        if batch:
            result = await self._writer.write_batch(batch)  # identical: no event; different: a correction
            self.state.rechecked_after_reconnect += sum(map(len, batch.values()))
            log.info("trade_recheck_after_reconnect", symbol=self.symbol_id, corrected=result.corrected)

    async def _exchange_kline(self, series: SeriesId, built: Candle) -> Candle:
        try:
            fetched = await self._fetch(series, built.candle_time, built.candle_time)
        except Exception as e:
            log.warning("trade_first_period_fetch_failed", series_id=str(series), error=repr(e))
            fetched = []
        for candle in fetched:
            if candle.candle_time == built.candle_time:
                self.state.repaired_from_exchange += 1
                return candle
        # Written as seen (its early trades missing) for now: the audit takes the exchange's kline later.
        self._unverified[series.timeframe].setdefault(built.candle_time, None)
        return built

    async def _repair_downtime(self, now: int) -> float | None:
        """Periods that closed while klined was down: the exchange's klines first, flat candles for the rest.
        Returns the latest close known (None for a new symbol)."""
        latest: Candle | None = None
        batch: dict[SeriesId, list[Candle]] = {}
        for tf, series in self.series.items():
            head = self._heads.get(series)
            if head is None:
                continue
            first, last = tf.next_open(head.candle_time), tf.last_closed_open(now)
            if first > last:
                latest = head if latest is None or head.candle_time > latest.candle_time else latest
                continue
            try:
                fetched = await self._fetch(series, first, last)
            except Exception as e:  # offline: everything missing becomes flat, corrected later if it differs
                log.warning("trade_downtime_fetch_failed", series_id=str(series), error=repr(e))
                fetched = []
            have = {c.candle_time: c for c in fetched if first <= c.candle_time <= last}
            self.state.repaired_from_exchange += len(have)
            out, previous, t = [], head, first
            while t <= last:
                candle = have.get(t) or synthetic_after(previous, t)
                if candle.synthetic:
                    self._unverified[tf][t] = candle
                out.append(candle)
                previous, t = candle, tf.next_open(t)
            batch[series] = out
            if latest is None or previous.candle_time > latest.candle_time:
                latest = previous
        if batch:
            await self._writer.write_batch(batch)
        return latest.close if latest is not None else None

    async def _audit_synthetic(self) -> None:
        """Every ``AUDIT_EVERY_MS`` of exchange time, check the flat candles against the exchange's klines: one
        it has trades for replaces ours (``candle_corrected``); one it confirms as tradeless stays synthetic.
        A silent-but-connected stream, a drop, or a restart before a recheck cannot leave a wrong flat candle.
        At start, the flat candles of the last ``AUDIT_WINDOW`` periods and every
        one of the last ``AUDIT_TAIL`` are queued: a previous life may have written them and stopped before
        checking."""
        if self._read_recent is not None:
            for tf, series in self.series.items():
                with contextlib.suppress(Exception):
                    recent = await self._read_recent(series, AUDIT_WINDOW)
                    self._unverified[tf].update((c.candle_time, c) for c in recent if c.synthetic)
                    # A life cut short (a kill) loses the marks of the periods it had not audited yet (a
                    # silence, a late trade): its last periods are checked again, whatever they look like.
                    self._unverified[tf].update((c.candle_time, c) for c in recent[-AUDIT_TAIL:])
        while True:
            await self.audit_once()  # at once at start: a life cut short may have left flat candles unchecked
            await self._clock.sleep_until(self._clock.now_ms() + AUDIT_EVERY_MS)

    async def audit_once(self) -> None:
        batch: dict[SeriesId, list[Candle]] = {}
        settled: dict[Timeframe, set[int]] = {}
        for tf, series in self.series.items():
            pending = self._unverified[tf]
            if not pending:
                continue
            first, last = min(pending), max(pending)
            try:
                fetched = await self._fetch(series, first, last)
            except Exception as e:  # offline: they wait for the next round
                log.warning("trade_audit_failed", series_id=str(series), error=repr(e))
                continue
            by_time = {c.candle_time: c for c in fetched}
            settled[tf] = {t for t in pending if t in by_time}
            # The exchange's kline replaces ours where any number differs: trades we never saw, or a flat
            # candle at the wrong level (it followed a candle built short). Equal numbers keep ours, flag and
            # all: a tradeless period is flat at the previous close on the exchange too.
            wrong = [
                by_time[t] for t in sorted(settled[tf]) if (ours := pending[t]) is None or by_time[t][:6] != ours[:6]
            ]
            if wrong:
                batch[series] = wrong
        if batch:
            result = await self._writer.write_batch(batch)
            self.state.synthetic_corrected += result.corrected
            log.info("trade_audit_corrected", symbol=self.symbol_id, corrected=result.corrected)
            base = min(self.series, key=lambda tf: tf.seconds)
            latest = max(batch.get(self.series[base], []), default=None)
            if latest is not None and self.book is not None and latest.candle_time == self._written_through.get(base):
                self.book.rebase(latest.close)  # the next flat candles start from the exchange's level
        for tf, done in settled.items():
            for t in done:
                self._unverified[tf].pop(t, None)
            self.state.synthetic_checked += len(done)

    async def _latest_price(self, now: int) -> float | None:
        tf = min(self.series, key=lambda t: t.seconds)
        last = tf.last_closed_open(now)
        try:
            candles = await self._fetch(self.series[tf], tf.prev_open(last), last)
        except Exception as e:
            log.warning("trade_seed_price_unavailable", symbol=self.symbol_id, error=repr(e))
            candles = []
        return candles[-1].close if candles else None
