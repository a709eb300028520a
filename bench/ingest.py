"""Ingest benchmark: klined following 1000 series on the fake exchange at Binance's real update rate.

Both run as real processes on loopback. Each kline stream updates every 2 s; once a minute every series
closes at once. Measured over a window that holds one minute-close burst: klined's CPU share of one core,
its RSS per series (against an idle klined measured in the same run), and exchange-send -> durable-append
latency of the closed candles (p50 / p99, from klined's writer).

Run: ``python bench/ingest.py [--series 1000] [--window 60]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.features_off import OFF_ENV

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_klined(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
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
            url = json.loads(line)["http_url"]
            # Keep draining its logs so a full pipe never stalls it.
            subprocess.Popen(["cat"], stdin=proc.stdout, stdout=subprocess.DEVNULL)
            return proc, url
    raise SystemExit("klined exited before it was ready")


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


@dataclass
class Measured:
    ready_s: float  # from starting klined to its daemon_ready line
    running: int  # series whose ingest job runs when the window opens
    cpu_share: float  # % of one core over the window
    rss: float  # MB at the end of the window
    idle_rss: float  # MB of the same daemon following nothing
    stats: dict[str, Any]  # the debug ingest_state's counters at the end of the window


def start_fake(n_series: int, boundary_after_s: float) -> tuple[subprocess.Popen[str], str, str]:
    """The fake exchange with a minute boundary ``boundary_after_s`` from now; returns it, its REST and WS URLs."""
    wall = time.time_ns() // 1_000_000
    boundary = (wall // 60_000 + 2) * 60_000
    offset_ms = boundary - int(wall + boundary_after_s * 1000)
    fake = subprocess.Popen(
        [sys.executable, "-m", "daemon.fakex", "--generate", str(n_series), "--offset-ms", str(offset_ms)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert fake.stdout is not None
    rest_url = fake.stdout.readline().split()[1]
    ws_url = fake.stdout.readline().split()[1]
    return fake, rest_url, ws_url


def measure(n_series: int, window_s: float, settle_s: float, rest_url: str, ws_url: str) -> Measured:
    series = [f"binance:spot:S{i:04d}/USDT:1m" for i in range(n_series)]
    with tempfile.TemporaryDirectory(prefix="klined-bench-ingest-") as tmp:
        common = {
            **OFF_ENV,  # the features this measures are stated here, as in the tests
            "KLINED_HTTP_PORT": "0",
            "KLINED_ENABLE_DEBUG_API": "1",
            "KLINED_BINANCE_SPOT_WS_URL": ws_url,
            "KLINED_BINANCE_SPOT_REST_URL": rest_url,
            "KLINED_BINANCE_FUTURES_WS_URL": f"{ws_url}/market",
            "KLINED_BINANCE_FUTURES_REST_URL": rest_url,
        }
        # Baseline: the same daemon with nothing to follow.
        idle, _ = start_klined({**common, "KLINED_DATA_DIR": f"{tmp}/idle"})
        time.sleep(3)
        idle_rss = rss_mb(idle.pid)
        stop(idle)

        started = time.perf_counter()
        proc, url = start_klined(
            {
                **common,
                "KLINED_DATA_DIR": f"{tmp}/live",
                "KLINED_WHITELIST": ",".join(series),
                "KLINED_ENABLE_WHITELIST_INGEST": "1",
            }
        )
        ready_s = time.perf_counter() - started
        client = httpx.Client(base_url=url, timeout=10)
        time.sleep(settle_s)
        state = client.get("/api/market/debug/ingest_state").json()
        running = sum(1 for j in state["jobs"] if j["running"])
        cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
        time.sleep(window_s)
        cpu1, t1 = cpu_seconds(proc.pid), time.perf_counter()
        rss = rss_mb(proc.pid)
        stats = client.get("/api/market/debug/ingest_state").json()["stats"]
        stop(proc)
    return Measured(ready_s, running, (cpu1 - cpu0) / (t1 - t0) * 100, rss, idle_rss, stats)


def report(n_series: int, window_s: float, settle_s: float, m: Measured) -> None:
    latency = m.stats["writer"]["send_to_durable_ms"]
    per_series_kb = (m.rss - m.idle_rss) * 1024 / n_series
    print(f"klined ingest benchmark: {n_series} series, window {window_s:.0f} s with one minute-close burst")
    print(f"  daemon ready after start ............ {m.ready_s:.2f} s")
    print(f"  series running after {settle_s:.0f} s ............ {m.running}/{n_series}")
    print(f"  kline messages received ............. {m.stats['ingest']['spot']['klines']:,}")
    print(f"  closed candles written .............. {m.stats['writer']['written_events']:,}")
    print(f"  CPU, share of one core .............. {m.cpu_share:.1f} %")
    print(
        f"  RSS ................................. {m.rss:.1f} MB"
        f" (idle daemon {m.idle_rss:.1f} MB: {m.rss / m.idle_rss:.2f}x)"
    )
    print(f"  RSS per series ...................... {per_series_kb:.1f} KB")
    print(
        f"  send -> durable, closed candles ..... p50 {latency.get('p50')} ms, p99 {latency.get('p99')} ms,"
        f" max {latency.get('max')} ms over {latency.get('samples')} candles"
    )
    print()
    print("targets:")
    print(f"  CPU < 15% of a core ........ {'PASS' if m.cpu_share < 15 else 'FAIL'} ({m.cpu_share:.1f} %)")
    p99 = latency.get("p99")
    print(f"  p99 < 50 ms ................ {'PASS' if p99 is not None and p99 < 50 else 'FAIL'} ({p99} ms)")
    print(f"  RSS < 150 MB ............... {'PASS' if m.rss < 150 else 'FAIL'} ({m.rss:.1f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--window", type=float, default=60.0, help="measurement window (s), holds one close")
    args = parser.parse_args()
    settle_s = 15.0
    # Put a minute boundary 20 s into the measurement window: the fake's clock is offset accordingly.
    fake, rest_url, ws_url = start_fake(args.series, settle_s + 20)
    measured = measure(args.series, args.window, settle_s, rest_url, ws_url)
    fake.kill()
    report(args.series, args.window, settle_s, measured)


if __name__ == "__main__":
    main()
