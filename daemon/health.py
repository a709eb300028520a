"""The kline health views (``/api/market/health``, docs/http.md) of the running daemon: the pure rule of
``protocol.health`` with what the daemon knows of backfills and pending holes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from daemon.status import stored_status
from protocol.health import series_health_view
from protocol.logrecords import SeriesHead
from protocol.series import SeriesId

if TYPE_CHECKING:
    from daemon.app import Wiring

LAG_YELLOW_S: Final = 5.0


async def health_views(services: Wiring, now_time: int) -> list[dict[str, Any]]:
    """The health view of every active series (HTTP without ``series_id``, and ``klinectl health``)."""
    heads = (await stored_status(services)).heads
    return [live_health_view(services, s, now_time, heads.get(str(s))) for s in services.active_series()]


def live_health_view(services: Wiring, series: SeriesId, now_time: int, head: SeriesHead | None) -> dict[str, Any]:
    """:func:`series_health_view` with what the running daemon knows: backfill progress and pending holes."""
    return series_health_view(
        series, now_time, head, services.history.progress.view(series), _holes_pending(services, series)
    )


def _holes_pending(services: Wiring, series: SeriesId) -> int:
    """Candles missing in the holes a series actor will ask the exchange for again."""
    actor = services.live.actors.get(series) if services.live is not None else None
    if actor is None:
        return 0
    tf = series.timeframe
    return sum(p.hole.missing(tf) for p in actor.state.pending_holes)


def upstream_health(services: Wiring) -> dict[str, Any]:
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


def cluster_health(services: Wiring) -> dict[str, Any] | None:
    """This node's place in the cluster (None standalone): role, the writer, replication lag, and whether it
    was fenced. ``status`` is green while it follows or writes, yellow while catching up or lagging by more
    than a few seconds, red when it cannot follow the stream at all."""
    node = services.cluster
    if node is None:
        return None
    view = node.describe()
    if view["broken"] or view["role"] == "broken":
        status = "red"
    elif view["role"] in ("catching_up", "starting") or view["lag_s"] > LAG_YELLOW_S:
        status = "yellow"
    else:
        status = "green"
    return {"node": node.node, "status": status, **view, "nodes": sorted(node.link.registry.nodes)}
