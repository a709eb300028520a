"""The supervisor on MockClock: pinning, refcounts, idle reaping, capacity, crash restarts with backoff."""

from __future__ import annotations

import itertools
import random

import pytest
import trio
import trio.testing

from actors.supervisor import HEALTHY_RUN_S, CapacityError, Supervisor
from protocol.backoff import no_jitter
from protocol.series import SeriesId


def sid(symbol: str) -> SeriesId:
    return SeriesId.parse(f"binance:spot:{symbol}/USDT:1m")


A, B, C, W = sid("AAA"), sid("BBB"), sid("CCC"), sid("WWW")


class Actors:
    """Records which actors run; ``crash`` makes an actor fail on start."""

    def __init__(self) -> None:
        self.running: set[SeriesId] = set()
        self.starts: dict[SeriesId, list[float]] = {}
        self.crash: set[SeriesId] = set()

    async def main(self, series: SeriesId) -> None:
        self.starts.setdefault(series, []).append(trio.current_time())
        if series in self.crash:
            raise RuntimeError("boom")
        self.running.add(series)
        try:
            await trio.sleep_forever()
        finally:
            self.running.discard(series)


async def start(nursery: trio.Nursery, actors: Actors, **kw: object) -> Supervisor:
    kw.setdefault("jitter", no_jitter)  # exact restart delays; the jitter has its own test
    sup = Supervisor(actors.main, **kw)  # type: ignore[arg-type]
    await nursery.start(sup.run)
    return sup


async def test_refcount_and_idle_reaping(autojump_clock: trio.testing.MockClock) -> None:
    actors = Actors()
    async with trio.open_nursery() as nursery:
        sup = await start(nursery, actors, idle_ttl_s=60)
        sup.acquire(A)
        sup.acquire(A)
        await trio.sleep(1)
        assert actors.running == {A}
        job = sup.job(A)
        assert job is not None
        assert job.refcount == 2
        sup.release(A)
        sup.release(A)
        assert job.refcount == 0
        await trio.sleep(59)
        assert actors.running == {A}, "reaped before its TTL"
        sup.acquire(A)  # a subscriber came back in time: the TTL is off
        await trio.sleep(120)
        assert actors.running == {A}
        sup.release(A)
        await trio.sleep(60.5)
        assert actors.running == set()
        assert sup.job(A) is None
        nursery.cancel_scope.cancel()


async def test_pinned_series_are_never_reaped(autojump_clock: trio.testing.MockClock) -> None:
    actors = Actors()
    async with trio.open_nursery() as nursery:
        sup = await start(nursery, actors, idle_ttl_s=1)
        sup.pin(W)
        sup.acquire(W)
        sup.release(W)
        sup.release(W)
        await trio.sleep(3600)
        assert actors.running == {W}
        assert sup.jobs()[0]["refcount"] == -1
        assert sup.jobs()[0]["source"] == "whitelist"
        nursery.cancel_scope.cancel()


async def test_capacity_evicts_longest_idle_else_refuses(autojump_clock: trio.testing.MockClock) -> None:
    actors = Actors()
    async with trio.open_nursery() as nursery:
        sup = await start(nursery, actors, max_jobs=2, idle_ttl_s=600)
        sup.pin(W)  # pinned series do not count against on-demand capacity
        sup.acquire(A)
        sup.acquire(B)
        with pytest.raises(CapacityError, match="capacity of 2 series is full") as refused:
            sup.acquire(C)
        assert refused.value.code == "ondemand_ingest_capacity"
        await trio.sleep(1)
        assert actors.running == {W, A, B}, "nothing partial started for the refused series"
        sup.release(B)
        await trio.sleep(5)
        sup.release(A)  # idle for less time than B
        await trio.sleep(5)
        sup.acquire(C)
        await trio.sleep(1)
        assert actors.running == {W, A, C}, "B, the longest idle, was evicted"
        nursery.cancel_scope.cancel()


async def test_crash_restarts_with_backoff_and_isolation(autojump_clock: trio.testing.MockClock) -> None:
    actors = Actors()
    actors.crash.add(A)
    async with trio.open_nursery() as nursery:
        sup = await start(nursery, actors)
        sup.acquire(A)
        sup.acquire(B)
        await trio.sleep(40)
        starts = actors.starts[A]
        gaps = [round(b - a, 6) for a, b in itertools.pairwise(starts)]
        assert gaps[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]  # exponential, never a hot loop
        assert actors.running == {B}, "B never noticed A's crashes"
        assert actors.starts[B] == [actors.starts[B][0]]
        info = next(j for j in sup.jobs() if j["series_id"] == str(A))
        assert info["crashes"] == len(starts)
        assert info["last_error"] == "RuntimeError('boom')"
        assert info["running"] is False
        actors.crash.clear()
        await trio.sleep(60)
        assert A in actors.running  # recovers by itself
        nursery.cancel_scope.cancel()


async def test_a_healthy_run_resets_the_restart_backoff(autojump_clock: trio.testing.MockClock) -> None:
    runs = iter([0, 0, 0, 0, 30, 0, HEALTHY_RUN_S, 0])  # how long each life lasts before it crashes
    starts: list[float] = []

    async def main(series: SeriesId) -> None:
        starts.append(trio.current_time())
        await trio.sleep(next(runs, 10**6))
        raise RuntimeError("boom")

    async with trio.open_nursery() as nursery:
        sup = Supervisor(main, jitter=no_jitter)
        await nursery.start(sup.run)
        sup.acquire(A)
        await trio.sleep(200)
        lives = [round(b - a, 6) for a, b in itertools.pairwise(starts)]
        # restart delay = start gap - run: 1, 2, 4, 8; a 30 s run is not healthy (16); a 60 s one is (1 again)
        assert lives == [1.0, 2.0, 4.0, 8.0, 30 + 16.0, 32.0, HEALTHY_RUN_S + 1.0, 2.0]
        nursery.cancel_scope.cancel()


async def test_restart_delays_are_jittered_within_the_backoff(autojump_clock: trio.testing.MockClock) -> None:
    actors = Actors()
    actors.crash.add(A)
    async with trio.open_nursery() as nursery:
        sup = await start(nursery, actors, jitter=random.Random(3).random)
        sup.acquire(A)
        await trio.sleep(600)
        gaps = [b - a for a, b in itertools.pairwise(actors.starts[A])]
        assert all(0.1 <= gap <= min(60.0, 2.0**n) for n, gap in enumerate(gaps))
        assert any(gap < min(60.0, 2.0**n) * 0.9 for n, gap in enumerate(gaps)), "the draws spread them"
        nursery.cancel_scope.cancel()


async def test_unknown_release_is_a_no_op(autojump_clock: trio.testing.MockClock) -> None:
    actors = Actors()
    async with trio.open_nursery() as nursery:
        sup = await start(nursery, actors)
        sup.release(A)
        assert sup.jobs() == []
        nursery.cancel_scope.cancel()
