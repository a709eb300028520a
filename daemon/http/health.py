"""``GET /api/market/health`` (off unless ``enable_kline_health``): the views of :mod:`daemon.health`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.health import cluster_health, health_views, live_health_view, upstream_health
from daemon.http.errors import ApiError, JSONResponse
from daemon.http.params import int_param, series_param

if TYPE_CHECKING:
    from daemon.app import Wiring


def routes(services: Wiring) -> list[Route]:
    """One series' view with ``series_id``, else every active series' and the upstream's."""
    settings, store = services.settings, services.store

    async def health(request: Request) -> Response:
        if not settings.enable_kline_health:
            raise ApiError(404, "not_found", "health API disabled")
        now = int_param(request, "now_time", low=0)
        now = services.clock.now_s() if now is None else now
        if "series_id" in request.query_params:
            series = series_param(request)
            return JSONResponse(live_health_view(services, series, now, await store.head(series)))
        views = await health_views(services, now)
        body = {"now_time": now, "upstream": upstream_health(services), "series": views}
        cluster = cluster_health(services)
        if cluster is not None:
            body["cluster"] = cluster
        return JSONResponse(body)

    return [Route("/api/market/health", health, methods=["GET"])]
