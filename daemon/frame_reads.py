"""The trade_canvas front end's world reads (docs/http.md): frames and delta polls composed of the factor slices
and draw deltas of :mod:`daemon.factor_reads`, and the factor health view. Blocking reads: callers run them
in a thread.

A live frame is drawn at the newest candle that is both stored and projected, so it never waits for (nor
refuses over) the candle the projector is still working on; a frame at a time is drawn at the newest stored
candle at or before it, and answers ``ledger_out_of_sync`` if the projections have not reached it.
"""

from __future__ import annotations

from typing import Any

from daemon import factor_reads
from daemon.factor_reads import SCHEMA_VERSION, NoDataError, OutOfSyncError, ProjectionReader
from protocol.health import factor_health_view
from protocol.series import SeriesId

# -- pure composition ------------------------------------------------------------------------------------


def compose_frame(sid: str, at_time: int, aligned: int, slices: dict[str, Any], draw: dict[str, Any]) -> dict[str, Any]:
    """A frame of slices and a draw state read at ``aligned``; they must name the same candle."""
    candle_id = f"{sid}:{aligned}"
    if slices["candle_id"] != candle_id or draw["to_candle_id"] != candle_id:
        raise OutOfSyncError("factor")  # a projection dropped between the two reads (a rebuild started)
    return {
        "schema_version": SCHEMA_VERSION,
        "series_id": sid,
        "time": {"at_time": at_time, "aligned_time": aligned, "candle_id": candle_id},
        "factor_slices": slices,
        "draw_state": draw,
    }


def compose_poll(sid: str, after_id: int, draw: dict[str, Any] | None, slices: dict[str, Any] | None) -> dict[str, Any]:
    """One record when the draw cursor (``draw`` read from ``after_id``) moved past ``after_id``, else none
    and the cursor stays at ``after_id``."""
    if draw is None or slices is None or draw["next_cursor"]["version_id"] <= after_id:
        return {"schema_version": SCHEMA_VERSION, "series_id": sid, "records": [], "next_cursor": {"id": after_id}}
    next_id = int(draw["next_cursor"]["version_id"])
    record = {
        "id": next_id,
        "series_id": sid,
        "to_candle_id": draw["to_candle_id"],
        "to_candle_time": draw["to_candle_time"],
        "draw_delta": draw,
        "factor_slices": slices,
    }
    return {"schema_version": SCHEMA_VERSION, "series_id": sid, "records": [record], "next_cursor": {"id": next_id}}


# -- reads -----------------------------------------------------------------------------------------------


def live_time(reader: ProjectionReader, series: SeriesId) -> tuple[int, int]:
    """(the stored head, the newest candle both stored and projected)."""
    head = reader.log.head_time(series)
    if head is None:
        raise NoDataError(f"no candle stored for {series}")
    record = reader.pstore.series_record(str(series))
    projected = None if record is None else record.get("last_time")
    if projected is None:
        raise OutOfSyncError("factor")  # stored, nothing projected yet (a rebuild or a brand-new series)
    candle = reader.log.at_or_before(series, min(head, projected))
    if candle is None:
        raise OutOfSyncError("factor")
    return head, candle.candle_time


def _frame(reader: ProjectionReader, series: SeriesId, at_time: int, aligned: int, window: int) -> dict[str, Any]:
    slices = factor_reads.slices(reader, series, aligned, window)
    draw = factor_reads.draw_delta(reader, series, 0, window, aligned)
    return compose_frame(str(series), at_time, aligned, slices, draw)


def live_frame(reader: ProjectionReader, series: SeriesId, window: int) -> dict[str, Any]:
    head, aligned = live_time(reader, series)
    return _frame(reader, series, head, aligned, window)


def frame_at(reader: ProjectionReader, series: SeriesId, at_time: int, window: int) -> dict[str, Any]:
    candle = reader.log.at_or_before(series, at_time)
    if candle is None:
        raise NoDataError(f"no candle stored for {series} at or before {at_time}")
    return _frame(reader, series, at_time, candle.candle_time, window)


def poll(reader: ProjectionReader, series: SeriesId, after_id: int, window: int) -> dict[str, Any]:
    """A poller's next step, at the live frame's candle; nothing stored is nothing new, not an error."""
    try:
        _, aligned = live_time(reader, series)
    except NoDataError:
        return compose_poll(str(series), after_id, None, None)
    draw = factor_reads.draw_delta(reader, series, after_id, window, aligned)
    moved = draw["next_cursor"]["version_id"] > after_id
    slices = factor_reads.slices(reader, series, aligned, window) if moved else None
    return compose_poll(str(series), after_id, draw, slices)


def factor_health(reader: ProjectionReader, series: SeriesId, *, rebuilding: bool) -> dict[str, Any]:
    """How far the projections trail the stored head (factors and overlays commit in one transaction, so
    their heads are the same)."""
    sid = str(series)
    head = reader.log.head_time(series)
    if head is None:
        raise NoDataError(f"no candle stored for {series}")
    record = reader.pstore.series_record(sid)
    projected = None if record is None else record.get("last_time")
    behind = projected is not None and factor_reads.pending_through(reader, sid, projected)
    return factor_health_view(
        series, head, projected, failed=sid in reader.failed, rebuilding=rebuilding, correction_pending=behind
    )
