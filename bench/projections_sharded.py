"""Prototype measurement (issue 8): the live projection stage sharded over worker processes.

Not how the daemon runs: it answers whether sharding could bring a 1000-series minute-close burst under the
20 ms p99 target on this machine. Each worker holds the factor state of its share of the series, applies its
candles, and records the store writes (events, heads, overlay versions, snapshots, series records) instead of
making them. The main process commits every worker's writes and the checkpoint in ONE transaction, as the
projector does. Timed per burst: from handing the candles out to the commit.

Run: ``python -m bench.projections_sharded [--workers 2] [--series 1000] [--bursts 60]`` (from the checkout).
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from actors.projection_replay import ProjectorStats, SeriesReplayer
from bench.projections import pct, series_ids, walk
from daemon.app import GC_THRESHOLDS
from daemon.storage.projection_store import ProjectionStore
from protocol.candle import Candle
from protocol.factors.base import resolve_order
from protocol.factors.registry import DEFAULT_FACTORS
from protocol.logrecords import EventKind, LogEvent

Op = tuple[str, tuple[Any, ...]]


class RecordingTxn:
    """The write methods a live tick uses, recorded for the main process to replay in its transaction."""

    def __init__(self, nums: dict[str, int]) -> None:
        self.ops: list[Op] = []
        self.nums = nums

    def series(self, sid: str) -> dict[str, Any]:
        return {"num": self.nums[sid], "applied_seq": 0, "last_time": None, "max_version": 0}

    def put_event(self, *args: Any) -> None:
        self.ops.append(("put_event", args))

    def put_head(self, *args: Any) -> None:
        self.ops.append(("put_head", args))

    def put_version(self, *args: Any) -> int:
        self.ops.append(("put_version", args))
        return 0  # the main process numbers versions when it replays the writes

    def touch(self, *args: Any) -> int:
        self.ops.append(("touch", args))
        return 0

    def put_snapshot(self, *args: Any) -> None:
        self.ops.append(("put_snapshot", args))

    def put_series(self, *args: Any) -> None:
        self.ops.append(("put_series", args))


def worker(conn: Connection, nums: dict[str, int], history: dict[str, list[Candle]]) -> None:
    gc.set_threshold(*GC_THRESHOLDS)
    replayer = SeriesReplayer(None, resolve_order(DEFAULT_FACTORS), {}, ProjectorStats())  # type: ignore[arg-type]
    rec = RecordingTxn(nums)
    seq = 0
    for sid, candles in history.items():
        events = []
        for c in candles:
            seq += 1
            events.append(LogEvent(seq, EventKind.CANDLE_CLOSED, sid, c))
        replayer.apply_events(rec, sid, events, [])  # type: ignore[arg-type]
    gc.collect()
    gc.freeze()
    conn.send("ready")
    while (batch := conn.recv()) is not None:
        rec.ops = []
        for seq, sid, c in batch:
            replayer.apply_events(rec, sid, [LogEvent(seq, EventKind.CANDLE_CLOSED, sid, c)], [])  # type: ignore[arg-type]
        conn.send(rec.ops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--history", type=int, default=300)
    parser.add_argument("--bursts", type=int, default=60)
    args = parser.parse_args()
    k, history = args.workers, args.history
    ids = [str(s) for s in series_ids(args.series)]
    data = {sid: walk(history + args.bursts, 1000 + i) for i, sid in enumerate(ids)}
    nums = {sid: i + 1 for i, sid in enumerate(ids)}
    shard_of = {sid: i % k for i, sid in enumerate(ids)}
    ctx = mp.get_context("fork")
    conns: list[Connection] = []
    procs = []
    for shard in range(k):
        mine = {sid: data[sid][:history] for sid in ids if shard_of[sid] == shard}
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(child, nums, mine), daemon=True)
        proc.start()
        conns.append(parent)
        procs.append(proc)
    for conn in conns:
        assert conn.recv() == "ready"
    with tempfile.TemporaryDirectory(prefix="klined-bench-shard-") as tmp:
        store = ProjectionStore(Path(tmp) / "proj")
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        stages: list[float] = []
        seq = args.series * history
        for b in range(args.bursts):
            parts: list[list[tuple[int, str, Candle]]] = [[] for _ in range(k)]
            for sid in ids:
                seq += 1
                parts[shard_of[sid]].append((seq, sid, data[sid][history + b]))
            t0 = time.perf_counter()
            for conn, part in zip(conns, parts, strict=True):
                conn.send(part)
            results = [conn.recv() for conn in conns]
            with store.write() as w:
                for ops in results:
                    for name, op_args in ops:
                        getattr(w, name)(*op_args)
                w.set_checkpoints(seq)
            stages.append((time.perf_counter() - t0) * 1000)
        store.close()
    for conn in conns:
        conn.send(None)
    for proc in procs:
        proc.join()
    print(
        f"sharded live stage, {k} worker(s), {args.series} series: p50 {pct(stages, 0.5):.1f} ms, "
        f"p99 {pct(stages, 0.99):.1f} ms, max {max(stages):.1f} ms (target p99 < 20 ms)"
    )


if __name__ == "__main__":
    main()
