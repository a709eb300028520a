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
from pathlib import Path

import httpx

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--window", type=float, default=60.0, help="measurement window (s), holds one close")
    args = parser.parse_args()

    # Put a minute boundary 20 s into the measurement window: the fake's clock is offset accordingly.
    settle_s = 15.0
    wall = time.time_ns() // 1_000_000
    boundary = (wall // 60_000 + 2) * 60_000
    offset_ms = boundary - int(wall + (settle_s + 20) * 1000)
    fake = subprocess.Popen(
        [sys.executable, "-m", "daemon.fakex", "--generate", str(args.series), "--offset-ms", str(offset_ms)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert fake.stdout is not None
    rest_url = fake.stdout.readline().split()[1]
    ws_url = fake.stdout.readline().split()[1]
    series = [f"binance:spot:S{i:04d}/USDT:1m" for i in range(args.series)]
    with tempfile.TemporaryDirectory(prefix="klined-bench-ingest-") as tmp:
        common = {
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
        time.sleep(args.window)
        cpu1, t1 = cpu_seconds(proc.pid), time.perf_counter()
        rss = rss_mb(proc.pid)
        stats = client.get("/api/market/debug/ingest_state").json()["stats"]
        stop(proc)
    fake.kill()

    cpu_share = (cpu1 - cpu0) / (t1 - t0) * 100
    latency = stats["writer"]["send_to_durable_ms"]
    per_series_kb = (rss - idle_rss) * 1024 / args.series
    print(f"klined ingest benchmark: {args.series} series, window {args.window:.0f} s with one minute-close burst")
    print(f"  daemon ready after start ............ {ready_s:.2f} s")
    print(f"  series running after {settle_s:.0f} s ............ {running}/{args.series}")
    print(f"  kline messages received ............. {stats['ingest']['spot']['klines']:,}")
    print(f"  closed candles written .............. {stats['writer']['written_events']:,}")
    print(f"  CPU, share of one core .............. {cpu_share:.1f} %")
    print(
        f"  RSS ................................. {rss:.1f} MB (idle daemon {idle_rss:.1f} MB: {rss / idle_rss:.2f}x)"
    )
    print(f"  RSS per series ...................... {per_series_kb:.1f} KB")
    print(
        f"  send -> durable, closed candles ..... p50 {latency.get('p50')} ms, p99 {latency.get('p99')} ms,"
        f" max {latency.get('max')} ms over {latency.get('samples')} candles"
    )
    print()
    print("targets:")
    print(f"  CPU < 15% of a core ........ {'PASS' if cpu_share < 15 else 'FAIL'} ({cpu_share:.1f} %)")
    p99 = latency.get("p99")
    print(f"  p99 < 50 ms ................ {'PASS' if p99 is not None and p99 < 50 else 'FAIL'} ({p99} ms)")
    print(f"  RSS < 150 MB ............... {'PASS' if rss < 150 else 'FAIL'} ({rss:.1f} MB)")


if __name__ == "__main__":
    main()
