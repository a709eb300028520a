"""The exchange clock and the minute ticker, on trio's MockClock."""

from __future__ import annotations

import functools

import trio
import trio.testing

from actors.clock import ClockTick, ExchangeClock, run_ticker, trio_wall_ms

START_MS = 1_700_000_000_000 + 12_345  # not on a minute


def test_offset_is_measured_against_the_round_trip_midpoint() -> None:
    clock = ExchangeClock(wall=lambda: 1000)
    sample = clock.record(server_ms=5_050, sent_ms=1_000, received_ms=1_100)
    assert (sample.offset_ms, sample.round_trip_ms) == (4_000, 100)
    assert clock.now_ms() == 5_000


async def test_measure_keeps_the_stamp_with_the_shortest_round_trip(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = ExchangeClock(wall=trio_wall_ms(START_MS))
    delays = iter([(0.4, 0.1), (0.005, 0.005), (0.2, 0.3)])  # (to the exchange, back) per request

    async def fetch() -> int:
        there, back = next(delays)
        await trio.sleep(there)
        stamp = START_MS + int(trio.current_time() * 1000) + 7_000  # the exchange is 7 s ahead
        await trio.sleep(back)
        return stamp

    sample = await clock.measure(fetch)
    assert (sample.offset_ms, sample.round_trip_ms) == (7_000, 10)  # the lopsided slow ones would be 150 ms off


async def test_ticks_land_on_whole_minutes_of_exchange_time(autojump_clock: trio.testing.MockClock) -> None:
    clock = ExchangeClock(wall=trio_wall_ms(START_MS), offset_ms=-2_000)  # exchange 2 s behind us
    ticks: list[ClockTick] = []

    async def on_tick(tick: ClockTick) -> None:
        ticks.append(tick)

    async with trio.open_nursery() as nursery:
        await nursery.start(run_ticker, clock, on_tick)
        await trio.sleep(3 * 60)
        nursery.cancel_scope.cancel()
    first = ((START_MS - 2_000) // 60_000 + 1) * 60_000
    assert [t.boundary_ms for t in ticks] == [first, first + 60_000, first + 120_000]
    assert all(t.drift_ms == 0 for t in ticks)


async def test_a_late_tick_catches_up_every_boundary(autojump_clock: trio.testing.MockClock) -> None:
    wall = {"jump": 0}
    base = trio_wall_ms(START_MS)
    clock = ExchangeClock(wall=lambda: base() + wall["jump"])
    ticks: list[ClockTick] = []

    async def on_tick(tick: ClockTick) -> None:
        ticks.append(tick)
        if len(ticks) == 1:
            wall["jump"] = 5 * 60_000  # the machine was suspended for five minutes

    async with trio.open_nursery() as nursery:
        await nursery.start(run_ticker, clock, on_tick)
        await trio.sleep(61)
        nursery.cancel_scope.cancel()
    boundaries = [t.boundary_ms for t in ticks]
    assert boundaries == [boundaries[0] + 60_000 * i for i in range(len(boundaries))]  # none skipped
    assert len(boundaries) == 6
    assert ticks[1].drift_ms > 0


async def test_a_new_offset_reaims_a_sleeping_ticker(autojump_clock: trio.testing.MockClock) -> None:
    clock = ExchangeClock(wall=trio_wall_ms(START_MS))
    ticks: list[ClockTick] = []

    async def on_tick(tick: ClockTick) -> None:
        ticks.append(tick)

    async with trio.open_nursery() as nursery:
        await nursery.start(run_ticker, clock, on_tick)
        await trio.sleep(1)
        # The exchange turns out to be 5 minutes ahead: the ticker must not sleep on the old aim.
        clock.record(server_ms=START_MS + 1_000 + 300_000, sent_ms=START_MS + 1_000, received_ms=START_MS + 1_000)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert ticks, "the sleeping ticker woke on the new offset"
    assert ticks[-1].boundary_ms <= clock.now_ms()


async def test_an_exchange_behind_us_re_aims_earlier(autojump_clock: trio.testing.MockClock) -> None:
    clock = ExchangeClock(wall=trio_wall_ms(START_MS))
    ticks: list[ClockTick] = []

    async def on_tick(tick: ClockTick) -> None:
        ticks.append(tick)

    async with trio.open_nursery() as nursery:
        await nursery.start(run_ticker, clock, on_tick)
        first_aim = (START_MS // 60_000 + 1) * 60_000
        # The exchange is 2 minutes behind our wall clock: its next boundary comes much sooner.
        clock.record(server_ms=START_MS - 120_000, sent_ms=START_MS, received_ms=START_MS)
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    assert ticks
    assert ticks[0].boundary_ms == first_aim - 120_000  # not skipped: aimed at the exchange's own boundary
    assert ticks[0].drift_ms == 0


async def test_a_lagged_ticker_fires_after_each_boundary_and_keeps_one_just_passed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start_ms = 1_700_000_040_000 + 1_000  # a second after a boundary: its 3 s-lagged tick is still due
    clock = ExchangeClock(wall=trio_wall_ms(start_ms))
    ticks: list[ClockTick] = []

    async def on_tick(tick: ClockTick) -> None:
        ticks.append(tick)

    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(run_ticker, lag_ms=3_000), clock, on_tick)
        await trio.sleep(125)
        nursery.cancel_scope.cancel()
    boundary = 1_700_000_040_000
    assert [(t.boundary_ms, t.fired_ms) for t in ticks] == [
        (boundary, boundary + 3_000),
        (boundary + 60_000, boundary + 63_000),
        (boundary + 120_000, boundary + 123_000),
    ]
    assert all(t.drift_ms == 0 for t in ticks)


async def test_wait_measured_returns_on_the_first_measurement_or_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = ExchangeClock(wall=trio_wall_ms(START_MS))
    assert not await clock.wait_measured(3.0)  # nobody measures: gives up after the timeout
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: clock.wait_measured(60.0))

        async def measure_later() -> None:
            await trio.sleep(1.0)
            clock.record(START_MS + 5_000, START_MS, START_MS)

        nursery.start_soon(measure_later)
    assert await clock.wait_measured(0.0)  # measured: at once


async def test_a_fast_clock_runs_and_ticks_speed_times_as_fast(autojump_clock: trio.testing.MockClock) -> None:
    """A fake exchange at 60x (a minute a second): exchange time and every minute tick follow it."""
    clock = ExchangeClock(wall=trio_wall_ms(START_MS), speed=60)
    begin = clock.now_ms()
    ticks: list[ClockTick] = []

    async def on_tick(tick: ClockTick) -> None:
        ticks.append(tick)

    async with trio.open_nursery() as nursery:
        await nursery.start(run_ticker, clock, on_tick)
        await trio.sleep(10.0)  # ten wall seconds: ten exchange minutes
        nursery.cancel_scope.cancel()
    assert 599_000 <= clock.now_ms() - begin <= 601_000
    assert [t.boundary_ms for t in ticks] == [(START_MS // 60_000 + k) * 60_000 for k in range(1, 11)]
    # A measurement re-anchors it: exchange time at the sample's midpoint, then 60x from there.
    wall = trio_wall_ms(START_MS)()
    clock.record(server_ms=2_000_000_000_000, sent_ms=wall - 10, received_ms=wall + 10)
    assert abs(clock.now_ms() - 2_000_000_000_000) <= 60
