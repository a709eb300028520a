"""The chart page (issue 10) in headless Chromium against the real ``klined`` and the fake exchange.

One run: the page renders candles and overlays; a closed candle reaches the page within 1 s of the daemon
publishing it; a forced gap (stream and REST down together) shows as a break and heals once the daemon has
backfilled it; a daemon restart on the same port is followed by itself with no duplicate and no hole; the page
is usable at 390x844. Screenshots land in ``test-artifacts/browser/`` (or ``$KLINED_TEST_ARTIFACTS``).

Selenium is blocking: every browser call runs in a thread. Debian's chromium and chromedriver only (``./dev
test`` installs them); nothing is downloaded.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from trio_websocket import open_websocket_url

from daemon.fakex.server import FakeExchange, exchange_clock
from daemon.http.page import DIST
from tests.klined_process import BTC, free_port, klined

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SPEED = 60.0  # exchange seconds per wall second: a closed 1m candle every second
MINUTE_MS = 60_000
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--window-size=1280,800",
)
DAEMON_ENV = {
    "KLINED_DEV_CLOCK_SPEED": str(SPEED),
    # At 60x, the default 60 s reconnect cap is an hour of exchange time: the stream could come back only
    # after REST, and the gap would be filled before any subscriber saw it.
    "KLINED_BINANCE_WS_RECONNECT_MAX_S": "1",
    "KLINED_ENABLE_KLINE_HEALTH": "1",
    "KLINED_ENABLE_MARKET_GAP_BACKFILL": "1",
    "KLINED_ENABLE_CCXT_BACKFILL": "1",
    "KLINED_ENABLE_STARTUP_KLINE_SYNC": "1",
    "KLINED_STARTUP_KLINE_SYNC_TARGET_CANDLES": "600",
    "KLINED_MARKET_HISTORY_SOURCE": "ccxt",
    "KLINED_ENABLE_DERIVED_TIMEFRAMES": "1",
    "KLINED_DERIVED_TIMEFRAMES": "5m",
    "KLINED_PIVOT_WINDOW_MAJOR": "10",  # short windows: pivots, pens and zones within a few hundred candles
    "KLINED_PIVOT_WINDOW_MINOR": "3",
}
State = dict[str, Any]


def artifacts_dir() -> Path:
    root = Path(__file__).resolve().parents[2]
    path = Path(os.environ.get("KLINED_TEST_ARTIFACTS") or root / "test-artifacts") / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.fail("needs Debian's chromium and chromium-driver (./dev test installs them)")
    if not (DIST / "index.html").is_file():
        pytest.fail(f"the chart page is not built ({DIST}): run ./dev setup")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


class Page:
    """The chart page in the browser, read through its test hook ``window.klined``."""

    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver
        self.out = artifacts_dir()

    async def console(self) -> list[dict[str, Any]]:
        """The browser console since the last call; also appended to ``console.log`` beside the screenshots."""
        entries: list[dict[str, Any]] = await self.call(self.driver.get_log, "browser")
        with (self.out / "console.log").open("a") as f:
            f.writelines(json.dumps(e) + "\n" for e in entries)
        return entries

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args)

    async def state(self) -> State:
        state: State = await self.call(self.driver.execute_script, "return window.klined && window.klined.state()")
        return state or {}

    async def times(self) -> list[int]:
        times: list[int] = await self.call(self.driver.execute_script, "return window.klined.times()")
        return times

    async def wait(self, what: str, ok: Callable[[State], bool], within: float) -> State:
        """Poll the page state until ``ok`` holds, ``within`` seconds at most."""
        state: State = {}
        try:
            with trio.fail_after(within):
                while not ok(state := await self.state()):  # noqa: ASYNC110 (a browser has no event to wait on)
                    await trio.sleep(0.05)
        except trio.TooSlowError:
            await self.screenshot(f"timeout-{what.replace(' ', '-')}")
            raise AssertionError(f"page: {what} not within {within} s; state {state}") from None
        return state

    async def wait_dom(self, what: str, script: str, within: float = 10) -> list[Any]:
        """Poll ``script`` (returning a list) until it is not empty."""
        with trio.fail_after(within):
            while not (found := await self.call(self.driver.execute_script, script)):  # noqa: ASYNC110
                await trio.sleep(0.05)
        return list(found)

    async def screenshot(self, name: str) -> Path:
        path = self.out / f"{name}.png"
        await self.call(self.driver.save_screenshot, str(path))
        return path


def contiguous(times: list[int], tf: int = 60) -> bool:
    return all(b - a == tf for a, b in itertools.pairwise(times))


async def test_chart_page_live_gap_restart_and_phone(tmp_path: Path, driver: webdriver.Chrome) -> None:
    fake = FakeExchange(now_ms=exchange_clock(speed=SPEED))
    data = tmp_path / "data"
    port = free_port()  # pinned: the restarted daemon is found at the same address
    env = {**DAEMON_ENV, "KLINED_HTTP_PORT": str(port)}
    page = Page(driver)
    (page.out / "console.log").unlink(missing_ok=True)
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(fake.serve)
            async with klined(data, urls, tmp_path / "klined-1.log", **env) as (_proc, url):
                await page.call(driver.get, f"{url}/#{BTC}")

                # 1. candles and overlays
                state = await page.wait(
                    "candles rendered", lambda s: s.get("connected") and s.get("candles", 0) >= 300, within=15
                )
                await page.wait("overlays drawn", lambda s: s["overlays"]["count"] > 0, within=10)
                await page.wait("forming candle", lambda s: (s["formingTime"] or 0) > (s["lastTime"] or 0), within=5)
                health = await page.wait_dom(
                    "health rows", "return [...document.querySelectorAll('#health tbody tr')].map(r => r.className)"
                )
                assert "health-green" in health, health
                # lightweight-charts' licence: a link to TradingView on the chart, and its notice on the page
                links = await page.wait_dom(
                    "attribution",
                    "return [...document.querySelectorAll('#chart a, footer.notice a')].map(a => a.href)",
                )
                assert sum("tradingview.com" in href for href in links) >= 2, links
                await page.screenshot("01-candles")
                assert contiguous(await page.times())
                # no internet at run time: every resource the page loaded came from the daemon itself
                loaded = await page.call(
                    driver.execute_script, "return performance.getEntriesByType('resource').map(e => e.name)"
                )
                assert loaded, "the page loaded nothing?"
                assert all(name.startswith(url + "/") for name in loaded), loaded

                # 2. a closed candle is on the page within 1 s of the daemon publishing it
                latencies = await closed_candle_latencies(page, url, count=3)
                print(f"closed candle -> page: {[f'{x * 1000:.0f} ms' for x in latencies]}")
                assert max(latencies) < 1.0, latencies

                # 3. a forced gap: the stream and REST down together, so the daemon cannot fill the periods
                now = fake.now_ms()
                fake.streams.faults.refuse_until_ms = now + 4 * MINUTE_MS
                fake.rest_faults.unavailable_until_ms = now + 12 * MINUTE_MS
                fake.streams.faults.drop_generation += 1
                cut = trio.current_time()
                state = await page.wait("gap shown", lambda s: s["openGaps"] > 0, within=20)
                gap = state["gaps"][0]
                shown = trio.current_time()
                print(f"gap shown {shown - cut:.1f} s after the cut: {(gap['to'] - gap['from']) // 60} periods missing")
                await page.screenshot("02-gap")
                healed = await page.wait(
                    "gap healed", lambda s: s["openGaps"] == 0 and s["lastTime"] >= gap["to"], within=30
                )
                print(f"gap healed on the page {trio.current_time() - shown:.1f} s after it was shown")
                await page.screenshot("03-healed")
                times = await page.times()
                assert contiguous(times), "a hole is left on the page"
                assert healed["gapsSeen"] >= 1
                assert healed["holes"] == 0
                async with httpx.AsyncClient(base_url=url) as http:
                    stored = await http.get(
                        "/api/market/candles", params={"series_id": BTC, "since": gap["from"] - 60, "limit": 50}
                    )
                assert {c["candle_time"] for c in stored.json()["candles"]} >= set(range(gap["from"], gap["to"], 60))

            # 4. the daemon restarts on the same port: the page reconnects by itself
            await page.wait("disconnect seen", lambda s: not s["connected"], within=5)
            before = await page.state()
            stopped = trio.current_time()
            async with klined(data, urls, tmp_path / "klined-2.log", **env) as (_proc, url):
                state = await page.wait(
                    "reconnected and caught up",
                    lambda s: s["connected"] and s["connects"] >= 2 and s["lastTime"] > before["lastTime"] + 120,
                    within=20,
                )
                print(
                    f"restart: page caught up {trio.current_time() - stopped:.1f} s after the stop "
                    f"(gaps seen {before['gapsSeen']} -> {state['gapsSeen']})"
                )
                assert state["lastSubscribe"]["since"] >= before["lastTime"]
                times = await page.times()
                assert len(times) == len(set(times)), "a duplicate candle after the restart"
                assert contiguous(times), "a hole after the restart"
                assert state["openGaps"] == 0
                assert state["duplicatesDropped"] == 0
                await page.screenshot("04-reconnected")

                # 5. a phone-sized viewport: the panels stack under the chart
                phone = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}
                await page.call(driver.execute_cdp_cmd, "Emulation.setDeviceMetricsOverride", phone)
                await trio.sleep(0.5)
                layout = await page.call(
                    driver.execute_script,
                    "const c = document.querySelector('#chart').getBoundingClientRect();"
                    "const a = document.querySelector('aside').getBoundingClientRect();"
                    "return {chartWidth: c.width, chartHeight: c.height, chartBottom: c.bottom, asideTop: a.top,"
                    " scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth}",
                )
                await page.screenshot("05-phone-390x844")
                assert layout["chartHeight"] > 200, layout
                assert layout["chartWidth"] > 300, layout
                assert layout["asideTop"] >= layout["chartBottom"] - 1, layout
                assert layout["scrollWidth"] <= layout["innerWidth"], layout

                # 6. a typed series id is checked before anything is asked of the daemon
                error = await page.call(
                    driver.execute_script,
                    "const f = document.querySelector('#picker'); f.querySelector('#typed-series').value = 'BTCUSDT';"
                    "f.requestSubmit(); return document.querySelector('#error').textContent",
                )
                assert error.startswith("invalid series id"), error
                assert (await page.state())["series"] == BTC

                # network errors while the daemon was down are expected; a script error never is
                assert not [e for e in await page.console() if e.get("source") == "javascript"]
            nursery.cancel_scope.cancel()


async def closed_candle_latencies(page: Page, url: str, count: int) -> list[float]:
    """For ``count`` live closed candles: seconds from our own subscriber getting it to the page showing it."""
    out: list[float] = []
    ws_url = url.replace("http://", "ws://") + "/ws/market"
    async with open_websocket_url(ws_url) as ws:
        subscribe = {"type": "subscribe", "series_id": BTC, "since": None, "supports_batch": True}
        await ws.send_message(json.dumps(subscribe))
        with trio.fail_after(15):
            while len(out) < count:
                frame = json.loads(await ws.get_message())
                if frame["type"] != "candle_closed":
                    continue  # the catchup batch, forming candles
                t, seen = frame["candle"]["candle_time"], trio.current_time()
                await page.wait(f"candle {t}", lambda s, t=t: (s["lastTime"] or 0) >= t, within=1.0)
                out.append(trio.current_time() - seen)
    return out
