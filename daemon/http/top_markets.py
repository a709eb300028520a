"""The HTTP face of :mod:`daemon.top_markets`: the ranking as JSON, and its Server-Sent Events stream."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from daemon.http.errors import JSONResponse
from daemon.http.params import bool_param, float_param, int_param
from daemon.top_markets import TopMarketsError

if TYPE_CHECKING:
    from daemon.app import Wiring


def routes(services: Wiring) -> list[Route]:
    """``/api/market/top_markets`` and ``/api/market/top_markets/stream``."""

    async def top_markets(request: Request) -> Response:
        exchange, market, quote, limit = top_params(request)
        try:
            data = await services.top_markets.get(exchange, market, quote, limit, bool_param(request, "force"))
        except TopMarketsError as e:
            headers = {"Retry-After": str(max(1, round(e.retry_after_s)))} if e.retry_after_s else None
            return JSONResponse({"code": e.code, "detail": e.detail}, status_code=e.status, headers=headers)
        return JSONResponse(data)

    async def top_markets_stream(request: Request) -> Response:
        exchange, market, quote, limit = top_params(request)
        interval = float_param(request, "interval_s", 2.0, 0.2, 30.0)
        max_events = int_param(request, "max_events", low=1)
        events = services.top_markets.stream(exchange, market, quote, limit, interval, max_events)
        try:
            first = await anext(events)  # bad parameters raise here, before the response starts
        except TopMarketsError as e:
            await events.aclose()
            return JSONResponse({"code": e.code, "detail": e.detail}, status_code=e.status)
        except StopAsyncIteration:
            first = ""
        return StreamingResponse(
            event_stream(first, events), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    return [
        Route("/api/market/top_markets", top_markets, methods=["GET"]),
        Route("/api/market/top_markets/stream", top_markets_stream, methods=["GET"]),
    ]


def top_params(request: Request) -> tuple[str, str, str, int]:
    q = request.query_params
    limit = int_param(request, "limit", low=1, high=1000) or 20
    return q.get("exchange", "binance"), q.get("market", "spot"), q.get("quote_asset", "USDT"), limit


async def event_stream(first: str, events: AsyncGenerator[str, None]) -> AsyncIterator[str]:
    """``first`` (already taken to check the parameters), then the rest; the stream is closed however it ends."""
    async with contextlib.aclosing(events):
        yield first
        async for chunk in events:
            yield chunk
