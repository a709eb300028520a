"""The event log's write path: one batch of closed candles turned into index rows, event runs and heads.

Everything here runs inside the write transaction :meth:`daemon.storage.eventlog.EventLog.append` opens, and
is hot (a bulk import appends millions of candles, the minute close a burst of one candle for each series):
per-candle work stays in C where it can (``map``/``starmap`` packing, ``putmulti``), and the split into steps
costs a few calls per series, nothing per candle.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from itertools import repeat, starmap
from typing import Any, Final, NoReturn

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
    encode_run,
    unpack_body,
)
from protocol.series import SeriesId

_CLOSED: Final = EventKind.CANDLE_CLOSED
_CORRECTED: Final = EventKind.CANDLE_CORRECTED


class RunWriter:
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


class BatchAppend:
    """One batch's writes in one open write transaction, and the tallies its :class:`AppendResult` reports.

    ``txn`` and the databases are py-lmdb objects (untyped); raising anywhere aborts the caller's transaction,
    so nothing of the batch is written.
    """

    def __init__(self, txn: Any, *, candles_db: Any, heads_db: Any, events_db: Any, first_seq: int) -> None:
        self._txn = txn
        self._heads_db = heads_db
        self._events_db = events_db
        self._index = txn.cursor(candles_db)
        self._runs = RunWriter(first_seq)
        self._records = 0
        self.changed: dict[SeriesId, list[Candle]] = {}
        self.corrections: list[LogEvent] = []
        self.heads: dict[str, SeriesHead] = {}
        self.appended = self.unchanged = 0

    def add_series(self, series: SeriesId, sid: str, num: int, candles: Sequence[Candle]) -> None:
        """Write one series' candles (not empty) and its new head."""
        head_key = SERIES_NUM.pack(num)
        raw_head = self._txn.get(head_key, db=self._heads_db)
        head = SeriesHead._make(HEAD.unpack(raw_head)) if raw_head else None
        if _ascending(candles) and (head is None or candles[0].candle_time > head.head_time):
            head = self._append_in_order(series, num, candles, head)
        else:
            head = self._merge(series, sid, num, candles, head)
        self._txn.put(head_key, HEAD.pack(*head), db=self._heads_db)
        self.heads[sid] = head

    def _append_in_order(
        self, series: SeriesId, num: int, candles: Sequence[Candle], head: SeriesHead | None
    ) -> SeriesHead:
        """All new and in order: no lookups, and packing runs in C via map/starmap."""
        bodies = list(starmap(CANDLE_BODY.pack, candles))
        check_packed(series, candles, b"".join(bodies))
        times = [c[0] for c in candles]
        keys = list(map(CANDLE_KEY.pack, repeat(num), times))
        index = self._index
        # MDB_APPEND skips the tree search when the run lands after every stored key.
        at_end = not index.last() or index.key() < keys[0]
        _consumed, added = index.putmulti(zip(keys, bodies, strict=True), append=at_end)
        if added != len(keys):
            raise RuntimeError(f"index append wrote {added} of {len(keys)} rows")
        self._runs.add_many(_CLOSED, num, bodies)
        self.appended += len(bodies)
        self.changed[series] = list(candles)
        if head is None:
            return SeriesHead(times[0], times[-1], len(bodies))
        return SeriesHead(head.first_time, times[-1], len(bodies) + head.candle_count)

    def _merge(
        self, series: SeriesId, sid: str, num: int, candles: Sequence[Candle], head: SeriesHead | None
    ) -> SeriesHead:
        """Out of order or behind the head: look each candle up, so a stored one is a no-op or a correction."""
        check_candles(series, candles)
        index, runs, corrections = self._index, self._runs, self.corrections
        written: list[Candle] = []
        appended = unchanged = 0
        first, last, count = head or (candles[0].candle_time, candles[0].candle_time, 0)
        for c in candles:
            key = CANDLE_KEY.pack(num, c[0])
            body = CANDLE_BODY.pack(*c)
            stored = index.get(key)
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
            index.put(key, body)
            written.append(c)
        if written:
            self.changed[series] = written
        self.appended += appended
        self.unchanged += unchanged
        return SeriesHead(first, last, count)

    def write_events(self) -> None:
        """Append the batch's event runs after the newest one (MDB_APPEND: refused keys mean a broken seq)."""
        records = self._runs.finish()
        self._records = len(records)
        if records:
            _consumed, added = self._txn.cursor(self._events_db).putmulti(records, append=True)
            if added != len(records):
                raise RuntimeError(f"event append wrote {added} of {len(records)} runs")

    def result(self) -> AppendResult:
        runs, wrote = self._runs, self._records > 0
        return AppendResult(
            first_seq=runs.first_seq if wrote else None,
            last_seq=runs.seq - 1 if wrote else None,
            appended=self.appended,
            corrected=len(self.corrections),
            unchanged=self.unchanged,
            changed=self.changed,
            corrections=self.corrections,
            heads=self.heads,
        )


def _ascending(candles: Sequence[Candle]) -> bool:
    prev = -1
    for c in candles:
        if c[0] <= prev:
            return False
        prev = c[0]
    return True


def explain_pack_error(batch: Mapping[SeriesId, Sequence[Candle]], error: struct.error) -> NoReturn:
    """A pack failed (a float or negative time, a non-number): name the candle and the rule."""
    for series, candles in batch.items():
        for c in candles:
            try:
                CANDLE_BODY.pack(*c)
            except struct.error:
                raise_invalid(series, c)
    raise CandleError(f"a candle could not be encoded: {error}")
