"""The trade-built symbol actor on MockClock: one batch per tick, flat candles for quiet minutes, the
downtime repaired from the exchange first, a seed candle at once."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from actors.clock import ExchangeClock, trio_wall_ms
from actors.pipeline import ClosedCandleWriter
from actors.trade_series import TradeSeriesActor
from daemon.eventlog import EventLog
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
        return [Candle(last, 99.0, 101.0, 98.0, 100.0, 5.0)]  # the latest kline: the seed price

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
