"""Black box: an on-demand subscriber of a derived timeframe starts its base series' actor (one 1m
stream upstream, never a 5m one) and receives the 5m candle built locally, equal to the exchange's."""

from __future__ import annotations

from pathlib import Path

import trio

from protocol.series import SeriesId
from tests.serving.harness import daemon
from tests.test_live_ingest import BTC, BTC5, fake_before_boundary, seed_bucket


async def test_derived_subscription_rides_on_the_base_stream(tmp_path: Path) -> None:
    fake, boundary = fake_before_boundary()
    seed_bucket(tmp_path, fake, boundary)
    sym = fake.market.spot["BTCUSDT"]
    with trio.fail_after(45):
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(fake.serve)
            env = {
                "KLINED_ENABLE_ONDEMAND_INGEST": "1",
                "KLINED_ENABLE_DERIVED_TIMEFRAMES": "1",
                "KLINED_BINANCE_SPOT_WS_URL": urls.spot_ws,
                "KLINED_BINANCE_SPOT_REST_URL": urls.rest_url,
                "KLINED_BINANCE_FUTURES_WS_URL": urls.futures_ws,
                "KLINED_BINANCE_FUTURES_REST_URL": urls.rest_url,
            }
            async with daemon(tmp_path, **env) as d, d.client() as c:
                await c.subscribe(since=boundary - 600, series=str(BTC5))
                assert await c.frames_until_quiet() == []  # subscribed; nothing of 5m is stored yet
                live = d.running.live
                assert live is not None
                job = live.supervisor.job(BTC)
                assert job is not None
                assert (job.source, job.refcount) == ("ondemand", 1)
                assert live.supervisor.job(BTC5) is None
                while BTC not in live.actors:
                    await live.wait_actor_started()
                assert live.ingest["spot"]._series_streams == {BTC: "btcusdt@kline_1m"}
                while True:
                    frame = await c.recv()
                    if frame["type"] == "candle_closed":
                        break
                assert frame["series_id"] == str(BTC5)
                expected = sym.candle(BTC5.timeframe, boundary - 300)
                assert frame["candle"]["candle_time"] == boundary - 300
                assert (frame["candle"]["open"], frame["candle"]["close"]) == (expected.open, expected.close)
                assert SeriesId.parse(frame["series_id"]).timeframe.name == "5m"
            nursery.cancel_scope.cancel()
