"""ResizeGate: a map resize waits for open reads and holds new ones back (a real LMDB environment)."""

from __future__ import annotations

import threading
from pathlib import Path

import lmdb

from daemon.storage.lmdb_gate import ResizeGate


def test_a_resize_waits_for_the_open_read_and_holds_new_ones_back(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path), map_size=1 << 20)
    gate = ResizeGate()
    log: list[str] = []
    reading, release, resize_started, second_in = (threading.Event() for _ in range(4))

    def long_read() -> None:
        with gate.read(env) as txn:
            txn.get(b"k")
            reading.set()
            release.wait()
            log.append("first read ends")

    def resize() -> None:
        resize_started.set()
        gate.resize(env, 2 << 20)
        log.append("resized")

    def second_read() -> None:
        with gate.read(env):
            log.append("second read")
        second_in.set()

    first = threading.Thread(target=long_read)
    first.start()
    reading.wait()
    grower = threading.Thread(target=resize)
    grower.start()
    resize_started.wait()
    while not gate._resizing:  # the grower holds the gate (it is waiting for the first read)
        threading.Event().wait(0.001)
    late = threading.Thread(target=second_read)
    late.start()
    assert not second_in.wait(0.05), "a read must not begin while a resize waits"
    release.set()
    for t in (first, grower, late):
        t.join(5)
    assert log == ["first read ends", "resized", "second read"]
    assert env.info()["map_size"] == 2 << 20
    env.close()
