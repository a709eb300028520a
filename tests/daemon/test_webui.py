"""The chart page's routes: the built bundle with its content types, or a 503 that says how to build it."""

from __future__ import annotations

from pathlib import Path

import httpx
from starlette.applications import Starlette

from daemon.http import page


def client(dist: Path) -> httpx.AsyncClient:
    app = Starlette(routes=page.routes(dist))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://klined")


async def test_the_built_page_and_its_assets_are_served_with_their_content_types(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><title>klined</title>")
    (tmp_path / "assets" / "app.js").write_text("export {};")
    (tmp_path / "assets" / "app.css").write_text("body {}")
    async with client(tmp_path) as http:
        page = await http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "klined" in page.text
        js = await http.get("/assets/app.js")
        assert js.status_code == 200
        assert js.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript")
        assert js.headers["cache-control"] == "no-cache"
        css = await http.get("/assets/app.css")
        assert css.headers["content-type"].startswith("text/css")
        assert (await http.get("/assets/nope.js")).status_code == 404


async def test_without_a_build_the_page_answers_503_saying_to_run_dev_setup(tmp_path: Path) -> None:
    async with client(tmp_path / "missing") as http:
        for path in ("/", "/assets/app.js"):
            r = await http.get(path)
            assert r.status_code == 503
            assert "./dev setup" in r.text
