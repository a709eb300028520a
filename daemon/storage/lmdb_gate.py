"""Map growth without racing readers: LMDB may change an environment's map size only while the process has
no transaction open, and read transactions run in worker threads (HTTP reads, catchups, projections).

Growing through :meth:`ResizeGate.resize` waits for the open reads to end and holds new ones back meanwhile
(a few ms: reads are short). Without it, a read beginning during the resize failed with
``mdb_txn_begin: Invalid argument`` and answered 500 (a small map growing under load).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class ResizeGate:
    """Readers share the environment; a resize has it alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._resizing = False

    @contextmanager
    def read(self, env: Any) -> Iterator[Any]:
        """``with gate.read(env) as txn:`` a read transaction that no resize overlaps."""
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._readers += 1
        try:
            with env.begin() as txn:
                yield txn
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    def resize(self, env: Any, map_size: int) -> None:
        """``env.set_mapsize(map_size)`` once no read transaction is open (0: adopt the size another process
        set); new reads wait for it. The caller must hold no transaction of this environment itself."""
        with self._cond:
            self._resizing = True
            try:
                while self._readers:
                    self._cond.wait()
                env.set_mapsize(map_size)
            finally:
                self._resizing = False
                self._cond.notify_all()
