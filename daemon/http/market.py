"""The candle routes: the tail or a range of a series, closed-candle writes, the whitelist and the version."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon import __version__
from daemon.http.errors import JSONResponse
from daemon.http.params import body_single_candle, int_param, series_param, write_body
from protocol.codec import candle_to_wire
from protocol.series import SeriesId

if TYPE_CHECKING:
    from daemon.app import Wiring

MAX_CANDLES_LIMIT: Final = 5000
DEFAULT_CANDLES_LIMIT: Final = 500
TAIL_CACHE_SIZE: Final = 256


class TailCache:
    """The tail a chart asks for is the same for every chart until the series changes: encoded once.

    Keyed by (series, limit), each body tagged with the series' version; least recently read goes first.
    """

    def __init__(self, size: int = TAIL_CACHE_SIZE) -> None:
        self.size = size
        self.entries: OrderedDict[tuple[str, int], tuple[int, bytes]] = OrderedDict()

    def get(self, key: tuple[str, int], version: int) -> bytes | None:
        cached = self.entries.get(key)
        if cached is None or cached[0] != version:
            return None
        self.entries.move_to_end(key)
        return cached[1]

    def put(self, key: tuple[str, int], version: int, body: bytes) -> None:
        self.entries[key] = (version, body)
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)


def routes(services: Wiring) -> list[Route]:
    """``/api/market/candles``, ``candle_closed`` writes, ``/api/market/whitelist`` and ``/api/version``."""
    settings, store, tail_cache = services.settings, services.store, TailCache()

    async def candles(request: Request) -> Response:
        series = series_param(request)
        since = int_param(request, "since", low=0)
        limit = int_param(request, "limit", low=1, high=MAX_CANDLES_LIMIT) or DEFAULT_CANDLES_LIMIT
        key = (str(series), limit)
        if since is None:
            await services.history.tail_for_read(series, limit)  # bounded wait; off unless the flag is on
            version = store.version(series)
            cached = tail_cache.get(key, version)
            if cached is not None:
                return Response(cached, media_type="application/json")
            rows = await store.tail(series, limit)
        else:
            rows = await store.range(series, since, None, limit)
        body = orjson.dumps(
            {
                "series_id": str(series),
                "server_head_time": rows[-1].candle_time if rows and since is None else await head_time(series),
                "candles": [candle_to_wire(c) for c in rows],
            }
        )
        if since is None:
            tail_cache.put(key, version, body)
        return Response(body, media_type="application/json")

    async def head_time(series: SeriesId) -> int | None:
        head = await store.head(series)
        return head.head_time if head else None

    async def ingest_closed(request: Request) -> Response:
        series, candle = body_single_candle(await write_body(settings, request))
        services.require_writer()  # a cluster's replica answers 409 naming the writer
        await services.writer.write(series, [candle])  # durable and published when this returns
        return JSONResponse({"ok": True, "series_id": str(series), "candle_time": candle.candle_time})

    async def whitelist(request: Request) -> Response:
        return JSONResponse({"series_ids": [str(s) for s in services.whitelist()]})

    return [
        Route("/api/market/candles", candles, methods=["GET"]),
        Route("/api/market/ingest/candle_closed", ingest_closed, methods=["POST"]),
        Route("/api/market/whitelist", whitelist, methods=["GET"]),
        Route("/api/version", version, methods=["GET"]),
    ]


async def version(request: Request) -> Response:
    return JSONResponse({"name": "klined", "version": __version__})
