"""The LMDB event log: klined's source of truth, and the one module that touches LMDB.

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
from itertools import repeat, starmap
from pathlib import Path
from typing import Any, Final, NoReturn

import lmdb
import structlog

from actors.ports import StoreError
from daemon.storage.lmdb_gate import ResizeGate
from daemon.storage.validate import check_candles, check_packed, raise_invalid
from protocol.candle import Candle
from protocol.errors import CandleError
from protocol.logrecords import (
    CANDLE_BODY,
    CANDLE_KEY,
    HEAD,
    RUN_MAX,
    SEQ,
    SERIES_NUM,
    AppendResult,
    EventKind,
    LogEvent,
    SeriesHead,
    decode_run,
    encode_run,
    run_count,
    unpack_bodies,
    unpack_body,
)
from protocol.series import SeriesId

log = structlog.get_logger(__name__)

DEFAULT_MAP_SIZE: Final = 1 << 30
_MAX_KEY_TIME: Final = (1 << 64) - 1
_CLOSED: Final = EventKind.CANDLE_CLOSED
_CORRECTED: Final = EventKind.CANDLE_CORRECTED


class _RunWriter:
    """Groups a batch's events into run records, assigning each event its seq."""

    def __init__(self, first_seq: int) -> None:
        self.first_seq = self.seq = first_seq
        self._records: list[tuple[bytes, bytes]] = []
        self._kind: EventKind | None = None
        self._num = 0
        self._bodies: list[bytes] = []
        self._start = first_seq

    def add(self, kind: EventKind, num: int, body: bytes) -> None:
        if kind is not self._kind or num != self._num or len(self._bodies) >= RUN_MAX:
            self._flush()
            self._kind, self._num, self._start = kind, num, self.seq
        self._bodies.append(body)
        self.seq += 1

    def add_many(self, kind: EventKind, num: int, bodies: list[bytes]) -> None:
        self._flush()
        for i in range(0, len(bodies), RUN_MAX):
            chunk = bodies[i : i + RUN_MAX]
            self._records.append((SEQ.pack(self.seq), encode_run(kind, num, chunk)))
            self.seq += len(chunk)

    def _flush(self) -> None:
        if self._bodies and self._kind is not None:
            self._records.append((SEQ.pack(self._start), encode_run(self._kind, self._num, self._bodies)))
        self._bodies, self._kind = [], None

    def finish(self) -> list[tuple[bytes, bytes]]:
        self._flush()
        return self._records


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
        """Append closed candles of many series in one transaction (SPEC §2).

        An identical candle is a no-op, a different one at a stored time is a correction, and a candle
        older than the head is accepted (backfill). An invalid candle rejects the whole batch with
        :class:`CandleError` naming it, and nothing of the batch is written.
        """
        while True:
            try:
                return self._append_once(batch)
            except struct.error as e:  # the txn was aborted: nothing of the batch is written
                _explain_pack_error(batch, e)
            except lmdb.MapFullError:
                # The txn is aborted (context manager); with no txn open the map may grow.
                new_size = self.map_size * 2
                log.warning("eventlog_map_grow", path=str(self.path), map_size=new_size)
                self._gate.resize(self._env, new_size)
            except lmdb.MapResizedError:
                self._gate.resize(self._env, 0)  # another process grew it: adopt its size
            except lmdb.Error as e:
                raise StoreError(f"event log write failed: {e}") from e

    def _append_once(self, batch: Mapping[SeriesId, Sequence[Candle]]) -> AppendResult:
        new_series: dict[str, int] = {}
        changed: dict[SeriesId, list[Candle]] = {}
        corrections: list[LogEvent] = []
        heads: dict[str, SeriesHead] = {}
        appended = unchanged = 0
        with self._env.begin(write=True) as txn:
            runs = _RunWriter(self._last_seq_in(txn) + 1)
            ix_cursor = txn.cursor(self._candles)
            for series, candles in batch.items():
                if not candles:
                    continue
                sid = str(series)
                num = self._series_nums.get(sid) or new_series.get(sid)
                if num is None:
                    num = self._create_series(txn, sid, len(self._series_nums) + len(new_series) + 1)
                    new_series[sid] = num
                raw_head = txn.get(SERIES_NUM.pack(num), db=self._heads)
                head = SeriesHead._make(HEAD.unpack(raw_head)) if raw_head else None
                if _ascending(candles) and (head is None or candles[0].candle_time > head.head_time):
                    # Fast path: all new and in order, so no lookups; packing runs in C via map/starmap.
                    bodies = list(starmap(CANDLE_BODY.pack, candles))
                    check_packed(series, candles, b"".join(bodies))  # raising aborts the txn: nothing written
                    times = [c[0] for c in candles]
                    keys = list(map(CANDLE_KEY.pack, repeat(num), times))
                    # MDB_APPEND skips the tree search when the run lands after every stored key.
                    at_end = not ix_cursor.last() or ix_cursor.key() < keys[0]
                    _consumed, added = ix_cursor.putmulti(zip(keys, bodies, strict=True), append=at_end)
                    if added != len(keys):
                        raise RuntimeError(f"index append wrote {added} of {len(keys)} rows")
                    runs.add_many(_CLOSED, num, bodies)
                    appended += len(bodies)
                    changed[series] = list(candles)
                    first = times[0] if head is None else head.first_time
                    head = SeriesHead(first, times[-1], len(bodies) + (head.candle_count if head else 0))
                else:
                    check_candles(series, candles)
                    written: list[Candle] = []
                    first, last, count = head or (candles[0].candle_time, candles[0].candle_time, 0)
                    for c in candles:
                        key = CANDLE_KEY.pack(num, c[0])
                        body = CANDLE_BODY.pack(*c)
                        stored = ix_cursor.get(key)
                        if stored is None:
                            runs.add(_CLOSED, num, body)
                            appended += 1
                            count += 1
                            first, last = min(first, c[0]), max(last, c[0])
                        elif stored == body:
                            unchanged += 1
                            continue
                        else:
                            corrections.append(LogEvent(runs.seq, _CORRECTED, sid, c, unpack_body(stored)))
                            runs.add(_CORRECTED, num, body + stored)
                        ix_cursor.put(key, body)
                        written.append(c)
                    if written:
                        changed[series] = written
                    head = SeriesHead(first, last, count)
                txn.put(SERIES_NUM.pack(num), HEAD.pack(*head), db=self._heads)
                heads[sid] = head
            records = runs.finish()
            if records:
                _consumed, added = txn.cursor(self._events).putmulti(records, append=True)
                if added != len(records):  # MDB_APPEND refused a key: the sequence is broken
                    raise RuntimeError(f"event append wrote {added} of {len(records)} runs")
        for sid, num in new_series.items():
            self._series_nums[sid] = num
            self._series_names[num] = sid
        return AppendResult(
            first_seq=runs.first_seq if records else None,
            last_seq=runs.seq - 1 if records else None,
            appended=appended,
            corrected=len(corrections),
            unchanged=unchanged,
            changed=changed,
            corrections=corrections,
            heads=heads,
        )

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


def _ascending(candles: Sequence[Candle]) -> bool:
    prev = -1
    for c in candles:
        if c[0] <= prev:
            return False
        prev = c[0]
    return True


def _explain_pack_error(batch: Mapping[SeriesId, Sequence[Candle]], error: struct.error) -> NoReturn:
    """A pack failed (a float or negative time, a non-number): name the candle and the rule."""
    for series, candles in batch.items():
        for c in candles:
            try:
                CANDLE_BODY.pack(*c)
            except struct.error:
                raise_invalid(series, c)
    raise CandleError(f"a candle could not be encoded: {error}")
