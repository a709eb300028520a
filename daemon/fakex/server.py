"""Run the fake exchange: REST on hypercorn-trio and kline streams on trio-websocket, one clock for both."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import cast

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.typing import ASGIFramework

from daemon.fakex.market import Market
from daemon.fakex.rest import RestFaults, RestStats, build_rest_app
from daemon.fakex.ws import FakeStreams, serve_streams


@attrs.frozen
class ExchangeTime:
    """Exchange time in ms (call it): wall time shifted by ``offset_ms``, running ``speed`` times as fast."""

    origin_ms: int
    offset_ms: int = 0
    speed: float = 1.0

    def __call__(self) -> int:
        return self.origin_ms + self.offset_ms + int((time.time_ns() // 1_000_000 - self.origin_ms) * self.speed)


def exchange_clock(offset_ms: int = 0, speed: float = 1.0) -> ExchangeTime:
    return ExchangeTime(time.time_ns() // 1_000_000, offset_ms, speed)


@attrs.frozen
class FakeExchangeUrls:
    rest_url: str
    ws_url: str

    @property
    def spot_ws(self) -> str:
        return self.ws_url

    @property
    def futures_ws(self) -> str:
        return f"{self.ws_url}/market"


class FakeExchange:
    def __init__(self, market: Market | None = None, now_ms: Callable[[], int] | None = None) -> None:
        self.market = market or Market.default()
        self.now_ms = now_ms or exchange_clock()
        self.streams = FakeStreams(self.market, self.now_ms)
        self.rest_faults = RestFaults()
        self.rest_stats = RestStats()

    async def serve(
        self,
        host: str = "127.0.0.1",
        rest_port: int = 0,
        ws_port: int = 0,
        *,
        task_status: trio.TaskStatus[FakeExchangeUrls] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        config = HypercornConfig()
        config.bind = [f"{host}:{rest_port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("fakex.rest")
        app = cast(ASGIFramework, build_rest_app(self.market, self.now_ms, self.rest_faults, self.rest_stats))
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(lambda task_status: hypercorn_serve(app, config, task_status=task_status))
            ws_url = await nursery.start(serve_streams, self.streams, host, ws_port)
            task_status.started(FakeExchangeUrls(rest_url=binds[0], ws_url=ws_url))
