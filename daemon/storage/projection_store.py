"""LMDB storage of the projections (factor events, heads, overlay versions), beside the event log.

A separate environment (``<data_dir>/projections``): projections are derived data that can always be
rebuilt from the log, so they never share its file, and dropping them never touches a candle.

Sub-databases and their keys: ``daemon.storage.projection_keys``. A batch of projection output and the
checkpoints it reaches commit in ONE write transaction (``daemon.storage.projection_writes``); this module
opens the environment, guards it across OS crashes, and reads.

Commits do not fsync: projections are rebuilt from the log, so they need not be durable, only visible
before the candle is published (an fsync per minute-close burst would sit in the publish path). Without
fsync, LMDB survives a killed process (the OS page cache holds every commit) but not an OS crash or power
cut in the middle of a run; ``state.json`` records the boot and a clean close, and a store left open by an
earlier boot is wiped at open, so the projector rebuilds it from the log.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Final

import lmdb
import orjson
import structlog

from daemon.storage.lmdb_gate import ResizeGate
from daemon.storage.projection_keys import (
    NUM_RANK,
    NUM_RANK_TIME,
    NUM_TIME,
    NUM_TIME_RANK,
    NUM_TIME_VERSION,
    U32,
    U64,
    VERSION_TIME,
    decode_series_record,
)
from daemon.storage.projection_writes import ProjectionTxn

log = structlog.get_logger(__name__)

DEFAULT_MAP_SIZE: Final = 1 << 30


class ProjectionStore:
    """The projections' LMDB environment. Writes happen on one thread at a time (the projector's lock)."""

    full_error: type[Exception] = lmdb.MapFullError

    def __init__(self, path: str | os.PathLike[str], *, map_size: int = DEFAULT_MAP_SIZE) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.wiped = self._wipe_if_unsafe()
        self._gate = ResizeGate()
        self._env: Any = lmdb.open(
            str(self.path), map_size=map_size, max_dbs=12, sync=False, metasync=False, readahead=False
        )
        self.meta = self._env.open_db(b"meta")
        self.series_db = self._env.open_db(b"series")
        self.fev = self._env.open_db(b"fev")
        self.heads = self._env.open_db(b"heads")
        self.dv = self._env.open_db(b"dv")
        self.dlast = self._env.open_db(b"dlast")
        self.snap = self._env.open_db(b"snap")
        # This process is the store's only writer: the checkpoints are read once here and then kept as each
        # write commits, so asking for one (the projector's live path, health, /metrics) is no LMDB read.
        self._checkpoints = {which: self._stored_checkpoint(which) for which in ("factor", "overlay")}

    def close(self) -> None:
        self._env.sync(True)
        self._env.close()
        self._write_state(clean=True)

    def _wipe_if_unsafe(self) -> bool:
        """Wipe a store an OS crash may have torn (open, unsynced, and the machine rebooted since)."""
        state_file = self.path / "state.json"
        boot = _boot_id()
        unsafe = False
        if state_file.exists():
            try:
                state = orjson.loads(state_file.read_bytes())
                unsafe = not state.get("clean") and (boot == "unknown" or state.get("boot_id") != boot)
            except (OSError, orjson.JSONDecodeError):
                unsafe = True
        if unsafe:
            log.warning("projections_wiped_after_os_crash", path=str(self.path))
            for name in ("data.mdb", "lock.mdb"):
                (self.path / name).unlink(missing_ok=True)
        self._write_state(clean=False)
        return unsafe

    def _write_state(self, *, clean: bool) -> None:
        tmp = self.path / "state.json.tmp"
        tmp.write_bytes(orjson.dumps({"boot_id": _boot_id(), "clean": clean, "at": int(time.time())}))
        os.replace(tmp, self.path / "state.json")

    def next_num(self, txn: Any) -> int:
        raw = txn.get(b"series_count", db=self.meta)
        num = (U32.unpack(raw)[0] if raw else 0) + 1
        txn.put(b"series_count", U32.pack(num), db=self.meta)
        return num

    def write(self) -> _WriteContext:
        """``with store.write() as w:`` one transaction, grown and retried by the caller on MapFullError."""
        return _WriteContext(self)

    def grow(self) -> None:
        new_size = int(self._env.info()["map_size"]) * 2
        log.warning("projections_map_grow", path=str(self.path), map_size=new_size)
        self._gate.resize(self._env, new_size)

    def drop_all(self) -> None:
        """Forget every projection output (a changed fingerprint); the overlay version counter survives so
        clients' cursors stay valid and see the rebuilt instructions as new versions."""
        with self._env.begin(write=True) as txn:
            version = txn.get(b"draw_version", db=self.meta)
            epoch = txn.get(b"epoch", db=self.meta)
            for db in (self.meta, self.series_db, self.fev, self.heads, self.dv, self.dlast, self.snap):
                txn.drop(db, delete=False)
            if version is not None:
                txn.put(b"draw_version", version, db=self.meta)
            txn.put(b"epoch", U64.pack((U64.unpack(epoch)[0] if epoch else 0) + 1), db=self.meta)
        self._checkpoints = dict.fromkeys(self._checkpoints, 0)

    # -- reads (any thread; each its own read transaction) -------------------------------------------

    def meta_value(self, key: str) -> bytes | None:
        with self._gate.read(self._env) as txn:
            raw = txn.get(key.encode(), db=self.meta)
            return None if raw is None else bytes(raw)

    def checkpoint(self, which: str = "factor") -> int:
        """The last log seq whose projections are stored (``factor`` and ``overlay`` commit together)."""
        return self._checkpoints[which]

    def _stored_checkpoint(self, which: str) -> int:
        raw = self.meta_value(f"checkpoint:{which}")
        return U64.unpack(raw)[0] if raw else 0

    def epoch(self) -> int:
        raw = self.meta_value("epoch")
        return U64.unpack(raw)[0] if raw else 0

    def series_record(self, sid: str) -> dict[str, Any] | None:
        with self._gate.read(self._env) as txn:
            raw = txn.get(sid.encode(), db=self.series_db)
            return None if raw is None else decode_series_record(raw)

    def events_between(self, num: int, start_time: int, end_time: int) -> list[dict[str, Any]]:
        """Factor events with start_time <= visible_time <= end_time, by time then factor order."""
        out: list[dict[str, Any]] = []
        end = NUM_TIME_RANK.pack(num, end_time, 255) + b"\xff"
        with self._gate.read(self._env) as txn:
            cursor = txn.cursor(self.fev)
            if cursor.set_range(NUM_TIME.pack(num, max(start_time, 0))):
                for key, value in cursor:
                    if key > end:
                        break
                    out.append(orjson.loads(value))
        return out

    def head_at(self, num: int, rank: int, candle_time: int) -> dict[str, Any] | None:
        """One factor's head in force at ``candle_time``: the last record written at or before it."""
        prefix = NUM_RANK.pack(num, rank)
        with self._gate.read(self._env) as txn:
            cursor = txn.cursor(self.heads)
            if cursor.set_range(NUM_RANK_TIME.pack(num, rank, candle_time + 1)):
                if not cursor.prev():
                    return None
            elif not cursor.last():
                return None
            if cursor.key()[: len(prefix)] != prefix:
                return None
            head: dict[str, Any] = orjson.loads(cursor.value())
            return head

    def pointer(self, num: int, instruction_id: str) -> tuple[int, int] | None:
        """(version_id, visible_time) of an instruction's latest version or touch."""
        with self._gate.read(self._env) as txn:
            raw = txn.get(U32.pack(num) + instruction_id.encode(), db=self.dlast)
            return None if raw is None else VERSION_TIME.unpack(raw[:16])

    def versions_between(self, num: int, start_time: int, end_time: int, after_version: int) -> list[dict[str, Any]]:
        """Overlay versions with start_time <= visible_time <= end_time and version_id > after_version,
        ascending by version_id."""
        picked: list[tuple[int, bytes]] = []
        end = NUM_TIME_VERSION.pack(num, end_time, (1 << 64) - 1)
        with self._gate.read(self._env) as txn:
            cursor = txn.cursor(self.dv)
            if cursor.set_range(NUM_TIME_VERSION.pack(num, max(start_time, 0), 0)):
                for key, value in cursor:
                    if key > end:
                        break
                    version = NUM_TIME_VERSION.unpack(key)[2]
                    if version > after_version:
                        picked.append((version, value))
        picked.sort()
        return [orjson.loads(v) for _, v in picked]

    def max_version(self, num: int, end_time: int) -> int:
        """The highest version id of the series visible at or before ``end_time`` (0: none)."""
        best = 0
        end = NUM_TIME_VERSION.pack(num, end_time, (1 << 64) - 1)
        with self._gate.read(self._env) as txn:
            cursor = txn.cursor(self.dv)
            if cursor.set_range(NUM_TIME_VERSION.pack(num, 0, 0)):
                for key in cursor.iternext(keys=True, values=False):
                    if key > end:
                        break
                    best = max(best, NUM_TIME_VERSION.unpack(key)[2])
        return best

    def statistics(self) -> dict[str, int]:
        stat = self._env.stat()
        with self._gate.read(self._env) as txn:
            counts = {name: txn.stat(db)["entries"] for name, db in (("events", self.fev), ("versions", self.dv))}
        return {"page_size": int(stat["psize"]), **counts}


def _boot_id() -> str:
    """This boot's id (Linux); elsewhere a constant, so only a clean close is trusted across restarts."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


class _WriteContext:
    def __init__(self, store: ProjectionStore) -> None:
        self._store = store
        self._txn: Any = None

    def __enter__(self) -> ProjectionTxn:
        self._txn = self._store._env.begin(write=True)
        self._w = ProjectionTxn(self._store, self._txn)
        return self._w

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self._w.finish()
            self._txn.commit()
            if self._w.checkpoint is not None:
                self._store._checkpoints = dict.fromkeys(self._store._checkpoints, self._w.checkpoint)
        else:
            self._txn.abort()
