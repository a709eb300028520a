"""End to end: the real ``klined`` process against the fake exchange, driven over HTTP and by the real
``klinectl`` binary; killed with SIGKILL in the middle of ingesting, restarted: every candle that was
acknowledged is there, exactly once, the restarted daemon carries on, and its projections equal a replay."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import trio
from trio_websocket import open_websocket_url, wrap_client_stream

from actors.projector import Projector
from daemon.fakex.server import FakeExchange, exchange_clock
from daemon.storage.eventlog import EventLog
from daemon.storage.projection_store import ProjectionStore
from protocol.codec import candle_to_wire
from protocol.series import SeriesId
from tests.actors.test_projector import outputs
from tests.features_off import off_toml
from tests.klined_process import BIN, PROCESS_DEADLINE_S, klined

ETH = "binance:spot:ETH/USDT:1m"
BTC = "binance:spot:BTC/USDT:1m"
TRADE_CLOCK_SPEED = 10.0  # exchange seconds per wall second: a 1m period closes every 6 s


def candle(t: int) -> dict[str, object]:
    return {"candle_time": t, "open": 10.0, "high": 11.0, "low": 9.0, "close": 10.5, "volume": float(t % 7)}


async def test_sigkill_mid_ingest_loses_and_duplicates_nothing_acknowledged(tmp_path: Path) -> None:
    fake = FakeExchange()
    data = tmp_path / "data"
    acked: list[int] = []
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(fake.serve)
        async with klined(data, urls) as (proc, url):
            status = await trio.run_process(
                [str(BIN / "klinectl"), "--socket", str(data / "klined.sock"), "--json", "status"], capture_stdout=True
            )
            assert json.loads(status.stdout)["whitelist"] == [BTC]
            enough = trio.Event()
            async with httpx.AsyncClient(base_url=url, timeout=PROCESS_DEADLINE_S) as http:

                async def writer(k: int) -> None:
                    for i in range(k, 100_000, 4):
                        t = 60 * (i + 1)
                        try:
                            r = await http.post(
                                "/api/market/ingest/candle_closed", json={"series_id": ETH, "candle": candle(t)}
                            )
                        except httpx.HTTPError:
                            return  # the daemon died under us: this one was not acknowledged
                        if r.status_code == 200:
                            acked.append(t)
                            if len(acked) == 300:
                                enough.set()

                async with trio.open_nursery() as writers:
                    for k in range(4):
                        writers.start_soon(writer, k)
                    with trio.fail_after(PROCESS_DEADLINE_S):
                        await enough.wait()
                    proc.kill()  # SIGKILL: no flush, no goodbye
        assert proc.returncode == -signal.SIGKILL
        async with (
            klined(data, urls) as (proc, url),
            httpx.AsyncClient(base_url=url, timeout=PROCESS_DEADLINE_S) as http,
        ):
            body = (await http.get("/api/market/candles", params={"series_id": ETH, "since": 0, "limit": 5000})).json()
            stored = [c["candle_time"] for c in body["candles"]]
            assert set(acked) <= set(stored), "an acknowledged candle was lost"
            assert stored == sorted(set(stored))
            r = await http.post(
                "/api/market/ingest/candle_closed", json={"series_id": ETH, "candle": candle(60 * 200_000)}
            )
            assert r.status_code == 200  # the restarted daemon carries on
            slices = await http.get("/api/factor/slices", params={"series_id": ETH})
            assert slices.status_code == 200  # projections resumed from their checkpoint and caught up
            assert slices.json()["at_time"] == 60 * 200_000
            version = await trio.run_process(
                [str(BIN / "klinectl"), "--socket", str(data / "klined.sock"), "version"], capture_stdout=True
            )
            assert b"klined" in version.stdout
        nursery.cancel_scope.cancel()
    with EventLog(data / "eventlog") as log:
        events = [e for e in log.events_since(0) if e.series_id == ETH]
        times = [e.candle.candle_time for e in events]
        assert len(times) == len(set(times)), "a candle was written twice"
        assert all(e.previous is None for e in events)
        assert set(acked) <= set(times)
        # What the killed-and-resumed projections hold equals a replay from scratch.
        resumed = Projector(log, ProjectionStore(data / "projections"))
        scratch = Projector(log, ProjectionStore(tmp_path / "scratch"))
        await scratch.start()
        eth = SeriesId.parse(ETH)
        assert outputs(resumed, eth) == outputs(scratch, eth)
        resumed.pstore.close()
        scratch.pstore.close()


async def test_sighup_reloads_the_whitelist_and_sigterm_exits_0_within_5s(tmp_path: Path) -> None:
    config = tmp_path / "klined.toml"
    config.write_text(off_toml(data_dir=str(tmp_path / "data"), http_port=0, whitelist=[BTC]))
    proc = await trio.lowlevel.open_process(
        [str(BIN / "klined"), "run", "--config", str(config)], stdout=subprocess.PIPE, env=dict(os.environ)
    )
    assert proc.stdout is not None
    lines: list[dict[str, object]] = []
    buffer = b""

    async def until(event: str) -> dict[str, object]:
        nonlocal buffer
        assert proc.stdout is not None
        with trio.fail_after(PROCESS_DEADLINE_S):
            while True:
                for line in lines:
                    if line.get("event") == event:
                        lines.remove(line)
                        return line
                chunk = await proc.stdout.receive_some(65536)
                assert chunk, f"klined exited before {event}"
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                lines.extend(json.loads(x) for x in complete if x.startswith(b"{"))

    url = str((await until("daemon_ready"))["http_url"])
    async with httpx.AsyncClient(base_url=url, timeout=PROCESS_DEADLINE_S) as http:
        assert (await http.get("/api/market/whitelist")).json() == {"series_ids": [BTC]}
        config.write_text(off_toml(data_dir=str(tmp_path / "data"), http_port=0, whitelist=[ETH]))
        proc.send_signal(signal.SIGHUP)
        await until("whitelist_reloaded")
        assert (await http.get("/api/market/whitelist")).json() == {"series_ids": [ETH]}
    started = trio.current_time()
    proc.send_signal(signal.SIGTERM)
    await until("eventlog_closed")
    with trio.fail_after(5):
        assert await proc.wait() == 0
    assert trio.current_time() - started < 5


async def test_a_trade_built_candle_that_was_published_survives_sigkill(tmp_path: Path) -> None:
    """The trade actor publishes a tick's candles only once they are durable: killed right after the first
    one arrives, the log holds it and the restarted daemon serves it. The exchange clock runs fast, so a
    period closes seconds after klined is up, however long its start took."""
    fake = FakeExchange(now_ms=exchange_clock(speed=TRADE_CLOCK_SPEED))
    env = {"KLINED_TRADE_SOURCES": "binance:spot:BTC/USDT", "KLINED_DEV_CLOCK_SPEED": str(TRADE_CLOCK_SPEED)}
    data = tmp_path / "data"
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(fake.serve)
        async with (
            klined(data, urls, **env) as (proc, url),
            open_websocket_url(url.replace("http://", "ws://") + "/ws/market") as ws,
        ):
            await ws.send_message(json.dumps({"type": "subscribe", "series_id": BTC, "since": None}))
            with trio.fail_after(PROCESS_DEADLINE_S):
                while (frame := json.loads(await ws.get_message()))["type"] != "candle_closed":
                    pass  # forming candles, as trades arrive
            proc.kill()  # right after the tick's batch was published: it must be durable already
        # The first candle's period was running when the trade actor started, so it is the exchange's own
        # kline: the restarted daemon's audit of its last periods keeps it as it is.
        published = frame["candle"]
        with EventLog(data / "eventlog") as log:
            logged = log.range(BTC, published["candle_time"] - 1, published["candle_time"])
        assert [candle_to_wire(c) for c in logged] == [published]
        async with (
            klined(data, urls, **env) as (proc, url),
            httpx.AsyncClient(base_url=url, timeout=PROCESS_DEADLINE_S) as http,
        ):
            body = (await http.get("/api/market/candles", params={"series_id": BTC, "since": 0, "limit": 5000})).json()
        nursery.cancel_scope.cancel()
    stored = {c["candle_time"]: c for c in body["candles"]}
    assert stored[published["candle_time"]] == published


async def test_sigterm_exits_in_time_even_with_a_subscriber_that_stopped_reading(tmp_path: Path) -> None:
    """A subscriber with its TCP window full holds hypercorn's shielded send: the stop still ends within
    5 s, with every acknowledged candle durable (found by the chaos run, where klined hung on SIGTERM)."""
    fake = FakeExchange()
    data = tmp_path / "data"
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(fake.serve)
        async with klined(data, urls, KLINED_ENABLE_DEBUG_API="1") as (proc, url):
            host, port = url.removeprefix("http://").split(":")
            sock = trio.socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a tiny window
            await sock.connect((host, int(port)))
            async with trio.open_nursery() as ws_nursery:
                ws = await wrap_client_stream(ws_nursery, trio.SocketStream(sock), host, "/ws/market")
                await ws.send_message(json.dumps({"type": "subscribe", "series_id": ETH, "since": None}))
                async with httpx.AsyncClient(base_url=url, timeout=PROCESS_DEADLINE_S) as http:
                    for k in range(6):  # publish far more than the socket buffers hold; never read any of it
                        candles = [candle(60 * (k * 2000 + i + 1)) for i in range(2000)]
                        body = {"series_id": ETH, "candles": candles, "publish_ws": True}
                        r = await http.post("/api/dev/market/ingest/candles_closed_batch", json=body)
                        assert r.status_code == 200
                started = trio.current_time()
                proc.send_signal(signal.SIGTERM)
                with trio.fail_after(8):
                    assert await proc.wait() == 0
                assert trio.current_time() - started < 6
                ws_nursery.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    with EventLog(data / "eventlog") as log:
        assert len(log.range(ETH)) == 12_000
