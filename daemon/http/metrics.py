"""``GET /metrics``: the registry of :mod:`daemon.metrics`, rendered at each scrape."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.metrics import CONTENT_TYPE, build_registry, render_metrics

if TYPE_CHECKING:
    from daemon.app import Services


def routes(services: Services) -> list[Route]:
    registry = build_registry(services)

    async def metrics(request: Request) -> Response:
        return Response(render_metrics(registry), headers={"Content-Type": CONTENT_TYPE})

    return [Route("/metrics", metrics, methods=["GET"])]
