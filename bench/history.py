"""History benchmark: a year of 1m candles from a freqtrade feather file into the log, and exchange pages.

1. Import 525,600 1m candles (one year) from ``BTC_USDT-1m.feather`` through klined's freqtrade level into a
   fresh LMDB log, end to end (read, check, append durably). Baseline in the same run: a bare
   ``pyarrow.feather.read_table`` of the same file, the floor (importing cannot beat reading).
2. 50,000 candles through ccxt pages (1000 a call) from the fake exchange's REST on loopback: candles/s and
   the number of REST calls.

Run: ``python bench/history.py [--candles 525600] [--exchange-candles 50000]``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import trio

from actors.store import Store
from daemon.config import load_settings
from daemon.fakex.server import FakeExchange
from daemon.history.exchange import CcxtSource
from daemon.history.service import History
from daemon.storage.eventlog import EventLog
from protocol.series import SeriesId
from protocol.timeframes import TIMEFRAMES

M1 = TIMEFRAMES["1m"]
BTC = SeriesId.parse("binance:spot:BTC/USDT:1m")
START = 1_672_531_200  # 2023-01-01


def write_year(path: Path, n: int) -> None:
    rng = np.random.default_rng(7)
    close = 20_000 * np.exp(np.cumsum(rng.normal(0, 0.0008, n)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    spread = np.abs(rng.normal(0, 0.0005, n)) * close
    table = pa.table(
        {
            "date": pa.array((START + 60 * np.arange(n)) * 1000, type=pa.timestamp("ms", tz="UTC")),
            "open": open_,
            "high": np.maximum(open_, close) + spread,
            "low": np.minimum(open_, close) - spread,
            "close": close,
            "volume": np.abs(rng.normal(10, 3, n)),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    feather.write_feather(table, str(path))


def history_for(tmp: Path, log: EventLog, rest_url: str = "http://127.0.0.1:9") -> History:
    settings = load_settings(
        env={
            "KLINED_DATA_DIR": str(tmp),
            "KLINED_FREQTRADE_DATA_DIR": str(tmp / "freqtrade"),
            "KLINED_BINANCE_SPOT_REST_URL": rest_url,
            "KLINED_BINANCE_FUTURES_REST_URL": rest_url,
        }
    )
    return History(
        settings,
        Store(log),
        source=CcxtSource(rest_url, rest_url),
        base=M1,
        derived=[],
        now_s=lambda: int(time.time()),
    )


async def import_year(tmp: Path, n: int) -> tuple[float, int]:
    with EventLog(tmp / f"log-{time.perf_counter_ns()}") as log:
        history = history_for(tmp, log)
        started = time.perf_counter()
        filled = await history.from_freqtrade(BTC, [(START, START + 60 * (n - 1))])
        elapsed = time.perf_counter() - started
        assert log.count_between(BTC, START, START + 60 * (n - 1)) == n
    return elapsed, filled


async def exchange_pages(tmp: Path, n: int) -> tuple[float, int, int]:
    fake = FakeExchange()
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(fake.serve)
        with EventLog(tmp / "log-exchange") as log:
            history = history_for(tmp, log, urls.rest_url)
            last = M1.last_closed_open(fake.now_ms() // 1000)
            started = time.perf_counter()
            filled = await history.from_exchange(BTC, [(last - 60 * (n - 1), last)])
            elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return elapsed, filled, history.source.calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candles", type=int, default=525_600)
    parser.add_argument("--exchange-candles", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="klined-bench-history-", dir=".") as tmp_name:
        tmp = Path(tmp_name)
        path = tmp / "freqtrade" / "binance" / "BTC_USDT-1m.feather"
        write_year(path, args.candles)
        # As the daemon does once started (daemon/app.py): the long-lived heap leaves the collector's
        # generations, so collections during the import only walk the import's own young objects.
        gc.collect()
        gc.freeze()
        reads, imports = [], []
        for _ in range(args.runs):
            started = time.perf_counter()
            feather.read_table(str(path))
            reads.append(time.perf_counter() - started)
            elapsed, filled = trio.run(import_year, tmp, args.candles)
            assert filled == args.candles
            imports.append(elapsed)
        read_s, import_s = statistics.median(reads), statistics.median(imports)
        rate = args.candles / import_s
        ex_s, ex_filled, calls = trio.run(exchange_pages, tmp, args.exchange_candles)

    print(f"klined history benchmark ({args.runs} runs, medians)")
    print(f"  feather file, {args.candles:,} 1m candles ({path.name})")
    print(f"  bare pyarrow.feather.read_table ...... {read_s * 1000:8.1f} ms  (the floor)")
    print(f"  import into the LMDB log, end to end .. {import_s * 1000:8.1f} ms  = {rate / 1e3:,.0f}k candles/s")
    print(f"  import / bare read .................... {import_s / read_s:8.1f}x")
    print(f"  exchange via ccxt, fake REST on loopback: {ex_filled:,} candles in {ex_s:.2f} s")
    print(
        f"      = {ex_filled / ex_s:,.0f} candles/s over {calls} REST calls ({ex_filled / max(calls, 1):.0f} per call)"
    )
    print()
    print("targets:")
    print(f"  import >= 500k candles/s ...... {'PASS' if rate >= 500_000 else 'FAIL'} ({rate / 1e3:,.0f}k/s)")


if __name__ == "__main__":
    main()
