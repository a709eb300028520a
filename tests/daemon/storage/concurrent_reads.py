"""Reads hammering an LMDB store from worker threads while a test writes (map-growth races)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def reading_meanwhile(
    read: Callable[[], object], *, threads: int = 2, pause_s: float = 0.0
) -> Iterator[list[BaseException]]:
    """Call ``read`` in a loop on ``threads`` threads for the duration of the ``with``; yields the list of
    exceptions a reader died of (any failure is the finding). ``pause_s`` paces the loop, it waits on
    nothing: the writer needs the GIL back after each put."""
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                read()
                time.sleep(pause_s)
            except BaseException as e:
                errors.append(e)
                return

    workers = [threading.Thread(target=reader) for _ in range(threads)]
    for t in workers:
        t.start()
    try:
        yield errors
    finally:
        stop.set()
        for t in workers:
            t.join()
