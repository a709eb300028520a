"""A replica's writer: the cluster's events applied to the local log at their seqs, then the same stages.

The events come from the stream (an :class:`~actors.ports.EventSource`) after the local log's last seq, so
a restarted replica resumes from what it holds. Each run of them is applied (the log checks that its own
append would write exactly those events) and then goes through the writer's stages after the append:
derived timeframes are not built here (the writer's derived candles are events of the stream too), but
factors, overlays and the fan-out run as on the writer, in the same order. Nothing is published before
it is in the local log.
"""

from __future__ import annotations

import attrs
import structlog
import trio

from actors.pipeline import Stages
from actors.ports import EventSource, StoreError
from actors.store import Store

log = structlog.get_logger(__name__)


@attrs.define
class ReplicaStats:
    applied: int = 0
    batches: int = 0
    last_seq: int = 0
    caught_up: bool = False  # the last read found nothing newer: this node holds the stream's tip


class Replica:
    def __init__(self, store: Store, source: EventSource, stages: Stages, *, max_events: int = 1000) -> None:
        self._store, self._source, self._stages = store, source, stages
        self._max_events = max_events
        self.stats = ReplicaStats()
        self._applied = trio.Event()

    async def wait_applied(self) -> None:
        """Return after the next events are applied and through their stages."""
        await self._applied.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the stream until cancelled. A storage error (a diverged log among them) ends the task: the
        supervisor restarts it, and a log that diverged stays refused rather than being papered over."""
        self.stats.last_seq = await trio.to_thread.run_sync(self._store.log.last_seq)
        task_status.started()
        while True:
            events = await self._source.read(self.stats.last_seq, max_events=self._max_events)
            self.stats.caught_up = not events
            if not events:
                continue
            # Applied and published whole even if the replica is being stopped (this node takes the lease):
            # a subscriber never misses what the local log already holds.
            with trio.CancelScope(shield=True):
                try:
                    results = await self._store.apply(events)
                except StoreError:
                    log.exception("replica_apply_failed", after_seq=self.stats.last_seq, events=len(events))
                    raise
                for result in results:
                    await self._stages.after_append(result)
            self.stats.applied += len(events)
            self.stats.batches += len(results)
            self.stats.last_seq = events[-1].seq
            self._applied.set()
            self._applied = trio.Event()
