"""Black box: the HTTP API of docs/http.md against the running daemon."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import trio

from daemon.fakex.server import FakeExchange
from tests.serving.harness import S1, candle, daemon

S5 = "binance:spot:BTC/USDT:5m"


async def test_11_candles_tail_since_and_limits(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d:
        for t in (120, 180, 240):
            await d.ingest(t)
        body = (await d.http.get("/api/market/candles", params={"series_id": S1, "limit": 2})).json()
        assert [c["candle_time"] for c in body["candles"]] == [180, 240]
        assert body["server_head_time"] == 240
        body = (await d.http.get("/api/market/candles", params={"series_id": S1, "since": 180})).json()
        assert [c["candle_time"] for c in body["candles"]] == [240]
        for limit in (0, 5001):
            r = await d.http.get("/api/market/candles", params={"series_id": S1, "limit": limit})
            assert r.status_code == 422
            assert r.json()["code"] == "bad_request"
        r = await d.http.get("/api/market/candles", params={"series_id": "nope"})
        assert (r.status_code, r.json()["code"]) == (422, "bad_request")


@pytest.mark.parametrize(
    ("bad", "detail"),
    [
        ({**candle(150)}, "not aligned"),
        ({**candle(300), "high": 1.0, "low": 2.0}, "high"),
        ({**candle(300), "volume": -1.0}, "volume"),
        ({**candle(300), "close": "10"}, "must be a number"),
    ],
)
async def test_11_a_candle_that_breaks_spec_is_422_and_nothing_is_stored(
    tmp_path: Path, bad: dict[str, object], detail: str
) -> None:
    async with daemon(tmp_path) as d:
        r = await d.http.post("/api/market/ingest/candle_closed", json={"series_id": S1, "candle": bad})
        assert r.status_code == 422
        assert r.json()["code"] == "bad_request"
        assert detail in r.json()["detail"]
        assert d.running.store.log.last_seq() == 0


async def test_11_nan_is_not_json_and_is_422(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d:
        body = orjson.dumps({"series_id": S1, "candle": candle(300)}).replace(b'"close":10.0', b'"close":NaN')
        r = await d.http.post(
            "/api/market/ingest/candle_closed", content=body, headers={"Content-Type": "application/json"}
        )
        assert (r.status_code, r.json()["code"]) == (422, "bad_request")
        assert d.running.store.log.last_seq() == 0


async def test_ingest_answers_once_durable(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d:
        r = await d.http.post("/api/market/ingest/candle_closed", json={"series_id": S1, "candle": candle(120)})
        assert r.json() == {"ok": True, "series_id": S1, "candle_time": 120}
        assert d.running.store.log.get(S1, 120) is not None


@pytest.mark.parametrize(
    ("head", "status", "reason"),
    [
        (300, "red", "lagging_no_recent_backfill"),
        (600, "green", "up_to_date"),
        (900, "yellow", "head_ahead_of_closed_window"),
        (None, "red", "missing_head"),
    ],
)
async def test_12_health_of_a_5m_series_at_960(tmp_path: Path, head: int | None, status: str, reason: str) -> None:
    async with daemon(tmp_path) as d:
        if head is not None:
            await d.ingest_many([head], series=S5)
        body = (await d.http.get("/api/market/health", params={"series_id": S5, "now_time": 960})).json()
        assert (body["status"], body["status_reason"]) == (status, reason)
        assert body["expected_latest_closed_time"] == 600
        assert body["timeframe_seconds"] == 300
        assert body["head_time"] == head


async def test_12_health_is_404_when_disabled(tmp_path: Path) -> None:
    async with daemon(tmp_path, KLINED_ENABLE_KLINE_HEALTH="0") as d:
        r = await d.http.get("/api/market/health", params={"series_id": S5})
        assert (r.status_code, r.json()["code"]) == (404, "not_found")


async def test_debug_endpoints_are_404_without_the_flag(tmp_path: Path) -> None:
    async with daemon(tmp_path, KLINED_ENABLE_DEBUG_API="0") as d:
        for path, method in (
            ("/api/market/debug/ingest_state", "GET"),
            ("/api/market/ingest/candle_forming", "POST"),
            ("/api/dev/market/ingest/candles_closed_batch", "POST"),
        ):
            r = await d.http.request(method, path, json={"series_id": S1, "candle": candle(60)})
            assert r.status_code == 404, path


async def test_cors_is_off_by_default_and_configurable(tmp_path: Path) -> None:
    origin = {"Origin": "https://charts.example"}
    async with daemon(tmp_path) as d:
        r = await d.http.get("/api/market/whitelist", headers=origin)
        assert "access-control-allow-origin" not in r.headers
    async with daemon(tmp_path / "b", KLINED_HTTP_CORS_ORIGINS="https://charts.example") as d:
        r = await d.http.get("/api/market/whitelist", headers=origin)
        assert r.headers["access-control-allow-origin"] == "https://charts.example"


async def test_metrics_are_prometheus_text(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    async with daemon(tmp_path, KLINED_WHITELIST=S1) as d, d.client() as c:
        await d.ingest(120)
        await c.subscribe(since=None)
        await c.frames_until_quiet()
        r = await d.http.get("/metrics")
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text)
            for s in family.samples
        }
        assert samples[("klined_closed_candles_appended_total", ())] == 1
        assert samples[("klined_ws_subscribers", ())] == 1
        assert samples[("klined_ws_connections", ())] == 1
        assert samples[("klined_lmdb_events_total", ())] == 1
        assert samples[("klined_series_lag_seconds", (("series_id", S1),))] > 0  # 120 is long ago
        assert samples[("klined_lmdb_bytes", ())] > 0
        assert samples[("klined_projection_candles_applied_total", ())] == 1
        assert samples[("klined_projection_lag_events", ())] == 0  # factors and overlays ran before the publish
        assert samples[("klined_projection_failed_series", ())] == 0


async def test_top_markets_and_its_stream_through_the_daemon(tmp_path: Path) -> None:
    fake = FakeExchange()
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(fake.serve)
        env = {"KLINED_BINANCE_SPOT_REST_URL": urls.rest_url, "KLINED_BINANCE_FUTURES_REST_URL": urls.rest_url}
        async with daemon(tmp_path, **env) as d:
            body = (await d.http.get("/api/market/top_markets", params={"market": "spot", "limit": 2})).json()
            assert [i["symbol"] for i in body["items"]] != []
            assert body["items"][0]["quote_volume"] >= body["items"][-1]["quote_volume"]
            r = await d.http.get("/api/market/top_markets", params={"market": "moon"})
            assert r.status_code == 422
            async with d.http.stream(
                "GET", "/api/market/top_markets/stream", params={"max_events": 1, "interval_s": 0.2}
            ) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                text = (await stream.aread()).decode()
            assert text.startswith("event: top_markets\ndata: {")
            fake.rest_faults.status, fake.rest_faults.count = 503, 10
            r = await d.http.get("/api/market/top_markets", params={"market": "futures", "force": "true"})
            assert (r.status_code, r.json()["code"]) == (502, "upstream_error")  # nothing cached for futures
            r = await d.http.get("/api/market/top_markets", params={"market": "spot", "limit": 2, "force": "true"})
            assert r.status_code == 200, r.text
            stale = r.json()
            assert (stale["stale"], stale["items"]) == (True, body["items"])
            assert stale["stale_age_s"] >= 0
        nursery.cancel_scope.cancel()


async def test_a_cached_tail_follows_every_append(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d:
        await d.ingest(120)
        params = {"series_id": S1, "limit": 2}
        assert [
            c["candle_time"] for c in (await d.http.get("/api/market/candles", params=params)).json()["candles"]
        ] == [120]
        assert (await d.http.get("/api/market/candles", params=params)).json()["server_head_time"] == 120  # cached
        await d.ingest(180)
        body = (await d.http.get("/api/market/candles", params=params)).json()
        assert ([c["candle_time"] for c in body["candles"]], body["server_head_time"]) == ([120, 180], 180)
        await d.ingest(120, close=12.0)  # a correction changes the series too
        body = (await d.http.get("/api/market/candles", params=params)).json()
        assert body["candles"][0]["close"] == 12.0
