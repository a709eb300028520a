"""The closed-candle writer: batching, de-duplication, the fixed stage order, durability before publish."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import trio
import trio.testing

from actors.pipeline import ClosedCandleWriter, Stages
from daemon.storage.eventlog import EventLog
from protocol.backoff import no_jitter
from protocol.candle import Candle
from protocol.errors import CandleError
from protocol.logrecords import AppendResult
from protocol.series import SeriesId
from tests.actors.sinks import InlineSink

BTC = SeriesId.parse("binance:spot:BTC/USDT:1m")
ETH = SeriesId.parse("binance:spot:ETH/USDT:1m")


def c(t: int, close: float = 10.0) -> Candle:
    return Candle(t, close, close + 1, close - 1, close, 1.0)


@pytest.fixture
def elog(tmp_path: Path) -> EventLog:
    log = EventLog(tmp_path / "log")
    yield log  # type: ignore[misc]
    log.close()


async def test_a_burst_flushes_on_size_then_once_quiet(elog: EventLog, autojump_clock: trio.testing.MockClock) -> None:
    sink = InlineSink(elog)
    writer = ClosedCandleWriter(sink, batch_max=200, flush_s=0.5, linger_s=0.005)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        start = trio.current_time()
        for i in range(450):
            await writer.submit(BTC if i % 2 else ETH, [c(60 * (i + 1))])
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    sizes = [sum(map(len, batch.values())) for _, batch in sink.calls]
    assert sizes == [200, 200, 50]
    assert sink.calls[0][0] == start  # a full buffer does not wait at all
    assert sink.calls[2][0] == pytest.approx(start + 0.005)  # the rest once the burst has gone quiet
    assert elog.last_seq() == 450


async def test_single_candle_waits_only_the_linger(elog: EventLog, autojump_clock: trio.testing.MockClock) -> None:
    sink = InlineSink(elog)
    writer = ClosedCandleWriter(sink, batch_max=200, flush_s=0.5, linger_s=0.005)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.submit(BTC, [c(60)])
        await trio.sleep(0.004)
        assert sink.calls == []
        await trio.sleep(0.002)
        assert len(sink.calls) == 1
        nursery.cancel_scope.cancel()


async def test_a_trickle_that_never_goes_quiet_flushes_at_flush_s(
    elog: EventLog, autojump_clock: trio.testing.MockClock
) -> None:
    sink = InlineSink(elog)
    writer = ClosedCandleWriter(sink, batch_max=1000, flush_s=0.5, linger_s=0.005)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        start = trio.current_time()
        for i in range(400):  # one candle every 3 ms: never quiet for the 5 ms linger
            await writer.submit(BTC, [c(60 * (i + 1))])
            await trio.sleep(0.003)
        nursery.cancel_scope.cancel()
    times = [t - start for t, _ in sink.calls]
    assert times[:2] == [pytest.approx(0.5), pytest.approx(1.001)]  # flush_s after each buffer's first candle
    assert sum(map(len, sink.calls[0][1].values())) == 167  # sent at 0, 3, ..., 498 ms


async def test_duplicates_and_disorder_become_one_ascending_run(
    elog: EventLog, autojump_clock: trio.testing.MockClock
) -> None:
    sink = InlineSink(elog)
    writer = ClosedCandleWriter(sink, batch_max=100, flush_s=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.submit(BTC, [c(180), c(60)])
        await writer.submit(BTC, [c(120), c(60, close=11.0), c(180)])
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    ((_, batch),) = sink.calls
    assert batch == {BTC: [c(60, close=11.0), c(120), c(180)]}  # last word wins, ascending
    assert writer.stats.duplicates_dropped == 2
    assert elog.range(BTC) == [c(60, close=11.0), c(120), c(180)]


async def test_stages_run_in_fixed_order_and_publish_sees_durable_data(elog: EventLog) -> None:
    seen: list[str] = []

    def stage(name: str):  # type: ignore[no-untyped-def]
        async def run(result: AppendResult) -> None:
            seen.append(name)
            if name == "publish":
                # Committed before publish: a new read transaction already sees every candle.
                assert elog.range(BTC) == [c(60), c(120)]
                assert result.changed == {BTC: [c(60), c(120)]}

        return run

    stages = Stages(derive=stage("derive"), project=stage("project"), publish=stage("publish"))
    writer = ClosedCandleWriter(InlineSink(elog), flush_s=0.01, stages=stages)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            result = await writer.write(BTC, [c(60), c(120)])
            nursery.cancel_scope.cancel()
    assert seen == ["derive", "project", "publish"]
    assert result.appended == 2


async def test_write_returns_only_once_durable(elog: EventLog, autojump_clock: trio.testing.MockClock) -> None:
    writer = ClosedCandleWriter(InlineSink(elog), flush_s=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        result = await writer.write(BTC, [c(60)])
        assert elog.get(BTC, 60) == c(60)
        assert (result.first_seq, result.appended) == (1, 1)
        nursery.cancel_scope.cancel()


async def test_failed_appends_are_retried_with_backoff_and_lose_nothing(
    elog: EventLog, autojump_clock: trio.testing.MockClock
) -> None:
    sink = InlineSink(elog, failures=3)
    published: list[AppendResult] = []

    async def publish(result: AppendResult) -> None:
        published.append(result)

    writer = ClosedCandleWriter(sink, flush_s=0.5, stages=Stages(publish=publish), jitter=no_jitter)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.submit(BTC, [c(60), c(120)])
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    times = [t for t, _ in sink.calls]
    assert [round(b - a, 3) for a, b in itertools.pairwise(times)] == [0.5, 1.0, 2.0]
    assert len(published) == 1
    assert published[0].appended == 2
    assert writer.stats.append_failures == 3


async def test_jittered_append_retries_stay_within_the_backoff(
    elog: EventLog, autojump_clock: trio.testing.MockClock
) -> None:
    sink = InlineSink(elog, failures=6)
    writer = ClosedCandleWriter(sink, flush_s=0.5, jitter=random.Random(5).random)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.write(BTC, [c(60)])
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in itertools.pairwise(t for t, _ in sink.calls)]
    assert len(gaps) == 6
    assert all(0.05 <= gap <= min(30.0, 0.5 * 2**n) for n, gap in enumerate(gaps))
    assert elog.get(BTC, 60) == c(60)


async def test_invalid_candle_is_refused_at_submit(elog: EventLog) -> None:
    writer = ClosedCandleWriter(InlineSink(elog))
    with pytest.raises(CandleError, match="high"):
        await writer.submit(BTC, [Candle(60, 10.0, 9.0, 8.0, 10.0, 1.0)])
    with pytest.raises(CandleError, match="not aligned"):
        await writer.write(BTC, [c(61)])
    assert writer.statistics()["queued"] == 0


async def test_send_to_durable_latency_is_measured_on_the_exchange_clock(
    elog: EventLog, autojump_clock: trio.testing.MockClock
) -> None:
    def now_ms() -> int:
        return 1_000_000 + int(trio.current_time() * 1000)

    writer = ClosedCandleWriter(InlineSink(elog), flush_s=0.5, now_ms=now_ms)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        sent = now_ms() - 100  # the exchange sent it 100 ms ago
        await writer.submit(BTC, [c(60)], sent_ms=sent)
        await writer.submit(ETH, [c(60)])  # no send time: not sampled
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    stats = writer.statistics()["send_to_durable_ms"]
    assert stats == {"p50": 105, "p99": 105, "max": 105, "samples": 1}  # 100 ms in flight + the 5 ms linger


async def test_close_makes_every_queued_candle_durable_first(elog: EventLog) -> None:
    writer = ClosedCandleWriter(InlineSink(elog), flush_s=60.0, linger_s=60.0, batch_max=10_000)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for i in range(300):
            await writer.submit(BTC, [c(60 * (i + 1))])
        await writer.close()  # no timer fired: the close itself flushes
        assert elog.last_seq() == 300
        assert writer.finished.is_set()
        nursery.cancel_scope.cancel()
