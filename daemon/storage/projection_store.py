"""LMDB storage of the projections (factor events, heads, overlay versions), beside the event log.

A separate environment (``<data_dir>/projections``): projections are derived data that can always be
rebuilt from the log, so they never share its file, and dropping them never touches a candle.

Sub-databases (keys big-endian so byte order is numeric order; ``num`` is this store's own u32 per series):
- ``meta``:    checkpoints (``checkpoint:factor``, ``checkpoint:overlay``: last applied log seq),
               fingerprints, the global overlay version counter, the rebuild epoch
- ``series``:  series id -> (num, applied_seq, last_time, max_version), packed (written per batch per series)
- ``fev``:     (num, visible_time, factor rank, event_key) -> JSON factor event
- ``heads``:   (num, factor rank, candle_time) -> JSON head of one factor, written only when it changes
- ``dv``:      (num, visible_time, version_id) -> JSON overlay version (reads scan a time window);
               ``dlast`` (num, instruction_id) -> its latest version_id, visible_time and definition JSON
- ``snap``:    (num, last_time) -> pickled engine state, the newest two per series (rewinds start there)

A batch of projection output and the checkpoints it reaches commit in ONE write transaction.

Commits do not fsync: projections are rebuilt from the log, so they need not be durable, only visible
before the candle is published (an fsync per minute-close burst cost 8 ms of the publish path). Without
fsync, LMDB survives a killed process (the OS page cache holds every commit) but not an OS crash or power
cut in the middle of a run; ``state.json`` records the boot and a clean close, and a store left open by an
earlier boot is wiped at open, so the projector rebuilds it from the log.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import lmdb
import orjson
import structlog

from daemon.storage.lmdb_gate import ResizeGate

log = structlog.get_logger(__name__)

U32: Final = struct.Struct(">I")
U64: Final = struct.Struct(">Q")
NUM_TIME: Final = struct.Struct(">IQ")
NUM_TIME_RANK: Final = struct.Struct(">IQB")
NUM_RANK: Final = struct.Struct(">IB")
NUM_RANK_TIME: Final = struct.Struct(">IBQ")
MAX_RANK: Final = 32  # factors per engine (ranks in keys)
NUM_TIME_VERSION: Final = struct.Struct(">IQQ")
VERSION_TIME: Final = struct.Struct(">QQ")
SERIES_REC: Final = struct.Struct(">IQqQ")  # num, applied_seq, last_time (-1: none), max_version
SNAPSHOTS_KEPT: Final = 2
DEFAULT_MAP_SIZE: Final = 1 << 30


class ProjectionTxn:
    """One write transaction of projection output; commit on leaving the ``with`` of
    :meth:`ProjectionStore.write`."""

    def __init__(self, store: ProjectionStore, txn: Any) -> None:
        self._s = store
        self.txn = txn
        self._fev = txn.cursor(store.fev)
        self._version: int | None = None  # the global overlay version counter, written back at commit
        self._touches: dict[tuple[int, str], tuple[int, int]] = {}  # moving instructions, written at commit

    # -- series and meta --------------------------------------------------------------------------

    def series(self, sid: str) -> dict[str, Any]:
        """The series record, created (with a new number) when missing."""
        raw = self.txn.get(sid.encode(), db=self._s.series_db)
        if raw is not None:
            return _series_record(raw)
        num = self._s.next_num(self.txn)
        record: dict[str, Any] = {"num": num, "applied_seq": 0, "last_time": None, "max_version": 0}
        self.put_series(sid, record)
        return record

    def put_series(self, sid: str, record: dict[str, Any]) -> None:
        last_time = record["last_time"]
        packed = SERIES_REC.pack(
            record["num"], record["applied_seq"], -1 if last_time is None else last_time, record["max_version"]
        )
        self.txn.put(sid.encode(), packed, db=self._s.series_db)

    def set_meta(self, key: str, value: bytes) -> None:
        self.txn.put(key.encode(), value, db=self._s.meta)

    def set_checkpoints(self, seq: int) -> None:
        packed = U64.pack(seq)
        self.txn.put(b"checkpoint:factor", packed, db=self._s.meta)
        self.txn.put(b"checkpoint:overlay", packed, db=self._s.meta)

    def next_version(self) -> int:
        if self._version is None:
            raw = self.txn.get(b"draw_version", db=self._s.meta)
            self._version = U64.unpack(raw)[0] if raw else 0
        self._version += 1
        return self._version

    def touch(self, num: int, instruction_id: str, visible_time: int) -> int:
        """A new version of a moving instruction whose stored definition stays (an alive zone extended by
        one candle: its end is re-derived at read time). Only its pointer moves, once per transaction."""
        version = self.next_version()
        self._touches[(num, instruction_id)] = (version, visible_time)
        return version

    def finish(self) -> None:
        """Write back what is kept in memory during the transaction (called just before the commit)."""
        for (num, iid), (version, visible_time) in self._touches.items():
            key = U32.pack(num) + iid.encode()
            raw = self.txn.get(key, db=self._s.dlast)
            if raw is not None:
                self.txn.put(key, VERSION_TIME.pack(version, visible_time) + bytes(raw[16:]), db=self._s.dlast)
        self._touches.clear()
        if self._version is not None:
            self.txn.put(b"draw_version", U64.pack(self._version), db=self._s.meta)

    # -- factor output ------------------------------------------------------------------------------

    def put_event(self, num: int, visible_time: int, rank: int, event_key: str, record: bytes) -> None:
        self._fev.put(NUM_TIME_RANK.pack(num, visible_time, rank) + event_key.encode(), record)

    def put_head(self, num: int, rank: int, candle_time: int, head: bytes) -> None:
        self.txn.put(NUM_RANK_TIME.pack(num, rank, candle_time), head, db=self._s.heads)

    # -- overlay output -----------------------------------------------------------------------------

    def latest_definition(self, num: int, instruction_id: str) -> bytes | None:
        """The stored latest definition JSON of an instruction (``b"null"`` when removed), or None."""
        raw = self.txn.get(U32.pack(num) + instruction_id.encode(), db=self._s.dlast)
        return None if raw is None else bytes(raw[16:])

    def put_version(self, num: int, instruction_id: str, kind: str, visible_time: int, definition: bytes) -> int:
        """Store a new version (ids and kinds are plain ASCII names: no JSON escaping needed)."""
        version = self.next_version()
        self._touches.pop((num, instruction_id), None)
        iid = instruction_id.encode()
        record = b'{"version_id":%d,"instruction_id":"%b","kind":"%b","visible_time":%d,"definition":%b}' % (
            version,
            iid,
            kind.encode(),
            visible_time,
            definition,
        )
        self.txn.put(NUM_TIME_VERSION.pack(num, visible_time, version), record, db=self._s.dv)
        self.txn.put(U32.pack(num) + iid, VERSION_TIME.pack(version, visible_time) + definition, db=self._s.dlast)
        return version

    def instructions_since(self, num: int, start_time: int) -> list[tuple[str, bytes]]:
        """Instructions whose latest version is visible at or after ``start_time``: (id, definition JSON)."""
        out: list[tuple[str, bytes]] = []
        cursor = self.txn.cursor(self._s.dlast)
        prefix = U32.pack(num)
        if cursor.set_range(prefix):
            for key, value in cursor:
                if key[:4] != prefix:
                    break
                if VERSION_TIME.unpack(value[:16])[1] >= start_time:
                    out.append((bytes(key[4:]).decode(), bytes(value[16:])))
        return out

    # -- rewinds ------------------------------------------------------------------------------------

    def delete_from(self, num: int, start_time: int) -> int:
        """Delete factor events and heads visible at or after ``start_time`` (overlay versions stay: they
        are a change log clients hold cursors into; a rewind appends new versions instead)."""
        deleted = 0
        ranges = [(self._s.fev, U32.pack(num), NUM_TIME.pack(num, start_time))]
        ranges += [
            (self._s.heads, NUM_RANK.pack(num, rank), NUM_RANK_TIME.pack(num, rank, start_time))
            for rank in range(MAX_RANK)
        ]
        for db, prefix, first in ranges:
            cursor = self.txn.cursor(db)
            if not cursor.set_range(first):
                continue
            while cursor.key()[: len(prefix)] == prefix:
                deleted += 1
                if not cursor.delete():
                    break
        return deleted

    def delete_series_outputs(self, num: int) -> None:
        """Everything of a series but its overlay versions and counter (a full rebuild of it)."""
        self.delete_from(num, 0)
        cursor = self.txn.cursor(self._s.snap)
        prefix = U32.pack(num)
        if cursor.set_range(prefix):
            while cursor.key()[:4] == prefix:
                if not cursor.delete():
                    break

    # -- state snapshots ----------------------------------------------------------------------------

    def put_snapshot(self, num: int, last_time: int, state: bytes) -> None:
        self.txn.put(NUM_TIME.pack(num, last_time), state, db=self._s.snap)
        keys = [bytes(k) for k in self._snapshot_keys(num)]
        for key in keys[:-SNAPSHOTS_KEPT]:
            self.txn.delete(key, db=self._s.snap)

    def drop_snapshots_from(self, num: int, start_time: int) -> None:
        for key in [bytes(k) for k in self._snapshot_keys(num)]:
            if NUM_TIME.unpack(key)[1] >= start_time:
                self.txn.delete(key, db=self._s.snap)

    def snapshot_before(self, num: int, before_time: int) -> tuple[int, bytes] | None:
        """The newest snapshot whose last applied candle is older than ``before_time``."""
        best: tuple[int, bytes] | None = None
        for key in self._snapshot_keys(num):
            t = NUM_TIME.unpack(key)[1]
            if t < before_time:
                best = (t, bytes(self.txn.get(key, db=self._s.snap)))
        return best

    def _snapshot_keys(self, num: int) -> Iterator[bytes]:
        cursor = self.txn.cursor(self._s.snap)
        prefix = U32.pack(num)
        if cursor.set_range(prefix):
            for key in cursor.iternext(keys=True, values=False):
                if key[:4] != prefix:
                    break
                yield key


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

    # -- reads (any thread; each its own read transaction) -------------------------------------------

    def meta_value(self, key: str) -> bytes | None:
        with self._gate.read(self._env) as txn:
            raw = txn.get(key.encode(), db=self.meta)
            return None if raw is None else bytes(raw)

    def checkpoint(self, which: str = "factor") -> int:
        raw = self.meta_value(f"checkpoint:{which}")
        return U64.unpack(raw)[0] if raw else 0

    def epoch(self) -> int:
        raw = self.meta_value("epoch")
        return U64.unpack(raw)[0] if raw else 0

    def series_record(self, sid: str) -> dict[str, Any] | None:
        with self._gate.read(self._env) as txn:
            raw = txn.get(sid.encode(), db=self.series_db)
            return None if raw is None else _series_record(raw)

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


def _series_record(raw: bytes) -> dict[str, Any]:
    num, applied_seq, last_time, max_version = SERIES_REC.unpack(raw)
    return {
        "num": num,
        "applied_seq": applied_seq,
        "last_time": None if last_time < 0 else last_time,
        "max_version": max_version,
    }


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
        else:
            self._txn.abort()
