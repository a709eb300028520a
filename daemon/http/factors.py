"""The factor and overlay reads (docs/factors.md, "Reading them"): the catalog, slices at a time, drawing deltas."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
import trio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon import factor_reads
from daemon.http.errors import ApiError, JSONResponse
from daemon.http.params import int_param, series_param

if TYPE_CHECKING:
    from daemon.app import Wiring


def routes(services: Wiring) -> list[Route]:
    """``/api/factor/catalog``, ``/api/factor/slices`` and ``/api/draw/delta``."""

    async def factor_slices(request: Request) -> Response:
        series = series_param(request)
        at_time = int_param(request, "at_time", low=0)
        window = window_param(request)
        reader = services.projection_reader()
        return await projection_read(lambda: factor_reads.slices(reader, series, at_time, window))

    async def draw_delta(request: Request) -> Response:
        series = series_param(request)
        cursor = int_param(request, "cursor_version_id", low=0) or 0
        at_time = int_param(request, "at_time", low=0)
        window = window_param(request)
        reader = services.projection_reader()
        return await projection_read(lambda: factor_reads.draw_delta(reader, series, cursor, window, at_time))

    return [
        Route("/api/factor/catalog", factor_catalog, methods=["GET"]),
        Route("/api/factor/slices", factor_slices, methods=["GET"]),
        Route("/api/draw/delta", draw_delta, methods=["GET"]),
    ]


async def factor_catalog(request: Request) -> Response:
    return JSONResponse(factor_reads.catalog())


def window_param(request: Request) -> int:
    window = int_param(request, "window_candles", low=1, high=factor_reads.MAX_WINDOW)
    return factor_reads.DEFAULT_WINDOW if window is None else window


async def projection_read(fn: Callable[[], dict[str, Any]]) -> Response:
    """``fn`` reads LMDB, so it runs on a thread; a projection behind the log answers 409, a series with
    nothing stored 404."""
    try:
        body = await trio.to_thread.run_sync(fn)
    except factor_reads.OutOfSyncError as e:
        raise ApiError(409, "ledger_out_of_sync", str(e)) from None
    except factor_reads.NoDataError as e:
        raise ApiError(404, "no_data", str(e)) from None
    return Response(orjson.dumps(body), media_type="application/json")
