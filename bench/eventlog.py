"""Event log benchmark: the LMDB log beside a SQLite baseline, same workload, same run, as ratios.

Workloads: bulk append of N 1m candles in batches (candles/s), tail(2000) read latency (decoded to
Candle objects), a full range scan in pages of 5000 (candles/s), and a minute-close burst (1000 series,
one candle each, one batch). Both stores commit durably (LMDB sync, SQLite WAL + synchronous=FULL).

Run: ``python bench/eventlog.py [--candles 1000000] [--batch 10000]``.
"""

from __future__ import annotations

import argparse
import gc
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from daemon.storage.eventlog import EventLog
from protocol.candle import Candle
from protocol.series import SeriesId

SERIES = SeriesId.parse("binance:spot:BTC/USDT:1m")
T0 = 1_600_000_020 // 60 * 60
TAIL = 2000
PAGE = 5000
BURST_SERIES = 1000


def candles(start: int, n: int) -> list[Candle]:
    out = []
    for i in range(start, start + n):
        p = 20_000.0 + (i % 977) * 0.5
        out.append(Candle(T0 + 60 * i, p, p + 3.0, p - 2.0, p + 1.0, 1.5 + (i % 13)))
    return out


def batches(total: int, size: int) -> Iterator[list[Candle]]:
    for start in range(0, total, size):
        yield candles(start, min(size, total - start))


class SqliteBaseline:
    """The table a straightforward implementation would use: one row per candle, upserted."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE candles (series_id TEXT NOT NULL, candle_time INTEGER NOT NULL, open REAL, high REAL,"
            " low REAL, close REAL, volume REAL, synthetic INTEGER, PRIMARY KEY (series_id, candle_time))"
        )

    def append(self, series: str, rows: list[Candle]) -> None:
        self.append_many({series: rows})

    def append_many(self, batch: dict[str, list[Candle]]) -> None:
        self.db.execute("BEGIN")
        for series, rows in batch.items():
            self.db.executemany(
                "INSERT INTO candles VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(series_id, candle_time) DO UPDATE SET"
                " open=excluded.open, high=excluded.high, low=excluded.low, close=excluded.close,"
                " volume=excluded.volume, synthetic=excluded.synthetic",
                [(series, *c) for c in rows],
            )
        self.db.execute("COMMIT")

    def _rows(self, rows: list[tuple[int, float, float, float, float, float, int]]) -> list[Candle]:
        return [Candle(t, o, h, lo, c, v, bool(s)) for t, o, h, lo, c, v, s in rows]

    def tail(self, series: str, n: int) -> list[Candle]:
        rows = self.db.execute(
            "SELECT candle_time, open, high, low, close, volume, synthetic FROM candles WHERE series_id=?"
            " ORDER BY candle_time DESC LIMIT ?",
            (series, n),
        ).fetchall()
        rows.reverse()
        return self._rows(rows)

    def range(self, series: str, since: int, limit: int) -> list[Candle]:
        rows = self.db.execute(
            "SELECT candle_time, open, high, low, close, volume, synthetic FROM candles WHERE series_id=?"
            " AND candle_time>? ORDER BY candle_time LIMIT ?",
            (series, since, limit),
        ).fetchall()
        return self._rows(rows)


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def scan(read_page: Callable[[int], list[Candle]]) -> int:
    since, seen = -1, 0
    while page := read_page(since):
        seen += len(page)
        since = page[-1].candle_time
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candles", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--tail-repeat", type=int, default=300)
    args = parser.parse_args()
    n, sid = args.candles, str(SERIES)
    results: dict[str, tuple[float, float]] = {}

    with tempfile.TemporaryDirectory(prefix="klined-bench-") as tmp:
        log = EventLog(Path(tmp) / "lmdb", map_size=4 << 30)
        sql = SqliteBaseline(Path(tmp) / "baseline.sqlite")

        # Append: candles are built per batch outside the timed section, as a live feed hands them over.
        spent = {"lmdb": 0.0, "sqlite": 0.0}
        for batch in batches(n, args.batch):
            t = time.perf_counter()
            log.append({SERIES: batch})
            spent["lmdb"] += time.perf_counter() - t
            t = time.perf_counter()
            sql.append(sid, batch)
            spent["sqlite"] += time.perf_counter() - t
        results["append (candles/s)"] = (n / spent["lmdb"], n / spent["sqlite"])
        assert log.head(SERIES) == (T0, T0 + 60 * (n - 1), n)

        gc.collect()
        gc.freeze()  # as the daemon does once started: long-lived objects leave the collector's generations
        lm = timed(lambda: log.tail(SERIES, TAIL), args.tail_repeat)
        sq = timed(lambda: sql.tail(sid, TAIL), args.tail_repeat)
        assert log.tail(SERIES, TAIL) == sql.tail(sid, TAIL)
        results[f"tail({TAIL}) median (ms)"] = (statistics.median(lm) * 1e3, statistics.median(sq) * 1e3)
        results[f"tail({TAIL}) p99 (ms)"] = (
            statistics.quantiles(lm, n=100)[98] * 1e3,
            statistics.quantiles(sq, n=100)[98] * 1e3,
        )

        t = time.perf_counter()
        assert scan(lambda since: log.range(SERIES, since, None, PAGE)) == n
        lm_scan = n / (time.perf_counter() - t)
        t = time.perf_counter()
        assert scan(lambda since: sql.range(sid, since, PAGE)) == n
        results[f"range scan, pages of {PAGE} (candles/s)"] = (lm_scan, n / (time.perf_counter() - t))

        burst_series = [SeriesId.parse(f"binance:spot:B{i}/USDT:1m") for i in range(BURST_SERIES)]
        minute = T0 + 60 * n
        lm_b, sq_b = [], []
        for k in range(20):
            one = [Candle(minute + 60 * k, 1.0, 2.0, 0.5, 1.5, 3.0)]
            lm_b += timed(lambda one=one: log.append(dict.fromkeys(burst_series, one)), 1)  # type: ignore[misc]
            sq_b += timed(lambda one=one: sql.append_many({str(s): one for s in burst_series}), 1)  # type: ignore[misc]
        results[f"minute-close burst, {BURST_SERIES} series (ms)"] = (
            statistics.median(lm_b) * 1e3,
            statistics.median(sq_b) * 1e3,
        )
        log.close()

    lower_is_better = {k for k in results if k.endswith("(ms)")}
    print(f"klined event log benchmark: {n:,} candles, batches of {args.batch:,}")
    print(f"{'workload':44s} {'lmdb':>14s} {'sqlite':>14s} {'lmdb advantage':>15s}")
    for name, (a, b) in results.items():
        ratio = b / a if name in lower_is_better else a / b
        print(f"{name:44s} {a:14,.2f} {b:14,.2f} {ratio:14.2f}x")
    append_rate, sqlite_rate = results["append (candles/s)"]
    tail_ms = results[f"tail({TAIL}) median (ms)"][0]
    print()
    print("targets:")
    print(f"  append >= 500,000 candles/s ........ {'PASS' if append_rate >= 500_000 else 'FAIL'} ({append_rate:,.0f})")
    ratio = append_rate / sqlite_rate
    print(f"  append >= 3x SQLite ................ {'PASS' if ratio >= 3 else 'FAIL'} ({ratio:.2f}x)")
    print(f"  tail({TAIL}) decode < 2 ms .......... {'PASS' if tail_ms < 2 else 'FAIL'} ({tail_ms:.3f} ms)")


if __name__ == "__main__":
    main()
