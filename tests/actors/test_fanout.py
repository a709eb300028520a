"""The fan-out hub on a real event log: any interleaving of a subscriber's catchup with live publishes
gives it the log's candles after ``since``, each once, ascending, with a ``gap`` exactly at each hole; and
forming candles, from any source, are throttled here per series."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.clock import ExchangeClock, trio_wall_ms
from actors.fanout.connection import Connection
from actors.fanout.hub import FanOut
from actors.pipeline import ClosedCandleWriter
from actors.series import SeriesActor
from actors.store import Store
from daemon.storage.eventlog import EventLog
from protocol.binance import KlineUpdate
from protocol.candle import Candle
from protocol.series import SeriesId

S = SeriesId.parse("binance:spot:BTC/USDT:1m")


def c(minute: int) -> Candle:
    return Candle(60 * minute, 1.0, 2.0, 0.5, 1.5, 3.0)


@st.composite
def interleavings(draw: st.DrawFn) -> tuple[list[list[int]], int, int | None, bool, list[int]]:
    present = sorted(draw(st.sets(st.integers(1, 40), min_size=1, max_size=25)))
    chunks: list[list[int]] = []
    while present:
        k = draw(st.integers(1, 4))
        chunks.append(present[:k])
        present = present[k:]
    subscribe_at = draw(st.integers(0, len(chunks)))
    since = draw(st.one_of(st.none(), st.integers(0, 45)))
    batch = draw(st.booleans())
    pauses = draw(st.lists(st.integers(0, 5), min_size=len(chunks) + 1, max_size=len(chunks) + 1))
    return chunks, subscribe_at, since, batch, pauses


@settings(max_examples=150, deadline=None)
@given(interleavings())
def test_catchup_and_live_in_any_interleaving(case: tuple[list[list[int]], int, int | None, bool, list[int]]) -> None:
    chunks, subscribe_at, since, batch, pauses = case
    with tempfile.TemporaryDirectory() as tmp, EventLog(Path(tmp) / "log") as log:
        frames = trio.run(
            _drive, log, chunks, subscribe_at, since, batch, pauses, clock=trio.testing.MockClock(autojump_threshold=0)
        )
    sent: list[int] = []
    gaps: list[tuple[int, int]] = []
    for f in frames:
        if f["type"] == "candle_closed":
            sent.append(f["candle"]["candle_time"])
        elif f["type"] == "candles_batch":
            sent.extend(x["candle_time"] for x in f["candles"])
        else:
            assert f["type"] == "gap"
            gaps.append((f["expected_next_time"], f["actual_time"]))
    stored = sorted(60 * m for chunk in chunks for m in chunk)
    expected = [t for t in stored if not since or t > 60 * since]
    assert sent == expected
    previous = 60 * since if since else None
    want = []
    for t in expected:
        if previous is not None and t != previous + 60:
            want.append((previous + 60, t))
        previous = t
    assert gaps == want


async def drain(client: Connection) -> list[str]:
    """Every frame queued for ``client`` now, taken as its sender would (the outbox is left empty)."""
    frames: list[str] = []
    while client.queued:
        frame = await client.next_frame()
        assert frame is not None
        frames.append(frame)
    return frames


async def _drive(
    log: EventLog, chunks: list[list[int]], subscribe_at: int, since: int | None, batch: bool, pauses: list[int]
) -> list[dict[str, object]]:
    store = Store(log)
    hub = FanOut(store, now_s=lambda: 10**9)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        client = hub.connect()
        client.nursery = nursery
        for i in range(len(chunks) + 1):
            if i == subscribe_at:
                nursery.start_soon(hub.subscribe, client, S, since and 60 * since, batch)
            for _ in range(pauses[i]):
                await trio.lowlevel.checkpoint()
            if i < len(chunks):
                result = await store.append({S: [c(m) for m in chunks[i]]})
                await hub.publish_stage(result)  # as the writer does, once the append is durable
        await trio.testing.wait_all_tasks_blocked()
        await hub.wait_quiet()
        frames = [orjson.loads(f) for f in await drain(client)]
        nursery.cancel_scope.cancel()
    return frames


S2 = SeriesId.parse("binance:spot:ETH/USDT:1m")
Received = tuple[float, dict[str, Any]]


def forming(minute: int, close: float) -> Candle:
    return Candle(60 * minute, 10.0, max(10.0, close) + 1, min(10.0, close) - 1, close, 2.0)


@asynccontextmanager
async def subscribed(tmp_path: Path, *series: SeriesId) -> AsyncIterator[tuple[FanOut, Store, list[Received]]]:
    """A running hub with one client subscribed to ``series``; what the client receives, with trio times."""
    received: list[Received] = []
    with EventLog(tmp_path / "log") as log:
        store = Store(log)
        hub = FanOut(store, now_s=lambda: 10**9, forming_interval_s=0.25)
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run)
            client = hub.connect()
            client.nursery = nursery
            for s in series:
                await hub.subscribe(client, s, None, False)

            async def read() -> None:
                while (frame := await client.next_frame()) is not None:
                    received.append((trio.current_time(), orjson.loads(frame)))

            nursery.start_soon(read)
            yield hub, store, received
            nursery.cancel_scope.cancel()


def formings(received: list[Received], series: SeriesId, start: float) -> list[tuple[float, float]]:
    return [
        (round(t - start, 3), f["candle"]["close"])
        for t, f in received
        if f["type"] == "candle_forming" and f["series_id"] == str(series)
    ]


async def test_forming_is_throttled_per_series_latest_wins(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with subscribed(tmp_path, S, S2) as (hub, _, received):
        start = trio.current_time()
        for i in range(10):  # ten updates within 90 ms
            hub.publish_forming(S, forming(5, 10.0 + i))
            if i == 5:
                hub.publish_forming(S2, forming(5, 99.0))  # another series has its own window
            await trio.sleep(0.01)
        await trio.sleep(1)
        assert formings(received, S, start) == [(0.0, 10.0), (0.25, 19.0)]
        assert formings(received, S2, start) == [(0.05, 99.0)]
        hub.publish_forming(S, forming(5, 20.0))  # the window is long over: at once
        await trio.sleep(0.01)
        assert formings(received, S, start)[-1] == (1.1, 20.0)


async def test_a_held_forming_candle_of_a_period_closed_meanwhile_is_not_sent(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with subscribed(tmp_path, S) as (hub, store, received):
        start = trio.current_time()
        hub.publish_forming(S, forming(5, 11.0))
        await trio.sleep(0.1)
        hub.publish_forming(S, forming(5, 12.0))  # held until 0.25
        await trio.sleep(0.05)
        await hub.publish_stage(await store.append({S: [forming(5, 13.0)]}))  # the period closes
        await trio.sleep(1)
        assert [f["type"] for _, f in received] == ["candle_forming", "candle_closed"]
        hub.publish_forming(S, forming(6, 14.0))  # the next period's forming still goes
        await trio.sleep(0.01)
        assert formings(received, S, start)[-1][1] == 14.0


async def test_kline_forming_candles_reach_subscribers_throttled(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The kline path end to end: the series actor hands every update on, the hub throttles them."""
    t0 = 1_700_000_040

    async def no_fetch(series: SeriesId, first: int, last: int) -> list[Candle]:
        return []

    async with subscribed(tmp_path, S) as (hub, store, received):
        writer = ClosedCandleWriter(store)
        clock = ExchangeClock(wall=trio_wall_ms(t0 * 1000 + 10_000))
        actor = SeriesActor(
            S, head_time=None, writer=writer, broadcast_forming=hub.publish_forming, fetch_closed=no_fetch, clock=clock
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await nursery.start(actor.run)
            start = trio.current_time()
            for i in range(10):  # ten updates within 90 ms
                c = Candle(t0, 10.0, 30.0, 1.0, 10.0 + i, 2.0)
                actor.deliver(KlineUpdate(S, c, False, t0 * 1000 + 1, (t0 + 60) * 1000 - 1, 1, 1.0))
                await trio.sleep(0.01)
            await trio.sleep(1)
            assert formings(received, S, start) == [(0.0, 10.0), (0.25, 19.0)]
            nursery.cancel_scope.cancel()
