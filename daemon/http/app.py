"""The daemon's ASGI app: every route module's routes, CORS and the error handlers, beside ``/ws/market``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send

from daemon.http import debug, factors, frames, health, market, metrics, page, top_markets
from daemon.http.errors import EXCEPTION_HANDLERS
from daemon.ws_endpoint import MarketSocket

if TYPE_CHECKING:
    from daemon.app import Wiring
    from daemon.config import Settings


class MarketApp:
    """``/ws/market`` straight to its endpoint (the fan-out's hot path), everything else to Starlette."""

    def __init__(self, http: Starlette, market_socket: MarketSocket) -> None:
        self.http, self.market_socket = http, market_socket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == "/ws/market":
            await self.market_socket.asgi(scope, receive, send)
        else:
            await self.http(scope, receive, send)


def build_app(services: Wiring) -> MarketApp:
    """The ASGI app of one daemon (HTTP and ``/ws/market`` on one listener)."""
    settings = services.settings
    market_socket = MarketSocket(
        services.hub,
        max_connections=settings.market_ws_max_connections,
        max_subscriptions=settings.market_ws_max_subscriptions,
        max_message_bytes=settings.market_ws_max_message_bytes,
    )
    http = Starlette(
        routes=[
            *market.routes(services),
            *debug.routes(services),
            *top_markets.routes(services),
            *health.routes(services),
            *factors.routes(services),
            *frames.routes(services),
            *metrics.routes(services),
            *page.routes(),  # the chart page at "/" and its bundle under /assets
        ],
        middleware=cors_middleware(settings),
        exception_handlers=EXCEPTION_HANDLERS,
    )
    return MarketApp(http, market_socket)


def cors_middleware(settings: Settings) -> list[Middleware]:
    """None unless origins are configured: a browser chart served from another origin may call the API."""
    if not settings.http_cors_origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=list(settings.http_cors_origins),
            allow_methods=["GET", "POST"],
            # A write's preflight asks for both: JSON is what makes it preflighted, the token what admits it.
            allow_headers=["Content-Type", "Authorization"],
        )
    ]
