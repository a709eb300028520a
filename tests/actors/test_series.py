"""A series actor on MockClock: closed -> writer -> log, forming handed on and never stored, silent
periods fetched at tick + grace, holes after a reconnect recorded."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from actors.clock import ExchangeClock, trio_wall_ms
from actors.pipeline import ClosedCandleWriter
from actors.series import RepairHole, SeriesActor
from daemon.storage.eventlog import EventLog
from protocol.backoff import Jitter, no_jitter
from protocol.binance import KlineUpdate
from protocol.candle import Candle
from protocol.series import SeriesId
from tests.actors.sinks import InlineSink

BTC = SeriesId.parse("binance:spot:BTC/USDT:1m")
T0 = 1_700_000_040  # a minute boundary; the MockClock starts at exchange time T0 + 10 s


def candle(t: int, close: float = 10.0) -> Candle:
    return Candle(t, 10.0, max(10.0, close) + 1, min(10.0, close) - 1, close, 2.0)


def update(t: int, *, final: bool, close: float = 10.0) -> KlineUpdate:
    return KlineUpdate(BTC, candle(t, close), final, t * 1000 + 1, (t + 60) * 1000 - 1, 1, 1.0)


@attrs.define
class Harness:
    actor: SeriesActor
    log: EventLog
    forming: list[tuple[float, Candle]]
    fetches: list[tuple[int, int]]
    exchange: dict[int, Candle]
    clock: ExchangeClock
    down: list[bool]  # [True]: every fetch fails as if the exchange were unreachable
    fetch_times: list[float]  # trio time of each fetch


@asynccontextmanager
async def running(
    tmp_path: Path,
    *,
    head_time: int | None = None,
    fail_fetch: bool = False,
    repair_hole: RepairHole | None = None,
    fetch_s: float = 0.0,
    jitter: Jitter = no_jitter,
) -> AsyncIterator[Harness]:
    log = EventLog(tmp_path / "log")
    forming: list[tuple[float, Candle]] = []
    fetches: list[tuple[int, int]] = []
    exchange: dict[int, Candle] = {}
    down = [fail_fetch]
    fetch_times: list[float] = []

    def broadcast(series: SeriesId, c: Candle) -> None:
        forming.append((trio.current_time(), c))

    async def fetch(series: SeriesId, first: int, last: int) -> list[Candle]:
        fetches.append((first, last))
        fetch_times.append(trio.current_time())
        await trio.sleep(fetch_s)  # a slow exchange (REST retrying with backoff)
        if down[0]:
            raise OSError("network unreachable")
        return [exchange[t] for t in sorted(exchange) if first <= t <= last]

    writer = ClosedCandleWriter(InlineSink(log))
    clock = ExchangeClock(wall=trio_wall_ms(T0 * 1000 + 10_000))
    actor = SeriesActor(
        BTC,
        head_time=head_time,
        writer=writer,
        broadcast_forming=broadcast,
        fetch_closed=fetch,
        clock=clock,
        repair_hole=repair_hole,
        jitter=jitter,  # exact retry times by default; the jitter has its own test
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await nursery.start(actor.run)
            yield Harness(actor, log, forming, fetches, exchange, clock, down, fetch_times)
            nursery.cancel_scope.cancel()
    finally:
        log.close()


async def test_closed_candles_reach_the_log_once_and_in_order(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path) as h:
        for t in (T0, T0 + 120, T0 + 60, T0 + 60, T0 + 120):  # out of order and repeated
            h.actor.deliver(update(t, final=True))
        await trio.sleep(1)
        assert h.log.range(BTC) == [candle(T0), candle(T0 + 60), candle(T0 + 120)]
        assert h.log.last_seq() == 3
        assert h.actor.state.head_time == T0 + 120


async def test_forming_goes_to_the_fan_out_as_it_comes_and_is_never_stored(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The fan-out throttles forming candles (tests/actors/test_fanout.py): the actor hands each one on."""
    async with running(tmp_path) as h:
        start = trio.current_time()
        for i in range(10):  # ten updates within 90 ms
            h.actor.deliver(update(T0, final=False, close=10.0 + i))
            await trio.sleep(0.01)
        await trio.sleep(1)
        assert [(round(t - start, 3), c.close) for t, c in h.forming] == [(i / 100, 10.0 + i) for i in range(10)]
        assert h.actor.state.forming_sent == 10
        assert h.log.last_seq() == 0, "forming candles are never persisted"
        h.actor.deliver(update(T0, final=True))
        await trio.sleep(1)
        h.actor.deliver(update(T0, final=False, close=30.0))  # late forming of a closed period
        await trio.sleep(1)
        assert len(h.forming) == 10


async def test_silent_stream_is_filled_from_the_exchange_at_tick_plus_grace(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path, head_time=T0 - 60) as h:
        h.exchange[T0] = candle(T0, 12.0)
        start = trio.current_time()
        await trio.sleep(60 - 10 + 3 + 1)  # to the first boundary (T0 + 60), its grace, and a flush
        assert h.fetches == [(T0, T0)]
        assert round(trio.current_time() - start, 1) == 54.0
        assert h.log.range(BTC) == [candle(T0, 12.0)]
        # The exchange lacks the next minute: it stays missing and is asked for again next tick.
        await trio.sleep(60)
        assert h.fetches[-1] == (T0 + 60, T0 + 60)
        assert h.log.head(BTC) is not None
        h.exchange[T0 + 60] = candle(T0 + 60)
        h.exchange[T0 + 120] = candle(T0 + 120)
        await trio.sleep(60)
        assert h.fetches[-1] == (T0 + 60, T0 + 120)
        assert [c.candle_time for c in h.log.range(BTC)] == [T0, T0 + 60, T0 + 120]


async def test_a_slow_fill_never_makes_the_next_tick_late(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path, head_time=T0 - 60, fetch_s=90) as h:
        for t in (T0, T0 + 60, T0 + 120):
            h.exchange[t] = candle(t)
        start = trio.current_time()  # exchange time T0 + 10
        await trio.sleep(200)
        # T0's fill starts at its tick (T0 + 63) and takes 90 s; the tick of T0 + 120 finds it running and
        # leaves its period to the next tick, which comes on time (T0 + 183), not after the slow call.
        assert h.fetches == [(T0, T0), (T0 + 60, T0 + 120)]
        assert [round(t - start) for t in h.fetch_times] == [53, 173]


async def test_unreachable_exchange_is_reported_not_fatal(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path, head_time=T0 - 60, fail_fetch=True) as h:
        await trio.sleep(60 * 3)
        assert len(h.fetches) == 3  # once per tick, no hot loop
        assert h.actor.state.last_fill_error == "OSError('network unreachable')"
        h.actor.deliver(update(T0 + 180, final=True))  # the stream still works
        await trio.sleep(1)
        assert h.log.get(BTC, T0 + 180) == candle(T0 + 180)


async def test_hole_after_reconnect_is_recorded(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with running(tmp_path, head_time=T0 - 60) as h:
        h.actor.deliver(update(T0, final=True))
        h.actor.deliver(update(T0 + 240, final=True))  # the connection dropped for three minutes
        await trio.sleep(1)
        (hole,) = h.actor.state.holes
        assert (hole.expected_next_time, hole.actual_time) == (T0 + 60, T0 + 240)
        assert hole.missing(BTC.timeframe) == 3


async def test_a_reconnect_records_the_hole_at_once_and_fills_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path, head_time=T0 - 60) as h:
        await trio.sleep(170)  # exchange time T0 + 180: T0 .. T0 + 120 closed while the stream was down
        for t in (T0, T0 + 60, T0 + 120):
            h.exchange[t] = candle(t, 11.0)
        h.fetches.clear()
        h.actor.stream_resumed()
        await trio.sleep(1)
        (hole,) = h.actor.state.holes
        assert (hole.expected_next_time, hole.actual_time) == (T0, T0 + 180)
        assert (T0, T0 + 120) in h.fetches  # asked at once, not at the next tick
        assert [c.candle_time for c in h.log.range(BTC)] == [T0, T0 + 60, T0 + 120]
        h.actor.deliver(update(T0 + 180, final=True))  # the new stream's first close
        await trio.sleep(1)
        assert len(h.actor.state.holes) == 1, "the same hole is not reported twice"


async def test_a_hole_found_while_the_exchange_is_down_heals_once_it_answers_again(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Stream and REST down together: the reconnect's hole cannot be filled and the stream's next close
    moves the head past it (subscribers get a gap). The hole is asked again at later ticks, backing off,
    and healed as soon as the exchange answers."""
    async with running(tmp_path, head_time=T0 - 60, fail_fetch=True) as h:
        await trio.sleep(170)  # exchange time T0 + 180: three periods closed during the outage
        for t in (T0, T0 + 60, T0 + 120):
            h.exchange[t] = candle(t, 11.0)
        h.actor.stream_resumed()
        h.actor.deliver(update(T0 + 180, final=True))
        await trio.sleep(1)
        assert [p.hole for p in h.actor.state.pending_holes] == h.actor.state.holes
        h.fetches.clear()
        await trio.sleep(60 * 8)  # ticks at T0 + 240 ... T0 + 660, every fetch failing
        hole_asks = [f for f in h.fetches if f == (T0, T0 + 120)]
        assert len(hole_asks) == 4, "asked at the next tick, then after 1, 2 and 4 minutes"
        h.down[0] = False
        await trio.sleep(60 * 5)  # the next ask: 5 minutes (the longest wait) after the last
        assert [c.candle_time for c in h.log.range(BTC)][:4] == [T0, T0 + 60, T0 + 120, T0 + 180]
        assert h.actor.state.pending_holes == []
        assert h.actor.state.holes_healed == 1
        h.fetches.clear()
        await trio.sleep(60 * 5)
        assert (T0, T0 + 120) not in h.fetches, "a healed hole is not asked for again"


async def test_jittered_hole_retries_are_never_sooner_than_the_next_tick(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path, head_time=T0 - 60, fail_fetch=True, jitter=lambda: 0.0) as h:
        await trio.sleep(170)
        for t in (T0, T0 + 60, T0 + 120):
            h.exchange[t] = candle(t, 11.0)
        h.actor.stream_resumed()
        h.actor.deliver(update(T0 + 180, final=True))
        await trio.sleep(1)
        h.fetches.clear()
        await trio.sleep(60 * 8)
        # The smallest draw shortens every wait to the floor: the hole is asked at each tick, no more often.
        assert len([f for f in h.fetches if f == (T0, T0 + 120)]) == 8
        h.down[0] = False
        await trio.sleep(60)
        assert h.actor.state.pending_holes == []
        assert h.actor.state.holes_healed == 1


async def test_while_the_exchange_is_down_one_hole_is_asked_per_retry_and_the_ticks_stay_on_time(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    asks: list[tuple[float, int]] = []
    down = [True]

    async def repair(series: SeriesId, expected: int, actual: int) -> tuple[int, bool]:
        asks.append((trio.current_time(), expected))
        await trio.sleep(40)  # REST retrying with backoff for most of a minute
        return 0, not down[0]

    async with running(tmp_path, head_time=T0 - 60, repair_hole=repair) as h:
        h.actor.deliver(update(T0 + 120, final=True))  # T0 and T0 + 60 never came
        h.actor.deliver(update(T0 + 300, final=True))  # nor T0 + 180 and T0 + 240
        h.exchange[T0 + 360] = candle(T0 + 360)
        await trio.sleep(60 * 7)  # the tick of T0 + 420 fills the silent stream's T0 + 360 on time
        assert h.log.get(BTC, T0 + 360) is not None
        retries = [t for t, _ in asks[2:]]  # after the two immediate attempts
        assert all(b - a >= 60 for a, b in itertools.pairwise(retries)), "one hole per retry while it is down"
        down[0] = False
        await trio.sleep(60 * 10)
        assert h.actor.state.pending_holes == []
        assert h.actor.state.holes_healed == 2


async def test_with_gap_backfill_a_hole_is_repaired_again_until_every_source_answered(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    asks: list[tuple[int, int]] = []
    answers = [False, False, True]

    async def repair(series: SeriesId, expected: int, actual: int) -> tuple[int, bool]:
        asks.append((expected, actual))
        return 0, answers[len(asks) - 1]

    async with running(tmp_path, head_time=T0 - 60, repair_hole=repair) as h:
        h.actor.deliver(update(T0 + 120, final=True))  # T0 and T0 + 60 never came
        await trio.sleep(60 * 5)
        assert asks == [(T0, T0 + 120)] * 3, "at once, at the next tick, then a minute later; done once answered"
        assert h.actor.state.pending_holes == []
        assert h.actor.state.holes_healed == 1


async def test_a_hole_the_exchange_answers_without_candles_is_not_asked_for_forever(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path, head_time=T0 - 60, fail_fetch=True) as h:
        await trio.sleep(170)
        h.actor.stream_resumed()
        h.actor.deliver(update(T0 + 180, final=True))
        await trio.sleep(1)
        h.down[0] = False  # back, but it has nothing for those periods (a maintenance window)
        await trio.sleep(120)
        h.fetches.clear()
        await trio.sleep(60 * 10)
        assert (T0, T0 + 120) not in h.fetches
        assert h.actor.state.pending_holes == []
        assert len(h.actor.state.holes) == 1, "it stays a recorded hole"


async def test_a_reconnect_with_nothing_missed_records_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path, head_time=T0 - 60) as h:  # exchange time T0 + 10: T0 is still forming
        h.actor.stream_resumed()
        await trio.sleep(1)
        assert h.actor.state.holes == []
        assert h.fetches == []


async def test_ticks_caught_up_after_a_clock_step_make_one_fill(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path, head_time=T0 - 60) as h:
        wall = h.clock.now_ms()
        h.clock.record(server_ms=wall + 300_000, sent_ms=wall, received_ms=wall)  # the exchange is 5 min ahead
        await trio.sleep(1)
        assert h.fetches == [(T0, T0 + 240)]  # five boundaries passed at once: one request for all of them


@pytest.mark.parametrize("tf", ["5m", "1h"])
async def test_longer_timeframes_only_act_on_their_own_boundaries(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, tf: str
) -> None:
    series = SeriesId.parse(f"binance:spot:BTC/USDT:{tf}")
    fetched: list[tuple[int, int]] = []

    async def fetch(s: SeriesId, first: int, last: int) -> list[Candle]:
        fetched.append((first, last))
        return []

    def broadcast(s: SeriesId, c: Candle) -> None:
        pass

    with EventLog(tmp_path / "log") as log:
        writer = ClosedCandleWriter(InlineSink(log))
        start_ms = series.timeframe.floor(T0) * 1000 + 1000
        actor = SeriesActor(
            series,
            head_time=series.timeframe.floor(T0) - series.timeframe.seconds,
            writer=writer,
            broadcast_forming=broadcast,
            fetch_closed=fetch,
            clock=ExchangeClock(wall=trio_wall_ms(start_ms)),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await nursery.start(actor.run)
            await trio.sleep(series.timeframe.seconds * 2 + 5)  # two boundaries and their grace
            nursery.cancel_scope.cancel()
    assert len(fetched) == 2  # one per period of the series' own timeframe, not one per minute


async def test_a_full_writer_queue_delays_closed_candles_but_never_drops_them(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    def broadcast(s: SeriesId, c: Candle) -> None:
        pass

    async def fetch(s: SeriesId, first: int, last: int) -> list[Candle]:
        return []

    with EventLog(tmp_path / "log") as log:
        writer = ClosedCandleWriter(InlineSink(log), queue_size=1)  # a stalled disk: room for one
        clock = ExchangeClock(wall=trio_wall_ms(T0 * 1000 + 10_000))
        actor = SeriesActor(
            BTC, head_time=None, writer=writer, broadcast_forming=broadcast, fetch_closed=fetch, clock=clock
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(actor.run)
            for t in (T0 - 120, T0 - 60, T0):
                actor.deliver(update(t, final=True))  # returns at once: the reader is never blocked
            await trio.sleep(1)
            await nursery.start(writer.run)
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
        assert [c.candle_time for c in log.range(BTC)] == [T0 - 120, T0 - 60, T0]


async def test_a_failing_update_crashes_the_actor_not_the_reader(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with pytest.raises(ExceptionGroup) as crashed:  # noqa: PT012 - the actor runs inside the context
        async with running(tmp_path) as h:
            h.actor.deliver(None)  # type: ignore[arg-type]  # returns normally
            h.actor.deliver(update(T0, final=True))  # ignored: the actor is going down
            await trio.sleep(1)
    assert crashed.group_contains(AttributeError)
