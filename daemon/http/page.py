"""The chart page: the bundle ``./dev setup`` builds from ``web/`` into ``daemon/webui/dist``, served at ``/``.

Everything the page needs is in ``dist`` (no CDN, no web fonts), so it works with no internet at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

# Beside the package, not in it: where ./dev builds it and the package data takes it from.
DIST: Final = Path(__file__).parent.parent / "webui" / "dist"
MISSING: Final = "klined's chart page is not built: run ./dev setup (it needs npm), then reload.\n"
# Asset names are not content-hashed: browsers revalidate (ETag) instead of caching blindly.
NO_CACHE: Final = {"Cache-Control": "no-cache"}


class _Assets:
    """``/assets/...`` from ``dist/assets``, or 503 with :data:`MISSING` while the page is not built."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files = StaticFiles(directory=directory, check_dir=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.directory.is_dir():
            await PlainTextResponse(MISSING, status_code=503)(scope, receive, send)
            return

        async def send_no_cache(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"cache-control", b"no-cache")]}
            await send(message)

        await self.files(scope, receive, send_no_cache)


def routes(dist: Path = DIST) -> list[BaseRoute]:
    """``GET /`` (the page) and ``/assets`` (its bundle), for the daemon's Starlette app."""

    async def index(request: Request) -> Response:
        page = dist / "index.html"
        if not page.is_file():
            return PlainTextResponse(MISSING, status_code=503)
        return FileResponse(page, media_type="text/html; charset=utf-8", headers=NO_CACHE)

    return [Route("/", index, methods=["GET", "HEAD"]), Mount("/assets", app=_Assets(dist / "assets"))]
