"""The health rules of one series (green / yellow / red with a reason): its candles against the exchange
clock, its projections against its candles; and the one lag computation.

Pure: the exchange clock's time and what is stored come in as arguments. The health view, the control
socket's series table and ``/metrics`` all compute a series' lag here.
"""

from __future__ import annotations

from typing import Any

from protocol.logrecords import SeriesHead
from protocol.series import SeriesId


def lag_seconds(series: SeriesId, now_time: int, head_time: int | None) -> int | None:
    """How far the head trails the latest period the exchange clock has closed (0 when it is ahead, None
    without a head)."""
    if head_time is None:
        return None
    return max(0, series.timeframe.last_closed_open(now_time) - head_time)


def series_health_view(
    series: SeriesId,
    now_time: int,
    head: SeriesHead | None,
    backfill: dict[str, Any] | None = None,
    holes_pending: int = 0,
) -> dict[str, Any]:
    """``backfill`` is the gap-repair state of the series (``state``: idle|running|succeeded|failed, ...).
    ``holes_pending``: candles missing behind the head, in holes the exchange is to be asked for again (it
    was unreachable); an otherwise up-to-date series is then yellow, not green."""
    tf = series.timeframe
    expected = tf.last_closed_open(now_time)
    backfill = backfill or {"state": "idle", "progress_pct": None}
    head_time = head.head_time if head else None
    missing = 0
    lag: int | None = None
    if head_time is None:
        status, reason = "red", "missing_head"
    elif head_time > expected:
        status, reason, lag = "yellow", "head_ahead_of_closed_window", 0
    else:
        lag = lag_seconds(series, now_time, head_time)
        missing = tf.count_between(tf.next_open(head_time), expected)
        if missing == 0 and holes_pending:
            status, reason = "yellow", "gap_repair_pending"
        elif missing == 0:
            status, reason = "green", "up_to_date"
        elif backfill.get("state") == "running":
            status, reason = "yellow", "backfill_running"
        elif backfill.get("state") == "succeeded" and backfill.get("recent", False):
            status, reason = "yellow", "backfill_recent"
        else:
            status, reason = "red", "lagging_no_recent_backfill"
    return {
        "series_id": str(series),
        "timeframe_seconds": tf.seconds,
        "now_time": now_time,
        "expected_latest_closed_time": expected,
        "head_time": head_time,
        "lag_seconds": lag,
        "missing_seconds": missing * tf.seconds,
        "missing_candles": missing,
        "holes_pending_candles": holes_pending,
        "status": status,
        "status_reason": reason,
        "backfill": backfill,
    }


def factor_health_view(
    series: SeriesId,
    store_head: int,
    factor_head: int | None,
    *,
    failed: bool = False,
    rebuilding: bool = False,
    correction_pending: bool = False,
) -> dict[str, Any]:
    """How far the factor and overlay projections (one head: they commit together) trail the stored head.
    ``failed``: a factor raised and the series' projections stopped; ``rebuilding``: a rebuild from the log
    is running; ``correction_pending``: a stored candle at or before the factor head is not applied yet."""
    tf = series.timeframe
    seconds: int | None = None
    candles: int | None = None
    if factor_head is not None:
        seconds = max(0, store_head - factor_head)
        candles = tf.count_between(tf.next_open(factor_head), store_head)
    if failed:
        status, reason = "red", "factor_failed"
    elif candles is None:
        status, reason = ("yellow", "rebuild_running") if rebuilding else ("red", "missing_factor_head")
    elif candles == 0:
        status, reason = ("yellow", "correction_pending") if correction_pending else ("green", "up_to_date")
    elif rebuilding:
        status, reason = "yellow", "rebuild_running"
    elif candles == 1:
        status, reason = "yellow", "lagging_one_candle"
    else:
        status, reason = "red", "lagging_many_candles"
    return {
        "series_id": str(series),
        "timeframe_seconds": tf.seconds,
        "store_head_time": store_head,
        "factor_head_time": factor_head,
        "overlay_head_time": factor_head,
        "factor_delay_seconds": seconds,
        "factor_delay_candles": candles,
        "overlay_delay_seconds": seconds,
        "overlay_delay_candles": candles,
        "max_delay_seconds": seconds,
        "max_delay_candles": candles,
        "status": status,
        "status_reason": reason,
    }
