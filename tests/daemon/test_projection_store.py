"""The projection store's own guarantees (the projector's behaviour is tests/actors/test_projector.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import lmdb

from daemon.projection_store import ProjectionStore


def test_map_growth_never_breaks_a_concurrent_read(tmp_path: Path) -> None:
    """HTTP reads (factor slices, draw deltas) run in worker threads while the projector grows the map."""
    store = ProjectionStore(tmp_path / "proj", map_size=128 * 1024)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                store.checkpoint()
                store.series_record("binance:spot:BTC/USDT:1m")
                store.statistics()
                time.sleep(0)  # pacing, not waiting: the writer needs the GIL back after each put
            except BaseException as e:  # any failure is the finding
                errors.append(e)
                return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    grown = 0
    try:
        for n in range(1, 13):
            while True:  # as the projector does: on MapFullError the transaction is gone, grow and redo it
                try:
                    with store.write() as w:
                        for k in range(200):
                            w.put_snapshot(n * 1000 + k, 60, b"x" * 2000)
                        w.set_checkpoints(n)
                    break
                except lmdb.MapFullError:
                    store.grow()
                    grown += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
        store.close()
    assert grown >= 3
    assert errors == []
    assert ProjectionStore(tmp_path / "proj").checkpoint() == 12
