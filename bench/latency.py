"""Latency benchmark: how fast one closed candle becomes durable and reaches its subscribers.

Every figure is printed beside a baseline measured in the same run (absolute figures on these machines
drift 2-4x from day to day; the ratio is what counts):

- baselines: a bare durable LMDB commit (one put, ``sync=True``) in this process, and a
  ``GET /api/market/whitelist`` on the same daemon, same client, same connection;
- single-candle ``POST .../ingest/candle_closed``: p50 and p99 latency, and sequential POSTs per second;
- POST -> receipt at 1, 200 and 1000 subscribers of one series (the clients: ``bench/fanout.py``'s bare
  frame readers in their own process), p50 and p99 over every (candle, subscriber) pair;
- a minute-close burst of 1000 series on the fake exchange: exchange send -> durable (klined's writer) and
  exchange send -> subscriber receipt;
- trades -> closed candle at the tick for 500 trade-built symbols on the fake exchange: tick -> durable and
  tick -> subscriber receipt.

Run: ``python -m bench.latency [--posts 1000] [--parts post,subscribers,burst,trades]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import lmdb
import orjson

from actors.trade_series import TRADE_GRACE_S
from bench.fanout import DaemonLog, candle, reap, spawn_worker, start_klined, stop

SUBSCRIBER_COUNTS = (1, 200, 1000)
BOUNDARIES = 2
POSTS_PER_SUBSCRIBER_RUN = 200
SERIES = "binance:spot:S0000/USDT:1m"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))] if s else math.nan


def ms(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x * 1000:.2f} ms"


def quantiles(values: list[float]) -> dict[str, float]:
    return {"p50": pct(values, 0.5), "p99": pct(values, 0.99), "max": max(values, default=math.nan)}


# -- baselines ---------------------------------------------------------------------------------------


def bare_commit(n: int) -> list[float]:
    """One small put per durable write transaction: the floor a durable single-candle POST sits on."""
    with tempfile.TemporaryDirectory(prefix="klined-bench-commit-") as tmp:
        env = lmdb.open(tmp, map_size=64 << 20, sync=True, metasync=True)
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            with env.begin(write=True) as txn:
                txn.put(i.to_bytes(8, "big"), b"x" * 64)
            times.append(time.perf_counter() - t0)
        env.close()
    return times


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client on a blocking socket, so that what is timed is klined, not a
    client library: one request written at once, the answer read by its Content-Length."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.netloc
        self.address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.sock = self._connect()
        self.buf = b""

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + body)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head_bytes, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head_bytes.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        length = int(headers["content-length"])
        while len(self.buf) < length:
            self._fill()
        answer, self.buf = self.buf[:length], self.buf[length:]
        if headers.get("connection", "").lower() == "close":  # hypercorn's keep_alive_max_requests
            self.sock.close()
            self.sock, self.buf = self._connect(), b""
        return status, answer

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise OSError("the server closed the connection")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def post_body(series: str, t: int) -> bytes:
    return orjson.dumps({"series_id": series, "candle": candle(t)})


def timed(n: int, request: Callable[[int], tuple[int, bytes]]) -> list[float]:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        status, answer = request(i)
        times.append(time.perf_counter() - t0)
        if status != 200:
            raise SystemExit(f"HTTP {status}: {answer[:200]!r}")
    return times


# -- single POSTs --------------------------------------------------------------------------------------


def single_posts(url: str, n: int) -> dict[str, Any]:
    base = (int(time.time()) // 60 - n - 10) * 60
    http = RawHttp(url)
    try:
        get = timed(n, lambda i: http.request("GET", "/api/market/whitelist"))
        path = "/api/market/ingest/candle_closed"
        t0 = time.perf_counter()
        posts = timed(n, lambda i: http.request("POST", path, post_body("binance:spot:POST/USDT:1m", base + 60 * i)))
        wall = time.perf_counter() - t0
    finally:
        http.close()
    return {"get": get, "post": posts, "posts_per_s": n / wall}


# -- POST -> receipt at N subscribers ---------------------------------------------------------------------


def receipts(url: str, clients: int, posts: int, run: int) -> dict[str, Any]:
    """``posts`` candles POSTed one at a time, a pause between them, to one series ``clients`` subscribe to."""
    base = (int(time.time()) // 60 - 100_000 + (posts + 10) * run) * 60  # each run later than the last
    http = RawHttp(url)
    path = "/api/market/ingest/candle_closed"
    http.request("POST", path, post_body(SERIES, base))  # the seed: each client's catchup says it is live
    ws_url = url.replace("http://", "ws://") + "/ws/market"
    worker = spawn_worker(ws_url, argparse.Namespace(clients=clients, series=1, client="raw"))
    assert worker.stdin is not None
    assert worker.stdout is not None
    sent: dict[int, tuple[float, float]] = {}
    try:
        ready = json.loads(worker.stdout.readline())
        if ready["ready"] < clients:
            print(f"warning: only {ready['ready']}/{clients} clients subscribed", file=sys.stderr)
        for k in range(1, posts + 1):
            t = base + 60 * k
            body = post_body(SERIES, t)
            t0 = time.time()
            status, answer = http.request("POST", path, body)
            sent[t] = (t0, time.time())
            if status != 200:
                raise SystemExit(f"HTTP {status}: {answer[:200]!r}")
            time.sleep(0.02 + clients / 20_000)  # one candle's fan-out ends before the next begins
        time.sleep(1.0)
        worker.stdin.write("stop\n")
        worker.stdin.flush()
        result = json.loads(worker.stdout.readline())
    finally:
        http.close()
        reap(worker)
    arrivals = result["arrivals"][SERIES]
    after_send = [a - s for t, (s, _) in sent.items() for a in arrivals.get(str(t), [])]
    post = [r - s for s, r in sent.values()]
    return {
        "clients": clients,
        "ready": ready["ready"],
        "after_send": after_send,
        "post": post,
        "expected": clients * posts,
    }


# -- live bursts on the fake exchange ------------------------------------------------------------------


class FakeExchangeProcess:
    """``python -m daemon.fakex`` with N generated symbols, its clock offset so that a minute boundary falls
    ``lead_s`` from now; with ``print_closes``, the send instant (E) of every closed kline it sends."""

    def __init__(self, n_symbols: int, lead_s: float) -> None:
        wall = time.time_ns() // 1_000_000
        self.boundary_ms = (wall // 60_000 + 2) * 60_000  # exchange time
        self.offset_ms = self.boundary_ms - int(wall + lead_s * 1000)
        cmd = [sys.executable, "-m", "daemon.fakex", "--generate", str(n_symbols), "--symbols", "BTCUSDT"]
        cmd += ["--offset-ms", str(self.offset_ms), "--print-closes"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        self.rest_url = self.proc.stdout.readline().split()[1]
        self.ws_url = self.proc.stdout.readline().split()[1]
        self.closes: dict[tuple[str, int], int] = {}  # (stream, open ms) -> E ms
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split()
            if parts and parts[0] == "close":
                self.closes[parts[1], int(parts[2])] = int(parts[3])

    def wall(self, exchange_ms: int) -> float:
        """An exchange instant as this host's wall clock (s)."""
        return (exchange_ms - self.offset_ms) / 1000

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def live_burst(n: int, lead_s: float, trades: bool) -> dict[str, Any]:
    """klined follows ``n`` series of the fake exchange (their klines, or with ``trades`` their trades) and
    ``n`` subscribers watch one series each through a minute boundary."""
    fake = FakeExchangeProcess(n, lead_s)
    series = [f"binance:spot:S{i:04d}/USDT:1m" for i in range(n)]
    env = {
        "KLINED_HTTP_PORT": "0",
        "KLINED_ENABLE_DEBUG_API": "1",
        "KLINED_MARKET_WS_MAX_CONNECTIONS": "4096",
        "KLINED_BINANCE_SPOT_WS_URL": fake.ws_url,
        "KLINED_BINANCE_SPOT_REST_URL": fake.rest_url,
        "KLINED_BINANCE_FUTURES_WS_URL": f"{fake.ws_url}/market",
        "KLINED_BINANCE_FUTURES_REST_URL": fake.rest_url,
        "KLINED_WHITELIST": ",".join(series),
        "KLINED_ENABLE_WHITELIST_INGEST": "1",
    }
    if trades:
        env["KLINED_TRADE_SOURCES"] = ",".join(s.rsplit(":", 1)[0] for s in series)
    try:
        with tempfile.TemporaryDirectory(prefix="klined-bench-burst-") as tmp:
            proc, url, log = start_klined({**env, "KLINED_DATA_DIR": tmp})
            try:
                ws_url = url.replace("http://", "ws://") + "/ws/market"
                worker = spawn_worker(ws_url, argparse.Namespace(clients=n, series=n, client="raw"))
                assert worker.stdin is not None
                assert worker.stdout is not None
                try:
                    ready = json.loads(worker.stdout.readline())
                    boundary_wall = fake.wall(fake.boundary_ms)
                    ahead_s = boundary_wall - time.time()
                    print(f"  ({ready['ready']} subscribers ready {ahead_s:.1f} s ahead)", file=sys.stderr)
                    if ahead_s < 1:
                        raise SystemExit(f"not ready before the boundary; raise --lead (now {lead_s:.0f} s)")
                    time.sleep(boundary_wall + 60 * (BOUNDARIES - 1) + 4 - time.time())
                    worker.stdin.write("stop\n")
                    worker.stdin.flush()
                    result = json.loads(worker.stdout.readline())
                finally:
                    reap(worker)
                with httpx.Client(base_url=url, timeout=30) as http:
                    writer = http.get("/api/market/debug/ingest_state").json()["stats"]["writer"]
                    published = {}
                    for s in series:
                        rows = http.get("/api/market/debug/publish_times", params={"series_id": s}).json()
                        published.update({(s, t): at for t, at in rows["published"]})
            finally:
                stop(proc)
    finally:
        fake.stop()
    bursts = []
    for k in range(BOUNDARIES):  # the first after start (projections cold), then steady
        boundary_ms = fake.boundary_ms + 60_000 * k
        t = boundary_ms // 1000 - 60  # the period the boundary closes
        origin: dict[str, float] = {}  # series -> when its close left the exchange (from trades: the tick)
        for s in series:
            stream = f"{s.split(':')[2].replace('/', '').lower()}@kline_1m"
            sent = fake.closes.get((stream, t * 1000))
            if trades:
                origin[s] = fake.wall(boundary_ms) + TRADE_GRACE_S  # the actors' tick waits for late trades
            elif sent is not None:
                origin[s] = fake.wall(sent)
        to_publish = [published[s, t] - origin[s] for s in origin if (s, t) in published]
        to_receipt = [a - origin[s] for s in origin for a in result["arrivals"][s].get(str(t), [])]
        bursts.append((to_publish, to_receipt))
    if result["errors"]:
        failed, closed = result["failed"], result["closed"]
        print(f"  clients: {failed} failed, {closed} closed: {result['errors'][:3]}", file=sys.stderr)
    return {
        "n": n,
        "ready": ready["ready"],
        "bursts": bursts,
        "writer": writer,
        "log": log,
    }


# -- report ----------------------------------------------------------------------------------------------


def row(label: str, value: str) -> None:
    print(f"  {label:.<58} {value}")


def report_posts(commit: list[float], r: dict[str, Any]) -> None:
    c50, g50 = statistics.median(commit), statistics.median(r["get"])
    p = quantiles(r["post"])
    print(f"single-candle POST, sequential on one keep-alive connection ({len(r['post'])} requests)")
    row("baseline: bare durable LMDB commit p50", ms(c50))
    row("baseline: GET /api/market/whitelist p50 / p99", f"{ms(g50)} / {ms(pct(r['get'], 0.99))}")
    row("POST candle_closed p50 / p99", f"{ms(p['p50'])} / {ms(p['p99'])}")
    row("POST p50 / GET p50", f"{p['p50'] / g50:.2f}x")
    row("POST p50 / bare commit p50", f"{p['p50'] / c50:.2f}x")
    row("sequential POSTs per second", f"{r['posts_per_s']:.0f}/s")


def report_receipts(rows: list[dict[str, Any]], get50: float) -> None:
    print("POST -> receipt at N subscribers of one series (p50 / p99 over every candle x subscriber)")
    for r in rows:
        q = quantiles(r["after_send"])
        got = len(r["after_send"])
        row(
            f"{r['clients']:>5} subscribers: send -> receipt",
            f"{ms(q['p50'])} / {ms(q['p99'])}  (max {ms(q['max'])}, {got}/{r['expected']} received,"
            f" p99 = {q['p99'] / get50:.1f}x GET p50)",
        )
        row(f"{r['clients']:>5} subscribers: the POST itself p50", ms(pct(r["post"], 0.5)))


def report_burst(r: dict[str, Any], get50: float, trades: bool) -> None:
    what = "trades -> closed candle at the tick" if trades else "minute-close burst, exchange send"
    origin = "tick" if trades else "send"
    print(f"{what}: {r['n']} series, one subscriber each ({r['ready']} subscribed)")
    if not trades:
        lat = r["writer"]["send_to_durable_ms"]
        row("both boundaries: send -> durable (klined's writer) p50/p99", f"{lat.get('p50')} ms / {lat.get('p99')} ms")
    for k, (to_publish, to_receipt) in enumerate(r["bursts"]):
        label = "first boundary (cold)" if k == 0 else "next boundary (steady)"
        q = quantiles(to_publish)
        row(
            f"{label}: {origin} -> durable+projected p50/p99",
            f"{ms(q['p50'])} / {ms(q['p99'])}  (max {ms(q['max'])}, {len(to_publish)}/{r['n']})",
        )
        q = quantiles(to_receipt)
        row(
            f"{label}: {origin} -> receipt p50/p99",
            f"{ms(q['p50'])} / {ms(q['p99'])}  (max {ms(q['max'])}, {len(to_receipt)}/{r['n']},"
            f" p99 = {q['p99'] / get50:.0f}x GET p50)",
        )
    _report_log(r["log"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=1000, help="sequential single-candle POSTs")
    parser.add_argument("--subscribers", default=",".join(map(str, SUBSCRIBER_COUNTS)))
    parser.add_argument("--receipt-posts", type=int, default=POSTS_PER_SUBSCRIBER_RUN)
    parser.add_argument("--parts", default="post,subscribers,burst,trades")
    parser.add_argument("--burst-series", type=int, default=1000)
    parser.add_argument("--trade-symbols", type=int, default=500)
    parser.add_argument("--lead", type=float, default=60.0, help="seconds from start to the first kline boundary")
    parser.add_argument("--trades-lead", type=float, default=120.0, help="the same for the trade-built symbols")
    args = parser.parse_args()
    parts = set(args.parts.split(","))

    commit = bare_commit(args.posts)
    with tempfile.TemporaryDirectory(prefix="klined-bench-latency-") as tmp:
        proc, url, log = start_klined(
            {
                "KLINED_DATA_DIR": tmp,
                "KLINED_HTTP_PORT": "0",
                "KLINED_ENABLE_DEBUG_API": "1",
                "KLINED_MARKET_WS_MAX_CONNECTIONS": "4096",
            }
        )
        try:
            posts = single_posts(url, args.posts)
            if "post" in parts:
                report_posts(commit, posts)
            if "subscribers" in parts:
                counts = [int(x) for x in args.subscribers.split(",")]
                report_receipts(
                    [receipts(url, n, args.receipt_posts, run) for run, n in enumerate(counts)],
                    statistics.median(posts["get"]),
                )
        finally:
            stop(proc)
    _report_log(log)
    get50 = statistics.median(posts["get"])
    if "burst" in parts:
        report_burst(live_burst(args.burst_series, args.lead, trades=False), get50, trades=False)
    if "trades" in parts:
        report_burst(live_burst(args.trade_symbols, args.trades_lead, trades=True), get50, trades=True)


def _report_log(log: DaemonLog) -> None:
    if log.events:
        print(f"daemon warnings/errors: {dict(log.events)}")
        for line in log.samples:
            print(f"  {line}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
