"""``GET /metrics``: :class:`daemon.metrics.MetricsPage`, rendered at each scrape."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.metrics import CONTENT_TYPE, MetricsPage

if TYPE_CHECKING:
    from daemon.app import Wiring


def routes(services: Wiring) -> list[Route]:
    page = MetricsPage(services)

    async def metrics(request: Request) -> Response:
        return Response(await page.render(), headers={"Content-Type": CONTENT_TYPE})

    return [Route("/metrics", metrics, methods=["GET"])]
