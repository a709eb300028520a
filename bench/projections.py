"""Projection benchmark (issue 8): replay throughput and the live path's added latency.

1. Replay 1,000,000 1m candles (default: 10 series of 100,000) through all five factors and the overlays,
   outputs and checkpoints stored in LMDB: a full rebuild from the log (``Projector.rebuild``), candles/s
   (target >= 100k/s). Baselines in the same run: reading the same candles back from the log, and the
   factor engine + overlay builder alone (no storage).
2. The live path: 1000 series with history, then minute-close bursts of one candle per series: the time the
   writer's factor stage adds between the append and the publish, p50/p99 over the bursts (target p99
   < 20 ms). Baselines in the same run: the append of the same burst, and the factor engines + overlay
   builders alone for the same bursts (no storage, no bookkeeping: the floor of the stage in one process).

Run: ``python bench/projections.py [--candles 1000000] [--series 10] [--live-series 1000] [--bursts 60]``.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import numpy as np
import trio

from actors.projector import Projector
from daemon.app import GC_THRESHOLDS
from daemon.storage.eventlog import EventLog
from daemon.storage.projection_store import ProjectionStore
from protocol.candle import Candle
from protocol.factors.base import FactorEngine
from protocol.factors.registry import DEFAULT_FACTORS
from protocol.overlays import OverlayBuilder
from protocol.series import SeriesId

START = 1_672_531_200  # 2023-01-01


def walk(n: int, seed: int, start: int = START) -> list[Candle]:
    """A geometric random walk: realistic swings, so pivots, pens, zones and levels all occur."""
    rng = np.random.default_rng(seed)
    close = 20_000 * np.exp(np.cumsum(rng.normal(0, 0.0015, n)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    spread = np.abs(rng.normal(0, 0.0008, n)) * close
    high, low = np.maximum(open_, close) + spread, np.minimum(open_, close) - spread
    volume = np.abs(rng.normal(10, 3, n))
    return [
        Candle(start + 60 * i, float(o), float(h), float(lo), float(c), float(v))
        for i, (o, h, lo, c, v) in enumerate(zip(open_, high, low, close, volume, strict=True))
    ]


def series_ids(n: int) -> list[SeriesId]:
    return [SeriesId.parse(f"binance:spot:S{i:04d}/USDT:1m") for i in range(n)]


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def replay(tmp: Path, total: int, n_series: int) -> None:
    per = total // n_series
    ids = series_ids(n_series)
    with EventLog(tmp / "log", sync=False) as log:
        data = {s: walk(per, i) for i, s in enumerate(ids)}
        for s, candles in data.items():
            for i in range(0, per, 50_000):
                log.append({s: candles[i : i + 50_000]})
        gc.collect()
        # Baseline 1: read every candle back from the log.
        t0 = time.perf_counter()
        read = 0
        for s in ids:
            after = None
            while chunk := log.range(s, after, None, 20_000):
                read += len(chunk)
                after = chunk[-1][0]
        t_read = time.perf_counter() - t0
        # Baseline 2: factors + overlays in memory only.
        t0 = time.perf_counter()
        for s in ids[:1]:
            engine, builder = FactorEngine(60, DEFAULT_FACTORS), OverlayBuilder()
            for c in data[s]:
                builder.update(c[0], engine.apply(c), engine.heads())
        t_mem = (time.perf_counter() - t0) * n_series
        # The replay: a rebuild of everything from the log, stored.
        gc.set_threshold(*GC_THRESHOLDS)
        projector = Projector(log, ProjectionStore(tmp / "proj"))
        t0 = time.perf_counter()
        replayed = await projector.rebuild(None, reason="bench")
        t_replay = time.perf_counter() - t0
        stats = projector.pstore.statistics()
        projector.pstore.close()
    rate = replayed / t_replay
    print(f"replay: {replayed:,} candles in {t_replay:.2f} s = {rate:,.0f} candles/s (target >= 100,000)")
    print(f"  stored: {stats['events']:,} factor events, {stats['versions']:,} overlay versions")
    print(f"  baseline read from the log: {read / t_read:,.0f} candles/s (replay = {t_read / t_replay:.3f}x of it)")
    print(
        f"  baseline factors+overlays in memory: {total / t_mem:,.0f} candles/s "
        f"(storage costs {t_replay / t_mem - 1:.0%} on top)"
    )


async def live(tmp: Path, n_series: int, history: int, bursts: int) -> None:
    ids = series_ids(n_series)
    with EventLog(tmp / "live-log") as log:
        data = {s: walk(history + bursts, 1000 + i) for i, s in enumerate(ids)}
        log.append({s: c[:history] for s, c in data.items()})
        projector = Projector(log, ProjectionStore(tmp / "live-proj"))
        await projector.start()
        await projector.sync()  # warm: every series' state in memory, as in a running daemon
        appends: list[float] = []
        stages: list[float] = []
        gc.collect()
        gc.freeze()  # as the daemon does once it is up, with the same collector thresholds
        gc.set_threshold(*GC_THRESHOLDS)
        for b in range(bursts):
            batch = {s: [c[history + b]] for s, c in data.items()}
            t0 = time.perf_counter()
            result = log.append(batch)
            t1 = time.perf_counter()
            await projector.stage(result)
            t2 = time.perf_counter()
            appends.append((t1 - t0) * 1000)
            stages.append((t2 - t1) * 1000)
        gc.unfreeze()
        projector.pstore.close()
    compute = compute_only(data, history, bursts)
    print(f"live: {bursts} minute-close bursts of {n_series} candles (one per series), {history} candles of history")
    print(
        f"  factor+overlay stage: p50 {pct(stages, 0.5):.1f} ms, p99 {pct(stages, 0.99):.1f} ms, "
        f"max {max(stages):.1f} ms (target p99 < 20 ms)"
    )
    print(
        f"  baseline append of the same burst: p50 {pct(appends, 0.5):.1f} ms, p99 {pct(appends, 0.99):.1f} ms "
        f"(stage/append p50 = {pct(stages, 0.5) / pct(appends, 0.5):.1f}x)"
    )
    print(
        f"  baseline factors+overlays alone, same bursts: p50 {pct(compute, 0.5):.1f} ms, "
        f"p99 {pct(compute, 0.99):.1f} ms (stage/compute p50 = {pct(stages, 0.5) / pct(compute, 0.5):.1f}x)"
    )


def compute_only(data: dict[SeriesId, list[Candle]], history: int, bursts: int) -> list[float]:
    """Milliseconds per burst of the factor engines and overlay builders alone, on their own warm states."""
    states = [(s, FactorEngine(60, DEFAULT_FACTORS), OverlayBuilder()) for s in data]
    for s, engine, builder in states:
        for c in data[s][:history]:
            builder.update(c[0], engine.apply(c), engine.heads())
    gc.collect()
    gc.freeze()
    out: list[float] = []
    for b in range(bursts):
        t0 = time.perf_counter()
        for s, engine, builder in states:
            c = data[s][history + b]
            builder.update(c[0], engine.apply(c), engine.heads())
        out.append((time.perf_counter() - t0) * 1000)
    gc.unfreeze()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candles", type=int, default=1_000_000)
    parser.add_argument("--series", type=int, default=10)
    parser.add_argument("--live-series", type=int, default=1000)
    parser.add_argument("--history", type=int, default=300)
    parser.add_argument("--bursts", type=int, default=60)
    parser.add_argument("--skip-replay", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="klined-bench-proj-") as tmp:
        if not args.skip_replay:
            trio.run(replay, Path(tmp), args.candles, args.series)
        trio.run(live, Path(tmp), args.live_series, args.history, args.bursts)


if __name__ == "__main__":
    main()
