"""One connection's bounded outbox and how it closes: the only place a subscriber can push back on the hub."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

import structlog
import trio

from actors.fanout.stats import FanOutStats
from protocol.series import SeriesId
from protocol.ws_market import error_frame

if TYPE_CHECKING:
    from actors.fanout.delivery import Subscription

log = structlog.get_logger(__name__)

SLOW_CONSUMER: Final = "slow_consumer"
FLUSH: Final = ""  # from next_frame: no new frame, but the transport holds part of one to finish sending


class Connection:
    """One WebSocket connection's side of the hub: its subscriptions and its bounded outbox.

    The outbox is a deque with a wake-up event rather than a memory channel: a channel costs its reader
    two trips through the scheduler per frame, and a thousand subscribers of one publish make that the
    fan-out's hot path. Where the endpoint can hand a frame to its socket without waiting (``write_now``),
    a live frame that finds the outbox empty goes out at once, from the publish itself: no task switch and
    no queue for the common case, and the same order, since nothing queued or in flight is ever overtaken.
    """

    def __init__(self, stats: FanOutStats, client_id: int, queue_frames: int) -> None:
        self.stats, self.client_id = stats, client_id
        self.subs: dict[SeriesId, Subscription] = {}
        self._frames: deque[str] = deque()
        self._max_frames = queue_frames
        self._wakeup = trio.Event()  # set when a frame is queued (or the client closes)
        self._room = trio.Event()  # set when the sender has drained below half the bound
        self.closing = trio.Event()  # set with close_code/close_reason: the endpoint closes the socket
        self.close_code = 1000
        self.close_reason = ""
        self.final_frame: str | None = None  # sent after the outbox is abandoned (slow consumer)
        self.nursery: trio.Nursery | None = None  # where the endpoint runs this client's workers
        # Set by the endpoint: take a frame whole without waiting (True), or refuse it (False: it queues).
        # It refuses while a send is in flight; a frame it took only partly is finished by the sender (FLUSH).
        self.write_now: Callable[[str], bool] | None = None
        self._flush_due = False

    @property
    def queued(self) -> int:
        return len(self._frames)

    def offer(self, frames: Sequence[str]) -> None:
        """Live frames: queued at once or the client is a slow consumer (it never blocks the hub)."""
        if self.closing.is_set():
            return
        if len(self._frames) + len(frames) > self._max_frames:
            self.slow()
            return
        if not self._frames and self.write_now is not None:
            for taken, frame in enumerate(frames):
                if not self.write_now(frame):
                    frames = frames[taken:]
                    break
            else:
                return
        self._frames.extend(frames)
        self._wakeup.set()

    def flush_due(self) -> None:
        """The transport took part of a frame: wake the sender to finish it (next_frame answers FLUSH)."""
        self._flush_due = True
        self._wakeup.set()

    async def put(self, frames: Sequence[str]) -> None:
        """Catchup frames: wait for room (a pull the client paces by reading)."""
        for frame in frames:
            while len(self._frames) >= self._max_frames and not self.closing.is_set():
                self._room = trio.Event()
                await self._room.wait()
            if self.closing.is_set():
                return
            self._frames.append(frame)
            self._wakeup.set()

    async def next_frame(self) -> str | None:
        """The next frame to send; None once the client is closing and (for a slow consumer) abandoned."""
        while True:
            if self.final_frame is not None:
                return None  # a slow consumer's queued frames are abandoned
            if self._flush_due:
                self._flush_due = False
                return FLUSH
            if self._frames:
                frame = self._frames.popleft()
                if len(self._frames) < self._max_frames // 2:
                    self._room.set()
                return frame
            if self.closing.is_set():
                return None  # a shutdown's goodbyes went out first
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    def send_error(self, code: str, message: str, series: SeriesId | None = None) -> None:
        self.offer([error_frame(code, message, str(series) if series else None).decode()])

    def slow(self) -> None:
        if self.closing.is_set():
            return
        self.stats.slow_consumers += 1
        log.warning("ws_slow_consumer", client=self.client_id, subscriptions=len(self.subs))
        self.final_frame = error_frame(SLOW_CONSUMER, "send queue overflowed; closing").decode()
        self.close(1008, SLOW_CONSUMER)

    def close(self, code: int, reason: str) -> None:
        """Ask the endpoint to close: the sender wakes, sends what is due and the close code."""
        if not self.closing.is_set():
            self.close_code, self.close_reason = code, reason
            self.closing.set()
            self._wakeup.set()
            self._room.set()
