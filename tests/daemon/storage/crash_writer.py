"""Child process of the crash test: append deterministic batches forever, reporting each commit.

Batch ``i`` holds ``PER_SERIES`` candles for each of ``SERIES``; a batch is whole or absent, so the log's
last seq is always a multiple of the batch size. Run: ``python crash_writer.py LOG_DIR``.
"""

from __future__ import annotations

import sys

import structlog

from daemon.storage.eventlog import EventLog
from protocol.candle import Candle
from protocol.series import SeriesId

SERIES = [SeriesId.parse(f"binance:spot:S{j}/USDT:1m") for j in range(4)]
PER_SERIES = 1500
BATCH_EVENTS = PER_SERIES * len(SERIES)


def batch(i: int) -> dict[SeriesId, list[Candle]]:
    out = {}
    for j, series in enumerate(SERIES):
        base = i * PER_SERIES
        out[series] = [
            Candle(60 * (base + k), 100.0 + j, 101.0 + j, 99.0 + j, 100.5 + j, float(i)) for k in range(PER_SERIES)
        ]
    return out


def main() -> None:
    # stdout carries only commit reports; logs (map growth) go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    # A small map forces growth (MapFullError -> resize) to happen while we get killed.
    with EventLog(sys.argv[1], map_size=256 * 1024) as log:
        done = log.last_seq()
        assert done % BATCH_EVENTS == 0, f"partial batch on disk: last_seq={done}"
        i = done // BATCH_EVENTS
        while True:
            log.append(batch(i))
            print(f"committed {i}", flush=True)
            i += 1


if __name__ == "__main__":
    main()
