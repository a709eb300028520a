"""Fan-out benchmark: klined serving 1000 WebSocket clients, a 5000-candle catchup and HTTP candle reads.

klined and the WebSocket clients run as separate processes on loopback (the clients: this file again,
``--clients-worker``, trio + trio_websocket). Three measurements, each beside a baseline from the same run:

1. Live fan-out: N clients over S series (one subscription each). For a window, the driver POSTs one closed
   candle per series per second (``candle_closed``, which returns once the candle is durable and published)
   and forming candles at 4/s per series. Latency of a closed candle = the client's wall time on arrival
   minus klined's wall time when it published the candle (durable, handed to the fan-out; read from the
   debug API afterwards; ``time.time()`` in both processes, one host clock). Also printed: arrival minus the
   driver's POST return (can be negative: klined publishes before it answers) and POST send (an upper
   bound), and the spread from the first to the last client to get one second's candles.
   Also klined's CPU share of one core over the window.
2. Catchup: 5000 stored candles (debug batch ingest, not published); a fresh client subscribes with
   ``since=null, supports_batch=true``: subscribe sent -> the last candles_batch frame received. Baseline:
   the same 5000 candles fetched by ``GET /api/market/candles?limit=5000``.
3. HTTP reads: ``GET /api/market/candles?limit=2000`` requests/s from a few concurrent clients. Baseline:
   ``GET /api/version`` requests/s.

Run: ``python bench/fanout.py [--clients 1000] [--series 10] [--window 20]``.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

TICK = os.sysconf("SC_CLK_TCK")
CATCHUP = 5000
CATCHUP_SERIES = "binance:spot:CATCHUP/USDT:1m"
READ_LIMIT = 2000
FORMING_PER_S = 4
CONNECT_CONCURRENCY = 50  # handshakes in flight at once (hypercorn's listen backlog is 100)
MAX_MESSAGE = 64 << 20


# -- processes ----------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class DaemonLog:
    """Drains klined's stdout (so a full pipe never stalls it) and keeps its warnings and errors."""

    def __init__(self, stream: Any) -> None:
        self.levels: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.samples: list[str] = []
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: Any) -> None:
        for line in stream:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            level = obj.get("level", "?")
            self.levels[level] += 1
            if level in ("warning", "error", "critical"):
                self.events[f"{level}:{obj.get('event')}"] += 1
                if len(self.samples) < 5:
                    self.samples.append(line.strip()[:300])

    def join(self) -> None:
        """Wait until the stream has ended (a finished log file, read whole)."""
        self._thread.join()


def start_klined(env: dict[str, str]) -> tuple[subprocess.Popen[str], str, DaemonLog]:
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "klined"), "run"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if '"daemon_ready"' in line:
            return proc, json.loads(line)["http_url"], DaemonLog(proc.stdout)
    raise SystemExit("klined exited before it was ready")


def stop(proc: subprocess.Popen[Any]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


# -- helpers ------------------------------------------------------------------------------------------


def candle(t: int, close: float = 100.0) -> dict[str, Any]:
    return {
        "candle_time": t,
        "open": 100.0,
        "high": max(100.0, close) + 1,
        "low": min(100.0, close) - 1,
        "close": close,
        "volume": 1.5,
    }


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))] if s else math.nan


def ms(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x * 1000:.1f} ms"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def series_names(n: int, base: str = "S") -> list[str]:
    return [f"binance:spot:{base}{i:04d}/USDT:1m" for i in range(n)]


# -- the WebSocket clients process ----------------------------------------------------------------------


async def read_handshake(stream: trio.SocketStream) -> bytes:
    """Read the server's 101 answer; returns what followed it."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise OSError("closed during the handshake")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise OSError(f"handshake refused: {head[:80]!r}")
    return rest


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 5.3), payloads under 126 bytes."""
    mask = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[k % 4] for k, b in enumerate(payload))


async def clients_worker(ws_url: str, n_clients: int, series: list[str], raw: bool = True) -> None:
    """N clients, client i on series i % S. Prints ``ready`` once every client has its catchup, then records
    closed-candle arrivals until a line arrives on stdin; prints the results as one JSON line."""
    arrivals: dict[str, dict[int, list[float]]] = {s: {} for s in series}
    frames: Counter[str] = Counter()
    errors: list[str] = []
    state = {"ready": 0, "closed": 0, "failed": 0}
    all_ready = trio.Event()
    limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)
    started = time.perf_counter()

    def record(obj: dict[str, Any], now: float) -> None:
        kind = obj.get("type", "?")
        frames[kind] += 1
        if kind == "candle_closed":
            arrivals[obj["series_id"]].setdefault(obj["candle"]["candle_time"], []).append(now)
        elif kind == "candles_batch":
            per_time = arrivals[obj["series_id"]]
            for c in obj["candles"]:
                per_time.setdefault(c["candle_time"], []).append(now)
        elif kind == "error" and len(errors) < 10:
            errors.append(json.dumps(obj))

    async def client(i: int) -> None:
        sub = orjson.dumps(
            {"type": "subscribe", "series_id": series[i % len(series)], "since": None, "supports_batch": True}
        ).decode()
        await limiter.acquire_on_behalf_of(i)
        held = True
        try:
            async with open_websocket_url(
                ws_url, max_message_size=MAX_MESSAGE, connect_timeout=30, disconnect_timeout=2
            ) as ws:
                await ws.send_message(sub)
                first = await ws.get_message()  # the catchup (the seed candle): the subscription is live
                limiter.release_on_behalf_of(i)
                held = False
                record(orjson.loads(first), time.time())
                state["ready"] += 1
                if state["ready"] == n_clients:
                    all_ready.set()
                while True:
                    msg = await ws.get_message()
                    now = time.time()
                    if isinstance(msg, str) and msg.startswith('{"type":"candle_forming"'):
                        frames["candle_forming"] += 1
                        continue
                    record(orjson.loads(msg), now)
        except ConnectionClosed as e:
            state["closed"] += 1
            if len(errors) < 10:
                errors.append(f"client {i}: closed {e.reason}")
        except (HandshakeError, OSError) as e:
            state["failed"] += 1
            if len(errors) < 10:
                errors.append(f"client {i}: {e!r}")
        finally:
            if held:
                limiter.release_on_behalf_of(i)

    async def raw_client(i: int) -> None:
        """The same client on a bare socket: a minimal RFC 6455 reader, so that what is measured is klined's
        fan-out, not a Python WebSocket library parsing a thousand frames at once on the client side."""
        sub = orjson.dumps(
            {"type": "subscribe", "series_id": series[i % len(series)], "since": None, "supports_batch": True}
        )
        url = urlsplit(ws_url)
        await limiter.acquire_on_behalf_of(i)
        held = True
        try:
            stream = await trio.open_tcp_stream(url.hostname or "127.0.0.1", url.port or 80)
            key = base64.b64encode(os.urandom(16)).decode()
            await stream.send_all(
                f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            buf = await read_handshake(stream)
            await stream.send_all(client_frame(1, sub))
            ready = False
            while True:
                now = time.time()
                while len(buf) >= 2:
                    n, off = buf[1] & 0x7F, 2
                    if n == 126:
                        n, off = int.from_bytes(buf[2:4], "big"), 4
                    elif n == 127:
                        n, off = int.from_bytes(buf[2:10], "big"), 10
                    if len(buf) < off + n:
                        break
                    opcode, payload, buf = buf[0] & 0x0F, buf[off : off + n], buf[off + n :]
                    if opcode == 1:
                        if payload.startswith(b'{"type":"candle_forming"'):
                            frames["candle_forming"] += 1
                        else:
                            record(orjson.loads(payload), now)
                        if not ready:
                            ready = True
                            limiter.release_on_behalf_of(i)
                            held = False
                            state["ready"] += 1
                            if state["ready"] == n_clients:
                                all_ready.set()
                    elif opcode == 8:
                        state["closed"] += 1
                        return
                    elif opcode == 9:
                        await stream.send_all(client_frame(10, payload))
                chunk = await stream.receive_some(65536)
                if not chunk:
                    state["closed"] += 1
                    return
                buf += chunk
        except (OSError, trio.BrokenResourceError) as e:  # refused, or reset by klined
            state["failed"] += 1
            if len(errors) < 10:
                errors.append(f"client {i}: {e!r} from {e.__cause__!r}")
        finally:
            if held:
                limiter.release_on_behalf_of(i)

    async with trio.open_nursery() as nursery:
        for i in range(n_clients):
            nursery.start_soon(raw_client if raw else client, i)
        with trio.move_on_after(120):
            await all_ready.wait()
        # The clients' own collector pauses must not count as klined's latency: tune it as klined does.
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 10, 1000)
        print(json.dumps({"ready": state["ready"], "ready_s": time.perf_counter() - started}), flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)
        result = {"arrivals": arrivals, "frames": dict(frames), "errors": errors, **state}
        print(json.dumps(result), flush=True)
        nursery.cancel_scope.cancel()


# -- 1. live fan-out -----------------------------------------------------------------------------------


def spawn_worker(ws_url: str, args: argparse.Namespace) -> subprocess.Popen[str]:
    cmd = [sys.executable, __file__, "--clients-worker", "--url", ws_url]
    cmd += ["--clients", str(args.clients), "--series", str(args.series), "--client", args.client]
    cmd += ["--series-base", getattr(args, "series_base", "S")]  # another benchmark's series next to these
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def reap(proc: subprocess.Popen[str]) -> None:
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def read_line(stream: Any) -> dict[str, Any]:
    line = await trio.to_thread.run_sync(stream.readline)
    if not line:
        raise SystemExit("the clients process exited early")
    obj: dict[str, Any] = json.loads(line)
    return obj


async def fanout(http: httpx.AsyncClient, ws_url: str, daemon_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    series = series_names(args.series)
    seconds = max(1, int(args.window))
    base = (int(time.time()) // 60 - seconds - 10) * 60  # every candle of the window is a closed past minute
    for s in series:  # the seed: each client's catchup tells it its subscription is in place
        r = await http.post("/api/market/ingest/candle_closed", json={"series_id": s, "candle": candle(base)})
        r.raise_for_status()

    worker = await trio.to_thread.run_sync(spawn_worker, ws_url, args)
    assert worker.stdin is not None
    assert worker.stdout is not None
    try:
        ready = await read_line(worker.stdout)
        if ready["ready"] < args.clients:
            print(f"warning: only {ready['ready']}/{args.clients} clients subscribed", file=sys.stderr)

        posted: dict[tuple[str, int], tuple[float, float]] = {}
        post_errors: Counter[str] = Counter()
        forming_posts = 0
        current = dict.fromkeys(series, base)  # the latest closed candle posted, per series
        window_done = trio.Event()

        async def post_closed(s: str, t: int) -> None:
            sent = time.time()
            r = await http.post("/api/market/ingest/candle_closed", json={"series_id": s, "candle": candle(t)})
            returned = time.time()
            if r.status_code != 200:
                post_errors[f"closed {r.status_code}"] += 1
                return
            posted[s, t] = (sent, returned)
            current[s] = max(current[s], t)

        async def closed_driver(start: float) -> None:
            for k in range(1, seconds + 1):
                async with trio.open_nursery() as n:
                    for i, s in enumerate(series):
                        # All series close at once (a minute boundary), or spread over the second (--stagger).
                        offset = i / len(series) if args.stagger else 0.0
                        n.start_soon(post_closed_at, s, base + 60 * k, start + k - 1 + offset)
            await trio.sleep_until(start + seconds)
            window_done.set()

        async def post_closed_at(s: str, t: int, when: float) -> None:
            await trio.sleep_until(when)
            await post_closed(s, t)

        async def forming_driver(s: str, start: float) -> None:
            nonlocal forming_posts
            rng = random.Random(s)
            k = 0
            while not window_done.is_set():
                await trio.sleep_until(start + k / FORMING_PER_S)
                k += 1
                c = candle(current[s] + 60, 100.0 + rng.uniform(-1, 1))
                r = await http.post("/api/market/ingest/candle_forming", json={"series_id": s, "candle": c})
                if r.status_code != 200:
                    post_errors[f"forming {r.status_code}"] += 1
                forming_posts += 1

        cpu0, wcpu0, t0 = cpu_seconds(daemon_pid), cpu_seconds(worker.pid), time.perf_counter()
        start = trio.current_time() + 0.1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(closed_driver, start)
            for i, s in enumerate(series):  # forming posts interleave with the closed ones
                nursery.start_soon(forming_driver, s, start + (i + 0.5) / (FORMING_PER_S * len(series)))
        cpu1, wcpu1, t1 = cpu_seconds(daemon_pid), cpu_seconds(worker.pid), time.perf_counter()
        await trio.sleep(1.0)  # stragglers
        worker.stdin.write("stop\n")
        worker.stdin.flush()
        result = await read_line(worker.stdout)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(reap, worker)

    # The daemon's own publish instants (debug API): the candle durable and handed to the fan-out.
    published: dict[tuple[str, int], float] = {}
    for s in series:
        body = (await http.get("/api/market/debug/publish_times", params={"series_id": s})).json()
        published.update({(s, t): at for t, at in body["published"]})
    per_series = Counter(series[i % len(series)] for i in range(args.clients))
    after_return: list[float] = []
    after_send: list[float] = []
    after_publish: list[float] = []
    for (s, t), (sent, returned) in posted.items():
        for arrived in result["arrivals"][s].get(str(t), []):
            after_return.append(arrived - returned)
            after_send.append(arrived - sent)
            if (s, t) in published:
                after_publish.append(arrived - published[s, t])
    expected = sum(per_series[s] for s, _ in posted)
    post_times = [returned - sent for sent, returned in posted.values()]
    by_tick: dict[int, list[float]] = {}  # every series' candle of one second goes out in one group commit
    for s, t in posted:
        by_tick.setdefault(t, []).extend(result["arrivals"][s].get(str(t), []))
    spread = [max(a) - min(a) for a in by_tick.values() if a]
    # Publishing happens before the first arrival, so arrival - first arrival is a lower bound of the latency.
    after_first = [x - min(a) for a in by_tick.values() for x in a]
    return {
        "ready": ready,
        "posted": len(posted),
        "forming_posts": forming_posts,
        "post_errors": dict(post_errors),
        "expected": expected,
        "received": len(after_return),
        "after_return": after_return,
        "after_publish": after_publish,
        "after_send": after_send,
        "post_times": post_times,
        "spread": spread,
        "after_first": after_first,
        "cpu_share": (cpu1 - cpu0) / (t1 - t0) * 100,
        "worker_cpu_share": (wcpu1 - wcpu0) / (t1 - t0) * 100,
        "span_s": t1 - t0,
        "frames": result["frames"],
        "errors": result["errors"],
        "ws_closed": result["closed"],
        "ws_failed": result["failed"],
    }


# -- 2. catchup ----------------------------------------------------------------------------------------


async def catchup(http: httpx.AsyncClient, ws_url: str, args: argparse.Namespace) -> dict[str, Any]:
    last = (int(time.time()) // 60 - 2) * 60
    times = range(last - 60 * (CATCHUP - 1), last + 1, 60)
    r = await http.post(
        "/api/dev/market/ingest/candles_closed_batch",
        json={
            "series_id": CATCHUP_SERIES,
            "candles": [candle(t, 100 + (t // 60) % 7) for t in times],
            "publish_ws": False,
        },
    )
    r.raise_for_status()
    sub = orjson.dumps({"type": "subscribe", "series_id": CATCHUP_SERIES, "since": None, "supports_batch": True})

    ws_times: list[float] = []
    frame_counts: list[int] = []
    short: list[int] = []
    for rep in range(args.catchup_reps + 1):  # the first of each is a warm-up
        async with open_websocket_url(ws_url, max_message_size=MAX_MESSAGE, receive_buffer_size=1 << 16) as ws:
            got = n = 0
            t0 = time.perf_counter()
            await ws.send_message(sub.decode())
            with trio.move_on_after(10):
                while got < CATCHUP:
                    msg = await ws.get_message()
                    t1 = time.perf_counter()
                    obj = orjson.loads(msg)
                    n += 1
                    if obj["type"] == "candles_batch":
                        got += len(obj["candles"])
                    elif obj["type"] == "candle_closed":
                        got += 1
            if got < CATCHUP:
                short.append(got)
            elif rep:
                ws_times.append(t1 - t0)
                frame_counts.append(n)

    http_times: list[float] = []
    http_counts: set[int] = set()
    params = {"series_id": CATCHUP_SERIES, "limit": CATCHUP}
    for rep in range(args.catchup_reps + 1):
        t0 = time.perf_counter()
        r = await http.get("/api/market/candles", params=params)
        t1 = time.perf_counter()
        r.raise_for_status()
        http_counts.add(len(orjson.loads(r.content)["candles"]))
        if rep:
            http_times.append(t1 - t0)
    return {
        "ws": ws_times,
        "frames": sorted(set(frame_counts)),
        "short": short,
        "http": http_times,
        "http_counts": sorted(http_counts),
    }


# -- 3. HTTP reads -------------------------------------------------------------------------------------


async def throughput(url: str, path: str, params: dict[str, Any], daemon_pid: int, args: argparse.Namespace) -> dict:
    done = 0
    errors: Counter[int] = Counter()
    limits = httpx.Limits(max_connections=args.http_concurrency, max_keepalive_connections=args.http_concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        await http.get(path, params=params)  # connections warm

        async def loop(deadline: float) -> None:
            nonlocal done
            while trio.current_time() < deadline:
                r = await http.get(path, params=params)
                if r.status_code == 200:
                    done += 1
                else:
                    errors[r.status_code] += 1

        cpu0, own0, t0 = cpu_seconds(daemon_pid), time.process_time(), time.perf_counter()
        deadline = trio.current_time() + args.http_seconds
        async with trio.open_nursery() as nursery:
            for _ in range(args.http_concurrency):
                nursery.start_soon(loop, deadline)
        cpu1, own1, t1 = cpu_seconds(daemon_pid), time.process_time(), time.perf_counter()
    span = t1 - t0
    return {
        "rps": done / span,
        "errors": dict(errors),
        "cpu_share": (cpu1 - cpu0) / span * 100,
        "client_cpu_share": (own1 - own0) / span * 100,
    }


# -- the run -------------------------------------------------------------------------------------------


async def bench(url: str, daemon_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    ws_url = url.replace("http://", "ws://", 1) + "/ws/market"
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        out = {"fanout": await fanout(http, ws_url, daemon_pid, args)}
        out["catchup"] = await catchup(http, ws_url, args)
    read_params = {"series_id": CATCHUP_SERIES, "limit": READ_LIMIT}
    out["candles_rps"] = await throughput(url, "/api/market/candles", read_params, daemon_pid, args)
    out["version_rps"] = await throughput(url, "/api/version", {}, daemon_pid, args)
    return out


def row(label: str, value: object) -> None:
    print(f"  {label + ' ':.<48} {value}")


def report(args: argparse.Namespace, r: dict[str, Any], log: DaemonLog) -> None:
    f, c, cr, vr = r["fanout"], r["catchup"], r["candles_rps"], r["version_rps"]
    lat, bound, posts = f["after_return"], f["after_send"], f["post_times"]
    pub = f["after_publish"]
    p50, p99 = pct(pub, 0.5), pct(pub, 0.99)
    print(f"klined fan-out benchmark: {args.clients} WebSocket clients (separate process) on {args.series} series,")
    when = "spread over each second" if args.stagger else "all series at once"
    print(f"window {args.window:.0f} s: 1 closed candle/s ({when}) and {FORMING_PER_S} forming candles/s per series")
    print()
    print("1. live fan-out")
    row("clients subscribed", f"{f['ready']['ready']}/{args.clients} in {f['ready']['ready_s']:.1f} s")
    row(
        "closed candles posted",
        f"{f['posted']} (forming {f['forming_posts']}), POST errors {f['post_errors'] or 'none'}",
    )
    row("POST candle_closed round trip", f"p50 {ms(pct(posts, 0.5))}, p99 {ms(pct(posts, 0.99))}")
    row("closed candles received", f"{f['received']:,}/{f['expected']:,}")
    row("frames received", f["frames"])
    row("connections closed / failed", f"{f['ws_closed']} / {f['ws_failed']}")
    row(
        "publish (klined's clock) -> client received",
        f"p50 {ms(p50)}, p99 {ms(p99)}, max {ms(pct(pub, 1))} over {len(pub):,} frames",
    )
    row(
        "POST returned -> client received",
        f"p50 {ms(pct(lat, 0.5))}, p99 {ms(pct(lat, 0.99))}, min {ms(min(lat, default=math.nan))}",
    )
    row(
        "POST sent -> client received (upper bound)",
        f"p50 {ms(pct(bound, 0.5))}, p99 {ms(pct(bound, 0.99))}, max {ms(pct(bound, 1))}",
    )
    spread, low = f["spread"], f["after_first"]
    row("first client -> client received (lower bound)", f"p50 {ms(pct(low, 0.5))}, p99 {ms(pct(low, 0.99))}")
    row("first -> last client, per second", f"p50 {ms(pct(spread, 0.5))}, max {ms(pct(spread, 1))}")
    row("klined CPU, share of one core", f"{f['cpu_share']:.1f} %")
    row("clients process CPU, share of one core", f"{f['worker_cpu_share']:.1f} %")
    for e in f["errors"]:
        row("client error", e)
    print()
    ws50, ws99 = pct(c["ws"], 0.5), pct(c["ws"], 0.99)
    h50, h99 = pct(c["http"], 0.5), pct(c["http"], 0.99)
    print(f"2. catchup of {CATCHUP} candles ({args.catchup_reps} fresh clients, after one warm-up each)")
    row("subscribe -> last candles_batch", f"p50 {ms(ws50)}, p99 {ms(ws99)} in {c['frames']} frame(s)")
    if c["short"]:
        row("incomplete catchups (candles got)", c["short"])
    row(f"baseline GET candles?limit={CATCHUP}", f"p50 {ms(h50)}, p99 {ms(h99)} ({c['http_counts']} candles)")
    row("WebSocket / HTTP", f"p50 {ws50 / h50:.2f}x, p99 {ws99 / h99:.2f}x")
    print()
    print(f"3. HTTP reads, {args.http_concurrency} concurrent clients, {args.http_seconds:.0f} s each")
    for name, x in ((f"GET candles?limit={READ_LIMIT}", cr), ("baseline GET /api/version", vr)):
        errors = f", errors {x['errors']}" if x["errors"] else ""
        row(
            name,
            f"{x['rps']:,.0f} req/s (klined CPU {x['cpu_share']:.0f} %,"
            f" client CPU {x['client_cpu_share']:.0f} %){errors}",
        )
    row("candles / version", f"{cr['rps'] / vr['rps']:.2f}x")
    for name, x in (("candles", cr), ("version", vr)):
        if x["client_cpu_share"] > 80:
            print(f"  note: the {name} load generator used {x['client_cpu_share']:.0f} % of a core: client-bound")
    print()
    print(f"klined log lines by level: {dict(log.levels)}")
    for event, n in log.events.most_common(10):
        row(event, n)
    for line in log.samples:
        print(f"  {line}")
    print()
    complete = f["received"] == f["expected"] and f["posted"] == args.series * max(1, int(args.window))
    print("targets:")
    row(
        f"fan-out p99 < 50 ms ({args.clients} clients)",
        f"{verdict(p99 < 50e-3)} ({ms(p99)} publish -> client received)",
    )
    row("every closed candle delivered", f"{verdict(complete)} ({f['received']:,}/{f['expected']:,})")
    row(f"catchup of {CATCHUP} p99 < 50 ms", f"{verdict(ws99 < 50e-3 and not c['short'])} ({ms(ws99)})")
    row(f"GET candles limit={READ_LIMIT} >= 1000 req/s", f"{verdict(cr['rps'] >= 1000)} ({cr['rps']:,.0f} req/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--series", type=int, default=10)
    parser.add_argument("--window", type=float, default=20.0, help="live fan-out window (s)")
    parser.add_argument(
        "--stagger", action="store_true", help="spread the series' closes over each second (steady state)"
    )
    parser.add_argument("--catchup-reps", type=int, default=20)
    parser.add_argument("--http-seconds", type=float, default=5.0)
    parser.add_argument("--http-concurrency", type=int, default=8)
    parser.add_argument(
        "--client",
        choices=["raw", "trio-websocket"],
        default="raw",
        help="the clients' WebSocket reader: a minimal frame reader (default) or trio-websocket",
    )
    parser.add_argument("--clients-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--series-base", default="S", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.clients_worker:
        series = series_names(args.series, args.series_base)
        trio.run(clients_worker, args.url, args.clients, series, args.client == "raw")
        return

    with tempfile.TemporaryDirectory(prefix="klined-bench-fanout-") as tmp:
        proc, url, log = start_klined(
            {
                "KLINED_DATA_DIR": tmp,
                "KLINED_HTTP_PORT": "0",
                "KLINED_ENABLE_DEBUG_API": "1",
                "KLINED_MARKET_WS_MAX_CONNECTIONS": "4096",
            }
        )
        try:
            results = trio.run(bench, url, proc.pid, args)
        finally:
            stop(proc)
    report(args, results, log)


if __name__ == "__main__":
    main()
