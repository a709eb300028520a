"""The trade_canvas front end's world reads (docs/http.md): ``/api/frame/live``, ``/api/frame/at_time``,
``/api/delta/poll`` and ``/api/factor/health``, composed by :mod:`daemon.frame_reads`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon import frame_reads
from daemon.factor_reads import MAX_WINDOW
from daemon.http.factors import projection_read, window_param
from daemon.http.params import bad_param, int_param, series_param

if TYPE_CHECKING:
    from daemon.app import Wiring


def routes(services: Wiring) -> list[Route]:
    async def frame_live(request: Request) -> Response:
        series, window = series_param(request), window_param(request)
        reader = services.projection_reader()
        return await projection_read(lambda: frame_reads.live_frame(reader, series, window))

    async def frame_at_time(request: Request) -> Response:
        series = series_param(request)
        at_time = int_param(request, "at_time", low=0)
        if at_time is None:
            raise bad_param("missing at_time")
        window = window_param(request)
        reader = services.projection_reader()
        return await projection_read(lambda: frame_reads.frame_at(reader, series, at_time, window))

    async def delta_poll(request: Request) -> Response:
        series = series_param(request)
        after_id = int_param(request, "after_id", low=0) or 0
        int_param(request, "limit", low=1, high=MAX_WINDOW)  # checked only: a poll returns at most one record
        window = window_param(request)
        reader = services.projection_reader()
        return await projection_read(lambda: frame_reads.poll(reader, series, after_id, window))

    async def factor_health(request: Request) -> Response:
        series = series_param(request)
        reader = services.projection_reader()
        rebuilding = services.projector.progress is not None
        return await projection_read(lambda: frame_reads.factor_health(reader, series, rebuilding=rebuilding))

    return [
        Route("/api/frame/live", frame_live, methods=["GET"]),
        Route("/api/frame/at_time", frame_at_time, methods=["GET"]),
        Route("/api/delta/poll", delta_poll, methods=["GET"]),
        Route("/api/factor/health", factor_health, methods=["GET"]),
    ]
