"""End to end: ``klinectl backup FILE`` from the real ``klined`` while candles are being ingested, then
``klinectl restore`` into a fresh data directory and ``klined`` started there: the same events, seq by seq, up
to the backup's last seq, the same candles served over HTTP, the pins back, projections rebuilt from the log."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import httpx
import trio

from daemon.fakex.server import FakeExchange
from daemon.storage.eventlog import EventLog
from tests.klined_process import BIN, BTC, PROCESS_DEADLINE_S, klined

ETH = "binance:spot:ETH/USDT:1m"
SOL = "binance:spot:SOL/USDT:1m"


def candle(t: int) -> dict[str, object]:
    return {"candle_time": t, "open": 10.0, "high": 11.0, "low": 9.0, "close": 10.5, "volume": float(t % 7)}


class Acked:
    """The candle times the daemon acknowledged, in order, and a wait for there to be ``n`` of them."""

    def __init__(self) -> None:
        self.times: list[int] = []
        self._grew = trio.Event()

    def add(self, t: int) -> None:
        self.times.append(t)
        self._grew.set()
        self._grew = trio.Event()

    async def wait_count(self, n: int) -> None:
        with trio.fail_after(PROCESS_DEADLINE_S):
            while len(self.times) < n:
                await self._grew.wait()


async def klinectl(*args: str) -> tuple[int, str]:
    done = await trio.run_process([str(BIN / "klinectl"), *args], capture_stdout=True, capture_stderr=True, check=False)
    return done.returncode, (done.stdout + done.stderr).decode()


async def test_backup_during_ingest_restores_into_a_fresh_directory(tmp_path: Path) -> None:
    fake = FakeExchange()
    data, fresh, archive = tmp_path / "data", tmp_path / "fresh", tmp_path / "klined.backup"
    sock = str(data / "klined.sock")
    acked = Acked()
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(fake.serve)
        async with klined(data, urls, KLINED_ENABLE_DEBUG_API="1") as (_proc, url):
            assert (await klinectl("--socket", sock, "pin", SOL))[0] == 0
            async with httpx.AsyncClient(base_url=url, timeout=PROCESS_DEADLINE_S) as http:
                history = [candle(60 * (i + 1)) for i in range(2000)]
                r = await http.post(
                    "/api/dev/market/ingest/candles_closed_batch", json={"series_id": ETH, "candles": history}
                )
                assert r.status_code == 200, r.text
                stop = trio.Event()

                async def ingest() -> None:
                    t = 60 * 2001
                    while not stop.is_set():
                        r = await http.post(
                            "/api/market/ingest/candle_closed", json={"series_id": ETH, "candle": candle(t)}
                        )
                        assert r.status_code == 200, r.text
                        acked.add(t)
                        t += 60

                async with trio.open_nursery() as writers:
                    writers.start_soon(ingest)
                    await acked.wait_count(20)
                    code, out = await klinectl("--socket", sock, "backup", str(archive), "--json")
                    assert code == 0, out
                    answer = json.loads(out[out.index("{") :])
                    # Ingest goes on past the copy's snapshot: of two more acknowledged candles, the one in
                    # flight may predate the snapshot, the next was sent after this answer.
                    await acked.wait_count(len(acked.times) + 2)
                    stop.set()
            assert len(acked.times) > 20
            code, out = await klinectl("--socket", sock, "backup", str(archive))
            assert code != 0, out  # never overwritten
            assert "exists" in out, out
        last_seq = answer["last_seq"]
        assert answer["bytes"] == archive.stat().st_size
        assert (archive.stat().st_mode & 0o777) == 0o600  # the client made it, owner-only
        with tarfile.open(archive) as tar:
            assert set(tar.getnames()) == {"eventlog/data.mdb", "pins.json", "klined-backup.json"}
        code, out = await klinectl("restore", str(archive), "--data-dir", str(fresh))
        assert code == 0, out
        assert not (fresh / "projections").exists()
        with EventLog(data / "eventlog") as original, EventLog(fresh / "eventlog") as restored:
            theirs = [e for e in original.events_since(0) if e.seq <= last_seq]
            ours = restored.events_since(0)
            assert restored.last_seq() == last_seq < original.last_seq()  # ingest went on past the snapshot
            assert ours == theirs
            kept = [c.candle_time for c in restored.range(ETH)]
        assert kept[:2000] == [60 * (i + 1) for i in range(2000)]
        assert set(kept[2000:]) <= set(acked.times)
        async with klined(fresh, urls, KLINED_ENABLE_DEBUG_API="1") as (_proc, url):
            async with httpx.AsyncClient(base_url=url, timeout=PROCESS_DEADLINE_S) as http:
                body = (
                    await http.get("/api/market/candles", params={"series_id": ETH, "since": 0, "limit": 5000})
                ).json()
                assert [c["candle_time"] for c in body["candles"]] == kept
                whitelist = (await http.get("/api/market/whitelist")).json()["series_ids"]
                assert whitelist == [BTC, SOL]  # the pins came back with the log
                slices = await _projected(http, kept[-1])
                assert slices["at_time"] == kept[-1]  # projections rebuilt from the restored log
            code, out = await klinectl("--socket", str(fresh / "klined.sock"), "--json", "status")
            assert code == 0, out
            assert json.loads(out[out.index("{") :])["last_seq"] >= last_seq
        nursery.cancel_scope.cancel()


async def _projected(http: httpx.AsyncClient, head: int) -> dict[str, Any]:
    """The factor slices once the projections' rebuild in the background reached ``head``."""
    with trio.fail_after(PROCESS_DEADLINE_S):
        while True:
            r = await http.get("/api/factor/slices", params={"series_id": ETH})
            if r.status_code == 200 and r.json().get("at_time") == head:
                body: dict[str, Any] = r.json()
                return body
            await trio.sleep(0.1)
