"""The kline health view of one series (SPEC §4 ``/api/market/health``): how far its head trails the
latest closed period of the exchange clock, as green / yellow / red with a reason."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from protocol.logrecords import SeriesHead
from protocol.series import SeriesId

if TYPE_CHECKING:
    from daemon.app import Services


def series_health_view(
    series: SeriesId,
    now_time: int,
    head: SeriesHead | None,
    backfill: dict[str, Any] | None = None,
    holes_pending: int = 0,
) -> dict[str, Any]:
    """``backfill`` is the gap-repair state of the series (``state``: idle|running|succeeded|failed, ...).
    ``holes_pending``: candles missing behind the head, in holes the exchange is to be asked for again (it
    was unreachable); an otherwise up-to-date series is then yellow, not green (beyond SPEC)."""
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
        lag = expected - head_time
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


async def health_views(services: Services, now_time: int) -> list[dict[str, Any]]:
    """The health view of every active series (HTTP without ``series_id``, and ``klinectl health``)."""
    heads = await services.store.heads()
    return [live_health_view(services, s, now_time, heads.get(str(s))) for s in services.active_series()]


def live_health_view(services: Services, series: SeriesId, now_time: int, head: SeriesHead | None) -> dict[str, Any]:
    """:func:`series_health_view` with what the running daemon knows: backfill progress and pending holes."""
    return series_health_view(
        series, now_time, head, services.history.progress.view(series), _holes_pending(services, series)
    )


def _holes_pending(services: Services, series: SeriesId) -> int:
    """Candles missing in the holes a series actor will ask the exchange for again."""
    actor = services.live.actors.get(series) if services.live is not None else None
    if actor is None:
        return 0
    tf = series.timeframe
    return sum(p.hole.missing(tf) for p in actor.state.pending_holes)


def upstream_health(services: Services) -> dict[str, Any]:
    """Per market: connections up, and when the exchange cannot be reached, why and when we retry."""
    live = services.live
    if live is None:
        return {}
    out: dict[str, Any] = {}
    for market, ingest in live.ingest.items():
        conns = list(ingest.connections.values())
        if not conns:
            continue
        down = [c for c in conns if not c.connected]
        out[market] = {
            "connections": len(conns),
            "connected": len(conns) - len(down),
            "reachable": not down,
            "last_error": next((c.last_error for c in down if c.last_error), None),
            "retry_in_s": min((c.next_retry_s for c in down if c.next_retry_s is not None), default=None),
            "reconnects": ingest.stats.reconnects,
        }
    return out
