"""The debug routes, off unless ``enable_debug_api``: forming and batch writes, ingest and series state.

A disabled debug route answers 404 ``not_found``, as a missing route does, whoever asks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import attrs
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.http.errors import ApiError, JSONResponse
from daemon.http.params import bad_param, body_candle, body_series, body_single_candle, series_param, write_body

if TYPE_CHECKING:
    from actors.fanout.hub import FanOut
    from actors.series import SeriesActor
    from daemon.app import Wiring
    from daemon.config import Settings
    from protocol.series import SeriesId

MAX_INGEST_BATCH: Final = 20_000


def require_debug(settings: Settings) -> None:
    if not settings.enable_debug_api:
        raise ApiError(404, "not_found", "debug API disabled")


def routes(services: Wiring) -> list[Route]:
    """The debug writes and reads."""
    return [*write_routes(services), *state_routes(services)]


def write_routes(services: Wiring) -> list[Route]:
    """A forming candle to the fan-out, and a batch of closed candles (published or not) to the log."""
    settings, store, hub = services.settings, services.store, services.hub

    async def ingest_forming(request: Request) -> Response:
        require_debug(settings)  # a disabled debug write is a missing route, as for any peer
        series, candle = body_single_candle(await write_body(settings, request))
        services.require_writer()  # a cluster's forming candles come from its writer, relayed to every node
        if services.cluster is not None:
            services.cluster.relay_forming(series, candle)
        else:
            hub.publish_forming(series, candle)
        return JSONResponse({"ok": True, "series_id": str(series), "candle_time": candle.candle_time})

    async def ingest_closed_batch(request: Request) -> Response:
        require_debug(settings)  # a disabled debug write is a missing route, as for any peer
        body = await write_body(settings, request)
        series = body_series(body)
        raw = body.get("candles")
        if not isinstance(raw, list) or not raw:
            raise bad_param("candles must be a non-empty list")
        if len(raw) > MAX_INGEST_BATCH:
            raise bad_param(f"at most {MAX_INGEST_BATCH} candles per batch, got {len(raw)}")
        publish = body.get("publish_ws", False)
        if type(publish) is not bool:
            raise bad_param("invalid publish_ws")
        batch = sorted({c.candle_time: c for c in (body_candle(series, r) for r in raw)}.values())
        services.require_writer()
        if publish:
            await services.writer.write(series, batch)
        else:  # durable, derived and projected, not pushed to WebSocket subscribers (they get it by catchup)
            result = await store.append({series: batch})
            await services.writer.stages.after_append(result, publish=False)
        return JSONResponse(
            {
                "ok": True,
                "series_id": str(series),
                "count": len(batch),
                "first_candle_time": batch[0].candle_time,
                "last_candle_time": batch[-1].candle_time,
            }
        )

    return [
        Route("/api/market/ingest/candle_forming", ingest_forming, methods=["POST"]),
        Route("/api/dev/market/ingest/candles_closed_batch", ingest_closed_batch, methods=["POST"]),
    ]


def state_routes(services: Wiring) -> list[Route]:
    """What live ingest, the writer and the fan-out are doing, per series and over all."""
    settings, live, hub = services.settings, services.live, services.hub

    async def ingest_state(request: Request) -> Response:
        require_debug(settings)
        stats = {"writer": services.writer.statistics(), "fanout": hub.statistics()}
        if live is None:
            return JSONResponse({"enabled": False, "jobs": [], "stats": stats})
        return JSONResponse({"enabled": True, "jobs": live.supervisor.jobs(), "stats": {**live.statistics(), **stats}})

    async def publish_times(request: Request) -> Response:
        """When each recent closed candle of a series was published (durable, handed to the fan-out)."""
        require_debug(settings)
        series = series_param(request)
        rows = [[t, round(at, 6)] for s, t, at in list(hub.publish_times) if s == series]
        return JSONResponse({"series_id": str(series), "published": rows})

    async def series_health(request: Request) -> Response:
        require_debug(settings)
        actors = live.actors if live else {}
        return JSONResponse({"series": [series_state(series, actor, hub) for series, actor in actors.items()]})

    return [
        Route("/api/market/debug/ingest_state", ingest_state, methods=["GET"]),
        Route("/api/market/debug/series_health", series_health, methods=["GET"]),
        Route("/api/market/debug/publish_times", publish_times, methods=["GET"]),
    ]


def series_state(series: SeriesId, actor: SeriesActor, hub: FanOut) -> dict[str, Any]:
    """One series actor's state for ``series_health``: its fields, its holes, its subscriber count."""
    return {
        "series_id": str(series),
        **{k: v for k, v in attrs.asdict(actor.state).items() if k != "holes"},
        "holes": [attrs.asdict(h) for h in actor.state.holes],
        "subscribers": hub.subscriber_count(series),
    }
