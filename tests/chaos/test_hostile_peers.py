"""Issue 16's hostile-peer matrix, against the real ``klined`` process: for each listener (control socket,
``/ws/market``, an ordinary HTTP route, the SSE stream), garbage then a close before the answer, a reset in
the middle of a request and of an answer, a half-close after a partial request, a peer that never sends, one
that trickles its request a byte a second, and 200 of them at once.

After every case: the process is alive, the real ``klinectl status`` answers, HTTP answers, a subscriber that
connected before everything still receives live candles in order, and the RSS stays bounded. At the end the
daemon's log holds no traceback. Each case's outcome is printed as a table (``pytest -s`` shows it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from daemon.fakex.server import FakeExchange
from tests.chaos.hostile_peers import ETH, PEERS, Listener, crowd, listeners, must_be_cut
from tests.klined_process import BIN, klined

CUT_S = 2.0  # http_idle_timeout_s and control_request_timeout_s of the daemon under test
RSS_GROWTH_MB = 150  # 200 peers at once are ~200 tasks and sockets: well under this, and freed after
HISTORY = 3000  # stored candles: a whole answer (tail, catchup) takes many writes
CROWD = 200  # hostile peers at once


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def candle(t: int) -> dict[str, Any]:
    return {"candle_time": t, "open": 10.0, "high": 11.0, "low": 9.0, "close": 10.5, "volume": 1.0}


class Survivor:
    """A subscriber connected before the hostile peers; it must keep getting every live candle, in order."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.times: list[int] = []
        self.moved = trio.Event()

    async def read(self) -> None:
        while True:
            frame = orjson.loads(await self.ws.get_message())
            if frame["type"] == "candle_closed":
                self.times.append(frame["candle"]["candle_time"])
            elif frame["type"] == "candles_batch":
                self.times.extend(c["candle_time"] for c in frame["candles"])
            self.moved.set()

    async def wait_for(self, t: int) -> None:
        with trio.fail_after(10):
            while t not in self.times:
                self.moved = trio.Event()
                await self.moved.wait()
        assert self.times == sorted(set(self.times)), "a duplicate or an out-of-order candle"


class Checks:
    def __init__(self, proc: trio.Process, http: httpx.AsyncClient, control: str, survivor: Survivor) -> None:
        self.proc, self.http, self.control, self.survivor = proc, http, control, survivor
        self.next_t = 60 * (HISTORY + 1)
        self.rss_start = rss_mb(proc.pid)
        self.rss_max = self.rss_start

    async def all_well(self, case: str) -> None:
        assert self.proc.returncode is None, f"{case}: klined exited with {self.proc.returncode}"
        status = await trio.run_process(
            [str(BIN / "klinectl"), "--socket", self.control, "--json", "status"], capture_stdout=True, check=False
        )
        assert status.returncode == 0, f"{case}: klinectl status failed"
        assert "last_seq" in json.loads(status.stdout)
        assert (await self.http.get("/api/version")).status_code == 200, case
        t, self.next_t = self.next_t, self.next_t + 60
        r = await self.http.post("/api/market/ingest/candle_closed", json={"series_id": ETH, "candle": candle(t)})
        assert r.status_code == 200, (case, r.text)
        await self.survivor.wait_for(t)
        self.rss_max = max(self.rss_max, rss_mb(self.proc.pid))
        assert self.rss_max - self.rss_start < RSS_GROWTH_MB, f"{case}: RSS {self.rss_start:.0f} -> {self.rss_max:.0f}"


async def run_matrix(listener_name: str, tmp_path: Path) -> list[tuple[str, str, str]]:
    fake = FakeExchange()
    data, log = tmp_path / "data", tmp_path / "klined.log"
    rows: list[tuple[str, str, str]] = []
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(fake.serve)
        env = {
            "KLINED_HTTP_IDLE_TIMEOUT_S": str(CUT_S),
            "KLINED_CONTROL_REQUEST_TIMEOUT_S": str(CUT_S),
            "KLINED_HTTP_SEND_TIMEOUT_S": str(CUT_S),
            "KLINED_ENABLE_DEBUG_API": "1",
        }
        async with klined(data, urls, log_to=log, **env) as (proc, url), httpx.AsyncClient(base_url=url) as http:
            history = [candle(60 * (i + 1)) for i in range(HISTORY)]
            r = await http.post(
                "/api/dev/market/ingest/candles_closed_batch", json={"series_id": ETH, "candles": history}
            )
            assert r.status_code == 200, r.text
            port = int(url.rsplit(":", 1)[1])
            listener = next(x for x in listeners(str(data / "klined.sock"), port) if x.name == listener_name)
            async with open_websocket_url(url.replace("http://", "ws://") + "/ws/market") as ws:
                survivor = Survivor(ws)
                nursery.start_soon(survivor.read)
                await ws.send_message(orjson.dumps({"type": "subscribe", "series_id": ETH, "since": 60 * HISTORY}))
                checks = Checks(proc, http, str(data / "klined.sock"), survivor)
                await checks.all_well("start")
                for kind, peer in PEERS.items():
                    outcome = await peer(listener, CUT_S)
                    if must_be_cut(listener.name, kind):
                        assert outcome != "open", f"{listener.name}/{kind}: not cut within {CUT_S + 5} s"
                    await checks.all_well(f"{listener.name}/{kind}")
                    rows.append((listener.name, kind, outcome))
                counts = await crowd(listener, CUT_S, CROWD)
                await checks.all_well(f"{listener.name}/200 at once")
                left_open = [k for k in counts if k.endswith(":open") and must_be_cut(listener.name, k.split(":")[0])]
                assert not left_open, counts
                rows.append((listener.name, "200 at once", ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))))
                rows.append((listener.name, "RSS", f"{checks.rss_start:.0f} MB at start, {checks.rss_max:.0f} MB max"))
                nursery.cancel_scope.cancel()
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[text.index("Traceback") - 2000 : text.index("Traceback") + 3000]
    after_ready = text[text.index('"daemon_ready"') :].splitlines()[1:]
    peers = len(PEERS) + CROWD
    assert len(after_ready) <= peers + 20, "more than a log line per hostile peer"
    rows.append((listener_name, "log lines", f"{len(after_ready)} after ready, for {peers} hostile peers"))
    return rows


@pytest.mark.parametrize("listener_name", ["control", "ws_market", "http", "sse"])
async def test_no_peer_can_end_or_stall_the_daemon(listener_name: str, tmp_path: Path) -> None:
    rows = await run_matrix(listener_name, tmp_path)
    width = max(len(r[1]) for r in rows)
    print()
    for name, case, outcome in rows:
        print(f"{name:<10} {case:<{width}}  {outcome}")


def test_every_listener_is_in_the_matrix() -> None:
    names = {x.name for x in listeners("/nonexistent", 1)}
    assert names == {"control", "ws_market", "http", "sse"}
    assert isinstance(listeners("/x", 1)[0], Listener)
