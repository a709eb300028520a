"""The HTTP API (SPEC §4) as an ASGI app; hypercorn serves it on trio beside the WebSocket endpoint.

Errors are ``{"code": K, "detail": M}`` with a 4xx/5xx status and never a stack trace.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs
import orjson
import structlog
import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from daemon import __version__, factor_reads, webui
from daemon.health import health_views, live_health_view, upstream_health
from daemon.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from daemon.metrics import build_registry, render_metrics
from daemon.request_body import CLOSE, BodyRefusedError, drain_body, read_body
from daemon.top_markets import TopMarketsError
from daemon.write_auth import check_write
from daemon.ws_endpoint import MarketSocket
from protocol.candle import Candle, check_candle
from protocol.codec import CodecError, candle_from_wire, candle_to_wire
from protocol.errors import ProtocolError
from protocol.series import SeriesId

if TYPE_CHECKING:
    from daemon.app import Services

log = structlog.get_logger(__name__)

MAX_CANDLES_LIMIT: Final = 5000
DEFAULT_CANDLES_LIMIT: Final = 500
MAX_INGEST_BATCH: Final = 20_000
TAIL_CACHE_SIZE: Final = 256


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ApiError(Exception):
    """An error the client can act on: becomes ``{"code", "detail"}`` with ``status``."""

    def __init__(self, status: int, code: str, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


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


def _float_param(request: Request, name: str, default: float, low: float, high: float) -> float:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise _bad_param(f"invalid {name}: expected a number, got {raw!r}") from None
    if not low <= value <= high:
        raise _bad_param(f"invalid {name}: expected {low}..{high}, got {value}")
    return value


def _bool_param(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "false").lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off", ""):
        return False
    raise _bad_param(f"invalid {name}: expected a boolean, got {raw!r}")


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _bad_param("invalid json") from None
    if not isinstance(body, dict):
        raise _bad_param("body must be a JSON object")
    return body


def _body_series(body: dict[str, Any]) -> SeriesId:
    if "series_id" not in body:
        raise _bad_param("missing series_id")
    try:
        return SeriesId.parse(body["series_id"])
    except ProtocolError as e:
        raise _bad_param(f"invalid series_id: {e}") from None


def _body_candle(series: SeriesId, raw: object) -> Candle:
    """A wire candle that satisfies SPEC §1 for ``series`` (aligned, ordered prices, finite), or 422."""
    try:
        return check_candle(candle_from_wire(raw), series.timeframe)
    except (CodecError, ProtocolError) as e:
        raise _bad_param(f"invalid candle: {e}") from None


class MarketApp:
    """``/ws/market`` straight to its endpoint (the fan-out's hot path), everything else to Starlette."""

    def __init__(self, http: Starlette, market_socket: MarketSocket) -> None:
        self.http, self.market_socket = http, market_socket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == "/ws/market":
            await self.market_socket.asgi(scope, receive, send)
        else:
            await self.http(scope, receive, send)


def build_app(services: Services) -> MarketApp:
    """The ASGI app of one daemon (HTTP and ``/ws/market`` on one listener)."""
    settings, store, live, hub = services.settings, services.store, services.live, services.hub

    def require_debug() -> None:
        if not settings.enable_debug_api:
            raise ApiError(404, "not_found", "debug API disabled")

    async def write_body(request: Request) -> dict[str, Any]:
        """A write's JSON object, once the peer may write (checked before any byte of the body is parsed)."""
        peer = request.client.host if request.client else None
        refusal = check_write(settings, peer, request.headers)
        within_s = settings.http_idle_timeout_s
        if refusal is not None:
            log.warning("write_refused", path=request.url.path, peer=peer, code=refusal.code)
            headers = dict(refusal.headers)
            if not await drain_body(request, within_s=within_s):
                headers.update(CLOSE)
            raise ApiError(refusal.status, refusal.code, refusal.detail, headers)
        try:
            raw = await read_body(request, within_s=within_s)
        except BodyRefusedError as e:
            raise ApiError(e.status, e.code, e.detail, CLOSE) from None
        return _json_object(raw)

    # The tail a chart asks for is the same for every chart until the series changes: encoded once.
    tail_cache: OrderedDict[tuple[str, int], tuple[int, bytes]] = OrderedDict()

    async def candles(request: Request) -> Response:
        series = _series_param(request)
        since = _int_param(request, "since", low=0)
        limit = _int_param(request, "limit", low=1, high=MAX_CANDLES_LIMIT) or DEFAULT_CANDLES_LIMIT
        key = (str(series), limit)
        if since is None:
            await services.history.tail_for_read(series, limit)  # bounded wait; off unless the flag is on
            version = store.version(series)
            cached = tail_cache.get(key)
            if cached is not None and cached[0] == version:
                tail_cache.move_to_end(key)
                return Response(cached[1], media_type="application/json")
            rows = await store.tail(series, limit)
        else:
            rows = await store.range(series, since, None, limit)
        body = orjson.dumps(
            {
                "series_id": str(series),
                "server_head_time": rows[-1].candle_time if rows and since is None else await _head_time(series),
                "candles": [candle_to_wire(c) for c in rows],
            }
        )
        if since is None:
            tail_cache[key] = (version, body)
            if len(tail_cache) > TAIL_CACHE_SIZE:
                tail_cache.popitem(last=False)
        return Response(body, media_type="application/json")

    async def _head_time(series: SeriesId) -> int | None:
        head = await store.head(series)
        return head.head_time if head else None

    async def ingest_closed(request: Request) -> Response:
        body = await write_body(request)
        series = _body_series(body)
        if "candle" not in body:
            raise _bad_param("missing candle")
        candle = _body_candle(series, body["candle"])
        await services.writer.write(series, [candle])  # durable and published when this returns
        return JSONResponse({"ok": True, "series_id": str(series), "candle_time": candle.candle_time})

    async def ingest_forming(request: Request) -> Response:
        require_debug()  # a disabled debug write is a missing route, as for any peer
        body = await write_body(request)
        series = _body_series(body)
        if "candle" not in body:
            raise _bad_param("missing candle")
        candle = _body_candle(series, body["candle"])
        hub.publish_forming(series, candle)
        return JSONResponse({"ok": True, "series_id": str(series), "candle_time": candle.candle_time})

    async def ingest_closed_batch(request: Request) -> Response:
        require_debug()  # a disabled debug write is a missing route, as for any peer
        body = await write_body(request)
        series = _body_series(body)
        raw = body.get("candles")
        if not isinstance(raw, list) or not raw:
            raise _bad_param("candles must be a non-empty list")
        if len(raw) > MAX_INGEST_BATCH:
            raise _bad_param(f"at most {MAX_INGEST_BATCH} candles per batch, got {len(raw)}")
        publish = body.get("publish_ws", False)
        if type(publish) is not bool:
            raise _bad_param("invalid publish_ws")
        batch = sorted({c.candle_time: c for c in (_body_candle(series, r) for r in raw)}.values())
        if publish:
            await services.writer.write(series, batch)
        else:  # durable and derived, not pushed to WebSocket subscribers (they get it by catchup)
            result = await store.append({series: batch})
            await services.deriver(result)
        return JSONResponse(
            {
                "ok": True,
                "series_id": str(series),
                "count": len(batch),
                "first_candle_time": batch[0].candle_time,
                "last_candle_time": batch[-1].candle_time,
            }
        )

    async def whitelist(request: Request) -> Response:
        return JSONResponse({"series_ids": [str(s) for s in services.whitelist()]})

    def top_params(request: Request) -> tuple[str, str, str, int]:
        q = request.query_params
        limit = _int_param(request, "limit", low=1, high=1000) or 20
        return q.get("exchange", "binance"), q.get("market", "spot"), q.get("quote_asset", "USDT"), limit

    async def top_markets(request: Request) -> Response:
        exchange, market, quote, limit = top_params(request)
        try:
            data = await services.top_markets.get(exchange, market, quote, limit, _bool_param(request, "force"))
        except TopMarketsError as e:
            headers = {"Retry-After": str(max(1, round(e.retry_after_s)))} if e.retry_after_s else None
            return JSONResponse({"code": e.code, "detail": e.detail}, status_code=e.status, headers=headers)
        return JSONResponse(data)

    async def top_markets_stream(request: Request) -> Response:
        exchange, market, quote, limit = top_params(request)
        interval = _float_param(request, "interval_s", 2.0, 0.2, 30.0)
        max_events = _int_param(request, "max_events", low=1)
        events = services.top_markets.stream(exchange, market, quote, limit, interval, max_events)
        try:
            first = await anext(events)  # bad parameters raise here, before the response starts
        except TopMarketsError as e:
            await events.aclose()
            return JSONResponse({"code": e.code, "detail": e.detail}, status_code=e.status)
        except StopAsyncIteration:
            first = ""

        async def body() -> AsyncIterator[str]:
            async with contextlib.aclosing(events):
                yield first
                async for chunk in events:
                    yield chunk

        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def health(request: Request) -> Response:
        if not settings.enable_kline_health:
            raise ApiError(404, "not_found", "health API disabled")
        now = _int_param(request, "now_time", low=0)
        now = services.clock.now_s() if now is None else now
        if "series_id" in request.query_params:
            series = _series_param(request)
            return JSONResponse(live_health_view(services, series, now, await store.head(series)))
        views = await health_views(services, now)
        return JSONResponse({"now_time": now, "upstream": upstream_health(services), "series": views})

    async def ingest_state(request: Request) -> Response:
        require_debug()
        stats = {"writer": services.writer.statistics(), "fanout": hub.statistics()}
        if live is None:
            return JSONResponse({"enabled": False, "jobs": [], "stats": stats})
        return JSONResponse({"enabled": True, "jobs": live.supervisor.jobs(), "stats": {**live.statistics(), **stats}})

    async def publish_times(request: Request) -> Response:
        """When each recent closed candle of a series was published (durable, handed to the fan-out)."""
        require_debug()
        series = _series_param(request)
        rows = [[t, round(at, 6)] for s, t, at in list(hub.publish_times) if s == series]
        return JSONResponse({"series_id": str(series), "published": rows})

    async def series_health(request: Request) -> Response:
        require_debug()
        actors = live.actors if live else {}
        return JSONResponse(
            {
                "series": [
                    {
                        "series_id": str(series),
                        **{k: v for k, v in attrs.asdict(actor.state).items() if k != "holes"},
                        "holes": [attrs.asdict(h) for h in actor.state.holes],
                        "subscribers": hub.subscriber_count(series),
                    }
                    for series, actor in actors.items()
                ]
            }
        )

    registry = build_registry(services)

    # -- factor and overlay projections (FACTORS.md "Read API") ---------------------------------------

    async def factor_catalog_route(request: Request) -> Response:
        return JSONResponse(factor_reads.catalog())

    def window_param(request: Request) -> int:
        window = _int_param(request, "window_candles", low=1, high=factor_reads.MAX_WINDOW)
        return factor_reads.DEFAULT_WINDOW if window is None else window

    async def projection_read(fn: Callable[[], dict[str, Any]]) -> Response:
        try:
            body = await trio.to_thread.run_sync(fn)
        except factor_reads.OutOfSyncError as e:
            raise ApiError(409, "ledger_out_of_sync", str(e)) from None
        return Response(orjson.dumps(body), media_type="application/json")

    async def factor_slices(request: Request) -> Response:
        series = _series_param(request)
        at_time = _int_param(request, "at_time", low=0)
        window = window_param(request)
        projector = services.projector
        return await projection_read(lambda: factor_reads.slices(projector, series, at_time, window))

    async def draw_delta(request: Request) -> Response:
        series = _series_param(request)
        cursor = _int_param(request, "cursor_version_id", low=0) or 0
        at_time = _int_param(request, "at_time", low=0)
        window = window_param(request)
        projector = services.projector
        return await projection_read(lambda: factor_reads.draw_delta(projector, series, cursor, window, at_time))

    async def metrics(request: Request) -> Response:
        return Response(render_metrics(registry), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def version(request: Request) -> Response:
        return JSONResponse({"name": "klined", "version": __version__})

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return JSONResponse({"code": exc.code, "detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"code": code, "detail": exc.detail}, status_code=exc.status_code)

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("http_internal_error", path=request.url.path, error=repr(exc))
        return JSONResponse({"code": "internal_error", "detail": "internal error"}, status_code=500)

    market_socket = MarketSocket(
        hub,
        max_connections=settings.market_ws_max_connections,
        max_subscriptions=settings.market_ws_max_subscriptions,
        max_message_bytes=settings.market_ws_max_message_bytes,
    )
    middleware = []
    if settings.http_cors_origins:  # a browser chart served from another origin may call the API
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.http_cors_origins),
                allow_methods=["GET", "POST"],
                # A write's preflight asks for both: JSON is what makes it preflighted, the token what admits it.
                allow_headers=["Content-Type", "Authorization"],
            )
        )
    http = Starlette(
        routes=[
            Route("/api/market/candles", candles, methods=["GET"]),
            Route("/api/market/ingest/candle_closed", ingest_closed, methods=["POST"]),
            Route("/api/market/ingest/candle_forming", ingest_forming, methods=["POST"]),
            Route("/api/dev/market/ingest/candles_closed_batch", ingest_closed_batch, methods=["POST"]),
            Route("/api/market/whitelist", whitelist, methods=["GET"]),
            Route("/api/market/top_markets", top_markets, methods=["GET"]),
            Route("/api/market/top_markets/stream", top_markets_stream, methods=["GET"]),
            Route("/api/market/health", health, methods=["GET"]),
            Route("/api/market/debug/ingest_state", ingest_state, methods=["GET"]),
            Route("/api/market/debug/series_health", series_health, methods=["GET"]),
            Route("/api/market/debug/publish_times", publish_times, methods=["GET"]),
            Route("/api/factor/catalog", factor_catalog_route, methods=["GET"]),
            Route("/api/factor/slices", factor_slices, methods=["GET"]),
            Route("/api/draw/delta", draw_delta, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/api/version", version, methods=["GET"]),
            *webui.routes(),  # the chart page at "/" and its bundle under /assets
        ],
        middleware=middleware,
        exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: internal_error},
    )
    return MarketApp(http, market_socket)
