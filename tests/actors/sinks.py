"""Test sinks for the closed-candle writer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import trio

from daemon.storage.eventlog import EventLog
from protocol.candle import Candle
from protocol.logrecords import AppendResult
from protocol.series import SeriesId


class InlineSink:
    """The real log called on the event-loop thread, so autojump_clock sees no thread waits."""

    def __init__(self, log: EventLog, failures: int = 0) -> None:
        self.log = log
        self.failures = failures
        self.calls: list[tuple[float, dict[SeriesId, list[Candle]]]] = []

    async def append(self, batch: Mapping[SeriesId, Sequence[Candle]]) -> AppendResult:
        self.calls.append((trio.current_time(), {s: list(v) for s, v in batch.items()}))
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        return self.log.append(batch)
