"""The HTTP API (SPEC §4) as an ASGI app; hypercorn serves it on trio beside the WebSocket endpoint.

Errors are ``{"code": K, "detail": M}`` with a 4xx/5xx status and never a stack trace.
"""

from __future__ import annotations

from typing import Any, Final

import attrs
import orjson
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from actors.store import Store
from daemon import __version__
from daemon.config import Settings
from daemon.live import LiveIngest
from protocol.codec import candle_to_wire
from protocol.errors import ProtocolError
from protocol.series import SeriesId

log = structlog.get_logger(__name__)

MAX_CANDLES_LIMIT: Final = 5000
DEFAULT_CANDLES_LIMIT: Final = 500


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ApiError(Exception):
    """An error the client can act on: becomes ``{"code", "detail"}`` with ``status``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def _bad_param(detail: str) -> ApiError:
    return ApiError(422, "bad_request", detail)


def _series_param(request: Request) -> SeriesId:
    raw = request.query_params.get("series_id")
    if raw is None:
        raise _bad_param("missing series_id")
    try:
        return SeriesId.parse(raw)
    except ProtocolError as e:
        raise _bad_param(f"invalid series_id: {e}") from None


def _int_param(request: Request, name: str, *, low: int, high: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise _bad_param(f"invalid {name}: expected an integer, got {raw!r}") from None
    if value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise _bad_param(f"invalid {name}: expected {bounds}, got {value}")
    return value


def build_app(settings: Settings, store: Store, live: LiveIngest | None = None) -> Starlette:
    """The ASGI app of one daemon; handlers close over its settings and store."""

    async def candles(request: Request) -> Response:
        series = _series_param(request)
        since = _int_param(request, "since", low=0)
        limit = _int_param(request, "limit", low=1, high=MAX_CANDLES_LIMIT) or DEFAULT_CANDLES_LIMIT
        if since is None:
            rows = await store.tail(series, limit)
        else:
            rows = await store.range(series, since, None, limit)
        head = await store.head(series)
        return JSONResponse(
            {
                "series_id": str(series),
                "server_head_time": head.head_time if head else None,
                "candles": [candle_to_wire(c) for c in rows],
            }
        )

    async def whitelist(request: Request) -> Response:
        return JSONResponse({"series_ids": list(settings.whitelist)})

    async def ingest_state(request: Request) -> Response:
        if not settings.enable_debug_api:
            raise ApiError(404, "not_found", "debug API disabled")
        if live is None:
            return JSONResponse({"enabled": False, "jobs": []})
        return JSONResponse({"enabled": True, "jobs": live.supervisor.jobs(), "stats": live.statistics()})

    async def series_health(request: Request) -> Response:
        if not settings.enable_debug_api:
            raise ApiError(404, "not_found", "debug API disabled")
        actors = live.actors if live else {}
        return JSONResponse(
            {
                "series": [
                    {
                        "series_id": str(series),
                        **{k: v for k, v in attrs.asdict(actor.state).items() if k != "holes"},
                        "holes": [attrs.asdict(h) for h in actor.state.holes],
                    }
                    for series, actor in actors.items()
                ]
            }
        )

    async def version(request: Request) -> Response:
        return JSONResponse({"name": "klined", "version": __version__})

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return JSONResponse({"code": exc.code, "detail": exc.detail}, status_code=exc.status)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"code": code, "detail": exc.detail}, status_code=exc.status_code)

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("http_internal_error", path=request.url.path, error=repr(exc))
        return JSONResponse({"code": "internal_error", "detail": "internal error"}, status_code=500)

    return Starlette(
        routes=[
            Route("/api/market/candles", candles, methods=["GET"]),
            Route("/api/market/whitelist", whitelist, methods=["GET"]),
            Route("/api/version", version, methods=["GET"]),
            Route("/api/market/debug/ingest_state", ingest_state, methods=["GET"]),
            Route("/api/market/debug/series_health", series_health, methods=["GET"]),
        ],
        exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: internal_error},
    )
