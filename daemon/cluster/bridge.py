"""An asyncio event loop in a dedicated thread, so that trio code can await the asyncio-only NATS client.

nats-py calls asyncio directly, so neither anyio nor a trio adapter can run it; trio-asyncio would, but it
warns on Python 3.12 and subclasses what 3.14 removes. A loop in a thread of its own is small and has no
such edge: trio hands it a coroutine (:meth:`AsyncioThread.run`) and sleeps until the loop's future is
done, woken through the trio token, never by a blocked worker thread. A trio cancellation cancels the
asyncio task; :meth:`AsyncioThread.aclose` cancels whatever still runs there and joins the thread within a
bound, so a daemon stop still ends on time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Final, TypeVar

import trio

T = TypeVar("T")
CLOSE_TIMEOUT_S: Final = 5.0


class BridgeClosedError(Exception):
    """The asyncio loop was closed while the call was in flight (the daemon is stopping)."""


class AsyncioThread:
    """One asyncio loop in one daemon thread; coroutines run there, their callers wait in trio."""

    def __init__(self, name: str = "klined-asyncio") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._closing = False

    async def __aenter__(self) -> AsyncioThread:
        self._thread.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with trio.CancelScope(shield=True):
            await self.aclose()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:  # what still runs is cancelled and given its chance to clean up, then the loop is closed
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def run(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """``await fn(*args)`` on the asyncio loop; its result, or its exception, here."""
        if self._closing or not self._thread.is_alive():
            raise BridgeClosedError("the asyncio loop is not running")
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: concurrent.futures.Future[T]) -> None:
            with contextlib.suppress(trio.RunFinishedError):  # the trio side is gone: nobody waits any more
                token.run_sync_soon(done.set)

        future = asyncio.run_coroutine_threadsafe(fn(*args), self._loop)
        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()  # the asyncio task is cancelled too: nothing keeps running for a caller who left
            raise
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise BridgeClosedError("the asyncio loop closed during the call") from None

    def submit(self, fn: Callable[..., Coroutine[Any, Any, object]], *args: Any) -> None:
        """Start ``fn(*args)`` on the loop and do not wait (a relay of display-only data); dropped if closed."""
        if self._closing or not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(fn(*args), self._loop)

    async def aclose(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Cancel what runs on the loop, stop it and join its thread (at most ``timeout_s``)."""
        if self._closing:
            return
        self._closing = True
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            await trio.to_thread.run_sync(self._thread.join, timeout_s)
