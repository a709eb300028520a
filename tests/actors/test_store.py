"""The async store: small batches on the loop, big ones in a worker thread, writes strictly serial."""

from __future__ import annotations

import threading
from pathlib import Path

import trio

from actors.store import INLINE_MAX_CANDLES, Store
from daemon.storage.eventlog import EventLog
from protocol.candle import Candle
from protocol.logrecords import AppendResult
from protocol.series import SeriesId

BTC = SeriesId.parse("binance:spot:BTC/USDT:1m")
ETH = SeriesId.parse("binance:spot:ETH/USDT:1m")


def candles(n: int, start: int = 60) -> list[Candle]:
    return [Candle(start + 60 * i, 10.0, 11.0, 9.0, 10.5, 1.0) for i in range(n)]


class ThreadRecordingLog(EventLog):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.threads: list[bool] = []  # True: the append ran on a worker thread

    def append(self, batch):  # type: ignore[no-untyped-def]
        self.threads.append(threading.current_thread() is not threading.main_thread())
        return super().append(batch)


async def test_small_batches_append_inline_and_big_ones_in_a_thread(tmp_path: Path) -> None:
    with ThreadRecordingLog(tmp_path / "log") as log:
        store = Store(log)
        small = await store.append({BTC: candles(10)})
        big = await store.append({ETH: candles(INLINE_MAX_CANDLES + 1)})
        assert (small.appended, big.appended) == (10, INLINE_MAX_CANDLES + 1)
        assert log.threads == [False, True]
        assert store.statistics()["write_events"] == INLINE_MAX_CANDLES + 11


async def test_an_inline_write_waits_for_a_threaded_one(tmp_path: Path) -> None:
    with EventLog(tmp_path / "log") as log:
        store = Store(log)
        order: list[str] = []

        async def write(name: str, batch: dict[SeriesId, list[Candle]]) -> None:
            result: AppendResult = await store.append(batch)
            order.append(f"{name}:{result.first_seq}")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, "big", {ETH: candles(INLINE_MAX_CANDLES + 1)})
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(write, "small", {BTC: candles(5)})
        # The small write committed after the big one (its seq follows), whichever task resumed first.
        assert sorted(order) == ["big:1", f"small:{INLINE_MAX_CANDLES + 2}"]
