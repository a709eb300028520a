"""``klined demo``: the daemon on the simulated exchange in one process, run as a real child process at 60x:
history and factors at once, a forced outage that a subscriber sees as a ``gap`` and that then heals, a clean
stop on SIGTERM. Plus the command line and the settings it builds."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from daemon.cli import _parser
from daemon.demo import DEMO_SERIES, HISTORY_CANDLES, DemoOptions, demo_settings
from daemon.fakex.server import FakeExchangeUrls

BIN = Path(sys.executable).parent
SPEED = 60.0  # an exchange minute a second: the first outage 2 s after ready


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_demo_arguments() -> None:
    args = _parser().parse_args(["demo"])
    assert (args.host, args.port, args.speed, args.data_dir, args.gap_every, args.no_gaps) == (
        "127.0.0.1",
        8710,
        1.0,
        None,
        10.0,
        False,
    )
    args = _parser().parse_args(["demo", "--port", "0", "--speed", "60", "--gap-every", "3", "--no-gaps"])
    assert (args.port, args.speed, args.gap_every, args.no_gaps) == (0, 60.0, 3.0, True)
    for bad in (["--speed", "0"], ["--speed", "fast"], ["--gap-every", "-1"], ["--port", "70000"]):
        with pytest.raises(SystemExit) as exited:
            _parser().parse_args(["demo", *bad])
        assert exited.value.code == 2


def test_demo_settings_point_at_the_fake(tmp_path: Path) -> None:
    urls = FakeExchangeUrls(rest_url="http://127.0.0.1:1", ws_url="ws://127.0.0.1:2")
    s = demo_settings(DemoOptions(port=0, speed=60.0), tmp_path, urls)
    assert s.whitelist == DEMO_SERIES
    assert (s.binance_spot_rest_url, s.binance_futures_rest_url) == (urls.rest_url, urls.rest_url)
    assert (s.binance_spot_ws_url, s.binance_futures_ws_url) == (urls.spot_ws, urls.futures_ws)
    assert s.dev_clock_speed == 60.0
    assert s.startup_kline_sync_target_candles == HISTORY_CANDLES
    flags = ("whitelist_ingest", "startup_kline_sync", "market_gap_backfill", "derived_timeframes", "ccxt_backfill")
    assert all(getattr(s, f"enable_{flag}") for flag in (*flags, "market_auto_tail_backfill", "kline_health"))


class Output:
    """The demo's stdout, line by line, kept for the assertions (and a post-mortem on failure)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = trio.Event()

    async def pump(self, stream: trio.abc.ReceiveStream) -> None:
        buffer = b""
        while chunk := await stream.receive_some(65536):
            buffer += chunk
            *done, buffer = buffer.split(b"\n")
            self.lines += [line.decode(errors="replace") for line in done]
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, text: str) -> str:
        while True:
            for line in self.lines:
                if text in line:
                    return line
            await self._changed.wait()


async def subscribe(url: str, series: str, frames: list[dict[str, Any]], closed: trio.Event) -> None:
    ws_url = url.replace("http://", "ws://") + "/ws/market"
    async with trio_websocket.open_websocket_url(ws_url) as ws:
        await ws.send_message(json.dumps({"type": "subscribe", "series_id": series, "since": None}))
        try:
            while True:
                frames.append(json.loads(await ws.get_message()))
        except trio_websocket.ConnectionClosed as e:  # the demo's stop: the daemon says goodbye (1001)
            frames.append({"type": "closed", "code": e.reason.code})
            closed.set()


async def candle_times(http: httpx.AsyncClient, series: str) -> list[int]:
    """Every stored candle's time, page by page (``since`` reads never start a repair of their own)."""
    times: list[int] = []
    while True:
        params = {"series_id": series, "since": times[-1] if times else 0, "limit": 5000}
        r = await http.get("/api/market/candles", params=params)
        assert r.status_code == 200, r.text
        page = [c["candle_time"] for c in r.json()["candles"]]
        if not page:
            return times
        times += page


async def projected_read(http: httpx.AsyncClient, path: str, params: dict[str, Any]) -> httpx.Response:
    """A read at the head: 409 ``ledger_out_of_sync`` while the live candle that just landed is still being
    projected (docs/factors.md), which a client answers by asking again."""
    while (r := await http.get(path, params=params)).status_code == 409:
        assert r.json()["code"] == "ledger_out_of_sync", r.text
        await trio.sleep(0.05)
    return r


async def history_and_factors(http: httpx.AsyncClient) -> None:
    for series in DEMO_SERIES:
        assert len(await candle_times(http, series)) >= HISTORY_CANDLES
        r = await projected_read(http, "/api/factor/slices", {"series_id": series})
        assert r.status_code == 200, r.text
        assert {"pivot", "pen", "zhongshu", "sr"} <= set(r.json()["factors"])
        params = {"series_id": series, "cursor_version_id": 0, "window_candles": 500}
        r = await projected_read(http, "/api/draw/delta", params)
        assert r.status_code == 200, r.text
        assert r.json()["active_ids"]
        assert r.json()["instruction_catalog_patch"]


async def healed(http: httpx.AsyncClient, gap: dict[str, Any]) -> None:
    """Until every series is contiguous from its first candle to its head, the gap's periods included."""
    while True:
        whole = True
        for series in DEMO_SERIES:
            times = await candle_times(http, series)
            whole &= all(b - a == 60 for a, b in itertools.pairwise(times))
            whole &= all(t in times for t in range(gap["expected_next_time"], gap["actual_time"], 60))
        if whole:
            return
        await trio.sleep(0.2)


@pytest.mark.slow
async def test_demo_history_factors_gap_heals_and_stops(tmp_path: Path) -> None:
    port = free_port()
    # The demo ignores KLINED_*: a variable `klined run` would refuse (an unknown key) changes nothing.
    env = {**os.environ, "TMPDIR": str(tmp_path), "KLINED_NOT_A_KEY": "1", "KLINED_WHITELIST": "nonsense"}
    argv = [str(BIN / "klined"), "demo", "--port", str(port), "--speed", str(SPEED), "--gap-every", "60"]
    proc = await trio.lowlevel.open_process(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = Output()
    gap: dict[str, Any] | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(out.pump, proc.stdout)
            with trio.fail_after(20):
                ready = await out.wait_for("ready - open ")
            url = ready.split("ready - open ")[1].rstrip("/")
            assert url == f"http://127.0.0.1:{port}"
            data_line = await out.wait_for("  data ")
            data_dir = trio.Path(data_line.split()[1])
            assert data_dir.parent == tmp_path
            assert await data_dir.is_dir()
            frames: list[dict[str, Any]] = []
            closed = trio.Event()
            nursery.start_soon(subscribe, url, DEMO_SERIES[0], frames, closed)
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                with trio.fail_after(10):
                    await history_and_factors(http)
                with trio.fail_after(10):
                    await out.wait_for("exchange outage for 150 s")
                with trio.fail_after(25):
                    while gap is None:
                        gap = next((f for f in frames if f["type"] == "gap"), None)
                        await trio.sleep(0.1)
                assert gap["series_id"] == DEMO_SERIES[0]
                assert gap["actual_time"] - gap["expected_next_time"] >= 120  # the outage's minutes, not one
                with trio.fail_after(30):
                    await healed(http, gap)
                    await out.wait_for("gap healed")
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(5):
                code = await proc.wait()
            assert code == 0
            with trio.fail_after(2):
                await out.wait_for("stopped after")
            with trio.fail_after(2):
                await closed.wait()
            assert frames[-1] == {"type": "closed", "code": 1001}
            assert not await data_dir.exists()  # the temporary data directory goes with the demo
            nursery.cancel_scope.cancel()
    except BaseException:
        print("\n".join(out.lines[-80:]))
        raise
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
