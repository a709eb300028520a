"""The LMDB event log: semantics, reads, growth, and a model-based property test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.storage.eventlog import EventLog
from protocol.candle import Candle
from protocol.errors import CandleError
from protocol.logrecords import EventKind
from protocol.series import SeriesId
from tests.daemon.storage.concurrent_reads import reading_meanwhile

BTC = SeriesId.parse("binance:spot:BTC/USDT:1m")
ETH = SeriesId.parse("binance:futures:ETH/USDT:5m")


def c(t: int, close: float = 10.0, *, synthetic: bool = False) -> Candle:
    return Candle(t, close, close + 1.0, close - 1.0, close, 3.0, synthetic)


@pytest.fixture
def elog(tmp_path: Path) -> EventLog:
    log = EventLog(tmp_path / "log")
    yield log  # type: ignore[misc]
    log.close()


def test_append_assigns_gap_free_sequence_across_series(elog: EventLog) -> None:
    r1 = elog.append({BTC: [c(60), c(120)], ETH: [c(300)]})
    r2 = elog.append({ETH: [c(600)]})
    assert (r1.first_seq, r1.last_seq, r2.first_seq, r2.last_seq) == (1, 3, 4, 4)
    events = elog.events_since(0)
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert [(e.series_id, e.candle.candle_time) for e in events] == [
        (str(BTC), 60),
        (str(BTC), 120),
        (str(ETH), 300),
        (str(ETH), 600),
    ]
    assert all(e.kind is EventKind.CANDLE_CLOSED for e in events)
    assert elog.last_seq() == 4


def test_identical_reappend_is_a_noop(elog: EventLog) -> None:
    elog.append({BTC: [c(60), c(120)]})
    r = elog.append({BTC: [c(60), c(120)]})
    assert (r.appended, r.corrected, r.unchanged, r.first_seq) == (0, 0, 2, None)
    assert r.changed == {}
    assert elog.last_seq() == 2


def test_different_candle_at_stored_time_is_a_correction(elog: EventLog) -> None:
    elog.append({BTC: [c(60), c(120)]})
    r = elog.append({BTC: [c(60, close=11.0)]})
    assert (r.appended, r.corrected) == (0, 1)
    (event,) = elog.events_since(2)
    assert event.kind is EventKind.CANDLE_CORRECTED
    assert event.candle == c(60, close=11.0)
    assert event.previous == c(60)
    assert r.corrections == [event]
    assert elog.get(BTC, 60) == c(60, close=11.0)
    assert elog.head(BTC) == (60, 120, 2)  # a correction adds no candle


def test_synthetic_replaced_by_real_with_same_numbers_is_a_correction(elog: EventLog) -> None:
    elog.append({BTC: [c(60, synthetic=True)]})
    r = elog.append({BTC: [c(60)]})
    assert r.corrected == 1
    assert elog.get(BTC, 60) == c(60)


def test_backfill_older_than_head_is_accepted(elog: EventLog) -> None:
    elog.append({BTC: [c(600)]})
    r = elog.append({BTC: [c(60), c(120)]})
    assert r.appended == 2
    assert [x.candle_time for x in elog.tail(BTC, 10)] == [60, 120, 600]
    assert elog.head(BTC) == (60, 600, 3)


def test_duplicates_and_disorder_inside_one_batch(elog: EventLog) -> None:
    r = elog.append({BTC: [c(180), c(60), c(180), c(120), c(60, close=12.0)]})
    assert (r.appended, r.corrected, r.unchanged) == (3, 1, 1)
    assert [x.candle_time for x in elog.range(BTC)] == [60, 120, 180]
    assert elog.get(BTC, 60) == c(60, close=12.0)
    assert r.changed[BTC] == [c(180), c(60), c(120), c(60, close=12.0)]


def test_invalid_candle_rejects_the_whole_batch(elog: EventLog) -> None:
    elog.append({BTC: [c(60)]})
    bad = Candle(180, 10.0, 9.0, 8.0, 10.0, 1.0)  # high below open
    with pytest.raises(CandleError, match=r"binance:spot:X/Y:1m @ 180: high 9.0 must be >= max"):
        elog.append({BTC: [c(120)], ETH: [c(300)], SeriesId.parse("binance:spot:X/Y:1m"): [bad]})
    assert elog.last_seq() == 1
    assert elog.range(BTC) == [c(60)]
    assert elog.head(ETH) is None


@pytest.mark.parametrize(
    ("candle", "rule"),
    [
        (Candle(61, 1.0, 1.0, 1.0, 1.0, 0.0), "not aligned"),
        (Candle(60, float("nan"), 1.0, 1.0, 1.0, 0.0), "open must be finite"),
        (Candle(60, 1.0, float("inf"), 1.0, 1.0, 0.0), "high must be finite"),
        (Candle(60, 1.0, 1.0, 1.0, 1.0, -1.0), "volume must be >= 0"),
        (Candle(60, 1.0, 1.0, 1.0, 1.0, float("nan")), "volume must be finite"),
        (Candle(-60, 1.0, 1.0, 1.0, 1.0, 0.0), "candle_time must be >= 0"),
        (Candle(60.0, 1.0, 1.0, 1.0, 1.0, 0.0), "candle_time must be an integer"),  # type: ignore[arg-type]
    ],
)
def test_each_invalid_candle_names_its_rule(elog: EventLog, candle: Candle, rule: str) -> None:
    with pytest.raises(CandleError, match=rule):
        elog.append({BTC: [candle]})
    assert elog.last_seq() == 0


def test_month_series_checks_calendar_alignment(elog: EventLog) -> None:
    month = SeriesId.parse("binance:spot:BTC/USDT:1M")
    elog.append({month: [c(1706745600)]})  # 2024-02-01
    with pytest.raises(CandleError, match="not aligned"):
        elog.append({month: [c(1706745600 + 86400)]})


def test_reads_tail_range_count(elog: EventLog) -> None:
    elog.append({BTC: [c(60 * i) for i in range(1, 101)], ETH: [c(300 * i) for i in range(1, 11)]})
    assert [x.candle_time for x in elog.tail(BTC, 3)] == [5880, 5940, 6000]
    assert len(elog.tail(BTC, 1000)) == 100
    assert [x.candle_time for x in elog.tail(ETH, 2)] == [2700, 3000]  # the last series in key order
    assert elog.tail(BTC, 0) == []
    assert [x.candle_time for x in elog.range(BTC, since=120, until=300)] == [180, 240, 300]
    assert [x.candle_time for x in elog.range(BTC, since=120, limit=2)] == [180, 240]
    assert elog.range(BTC, since=6000) == []
    assert elog.range(BTC, since=300, until=120) == []
    assert elog.count_between(BTC, 60, 600) == 10
    assert elog.count_between(BTC, 0, 10**9) == 100
    assert elog.count_between(ETH, 0, 10**9) == 10
    assert elog.head_time(BTC) == 6000


def test_unknown_series_reads_are_empty(elog: EventLog) -> None:
    assert elog.tail(BTC, 5) == []
    assert elog.range(BTC) == []
    assert elog.count_between(BTC, 0, 100) == 0
    assert elog.head(BTC) is None
    assert elog.get(BTC, 60) is None
    assert elog.events_since(0) == []


def test_reopen_restores_series_and_heads(tmp_path: Path) -> None:
    with EventLog(tmp_path / "log") as log:
        log.append({BTC: [c(60), c(120)], ETH: [c(300)]})
    with EventLog(tmp_path / "log") as log:
        assert log.heads() == {str(BTC): (60, 120, 2), str(ETH): (300, 300, 1)}
        log.append({ETH: [c(600)], SeriesId.parse("binance:spot:SOL/USDT:1m"): [c(60)]})
        assert [e.series_id for e in log.events_since(3)] == [str(ETH), "binance:spot:SOL/USDT:1m"]
        assert log.last_seq() == 5


def test_map_grows_instead_of_failing(tmp_path: Path) -> None:
    with EventLog(tmp_path / "log", map_size=64 * 1024) as log:
        start = log.map_size
        for b in range(20):
            log.append({BTC: [c(60 * (b * 500 + i)) for i in range(500)]})
        assert log.map_size > start
        assert log.count_between(BTC, 0, 10**9) == 10_000
        assert log.last_seq() == 10_000


@pytest.mark.parametrize("run", range(6))  # a race: each run is one more chance to hit it
def test_map_growth_never_breaks_a_concurrent_read(tmp_path: Path, run: int) -> None:
    """Reads run in worker threads while the writer grows the map: each read waits for the resize instead of
    failing (``mdb_txn_begin: Invalid argument``, found by the chaos run as a 500 on /api/market/candles)."""
    with EventLog(tmp_path / "log", map_size=64 * 1024) as log:
        log.append({BTC: [c(0)]})

        def read() -> None:
            assert log.range(BTC, None, None, 20)
            log.head(BTC)

        grown = 0
        with reading_meanwhile(read, pause_s=0.0001) as errors:
            for b in range(1, 9):
                size = log.map_size
                log.append({BTC: [c(60 * (b * 1000 + i)) for i in range(1000)]})
                grown += log.map_size > size
    assert grown >= 4
    assert errors == []


def test_iter_events_chunks_through_everything(elog: EventLog) -> None:
    elog.append({BTC: [c(60 * i) for i in range(1, 26)]})
    assert [e.seq for e in elog.iter_events(after_seq=5, chunk=7)] == list(range(6, 26))


def test_hot_copy_is_a_complete_log(elog: EventLog, tmp_path: Path) -> None:
    elog.append({BTC: [c(60), c(120)]})
    (tmp_path / "copy").mkdir()
    fd = os.open(tmp_path / "copy" / "data.mdb", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        assert elog.copy_into(fd) == 2
    finally:
        os.close(fd)
    with EventLog(tmp_path / "copy") as copy:
        assert copy.range(BTC) == [c(60), c(120)]
        assert copy.last_seq() == 2


# -- model-based property: the log behaves like a dict of (series, time) -> candle -----------------

SERIES = [BTC, SeriesId.parse("binance:spot:ETH/USDT:1m"), SeriesId.parse("binance:futures:BTC/USDT:1m")]
candles_st = st.builds(
    lambda t, close, synthetic: c(60 * t, close, synthetic=synthetic),
    st.integers(0, 40),
    st.sampled_from([1.0, 2.0, 3.5]),
    st.booleans(),
)
batches_st = st.lists(
    st.dictionaries(st.sampled_from(range(3)), st.lists(candles_st, max_size=12), max_size=3),
    min_size=1,
    max_size=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=batches_st)
def test_log_matches_a_dict_model(tmp_path_factory: pytest.TempPathFactory, batches: list) -> None:  # type: ignore[type-arg]
    model: dict[tuple[int, int], Candle] = {}
    n_events = 0
    with EventLog(tmp_path_factory.mktemp("log")) as log:
        for batch in batches:
            expected_new = expected_corr = expected_same = 0
            for s, candles in batch.items():
                for x in candles:
                    old = model.get((s, x.candle_time))
                    if old is None:
                        expected_new += 1
                    elif old == x and old.synthetic == x.synthetic:
                        expected_same += 1
                        continue
                    else:
                        expected_corr += 1
                    model[(s, x.candle_time)] = x
            r = log.append({SERIES[s]: candles for s, candles in batch.items()})
            assert (r.appended, r.corrected, r.unchanged) == (expected_new, expected_corr, expected_same)
            n_events += expected_new + expected_corr
        assert log.last_seq() == n_events
        for s, series in enumerate(SERIES):
            want = sorted((v for (ms, _), v in model.items() if ms == s), key=lambda x: x.candle_time)
            assert log.range(series) == want
            assert log.tail(series, 5) == want[-5:]
            head = log.head(series)
            if want:
                assert head == (want[0].candle_time, want[-1].candle_time, len(want))
            else:
                assert head is None
        # Replaying the events rebuilds exactly the stored state.
        replay: dict[tuple[str, int], Candle] = {}
        for e in log.iter_events():
            replay[(e.series_id, e.candle.candle_time)] = e.candle
        assert replay == {(str(SERIES[s]), t): v for (s, t), v in model.items()}


def test_events_since_at_every_offset_across_runs(elog: EventLog) -> None:
    """Events are stored in runs of up to RUN_MAX; reads start inside, at and across run boundaries."""
    from protocol.logrecords import RUN_MAX

    elog.append({BTC: [c(60 * i) for i in range(1, RUN_MAX * 2 + 300)]})  # three runs
    elog.append({BTC: [c(60, close=5.0), c(60 * 5000), c(120, close=6.0)], ETH: [c(300)]})  # mixed kinds
    full = elog.events_since(0)
    assert [e.seq for e in full] == list(range(1, len(full) + 1))
    assert [e.kind for e in full[-4:]] == [
        EventKind.CANDLE_CORRECTED,
        EventKind.CANDLE_CLOSED,
        EventKind.CANDLE_CORRECTED,
        EventKind.CANDLE_CLOSED,
    ]
    assert full[-4].previous == c(60)
    offsets = {0, 1, RUN_MAX - 1, RUN_MAX, RUN_MAX + 1, 2 * RUN_MAX, len(full) - 3, len(full) - 1, len(full)}
    for after in sorted(offsets):
        assert elog.events_since(after) == full[after:]
        assert elog.events_since(after, limit=3) == full[after : after + 3]
    assert elog.events_since(-5, limit=2) == full[:2]
    assert elog.events_since(len(full) + 10) == []
