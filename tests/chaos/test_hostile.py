"""Hostile clients (issue 9): fuzzed WebSocket frames and HTTP parameters, a flood of connections past the
limit, 1 MiB frames and invalid UTF-8. The daemon answers with errors, keeps serving a well-behaved
client, never answers 500, and its memory stays bounded (RSS printed before and after)."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, open_websocket_url

from tests.serving.harness import S1, SENTINEL, SENTINEL_REPLY, Client, daemon

SERIES_TEXT = st.one_of(
    st.sampled_from([S1, "binance:spot:ETH/USDT:5m", "binance:futures:BTC/USDT:1h", "", "x", S1.upper()]),
    st.text(alphabet=string.printable, max_size=40),
    st.builds(lambda a, b: f"binance:spot:{a}/{b}:1m", st.text(max_size=6), st.text(max_size=6)),
)
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
MESSAGE = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["subscribe", "unsubscribe", "ping", "", "SUBSCRIBE"]) | ANY_JSON,
        "series_id": SERIES_TEXT | ANY_JSON,
        "since": st.none() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5) | ANY_JSON,
        "supports_batch": st.none() | st.booleans() | ANY_JSON,
    },
)
FRAME = st.one_of(
    MESSAGE.map(json.dumps),  # the stdlib: integers past 64 bits and NaN are hostile input too
    ANY_JSON.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200),  # not UTF-8 at all, as a binary frame
)
ERROR_CODES = {"bad_request", "capacity", "ondemand_ingest_capacity"}


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


async def assert_answers_only_errors(client: Client) -> None:
    """Every frame up to the marker is an error frame or data of a series the fuzzer happened to subscribe."""
    await client.send(SENTINEL)
    while (frame := await client.recv()) != SENTINEL_REPLY:
        assert frame["type"] in {"error", "candle_closed", "candles_batch", "gap", "candle_forming"}, frame
        if frame["type"] == "error":
            assert frame["code"] in ERROR_CODES, frame
            assert isinstance(frame["message"], str), frame
            assert frame["message"], frame


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(FRAME, min_size=20, max_size=120))
async def test_fuzzed_frames_get_errors_and_the_connection_and_others_keep_working(
    tmp_path_factory: Any, frames: list[str | bytes]
) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")
    async with daemon(tmp) as d, d.client() as fuzzed, d.client() as good:
        await good.subscribe(since=None)
        for frame in frames:
            if isinstance(frame, bytes):
                await fuzzed.ws.send_message(frame)
            else:
                await fuzzed.ws.send_message(frame)
        await assert_answers_only_errors(fuzzed)
        await d.ingest(120)
        assert (await good.frames_until_quiet())[-1]["candle"]["candle_time"] == 120


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(
        [
            "/api/market/candles",
            "/api/factor/slices",
            "/api/draw/delta",
            "/api/market/health",
            "/api/factor/catalog",
            "/api/frame/live",
            "/api/frame/at_time",
            "/api/delta/poll",
            "/api/factor/health",
        ]
    ),
    params=st.dictionaries(
        st.sampled_from(
            ["series_id", "since", "limit", "at_time", "window_candles", "cursor_version_id", "now_time", "after_id"]
        )
        | st.text(max_size=6),
        SERIES_TEXT | st.integers(-(2**70), 2**70).map(str) | st.text(max_size=12),
        max_size=5,
    ),
)
async def test_fuzzed_http_parameters_are_answered_never_with_a_500(
    tmp_path_factory: Any, path: str, params: dict[str, str]
) -> None:
    tmp = tmp_path_factory.mktemp("http")
    async with daemon(tmp) as d:
        await d.ingest(120)
        r = await d.http.get(path, params=params)
        assert r.status_code in (200, 404, 409, 422), (r.status_code, r.text)
        body = r.json()
        if r.status_code != 200:
            assert set(body) == {"code", "detail"}, body


async def test_floods_huge_frames_and_invalid_utf8_leave_memory_bounded(tmp_path: Path) -> None:
    before = rss_mb()
    async with daemon(tmp_path, KLINED_MARKET_WS_MAX_CONNECTIONS="40") as d, d.client() as good:
        await good.subscribe(since=None)
        refused = 0

        async def one_flooder(results: list[str]) -> None:
            try:
                async with open_websocket_url(d.ws_url) as ws:
                    frame = orjson.loads(await ws.get_message())
                    results.append(frame.get("code", "?"))
            except ConnectionClosed:
                results.append("closed")

        for _round in range(3):  # 3 x 80 connections at once, against a limit of 40
            results: list[str] = []
            async with trio.open_nursery() as nursery:
                # the ones let in say nothing and are cut by the deadline below; the others get "capacity"
                with trio.move_on_after(3):
                    for _ in range(80):
                        nursery.start_soon(one_flooder, results)
                    await trio.sleep(2)
                nursery.cancel_scope.cancel()
            refused += results.count("capacity")
        assert refused > 0
        async with open_websocket_url(d.ws_url, max_message_size=64 << 20) as ws:
            huge = Client(ws, d.hub)
            await huge.send({"type": "subscribe", "series_id": S1, "since": None, "pad": "x" * (70 << 10)})
            assert await huge.recv() == {"type": "error", "code": "bad_request", "message": "message too large"}
            await ws.send_message(b"\xff\xfe{not utf-8\x80")
            frame = await huge.recv()
            assert (frame["type"], frame["code"]) == ("error", "bad_request")
            await huge.send(SENTINEL)
            assert await huge.recv() == SENTINEL_REPLY  # still open and served
        # a 1 MiB frame: over hypercorn's own cap, this one connection is closed (1009), nothing else
        async with open_websocket_url(d.ws_url) as ws:
            await ws.send_message("y" * (1 << 20) + "z")
            with pytest.raises(ConnectionClosed):
                await ws.get_message()
        for t in (120, 180):
            await d.ingest(t)
        got = [f["candle"]["candle_time"] for f in await good.frames_until_quiet() if f["type"] == "candle_closed"]
        assert got == [120, 180]
        async with httpx.AsyncClient(base_url=d.running.http_url) as http:
            assert (await http.get("/api/market/candles", params={"series_id": S1})).status_code == 200
    after = rss_mb()
    print(f"RSS of the test process with the daemon in it: {before:.0f} MB before, {after:.0f} MB after")
    assert after - before < 96
