"""The asyncio bridge: results and errors cross, a trio cancellation reaches the asyncio task, close is bounded."""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio

from daemon.cluster.bridge import AsyncioThread, BridgeClosedError


async def add(a: int, b: int) -> tuple[int, str]:
    await asyncio.sleep(0)
    return a + b, threading.current_thread().name


async def fail() -> None:
    raise KeyError("missing")


async def test_a_coroutine_runs_on_the_loop_thread_and_its_result_comes_back() -> None:
    async with AsyncioThread(name="bridge-test") as bridge:
        assert await bridge.run(add, 2, 3) == (5, "bridge-test")


async def test_an_exception_crosses_with_its_type() -> None:
    async with AsyncioThread() as bridge:
        with pytest.raises(KeyError, match="missing"):
            await bridge.run(fail)


async def test_a_trio_cancellation_cancels_the_asyncio_task() -> None:
    started, ended = threading.Event(), threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    async with AsyncioThread() as bridge:
        with trio.move_on_after(60) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bridge.run, forever)
                assert await trio.to_thread.run_sync(started.wait, 5)
                nursery.cancel_scope.cancel()
        assert not scope.cancelled_caught
        assert await trio.to_thread.run_sync(ended.wait, 5)  # the asyncio side saw CancelledError


async def test_close_ends_a_call_in_flight_and_the_thread_within_the_bound() -> None:
    started = threading.Event()
    outcome: list[BaseException] = []

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    bridge = AsyncioThread()
    async with bridge, trio.open_nursery() as nursery:

        async def call() -> None:
            try:
                await bridge.run(forever)
            except BridgeClosedError as e:
                outcome.append(e)

        nursery.start_soon(call)
        assert await trio.to_thread.run_sync(started.wait, 5)
        with trio.fail_after(10):
            await bridge.aclose()
    assert len(outcome) == 1
    assert not bridge._thread.is_alive()
    with pytest.raises(BridgeClosedError):
        await bridge.run(add, 1, 1)
