"""The projector: factor/overlay projections follow the log, resume from checkpoints, rewind on corrections
and backfills, and always equal a from-scratch replay (issue 8)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.projection_replay import SNAPSHOT_EVERY
from actors.projector import Projector
from daemon import factor_reads
from daemon.storage.eventlog import EventLog
from daemon.storage.projection_store import ProjectionStore
from protocol.candle import Candle
from protocol.factors.registry import DEFAULT_FACTORS
from protocol.series import SeriesId
from tests.protocol.factors.bars import SMALL, flat

BTC = SeriesId.parse("binance:spot:BTC/USDT:1m")
ETH = SeriesId.parse("binance:spot:ETH/USDT:1m")
PRICES = [1, 2, 5, 2, 1, 2, 9, 2, 1, 2, 8, 2, 1]  # docs/factors.md's 13-price example at t = 60..780


def walk(n: int, seed: int, start: int = 60) -> list[Candle]:
    """A random walk with swings, so small windows find pivots, pens and zones."""
    rng = random.Random(seed)
    price, out = 100.0, []
    for i in range(n):
        o = price
        price = max(1.0, price + rng.gauss(0, 1.5) + 2.0 * ((i // 7) % 2 * 2 - 1) * 0.3)
        high, low = max(o, price) + rng.random(), min(o, price) - rng.random()
        out.append(Candle(start + 60 * i, round(o, 4), round(high, 4), round(max(low, 0.5), 4), round(price, 4), 1.0))
    return out


def open_projector(path: Path, log: EventLog, **kw: Any) -> Projector:
    return Projector(log, ProjectionStore(path / "proj"), settings=kw.pop("settings", SMALL), **kw)


def known(p: Projector, series: SeriesId) -> tuple[int, int | None] | None:
    """(number, last projected time) of a series: from the projector's memory, else its stored record."""
    mem = p.replay.mem.get(str(series))
    if mem is not None:
        return mem.num, mem.last_time
    record = p.pstore.series_record(str(series))
    return None if record is None else (int(record["num"]), record["last_time"])


def series_num(p: Projector, series: SeriesId) -> int | None:
    found = known(p, series)
    return None if found is None else found[0]


def projected_time(p: Projector, series: SeriesId) -> int | None:
    found = known(p, series)
    return None if found is None else found[1]


def reader(p: Projector) -> factor_reads.ProjectionReader:
    """What the daemon hands the read models for this projector."""
    assert isinstance(p.log, EventLog)
    assert isinstance(p.pstore, ProjectionStore)
    return factor_reads.ProjectionReader(p.log, p.pstore, p.classes, p.failed)


def drain(p: Projector) -> None:
    """Apply everything after the checkpoint (what ``sync`` does, without the lock)."""
    while events := p.log.events_since(p.pstore.checkpoint(), 37):  # odd chunks: boundaries anywhere
        p._process(events)


def outputs(p: Projector, series: SeriesId) -> dict[str, Any]:
    """What a reader can see: every factor event, the heads at the head, the live overlay set."""
    num = series_num(p, series)
    assert num is not None
    head = p.log.head(series)
    assert head is not None
    body = factor_reads.slices(reader(p), series, None, factor_reads.MAX_WINDOW)
    delta = factor_reads.draw_delta(reader(p), series, 0, factor_reads.MAX_WINDOW, None)
    patch = {v["instruction_id"]: v["definition"] for v in delta["instruction_catalog_patch"]}
    assert sorted(patch) == delta["active_ids"]
    return {
        "events": p.pstore.events_between(num, 0, head.head_time),
        "head": {name: snap["head"] for name, snap in body["snapshots"].items()},
        "overlays": patch,
    }


async def test_thirteen_price_example_through_the_log(tmp_path: Path) -> None:
    with EventLog(tmp_path / "log") as log:
        log.append({BTC: [flat(60 * (i + 1), p) for i, p in enumerate(PRICES)]})
        p = open_projector(tmp_path, log)
        await p.sync()
        assert p.checkpoint() == log.last_seq() == 13
        body = factor_reads.slices(reader(p), BTC, None, 2000)
        assert body["at_time"] == 780
        assert body["candle_id"] == f"{BTC}:780"
        pens = body["snapshots"]["pen"]["history"]["confirmed"]
        assert [(x["start_time"], x["end_time"], x["direction"], x["visible_time"]) for x in pens] == [
            (180, 300, -1, 540),
            (300, 420, 1, 660),
            (420, 540, -1, 780),
        ]
        head = body["snapshots"]["pen"]["head"]
        assert (head["extending"]["start_time"], head["extending"]["end_time"]) == (540, 660)
        assert (head["candidate"]["start_time"], head["candidate"]["end_time"]) == (660, 780)
        # A slice in the past sees only what was visible then.
        past = factor_reads.slices(reader(p), BTC, 600, 2000)
        assert [x["end_time"] for x in past["snapshots"]["pen"]["history"]["confirmed"]] == [300]
        assert past["at_time"] == 600
        delta = factor_reads.draw_delta(reader(p), BTC, 0, 2000, None)
        assert "pen.confirmed" in delta["active_ids"]
        assert delta["active_ids"] == sorted(delta["active_ids"])
        again = factor_reads.draw_delta(reader(p), BTC, delta["next_cursor"]["version_id"], 2000, None)
        assert again["instruction_catalog_patch"] == []
        assert again["next_cursor"] == delta["next_cursor"]
        assert again["active_ids"] == delta["active_ids"]


async def test_a_read_ahead_of_the_projection_is_409_until_it_catches_up(tmp_path: Path) -> None:
    with EventLog(tmp_path / "log") as log:
        p = open_projector(tmp_path, log)
        log.append({BTC: walk(50, 1)})
        with pytest.raises(factor_reads.OutOfSyncError, match="ledger_out_of_sync:factor"):
            factor_reads.slices(reader(p), BTC, None, 100)
        await p.sync()
        assert factor_reads.slices(reader(p), BTC, None, 100)["at_time"] == 60 * 50
        # A candle after the one asked for, not yet applied, changes nothing visible by then; one at or
        # before it (a backfill or correction behind) does.
        log.append({BTC: walk(1, 3, start=60 * 51)})
        assert factor_reads.slices(reader(p), BTC, 60 * 50, 100)["at_time"] == 60 * 50
        assert factor_reads.draw_delta(reader(p), BTC, 0, 100, 60 * 50)["to_candle_time"] == 60 * 50
        log.append({BTC: [Candle(60 * 10, 1.0, 2.0, 0.5, 1.5, 9.0)]})
        with pytest.raises(factor_reads.OutOfSyncError):
            factor_reads.slices(reader(p), BTC, 60 * 50, 100)
        assert factor_reads.slices(reader(p), BTC, 60 * 9, 100)["at_time"] == 60 * 9
        await p.sync()
        # A backfilled candle behind the head: stored, not yet applied -> 409 again.
        log.append({ETH: walk(5, 2)})
        with pytest.raises(factor_reads.OutOfSyncError):
            factor_reads.draw_delta(reader(p), ETH, 0, 100, None)
        await p.sync()
        factor_reads.draw_delta(reader(p), ETH, 0, 100, None)


def scratch(tmp_path: Path, final: dict[SeriesId, list[Candle]]) -> dict[SeriesId, dict[str, Any]]:
    with EventLog(tmp_path / "scratch-log") as log:
        log.append({s: sorted(c) for s, c in final.items()})
        p = open_projector(tmp_path / "scratch", log)
        drain(p)
        out = {s: outputs(p, s) for s in final}
        p.pstore.close()
        return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(20, 160),
    batches=st.integers(1, 12),
    corrections=st.integers(0, 6),
    restarts=st.integers(0, 3),
    keep=st.sampled_from([0, 1]),
)
def test_projections_equal_a_from_scratch_replay(
    tmp_path_factory: pytest.TempPathFactory,
    seed: int,
    n: int,
    batches: int,
    corrections: int,
    restarts: int,
    keep: int,
) -> None:
    """Any order of appends (backfills behind the head included), corrections, restarts and evictions from
    memory: the stored factor events, heads and live overlays equal those of a replay from scratch."""
    tmp = tmp_path_factory.mktemp("prop")
    rng = random.Random(seed)
    final = {BTC: walk(n, seed), ETH: walk(n // 2 + 5, seed + 1)}
    # Split each series into batches appended in a shuffled order (holes, then backfills).
    plan: list[tuple[SeriesId, list[Candle]]] = []
    for series, candles in final.items():
        cuts = sorted(rng.sample(range(1, len(candles)), min(batches, len(candles) - 1)))
        plan.extend((series, candles[a:b]) for a, b in zip([0, *cuts], [*cuts, len(candles)], strict=True))
    rng.shuffle(plan)
    # Corrections: a candle first stored with other numbers, later replaced by the final one.
    for _ in range(corrections):
        series = rng.choice(list(final))
        real = rng.choice(final[series])
        wrong = real._replace(high=real.high + 3.0, close=real.low, open=real.low)
        plan.insert(rng.randrange(len(plan) + 1), (series, [wrong]))
        plan.append((series, [real]))  # the exchange's word comes last
    restart_at = set(rng.sample(range(len(plan)), min(restarts, len(plan))))
    with EventLog(tmp / "log") as log:
        p = open_projector(tmp, log, max_in_memory=keep)
        for i, (series, candles) in enumerate(plan):
            log.append({series: candles})
            if rng.random() < 0.6:
                drain(p)
            if i in restart_at:  # a restart: state only from what is stored
                drain(p)
                p.pstore.close()
                p = open_projector(tmp, log, max_in_memory=keep)
        drain(p)
        got = {s: outputs(p, s) for s in final}
        p.pstore.close()
    want = scratch(tmp, final)
    for series in final:
        assert got[series]["events"] == want[series]["events"], series
        assert got[series]["head"] == want[series]["head"], series
        assert got[series]["overlays"] == want[series]["overlays"], series


async def test_resume_from_checkpoint_after_restart_applies_only_new_events(tmp_path: Path) -> None:
    candles = walk(3 * SNAPSHOT_EVERY + 17, 5)
    with EventLog(tmp_path / "log") as log:
        log.append({BTC: candles[:600]})
        p = open_projector(tmp_path, log)
        await p.start()
        await p.sync()
        before = outputs(p, BTC)
        await p.snapshot_all()
        p.pstore.close()
        p = open_projector(tmp_path, log)
        assert p.stale() == []
        log.append({BTC: candles[600:]})
        await p.sync()
        assert p.stats.applied == len(candles) - 600  # nothing replayed: the snapshot was at the head
        assert outputs(p, BTC)["events"][: len(before["events"])] == before["events"]
        p.pstore.close()


async def test_changed_settings_rebuild_from_the_log_and_tell_subscribers(tmp_path: Path) -> None:
    notes: list[tuple[str, str, dict[str, Any]]] = []
    with EventLog(tmp_path / "log") as log:
        log.append({BTC: walk(300, 9)})
        p = open_projector(tmp_path, log)
        await p.start()
        await p.sync()
        first = outputs(p, BTC)
        p.pstore.close()
        other = {"pivot": {"major_window": 3, "minor_window": 1}}
        p = open_projector(tmp_path, log, settings=other, notify=lambda s, e, m, d: notes.append((str(s), e, d)))
        assert p.stale() == ["factor", "overlay"]
        assert await p.start() == ["factor", "overlay"]
        assert notes == [(str(BTC), "factor.rebuild", {"series_id": str(BTC)})]
        head = log.head(BTC)
        assert head is not None
        assert head.candle_count == 300  # candles are never trimmed to rebuild
        assert p.checkpoint() == log.last_seq()
        rebuilt = outputs(p, BTC)
        assert rebuilt["events"] != first["events"]
        p.pstore.close()
        # The same as a fresh projector with those settings.
        assert rebuilt["events"] == scratch_with(tmp_path, {BTC: walk(300, 9)}, other)[BTC]["events"]


def scratch_with(tmp_path: Path, final: dict[SeriesId, list[Candle]], conf: Any) -> dict[SeriesId, Any]:
    with EventLog(tmp_path / "s2-log") as log:
        log.append(final)
        p = Projector(log, ProjectionStore(tmp_path / "s2"), settings=conf)
        drain(p)
        out = {s: outputs(p, s) for s in final}
        p.pstore.close()
        return out


async def test_operator_rebuild_of_one_series_leaves_candles_and_outputs_equal(tmp_path: Path) -> None:
    with EventLog(tmp_path / "log") as log:
        log.append({BTC: walk(400, 3), ETH: walk(100, 4)})
        p = open_projector(tmp_path, log)
        await p.sync()
        before = outputs(p, BTC)
        replayed = await p.rebuild([BTC])
        assert replayed == 400
        after = outputs(p, BTC)
        assert after["events"] == before["events"]
        assert after["overlays"] == before["overlays"]
        # the rebuilt instructions are new versions: a client's old cursor sees them again, not a hole
        num = series_num(p, BTC)
        assert num is not None
        p.pstore.close()


class BoomError(Exception):
    pass


async def test_a_failing_factor_stops_only_its_series(tmp_path: Path) -> None:
    from protocol.factors.base import Factor, FactorEvent, FactorTick

    class Fragile(Factor):
        name = "fragile"
        version = 1

        def apply(self, tick: FactorTick) -> list[FactorEvent]:
            if tick.candle.close > 1000:
                raise BoomError("bad candle for this factor")
            return []

    with EventLog(tmp_path / "log") as log:
        p = open_projector(tmp_path, log, classes=(*DEFAULT_FACTORS, Fragile))
        log.append({BTC: [flat(60, 2000.0)], ETH: walk(10, 1)})
        await p.sync()
        assert str(BTC) in p.failed
        assert p.stats.failures == 1
        assert projected_time(p, ETH) == 600
        assert p.checkpoint() == log.last_seq()
        with pytest.raises(factor_reads.OutOfSyncError):
            factor_reads.slices(reader(p), BTC, None, 10)
        p.pstore.close()


async def test_events_json_is_what_factors_md_names(tmp_path: Path) -> None:
    with EventLog(tmp_path / "log") as log:
        log.append({BTC: [flat(60 * (i + 1), p) for i, p in enumerate(PRICES)]})
        p = open_projector(tmp_path, log)
        await p.sync()
        num = series_num(p, BTC)
        assert num is not None
        events = p.pstore.events_between(num, 0, 780)
        assert {e["kind"] for e in events} >= {"pivot.major", "pen.confirmed", "anchor.switch", "sr.snapshot"}
        for e in events:
            assert set(e) == {"factor_name", "kind", "event_key", "candle_time", "payload"}
            assert e["candle_time"] == e["payload"]["visible_time"]
        orjson.dumps(events)
        p.pstore.close()


async def test_sync_is_serial_and_wait_projected_wakes(tmp_path: Path) -> None:
    with EventLog(tmp_path / "log") as log:
        p = open_projector(tmp_path, log)
        result = log.append({BTC: walk(30, 2)})
        assert result.last_seq is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(p.wait_projected, result.last_seq)
            nursery.start_soon(p.sync)
            nursery.start_soon(p.sync)
        assert p.checkpoint() == result.last_seq
        p.pstore.close()


def test_events_rebuilt_from_an_append_result_equal_the_log(tmp_path: Path) -> None:
    from protocol.logrecords import append_events

    with EventLog(tmp_path / "log") as log:
        log.append({BTC: walk(20, 1), ETH: walk(5, 2)})
        base = walk(30, 1)
        mixed = [base[3]._replace(close=base[3].low, open=base[3].low), *base[20:30], base[7]]
        for batch in ({ETH: walk(8, 2)[5:], BTC: mixed}, {BTC: [base[12]._replace(volume=9.0)]}):
            before = log.last_seq()
            result = log.append(batch)
            assert append_events(result) == log.events_since(before)


async def test_a_store_left_open_by_an_earlier_boot_is_wiped_and_rebuilt(tmp_path: Path) -> None:
    """Commits are not fsynced: a killed process loses nothing (same boot, the page cache has it), but a
    store left open across an OS crash may be torn, so it is wiped and rebuilt from the log."""
    with EventLog(tmp_path / "log") as log:
        log.append({BTC: walk(200, 4)})
        p = open_projector(tmp_path, log)
        await p.start()
        want = outputs(p, BTC)
        p.pstore._env.close()  # a killed process: no clean close recorded
        again = open_projector(tmp_path, log)
        assert not again.pstore.wiped  # same boot: kept
        assert again.needs_rebuild() == []
        assert outputs(again, BTC) == want
        again.pstore._env.close()
        state = orjson.loads((tmp_path / "proj" / "state.json").read_bytes())
        assert state["clean"] is False
        (tmp_path / "proj" / "state.json").write_bytes(orjson.dumps({**state, "boot_id": "an-earlier-boot"}))
        after_crash = open_projector(tmp_path, log)
        assert after_crash.pstore.wiped
        assert after_crash.needs_rebuild() == ["factor", "overlay"]
        await after_crash.start()
        assert outputs(after_crash, BTC) == want
        after_crash.pstore.close()
        assert orjson.loads((tmp_path / "proj" / "state.json").read_bytes())["clean"] is True
