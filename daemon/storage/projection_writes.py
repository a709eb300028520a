"""The projection store's write transaction: factor output, overlay versions, rewinds and snapshots.

One :class:`ProjectionTxn` is one LMDB write transaction, opened by :meth:`ProjectionStore.write`; the
output of a batch and the checkpoints it reaches commit together.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from daemon.storage.projection_keys import (
    MAX_RANK,
    NUM_RANK,
    NUM_RANK_TIME,
    NUM_TIME,
    NUM_TIME_RANK,
    NUM_TIME_VERSION,
    U32,
    U64,
    VERSION_TIME,
    decode_series_record,
    encode_series_record,
    encode_version,
)

if TYPE_CHECKING:
    from daemon.storage.projection_store import ProjectionStore

SNAPSHOTS_KEPT: Final = 2


class ProjectionTxn:
    """One write transaction of projection output; commit on leaving the ``with`` of
    :meth:`ProjectionStore.write`."""

    def __init__(self, store: ProjectionStore, txn: Any) -> None:
        self._s = store
        self.txn = txn
        self._fev = txn.cursor(store.fev)
        self._version: int | None = None  # the global overlay version counter, written back at commit
        self._touches: dict[tuple[int, str], tuple[int, int]] = {}  # moving instructions, written at commit
        self.checkpoint: int | None = None  # set by set_checkpoints

    # -- series and meta --------------------------------------------------------------------------

    def series(self, sid: str) -> dict[str, Any]:
        """The series record, created (with a new number) when missing."""
        raw = self.txn.get(sid.encode(), db=self._s.series_db)
        if raw is not None:
            return decode_series_record(raw)
        num = self._s.next_num(self.txn)
        record: dict[str, Any] = {"num": num, "applied_seq": 0, "last_time": None, "max_version": 0}
        self.put_series(sid, record)
        return record

    def put_series(self, sid: str, record: dict[str, Any]) -> None:
        self.txn.put(sid.encode(), encode_series_record(record), db=self._s.series_db)

    def set_meta(self, key: str, value: bytes) -> None:
        self.txn.put(key.encode(), value, db=self._s.meta)

    def set_checkpoints(self, seq: int) -> None:
        self.checkpoint = seq  # the store keeps it once the transaction commits
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
        """Store a new version of an instruction, and point its latest at it."""
        version = self.next_version()
        self._touches.pop((num, instruction_id), None)
        iid = instruction_id.encode()
        record = encode_version(version, iid, kind, visible_time, definition)
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
