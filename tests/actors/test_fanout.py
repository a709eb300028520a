"""The fan-out hub on a real event log: any interleaving of a subscriber's catchup with live publishes
gives it the log's candles after ``since``, each once, ascending, with a ``gap`` exactly at each hole."""

from __future__ import annotations

import tempfile
from pathlib import Path

import orjson
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.fanout import Hub
from actors.store import Store
from daemon.storage.eventlog import EventLog
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


async def _drive(
    log: EventLog, chunks: list[list[int]], subscribe_at: int, since: int | None, batch: bool, pauses: list[int]
) -> list[dict[str, object]]:
    store = Store(log)
    hub = Hub(store, now_s=lambda: 10**9)
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
        frames = [orjson.loads(f) for f in client.drain_nowait()]
        nursery.cancel_scope.cancel()
    return frames
