"""The LMDB event log: klined's source of truth. Opening, reads and the write transaction live here; what
a batch writes inside it is ``daemon.storage.log_append``.

Layout (one environment, named sub-databases):
- ``events``:  u64 first seq -> a run of events (global, gap-free per-event seq; appended with MDB_APPEND)
- ``candles``: (u32 series, u64 candle_time) -> candle body (the per-series index)
- ``heads``:   u32 series -> (first_time, head_time, count)
- ``series``:  series id text -> u32 number; ``series_names`` the reverse

A batch is one write transaction: events, index and heads commit together or not at all. Calls block;
the async side runs them on one writer thread (py-lmdb write txns must stay on the thread that began them).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import lmdb
import structlog

from actors.ports import StoreError
from daemon.storage.lmdb_gate import ResizeGate
from daemon.storage.log_append import BatchAppend, explain_pack_error
from protocol.candle import Candle
from protocol.logrecords import (
    CANDLE_KEY,
    HEAD,
    SEQ,
    SERIES_NUM,
    AppendResult,
    LogEvent,
    SeriesHead,
    append_events,
    decode_run,
    run_count,
    unpack_bodies,
    unpack_body,
)
from protocol.series import SeriesId

log = structlog.get_logger(__name__)

DEFAULT_MAP_SIZE: Final = 1 << 30
_MAX_KEY_TIME: Final = (1 << 64) - 1


class EventLog:
    """Append closed candles and read them back. Not async: see ``actors.store`` for the trio side."""

    def __init__(self, path: str | os.PathLike[str], *, map_size: int = DEFAULT_MAP_SIZE, sync: bool = True):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._gate = ResizeGate()
        self._env: Any = lmdb.open(
            str(self.path), map_size=map_size, max_dbs=8, sync=sync, metasync=sync, readahead=False
        )
        self._events = self._env.open_db(b"events")
        self._candles = self._env.open_db(b"candles")
        self._heads = self._env.open_db(b"heads")
        self._series = self._env.open_db(b"series")
        self._series_names_db = self._env.open_db(b"series_names")
        # In-memory mirrors of the series tables; only updated after a commit succeeds.
        self._series_nums: dict[str, int] = {}
        self._series_names: dict[int, str] = {}
        with self._gate.read(self._env) as txn:
            for key, value in txn.cursor(self._series):
                num = SERIES_NUM.unpack(value)[0]
                self._series_nums[bytes(key).decode()] = num
                self._series_names[num] = bytes(key).decode()

    # -- life cycle -------------------------------------------------------------------------------

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def map_size(self) -> int:
        return int(self._env.info()["map_size"])

    # -- writes -----------------------------------------------------------------------------------

    def append(self, batch: Mapping[SeriesId, Sequence[Candle]]) -> AppendResult:
        """Append closed candles of many series in one transaction.

        An identical candle is a no-op, a different one at a stored time is a correction, and a candle
        older than the head is accepted (backfill). An invalid candle rejects the whole batch with
        :class:`CandleError` naming it, and nothing of the batch is written.
        """
        while True:
            pending = self.begin_append(batch)
            try:
                return pending.commit()
            except lmdb.MapFullError:
                self._grow()

    def begin_append(self, batch: Mapping[SeriesId, Sequence[Candle]]) -> PendingAppend:
        """The append of ``batch`` computed in an open write transaction, not yet committed: a cluster's
        writer commits it only once the stream has taken its events, and aborts it otherwise (nothing of it
        is written then). The caller must commit or abort before any other write of this log."""
        while True:
            txn = self._env.begin(write=True)
            try:
                return self._prepare(txn, batch)
            except struct.error as e:  # nothing of the batch is written
                txn.abort()
                explain_pack_error(batch, e)
            except lmdb.MapFullError:
                txn.abort()  # with no txn open the map may grow
                self._grow()
            except lmdb.MapResizedError:
                txn.abort()
                self._gate.resize(self._env, 0)  # another process grew it: adopt its size
            except lmdb.Error as e:
                txn.abort()
                raise StoreError(f"event log write failed: {e}") from e
            except BaseException:
                txn.abort()
                raise

    def apply(self, events: Sequence[LogEvent]) -> list[AppendResult]:
        """Write exactly ``events`` at their seqs (a replica applying the stream). They must follow the last
        seq; each run of them is appended, and the append must produce the very same events (kind, series,
        candle, replaced candle) or nothing of that run is written (:class:`DivergedError`)."""
        results = []
        for run in _append_runs(events):
            pending = self.begin_append(_batch_of(run))
            produced = append_events(pending.result)
            if produced != list(run):
                pending.abort()
                raise DivergedError(run[0].seq, _first_difference(run, produced))
            results.append(pending.commit())
        return results

    def _prepare(self, txn: Any, batch: Mapping[SeriesId, Sequence[Candle]]) -> PendingAppend:
        new_series: dict[str, int] = {}
        writes = BatchAppend(
            txn,
            candles_db=self._candles,
            heads_db=self._heads,
            events_db=self._events,
            first_seq=self._last_seq_in(txn) + 1,
        )
        for series, candles in batch.items():
            if candles:
                sid = str(series)
                writes.add_series(series, sid, self._series_num(txn, sid, new_series), candles)
        writes.write_events()
        return PendingAppend(self, txn, writes.result(), new_series)

    def _adopt(self, new_series: Mapping[str, int]) -> None:
        """The mirrors learn the new series only once their transaction has committed."""
        for sid, num in new_series.items():
            self._series_nums[sid] = num
            self._series_names[num] = sid

    def _grow(self) -> None:
        new_size = self.map_size * 2
        log.warning("eventlog_map_grow", path=str(self.path), map_size=new_size)
        self._gate.resize(self._env, new_size)

    def _series_num(self, txn: Any, sid: str, new_series: dict[str, int]) -> int:
        """The series' number, created in ``txn`` (and noted in ``new_series``) when it is new."""
        num = self._series_nums.get(sid) or new_series.get(sid)
        if num is None:
            num = self._create_series(txn, sid, len(self._series_nums) + len(new_series) + 1)
            new_series[sid] = num
        return num

    def _last_seq_in(self, txn: Any) -> int:
        """Seq of the newest event: the last run's first seq plus its length, minus one."""
        cursor = txn.cursor(self._events)
        if not cursor.last():
            return 0
        return int(SEQ.unpack(cursor.key())[0]) + run_count(cursor.value()) - 1

    def _create_series(self, txn: Any, sid: str, num: int) -> int:
        txn.put(sid.encode(), SERIES_NUM.pack(num), db=self._series)
        txn.put(SERIES_NUM.pack(num), sid.encode(), db=self._series_names_db)
        return num

    # -- reads ------------------------------------------------------------------------------------

    def head(self, series: SeriesId | str) -> SeriesHead | None:
        num = self._series_nums.get(str(series))
        if num is None:
            return None
        with self._gate.read(self._env) as txn:
            raw = txn.get(SERIES_NUM.pack(num), db=self._heads)
        return SeriesHead._make(HEAD.unpack(raw)) if raw else None

    def head_time(self, series: SeriesId | str) -> int | None:
        head = self.head(series)
        return head.head_time if head else None

    def heads(self) -> dict[str, SeriesHead]:
        """Every stored series' head: what start-up restores, without touching the exchange."""
        out: dict[str, SeriesHead] = {}
        with self._gate.read(self._env) as txn:
            for key, value in txn.cursor(self._heads):
                num = SERIES_NUM.unpack(key)[0]
                out[self._series_names[num]] = SeriesHead._make(HEAD.unpack(value))
        return out

    def get(self, series: SeriesId | str, candle_time: int) -> Candle | None:
        num = self._series_nums.get(str(series))
        if num is None or candle_time < 0:
            return None
        with self._gate.read(self._env) as txn:
            raw = txn.get(CANDLE_KEY.pack(num, candle_time), db=self._candles)
        return unpack_body(raw) if raw else None

    def tail(self, series: SeriesId | str, n: int) -> list[Candle]:
        """The latest ``n`` candles, ascending."""
        num = self._series_nums.get(str(series))
        if num is None or n <= 0:
            return []
        bodies: list[bytes] = []
        lowest = CANDLE_KEY.pack(num, 0)
        with self._gate.read(self._env) as txn:
            cursor = txn.cursor(self._candles)
            # Stand on the series' last key: just before the next series' first, or the very last.
            if cursor.set_range(SERIES_NUM.pack(num + 1)):
                if not cursor.prev():
                    return []
            elif not cursor.last():
                return []
            append, prev, key, value = bodies.append, cursor.prev, cursor.key, cursor.value
            while key() >= lowest:
                append(value())
                if len(bodies) >= n or not prev():
                    break
        bodies.reverse()
        return unpack_bodies(b"".join(bodies))

    def at_or_before(self, series: SeriesId | str, candle_time: int) -> Candle | None:
        """The latest stored candle with ``candle_time <=`` the given time (a read's aligned candle)."""
        num = self._series_nums.get(str(series))
        if num is None or candle_time < 0:
            return None
        with self._gate.read(self._env) as txn:
            cursor = txn.cursor(self._candles)
            if cursor.set_range(CANDLE_KEY.pack(num, min(candle_time, _MAX_KEY_TIME - 1) + 1)):
                if not cursor.prev():
                    return None
            elif not cursor.last():
                return None
            if SERIES_NUM.unpack(cursor.key()[:4])[0] != num:
                return None
            return unpack_body(cursor.value())

    def range(
        self,
        series: SeriesId | str,
        since: int | None = None,
        until: int | None = None,
        limit: int | None = None,
    ) -> list[Candle]:
        """Candles with ``since < candle_time <= until``, ascending, at most ``limit`` (bounds optional)."""
        num = self._series_nums.get(str(series))
        if num is None or (limit is not None and limit <= 0):
            return []
        start = 0 if since is None else since + 1
        if start < 0:
            start = 0
        end = _MAX_KEY_TIME if until is None else until
        if end < start:
            return []
        end_key = CANDLE_KEY.pack(num, end)
        bodies: list[bytes] = []
        with self._gate.read(self._env) as txn:
            cursor = txn.cursor(self._candles)
            if not cursor.set_range(CANDLE_KEY.pack(num, start)):
                return []
            for key, value in cursor:
                if key > end_key or (limit is not None and len(bodies) >= limit):
                    break
                bodies.append(value)
        return unpack_bodies(b"".join(bodies))

    def count_between(self, series: SeriesId | str, start: int, end: int) -> int:
        """How many candles are stored with ``start <= candle_time <= end``."""
        num = self._series_nums.get(str(series))
        if num is None or end < start:
            return 0
        end_key = CANDLE_KEY.pack(num, end)
        count = 0
        with self._gate.read(self._env) as txn:
            cursor = txn.cursor(self._candles)
            if not cursor.set_range(CANDLE_KEY.pack(num, max(start, 0))):
                return 0
            for key in cursor.iternext(keys=True, values=False):
                if key > end_key:
                    break
                count += 1
        return count

    def last_seq(self) -> int:
        with self._gate.read(self._env) as txn:
            return self._last_seq_in(txn)

    def events_since(self, after_seq: int, limit: int | None = None) -> list[LogEvent]:
        """Events with ``seq > after_seq`` in order, at most ``limit``: what projections replay."""
        want = max(after_seq + 1, 1)
        out: list[LogEvent] = []
        with self._gate.read(self._env) as txn:
            cursor = txn.cursor(self._events)
            # Stand on the run that holds ``want``: the last run whose first seq is <= want.
            found = cursor.set_range(SEQ.pack(want))
            if found and SEQ.unpack(cursor.key())[0] > want:
                if not cursor.prev():  # the run before may hold ``want``; none: start at the first
                    cursor.first()
            elif not found and not cursor.last():
                return out  # an empty log
            for key, value in cursor:
                events = decode_run(SEQ.unpack(key)[0], value, self._series_names)
                out.extend(e for e in events if e.seq >= want)
                if limit is not None and len(out) >= limit:
                    del out[limit:]
                    break
        return out

    def iter_events(self, after_seq: int = 0, chunk: int = 10_000) -> Iterable[LogEvent]:
        """Every event after ``after_seq``, read in chunks so a replay never holds a long read txn."""
        while batch := self.events_since(after_seq, chunk):
            yield from batch
            after_seq = batch[-1].seq

    def series_ids(self) -> list[str]:
        return sorted(self._series_nums)

    def copy_into(self, fd: int) -> int:
        """A consistent hot copy (mdb_copy with compaction) written at ``fd``'s offset; its last seq."""
        with self._gate.read(self._env) as txn:
            self._env.copyfd(fd, compact=True, txn=txn)
            return self._last_seq_in(txn)

    def statistics(self) -> dict[str, int]:
        info, stat = self._env.info(), self._env.stat()
        return {
            "map_size": int(info["map_size"]),
            "last_pgno": int(info["last_pgno"]),
            "page_size": int(stat["psize"]),
            "series": len(self._series_nums),
            "last_seq": self.last_seq(),
        }


class DivergedError(StoreError):
    """Events to apply that this log, as it stands, would write differently: it is not the stream's."""

    def __init__(self, seq: int, detail: str) -> None:
        super().__init__(f"the log diverges from the events to apply at seq {seq}: {detail}")
        self.seq = seq


class PendingAppend:
    """One append, computed in its open write transaction (see :meth:`EventLog.begin_append`)."""

    def __init__(self, log: EventLog, txn: Any, result: AppendResult, new_series: dict[str, int]) -> None:
        self._log, self._txn, self.result, self._new_series = log, txn, result, new_series

    def commit(self) -> AppendResult:
        try:
            self._txn.commit()
        except lmdb.MapFullError:
            raise
        except lmdb.Error as e:
            raise StoreError(f"event log commit failed: {e}") from e
        self._log._adopt(self._new_series)
        return self.result

    def abort(self) -> None:
        self._txn.abort()


def _append_runs(events: Sequence[LogEvent]) -> list[Sequence[LogEvent]]:
    """``events`` cut where one append could not have written them in that order: an append writes each
    series' candles together, each time once."""
    runs: list[Sequence[LogEvent]] = []
    start = 0
    seen: set[str] = set()
    times: set[tuple[str, int]] = set()
    for i, e in enumerate(events):
        back_to = e.series_id in seen and e.series_id != events[i - 1].series_id
        if i > start and (back_to or (e.series_id, e.candle[0]) in times):
            runs.append(events[start:i])
            start, seen, times = i, set(), set()
        seen.add(e.series_id)
        times.add((e.series_id, e.candle[0]))
    if start < len(events):
        runs.append(events[start:])
    return runs


def _batch_of(run: Sequence[LogEvent]) -> dict[SeriesId, list[Candle]]:
    batch: dict[SeriesId, list[Candle]] = {}
    for e in run:
        batch.setdefault(SeriesId.parse(e.series_id), []).append(e.candle)
    return batch


def _first_difference(expected: Sequence[LogEvent], produced: Sequence[LogEvent]) -> str:
    for want, got in zip(expected, produced, strict=False):
        if want != got:
            return f"the stream has {want}, this log would write {got}"
    return f"the stream has {len(expected)} events, this log would write {len(produced)}"
