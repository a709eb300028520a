"""Appends in two steps (computed, then committed or aborted) and a replica applying another log's events."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.storage.eventlog import DivergedError, EventLog
from protocol.candle import Candle
from protocol.logrecords import EventKind, LogEvent, append_events
from protocol.series import SeriesId

BTC = SeriesId.parse("binance:spot:BTC/USDT:1m")
ETH = SeriesId.parse("binance:spot:ETH/USDT:1m")


def c(t: int, close: float = 10.0) -> Candle:
    return Candle(t, close, close + 1, close - 1, close, 1.0)


def test_an_aborted_append_writes_nothing_and_a_committed_one_is_an_append(tmp_path: Path) -> None:
    with EventLog(tmp_path / "log") as log:
        log.append({BTC: [c(60)]})
        pending = log.begin_append({BTC: [c(120)], ETH: [c(60)]})
        assert [e.seq for e in append_events(pending.result)] == [2, 3]
        pending.abort()
        assert (log.last_seq(), log.head(ETH), log.range(BTC)) == (1, None, [c(60)])
        pending = log.begin_append({BTC: [c(120)], ETH: [c(60)]})
        result = pending.commit()
        assert (result.first_seq, result.last_seq) == (2, 3)
        assert log.range(ETH) == [c(60)]
        assert log.events_since(1) == append_events(result)


def writer_log(path: Path) -> EventLog:
    """A log with every kind of write: interleaved series, backfill, corrections, repeats."""
    log = EventLog(path)
    log.append({BTC: [c(60), c(120)], ETH: [c(60)]})
    log.append({ETH: [c(120)], BTC: [c(180)]})
    log.append({BTC: [c(120, close=11.0), c(240)]})  # a correction, then new
    log.append({BTC: [c(240)], ETH: [c(0)]})  # a repeat (no event) and a backfill
    log.append({ETH: [c(120, close=9.0)], BTC: [c(300)]})
    return log


@pytest.mark.parametrize("chunk", [1, 2, 3, 100])
def test_a_replica_applying_the_events_in_any_chunks_holds_the_same_log(tmp_path: Path, chunk: int) -> None:
    with writer_log(tmp_path / "writer") as writer, EventLog(tmp_path / "replica") as replica:
        events = writer.events_since(0)
        assert any(e.kind is EventKind.CANDLE_CORRECTED for e in events)
        for i in range(0, len(events), chunk):
            replica.apply(events[i : i + chunk])
        assert replica.events_since(0) == events
        assert replica.heads() == writer.heads()
        for series in (BTC, ETH):
            assert replica.range(series) == writer.range(series)


def test_events_that_this_log_would_write_otherwise_are_refused_whole(tmp_path: Path) -> None:
    with writer_log(tmp_path / "writer") as writer, EventLog(tmp_path / "replica") as replica:
        events = writer.events_since(0)
        replica.apply(events[:3])
        with pytest.raises(DivergedError, match="seq 5"):
            replica.apply(events[4:6])  # event 4 is missing: these would be written at 4 and 5
        closed_again = [LogEvent(4, EventKind.CANDLE_CLOSED, str(BTC), c(60))]
        with pytest.raises(DivergedError, match="seq 4"):
            replica.apply(closed_again)  # already stored as it is: this log would write no event for it
        assert replica.last_seq() == 3
        replica.apply(events[3:5])
        other_past = [events[5]._replace(previous=c(120, close=42.0))]  # it held another candle there
        with pytest.raises(DivergedError, match="seq 6"):
            replica.apply(other_past)
        assert replica.last_seq() == 5
        replica.apply(events[5:])
        assert replica.events_since(0) == events
