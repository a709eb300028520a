"""The trade-built symbol actor on MockClock: one batch per tick, flat candles for quiet minutes, the
downtime repaired from the exchange first, a seed candle at once."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from actors.clock import ExchangeClock, trio_wall_ms
from actors.pipeline import ClosedCandleWriter
from actors.trade_series import FetchClosed, TradeSeriesActor
from daemon.storage.eventlog import EventLog
from protocol.binance import AggTrade
from protocol.candle import Candle
from protocol.series import SeriesId
from tests.actors.sinks import InlineSink

B1 = SeriesId.parse("binance:spot:BTC/USDT:1m")
B5 = SeriesId.parse("binance:spot:BTC/USDT:5m")
T0 = 1_700_000_100  # a 5-minute boundary


def measured_clock(start_ms: int) -> ExchangeClock:
    """An exchange clock already measured (offset 0): a starting book does not wait for it."""
    clock = ExchangeClock(wall=trio_wall_ms(start_ms))
    clock.record(start_ms, start_ms, start_ms)
    return clock


def flat(t: int, p: float) -> Candle:
    return Candle(t, p, p, p, p, 0.0, True)


async def test_a_quiet_symbol_gets_flat_candles_one_batch_per_tick_and_a_seed_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    forming: list[tuple[SeriesId, Candle]] = []

    async def fetch(series: SeriesId, first: int, last: int) -> list[Candle]:
        if last < T0:
            return [Candle(last, 99.0, 101.0, 98.0, 100.0, 5.0)]  # the latest kline: the seed price
        # The exchange saw what we saw: the one trade in the first minute, none after.
        traded = Candle(T0, 101.5, 101.5, 101.5, 101.5, 2.0)
        step = series.timeframe.seconds
        return [traded if t == T0 else flat(t, 101.5)._replace(synthetic=False) for t in range(first, last + 1, step)]

    with EventLog(tmp_path / "log") as log:
        sink = InlineSink(log)
        writer = ClosedCandleWriter(sink)
        clock = measured_clock(T0 * 1000)  # on the boundary: no period started before us
        actor = TradeSeriesActor(
            [B1, B5],
            heads={B1: None, B5: None},
            writer=writer,
            broadcast_forming=lambda s, c: forming.append((s, c)),
            fetch_closed=fetch,
            clock=clock,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await nursery.start(actor.run)
            await actor.ready.wait()
            assert forming == [(B1, flat(T0, 100.0)), (B5, flat(T0, 100.0))]  # the seed, before any trade
            actor.deliver(AggTrade("BTCUSDT", 1, 101.5, 2.0, T0 * 1000 + 5_000, 0, False))
            await trio.sleep(17 * 60 + 10)
            nursery.cancel_scope.cancel()
        assert log.range(B1)[0] == Candle(T0, 101.5, 101.5, 101.5, 101.5, 2.0)
        assert log.range(B1)[1:] == [flat(T0 + 60 * k, 101.5) for k in range(1, 17)]
        assert log.range(B5) == [
            Candle(T0, 101.5, 101.5, 101.5, 101.5, 2.0),
            flat(T0 + 300, 101.5),
            flat(T0 + 600, 101.5),
        ]
        # One append per tick, holding every timeframe that closed at it.
        assert [sorted(map(str, batch)) for _, batch in sink.calls][4] == [str(B1), str(B5)]
        assert len(sink.calls) == 17
        assert actor.state.synthetic_written == 16 + 2
        # The audit asked the exchange: it had no trade either, so the flat candles stay (no correction).
        assert actor.state.synthetic_checked > 0
        assert actor.state.synthetic_corrected == 0


async def test_forming_candles_go_at_once_then_at_most_once_an_interval_with_the_latest_trades(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    forming: list[tuple[float, SeriesId, Candle]] = []

    async def fetch(series: SeriesId, first: int, last: int) -> list[Candle]:
        return []

    def trade(k: int, price: float) -> AggTrade:
        return AggTrade("BTCUSDT", k, price, 1.0, T0 * 1000 + 1_000 + k, 0, False)

    head = Candle(T0 - 60, 100.0, 100.0, 100.0, 100.0, 1.0)
    with EventLog(tmp_path / "log") as log:
        writer = ClosedCandleWriter(InlineSink(log))
        actor = TradeSeriesActor(
            [B1, B5],
            heads={B1: head, B5: None},
            writer=writer,
            broadcast_forming=lambda s, c: forming.append((trio.current_time(), s, c)),
            fetch_closed=fetch,
            clock=measured_clock(T0 * 1000),
            forming_interval_s=0.25,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await nursery.start(actor.run)
            await actor.ready.wait()
            start = trio.current_time()
            await trio.sleep(5)
            assert forming == []  # no trade, nothing to show (a known symbol has no seed)
            actor.deliver(trade(1, 101.0))
            actor.deliver(trade(2, 103.0))
            await trio.sleep(0.1)
            first = Candle(T0, 101.0, 103.0, 101.0, 103.0, 2.0)
            assert forming == [(start + 5, B1, first), (start + 5, B5, first)]  # at once, both trades in
            actor.deliver(trade(3, 99.0))
            await trio.sleep(0.1)
            assert len(forming) == 2  # within the interval: held
            actor.deliver(trade(4, 100.0))
            await trio.sleep(10)
            latest = Candle(T0, 101.0, 103.0, 99.0, 100.0, 4.0)
            assert forming[2:] == [(start + 5.25, B1, latest), (start + 5.25, B5, latest)]  # the latest, once
            nursery.cancel_scope.cancel()
        assert actor.book is not None
        assert actor.book.stats.trades == 4


async def test_the_period_running_at_start_is_taken_from_the_exchange(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    kline = Candle(T0, 99.0, 103.0, 98.0, 101.0, 40.0)

    async def fetch(series: SeriesId, first: int, last: int) -> list[Candle]:
        return [kline] if first <= T0 <= last else []

    with EventLog(tmp_path / "log") as log:
        writer = ClosedCandleWriter(InlineSink(log))
        actor = TradeSeriesActor(
            [B1],
            heads={B1: None},
            writer=writer,
            broadcast_forming=lambda s, c: None,
            fetch_closed=fetch,
            clock=measured_clock(T0 * 1000 + 30_000),  # half the minute's trades were missed
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await nursery.start(actor.run)
            actor.deliver(AggTrade("BTCUSDT", 1, 102.0, 1.0, T0 * 1000 + 40_000, 0, False))
            await trio.sleep(40)
            nursery.cancel_scope.cancel()
        assert log.range(B1) == [kline]  # not the half-seen candle built from one trade


async def test_downtime_is_repaired_from_the_exchange_first_and_flat_only_where_it_lacks(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    head = Candle(T0 - 600, 10.0, 11.0, 9.0, 10.0, 1.0)
    exchange = {
        T0 - 540: Candle(T0 - 540, 10.0, 12.0, 9.5, 11.0, 3.0),
        T0 - 480: Candle(T0 - 480, 11.0, 11.0, 10.0, 10.5, 1.0),
    }

    async def fetch(series: SeriesId, first: int, last: int) -> list[Candle]:
        return [c for t, c in sorted(exchange.items()) if first <= t <= last]

    with EventLog(tmp_path / "log") as log:
        log.append({B1: [head]})
        writer = ClosedCandleWriter(InlineSink(log))
        actor = TradeSeriesActor(
            [B1],
            heads={B1: head},
            writer=writer,
            broadcast_forming=lambda s, c: None,
            fetch_closed=fetch,
            clock=measured_clock(T0 * 1000 + 1_000),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await nursery.start(actor.run)
            await actor.repaired.wait()
            nursery.cancel_scope.cancel()
        stored = log.range(B1)
        assert stored[:3] == [head, exchange[T0 - 540], exchange[T0 - 480]]
        assert stored[3:] == [flat(T0 - 60 * k, 10.5) for k in range(7, 0, -1)]  # what the exchange lacked
        assert actor.state.repaired_from_exchange == 2


async def test_after_a_reconnect_the_exchanges_klines_correct_what_was_built_blind(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    exchange: dict[int, Candle] = {}

    async def fetch(series: SeriesId, first: int, last: int) -> list[Candle]:
        return [c for t, c in sorted(exchange.items()) if first <= t <= last]

    with EventLog(tmp_path / "log") as log:
        writer = ClosedCandleWriter(InlineSink(log))
        actor = TradeSeriesActor(
            [B1],
            heads={B1: None},
            writer=writer,
            broadcast_forming=lambda s, c: None,
            fetch_closed=fetch,
            clock=measured_clock(T0 * 1000),
        )
        exchange[T0 - 60] = Candle(T0 - 60, 50.0, 50.0, 50.0, 50.0, 1.0)  # the seed price
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await nursery.start(actor.run)
            actor.stream_resumed()  # the first connection: nothing to recheck
            actor.deliver(AggTrade("BTCUSDT", 1, 51.0, 1.0, T0 * 1000 + 1_000, 0, False))
            await trio.sleep(3 * 60)  # the stream is down: minutes T0+60, T0+120 are built flat
            assert log.get(B1, T0 + 60) == flat(T0 + 60, 51.0)
            exchange[T0 + 60] = Candle(T0 + 60, 51.0, 53.0, 50.5, 52.0, 7.0)  # it had trades we never saw
            exchange[T0 + 120] = Candle(T0 + 120, 52.0, 52.0, 51.0, 51.5, 2.0)
            exchange[T0] = log.get(B1, T0)  # type: ignore[assignment]  # what we built agrees: no event
            actor.stream_resumed()  # reconnected
            await trio.sleep(10)  # past the next tick
            nursery.cancel_scope.cancel()
        assert log.get(B1, T0 + 60) == exchange[T0 + 60]
        assert log.get(B1, T0 + 120) == exchange[T0 + 120]
        corrections = [e for e in log.events_since(0) if e.previous is not None]
        # T0+60 was written flat during the drop: corrected. T0+120 was still open at the reconnect: taken
        # from the exchange when it closed, never written flat.
        assert [(e.candle.candle_time, e.previous.synthetic) for e in corrections if e.previous] == [(T0 + 60, True)]


def audited_actor(log: EventLog, fetch: FetchClosed) -> tuple[ClosedCandleWriter, TradeSeriesActor]:
    """A 1m book whose stored head is the minute before T0, its writer, and ``fetch`` as the exchange."""
    writer = ClosedCandleWriter(InlineSink(log))
    actor = TradeSeriesActor(
        [B1],
        heads={B1: Candle(T0 - 60, 100.0, 100.0, 100.0, 100.0, 1.0)},
        writer=writer,
        broadcast_forming=lambda s, c: None,
        fetch_closed=fetch,
        clock=measured_clock(T0 * 1000),
    )
    return writer, actor


async def test_a_silent_stream_is_caught_by_the_audit_and_corrected_from_the_exchange(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The stream stays connected but delivers nothing for minutes while the exchange trades: the book writes
    flat and short candles; the audit asks the exchange and replaces exactly those (found by the chaos run)."""

    def kline(t: int) -> Candle:
        if t < T0 + 60:  # minute 0: what we saw
            return Candle(t, 100.0, 100.0, 100.0, 100.0, 1.0)
        return Candle(t, 100.0, 104.0, 99.0, 103.0, 7.0)  # the exchange traded in every later minute

    async def fetch(series: SeriesId, first: int, last: int) -> list[Candle]:
        return [kline(t) for t in range(first, last + 1, series.timeframe.seconds) if series.timeframe.seconds == 60]

    with EventLog(tmp_path / "log") as log:
        writer, actor = audited_actor(log, fetch)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await nursery.start(actor.run)
            actor.deliver(AggTrade("BTCUSDT", 1, 100.0, 1.0, T0 * 1000 + 50_000, 0, False))
            await trio.sleep(6 * 60 + 30)  # nothing more arrives: minutes of silence, and three audit rounds
            nursery.cancel_scope.cancel()
        stored = log.range(B1, T0 - 1, T0 + 240)
        assert stored == [kline(T0 + 60 * k) for k in range(5)]  # the silence, replaced by what the exchange had
        assert actor.state.synthetic_corrected == 4
        corrected = [e for e in log.events_since(0) if e.previous is not None]
        assert [e.candle.candle_time for e in corrected] == [T0 + 60 * k for k in range(1, 5)]


async def test_a_trade_past_the_grace_sends_its_period_to_the_audit(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A trade that arrives after its period was written cannot change it any more; the exchange's kline of
    that period replaces ours at the next audit."""
    exchange = Candle(T0, 100.0, 105.0, 100.0, 105.0, 3.5)  # with the late trade

    async def fetch(series: SeriesId, first: int, last: int) -> list[Candle]:
        return [exchange] if first <= T0 <= last else []

    with EventLog(tmp_path / "log") as log:
        writer, actor = audited_actor(log, fetch)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await nursery.start(actor.run)
            for k, price in enumerate((100.0, 101.0, 102.0, 103.0, 104.0, 105.0)):
                actor.deliver(AggTrade("BTCUSDT", k, price, 0.5, T0 * 1000 + 10_000 + k * 8_000, 0, False))
            await trio.sleep(65)  # the minute is written (at its end + grace)
            actor.deliver(AggTrade("BTCUSDT", 9, 105.0, 0.5, T0 * 1000 + 59_500, 0, False))  # and now, late
            await trio.sleep(180)
            nursery.cancel_scope.cancel()
        assert log.get(B1, T0) == exchange
