"""The projection store's own guarantees (the projector's behaviour is tests/actors/test_projector.py)."""

from __future__ import annotations

from pathlib import Path

import lmdb

from daemon.storage.projection_store import ProjectionStore
from tests.daemon.storage.concurrent_reads import reading_meanwhile


def test_map_growth_never_breaks_a_concurrent_read(tmp_path: Path) -> None:
    """HTTP reads (factor slices, draw deltas) run in worker threads while the projector grows the map."""
    store = ProjectionStore(tmp_path / "proj", map_size=128 * 1024)

    def read() -> None:
        store.checkpoint()
        store.series_record("binance:spot:BTC/USDT:1m")
        store.statistics()

    grown = 0
    try:
        with reading_meanwhile(read) as errors:
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
        store.close()
    assert grown >= 3
    assert errors == []
    assert ProjectionStore(tmp_path / "proj").checkpoint() == 12
