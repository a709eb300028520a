"""The closed-candle writer: batching, de-duplication, the fixed stage order, durability before publish."""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import trio
import trio.lowlevel
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


class TimedSink(InlineSink):
    """The real log, each commit taking ``commit_s`` of (mock) time, as a disk's fsync does."""

    def __init__(self, log: EventLog, commit_s: float, failures: int = 0) -> None:
        super().__init__(log, failures)
        self.commit_s = commit_s

    async def append(self, batch: Mapping[SeriesId, Sequence[Candle]]) -> AppendResult:
        await trio.sleep(self.commit_s)
        return await super().append(batch)


async def test_a_lone_candle_is_committed_at_once(elog: EventLog, autojump_clock: trio.testing.MockClock) -> None:
    sink = InlineSink(elog)
    writer = ClosedCandleWriter(sink)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        start = trio.current_time()
        await writer.write(BTC, [c(60)])
        assert trio.current_time() == start  # no linger, no timer: the idle writer commits it now
        await trio.sleep(5)
        await writer.write(BTC, [c(120)])
        assert [t - start for t, _ in sink.calls] == [0, 5]
        nursery.cancel_scope.cancel()


async def test_arrivals_during_a_commit_form_the_next_batch(
    elog: EventLog, autojump_clock: trio.testing.MockClock
) -> None:
    sink = TimedSink(elog, commit_s=0.010)
    writer = ClosedCandleWriter(sink, batch_max=200)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        start = trio.current_time()
        await writer.submit(BTC, [c(60)])
        await trio.lowlevel.checkpoint()  # the writer takes it alone and starts committing
        for i in range(2, 452):  # a burst lands while that commit runs
            await writer.submit(BTC if i % 2 else ETH, [c(60 * i)])
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    sizes = [sum(map(len, batch.values())) for _, batch in sink.calls]
    assert sizes == [1, 200, 200, 50]  # the burst is three commits, not 450; none above batch_max
    # Commits run back to back (a call is recorded as its commit ends): nobody waits on a timer.
    assert [round(t - start, 3) for t, _ in sink.calls] == [0.01, 0.02, 0.03, 0.04]
    assert elog.last_seq() == 451


async def test_arrivals_during_the_stages_join_the_next_batch_in_order(
    elog: EventLog, autojump_clock: trio.testing.MockClock
) -> None:
    published: list[list[int]] = []

    async def publish(result: AppendResult) -> None:
        await trio.sleep(0.005)  # the stages take time too: arrivals meanwhile wait for the next commit
        published.append([cd.candle_time for cd in result.changed.get(BTC, [])])

    sink = InlineSink(elog)
    writer = ClosedCandleWriter(sink, stages=Stages(publish=publish))
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for i in range(1, 11):
            await writer.submit(BTC, [c(60 * i)])
            await trio.sleep(0.001)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert published == [[60], [120, 180, 240, 300, 360], [420, 480, 540, 600]]
    assert [cd.candle_time for cd in elog.range(BTC)] == [60 * i for i in range(1, 11)]  # order kept


async def test_a_failing_append_keeps_its_batch_and_later_arrivals_follow_it(
    elog: EventLog, autojump_clock: trio.testing.MockClock
) -> None:
    sink = InlineSink(elog, failures=2)
    published: list[list[int]] = []

    async def publish(result: AppendResult) -> None:
        published.append([cd.candle_time for cd in result.changed[BTC]])

    writer = ClosedCandleWriter(sink, stages=Stages(publish=publish), jitter=no_jitter)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.submit(BTC, [c(60), c(120)])
        await trio.sleep(0.1)  # the first append failed; the retry waits 0.5 s
        await writer.submit(BTC, [c(180)])
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert [sum(map(len, b.values())) for _, b in sink.calls] == [2, 2, 2, 1]  # the same batch, retried whole
    assert published == [[60, 120], [180]]
    assert [cd.candle_time for cd in elog.range(BTC)] == [60, 120, 180]


async def test_duplicates_and_disorder_become_one_ascending_run(
    elog: EventLog, autojump_clock: trio.testing.MockClock
) -> None:
    sink = InlineSink(elog)
    writer = ClosedCandleWriter(sink, batch_max=100)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        assert writer.submit_nowait(BTC, [c(180), c(60)])  # both queued before the writer runs: one batch
        assert writer.submit_nowait(BTC, [c(120), c(60, close=11.0), c(180)])
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
    writer = ClosedCandleWriter(InlineSink(elog), stages=stages)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            result = await writer.write(BTC, [c(60), c(120)])
            nursery.cancel_scope.cancel()
    assert seen == ["derive", "project", "publish"]
    assert result.appended == 2


async def test_write_returns_only_once_durable(elog: EventLog, autojump_clock: trio.testing.MockClock) -> None:
    writer = ClosedCandleWriter(InlineSink(elog))
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

    writer = ClosedCandleWriter(sink, stages=Stages(publish=publish), jitter=no_jitter)
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
    writer = ClosedCandleWriter(sink, jitter=random.Random(5).random)
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

    writer = ClosedCandleWriter(InlineSink(elog), now_ms=now_ms)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        sent = now_ms() - 100  # the exchange sent it 100 ms ago
        await writer.submit(BTC, [c(60)], sent_ms=sent)
        await writer.submit(ETH, [c(60)])  # no send time: not sampled
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    stats = writer.statistics()["send_to_durable_ms"]
    assert stats == {"p50": 100, "p99": 100, "max": 100, "samples": 1}  # 100 ms in flight, no wait in the writer


async def test_close_makes_every_queued_candle_durable_first(elog: EventLog) -> None:
    writer = ClosedCandleWriter(InlineSink(elog), batch_max=10_000)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for i in range(300):
            await writer.submit(BTC, [c(60 * (i + 1))])
        await writer.close()  # no timer fired: the close itself flushes
        assert elog.last_seq() == 300
        assert writer.finished.is_set()
        nursery.cancel_scope.cancel()
