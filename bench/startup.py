"""Start-up benchmark: ``klined run`` with 1000 whitelisted series stored in LMDB, to systemd's READY=1.

Measured from the process spawn to the READY=1 datagram on a fake ``NOTIFY_SOCKET`` (what systemd waits
for), beside the same daemon on an empty data dir started in the same run (the interpreter and imports are
most of that baseline). The exchange is unreachable on purpose: readiness must not wait for it.

Run: ``python bench/startup.py [--series 1000] [--candles 500] [--runs 5]``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from daemon.storage.eventlog import EventLog
from protocol.candle import Candle
from protocol.series import SeriesId
from tests.features_off import OFF_ENV

BIN = Path(sys.executable).parent


def seed(data: Path, n_series: int, n_candles: int) -> list[str]:
    series = [f"binance:spot:S{i:04d}/USDT:1m" for i in range(n_series)]
    start = (int(time.time()) // 60 - n_candles) * 60
    with EventLog(data / "eventlog") as log:
        for chunk in range(0, n_series, 100):
            log.append(
                {
                    SeriesId.parse(s): [Candle(start + 60 * k, 1.0, 2.0, 0.5, 1.5, 3.0) for k in range(n_candles)]
                    for s in series[chunk : chunk + 100]
                }
            )
    return series


def time_to_ready(data: Path, whitelist: list[str]) -> float:
    notify = data / "notify.sock"
    notify.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.settimeout(30)
        env = {
            **os.environ,
            **OFF_ENV,  # the features this measures are stated below, as in the tests
            "NOTIFY_SOCKET": str(notify),
            "KLINED_DATA_DIR": str(data),
            "KLINED_HTTP_PORT": "0",
            "KLINED_WHITELIST": ",".join(whitelist),
            "KLINED_ENABLE_WHITELIST_INGEST": "1" if whitelist else "0",
            # Nothing listens there: start-up must not wait for the exchange.
            "KLINED_BINANCE_SPOT_WS_URL": "ws://127.0.0.1:9",
            "KLINED_BINANCE_SPOT_REST_URL": "http://127.0.0.1:9",
        }
        started = time.perf_counter()
        proc = subprocess.Popen(
            [str(BIN / "klined"), "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            while b"READY=1" not in sock.recv(4096).split(b"\n"):
                pass
            return time.perf_counter() - started
        finally:
            proc.terminate()
            proc.wait(timeout=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--candles", type=int, default=500, help="stored per series")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="klined-bench-startup-") as tmp:
        full, empty = Path(tmp) / "full", Path(tmp) / "empty"
        empty.mkdir()
        series = seed(full, args.series, args.candles)
        base = [time_to_ready(empty, []) for _ in range(args.runs)]
        loaded = [time_to_ready(full, series) for _ in range(args.runs)]
    b, f = statistics.median(base), statistics.median(loaded)
    print(f"klined start-up benchmark: spawn -> READY=1 ({args.runs} runs, medians)")
    print(f"  empty data dir, no series (baseline) ...... {b * 1000:7.0f} ms")
    print(f"  {args.series} series x {args.candles} candles, all whitelisted . {f * 1000:7.0f} ms  ({f / b:.2f}x)")
    print(f"  of which the series themselves ............ {(f - b) * 1000:7.0f} ms")
    print()
    print(f"target: READY < 1 s with {args.series} series ... {'PASS' if f < 1.0 else 'FAIL'} ({f:.2f} s)")


if __name__ == "__main__":
    main()
