"""Factor and overlay projections through the running daemon: the read API, publish after projection,
``factor.rebuild`` to subscribers, klinectl rebuild, and a settings change rebuilt at restart (issue 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from daemon import klinectl
from protocol.candle import Candle
from protocol.series import SeriesId
from tests.serving.harness import S1, Daemon, daemon

PRICES = [1, 2, 5, 2, 1, 2, 9, 2, 1, 2, 8, 2, 1]  # docs/factors.md's 13-price example, t = 60..780
SMALL = {"KLINED_PIVOT_WINDOW_MAJOR": "2", "KLINED_PIVOT_WINDOW_MINOR": "1"}


async def ingest_price(d: Daemon, t: int, price: float) -> None:
    c = {"candle_time": t, "open": price, "high": price, "low": price, "close": price, "volume": 1.0}
    r = await d.http.post("/api/market/ingest/candle_closed", json={"series_id": S1, "candle": c})
    assert r.status_code == 200, r.text


async def seed_example(d: Daemon) -> None:
    for i, price in enumerate(PRICES):
        await ingest_price(d, 60 * (i + 1), float(price))


async def get(d: Daemon, path: str, **params: Any) -> tuple[int, dict[str, Any]]:
    r = await d.http.get(path, params=params)
    body: dict[str, Any] = r.json()
    return r.status_code, body


async def test_catalog_slices_and_delta_of_the_worked_example(tmp_path: Path) -> None:
    async with daemon(tmp_path, **SMALL) as d:
        status, catalog = await get(d, "/api/factor/catalog")
        assert status == 200
        assert [f["key"] for f in catalog["factors"]] == ["pivot", "pen", "zhongshu", "anchor", "sr"]
        await seed_example(d)
        status, body = await get(d, "/api/factor/slices", series_id=S1, at_time=800)
        assert status == 200
        assert (body["at_time"], body["candle_id"]) == (780, f"{S1}:780")  # aligned to the stored candle
        pens = body["snapshots"]["pen"]["history"]["confirmed"]
        assert [(p["start_time"], p["end_time"]) for p in pens] == [(180, 300), (300, 420), (420, 540)]
        sr = body["snapshots"]["sr"]["head"]
        assert sorted((lv["side"], lv["price"], lv["status"]) for lv in sr["levels"]) == [
            ("resistance", 8.0, "active"),
            ("support", 1.0, "active"),
        ]
        switches = body["snapshots"]["anchor"]["history"]["switches"]
        assert [(s["switch_time"], s["reason"]) for s in switches] == [(540, "strong_pen")]
        assert body["snapshots"]["pen"]["meta"] == {
            "series_id": S1,
            "epoch": 0,
            "at_time": 780,
            "candle_id": f"{S1}:780",
            "factor_name": "pen",
        }
        status, delta = await get(d, "/api/draw/delta", series_id=S1, cursor_version_id=0)
        assert status == 200
        assert delta["to_candle_time"] == 780
        assert {"pen.confirmed", "anchor.current"} <= set(delta["active_ids"])
        assert [p["instruction_id"] for p in delta["instruction_catalog_patch"]] == sorted(
            delta["active_ids"],
            key=lambda i: next(p["version_id"] for p in delta["instruction_catalog_patch"] if p["instruction_id"] == i),
        )
        cursor = delta["next_cursor"]["version_id"]
        _, again = await get(d, "/api/draw/delta", series_id=S1, cursor_version_id=cursor)
        assert (again["instruction_catalog_patch"], again["next_cursor"]["version_id"]) == ([], cursor)


@pytest.mark.parametrize(
    ("path", "params", "detail"),
    [
        ("/api/factor/slices", {}, "missing series_id"),
        ("/api/factor/slices", {"series_id": "nope"}, "invalid series_id"),
        ("/api/factor/slices", {"series_id": S1, "window_candles": 0}, "invalid window_candles"),
        ("/api/factor/slices", {"series_id": S1, "window_candles": 5001}, "invalid window_candles"),
        ("/api/factor/slices", {"series_id": S1, "at_time": "x"}, "invalid at_time"),
        ("/api/draw/delta", {"series_id": S1, "cursor_version_id": -1}, "invalid cursor_version_id"),
    ],
)
async def test_bad_parameters_are_422_with_the_spec_body(
    tmp_path: Path, path: str, params: dict[str, Any], detail: str
) -> None:
    async with daemon(tmp_path) as d:
        status, body = await get(d, path, **params)
        assert status == 422
        assert body["code"] == "bad_request"
        assert body["detail"].startswith(detail)


async def test_a_read_ahead_of_the_projection_is_409_ledger_out_of_sync(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d:
        await ingest_price(d, 60, 10.0)
        services = d.running.services
        assert services is not None
        projector = services.projector
        async with projector._lock:  # hold the projector (as a long rebuild would) while a candle lands
            d.running.store.log.append({SeriesId.parse(S1): [Candle(120, 10.0, 11.0, 9.0, 10.0, 1.0)]})
            for path in ("/api/factor/slices", "/api/draw/delta"):
                status, body = await get(d, path, series_id=S1)
                assert status == 409
                assert body == {"code": "ledger_out_of_sync", "detail": "ledger_out_of_sync:factor"}
        await projector.sync()
        status, body = await get(d, "/api/factor/slices", series_id=S1)
        assert (status, body["at_time"]) == (200, 120)


async def test_a_client_reacting_to_candle_closed_sees_its_overlays(tmp_path: Path) -> None:
    """Publish comes after factor and overlay: the delta read on receipt already reaches that candle."""
    async with daemon(tmp_path, **SMALL) as d, d.client() as ws:
        await ingest_price(d, 60, 1.0)
        await ws.subscribe(since=60)
        for i, price in enumerate(PRICES[1:], start=2):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ingest_price, d, 60 * i, float(price))
                frame = await ws.recv()
            assert frame["type"] == "candle_closed"
            t = frame["candle"]["candle_time"]
            status, delta = await get(d, "/api/draw/delta", series_id=S1)
            assert (status, delta["to_candle_time"]) == (200, t)
            status, body = await get(d, "/api/factor/slices", series_id=S1)
            assert (status, body["at_time"]) == (200, t)


async def test_klinectl_rebuild_shows_progress_and_tells_subscribers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = str(tmp_path / "klined.sock")
    async with daemon(tmp_path, **SMALL) as d, d.client() as ws:
        await seed_example(d)
        _, before = await get(d, "/api/factor/slices", series_id=S1)
        await ws.subscribe(since=780)
        assert await trio.to_thread.run_sync(klinectl.main, ["--socket", sock, "rebuild", S1]) == 0
        assert f"done: {S1}: 13 candles replayed" in capsys.readouterr().out
        frame = await ws.recv()
        assert frame["type"] == "system"
        assert (frame["event"], frame["series_id"], frame["data"]) == ("factor.rebuild", S1, {"series_id": S1})
        _, after = await get(d, "/api/factor/slices", series_id=S1)
        assert after["snapshots"]["pen"] == before["snapshots"]["pen"]
        assert len((await d.http.get("/api/market/candles", params={"series_id": S1})).json()["candles"]) == 13
        assert await trio.to_thread.run_sync(klinectl.main, ["--socket", sock, "rebuild", "--all"]) == 0
        assert "done: all: 13 candles replayed" in capsys.readouterr().out
        assert (
            await trio.to_thread.run_sync(klinectl.main, ["--socket", sock, "rebuild", "binance:spot:NOPE/USDT:1m"])
            == 1
        )
        assert "no candles stored" in capsys.readouterr().err


async def test_changed_settings_are_rebuilt_at_start_without_touching_candles(tmp_path: Path) -> None:
    async with daemon(tmp_path, **SMALL) as d:
        await seed_example(d)
        _, small = await get(d, "/api/factor/slices", series_id=S1)
        assert small["snapshots"]["pivot"]["history"]["major"]
    async with daemon(tmp_path, KLINED_PIVOT_WINDOW_MAJOR="3", KLINED_PIVOT_WINDOW_MINOR="1") as d:
        services = d.running.services
        assert services is not None
        with trio.fail_after(10):
            await services.projector.wait_ready()  # the rebuild runs in the background after start-up
        status, wide = await get(d, "/api/factor/slices", series_id=S1)
        assert status == 200
        assert wide["snapshots"]["pivot"]["meta"]["epoch"] == 1  # one rebuild since the store began
        majors = {(p["pivot_time"], p["window"]) for p in wide["snapshots"]["pivot"]["history"]["major"]}
        assert majors
        assert all(w == 3 for _, w in majors)
        r = await d.http.get("/api/market/candles", params={"series_id": S1})
        assert [c["candle_time"] for c in r.json()["candles"]] == [60 * (i + 1) for i in range(13)]
