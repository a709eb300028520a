"""The writer's commit point in cluster mode: a batch's events go to the stream before the local log.

``actors.store.Store`` computes an append in its open transaction, hands the events here, and commits only
once the stream has stored them (all or nothing, fenced on the stream's last sequence). A node that does
not hold the lease does not even try. A batch of more events than one atomic batch may hold goes as several,
each fenced on the last. A refused batch whose very events the stream already holds at those seqs was this
node's own earlier try, stored with its acknowledgement lost: it counts as stored, so a retry never doubles
and never loses it.

A refused batch that is not this node's own means another writer appended. If this node has lost the lease
meanwhile, it was a stale writer: its local transaction is rolled back (the store aborts it) and the node
becomes a replica (:class:`NotWriterError`, heard by ``on_fenced``). If it still holds the lease, a writer
that lost it appended in between: this node catches up (``on_behind``) and the batch is retried.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Final

from actors.ports import NotWriterError
from daemon.cluster.stream import MAX_BATCH, EventStream, StaleWriterError
from protocol.cluster_events import encode_event
from protocol.logrecords import LogEvent

__all__ = ["NOT_WRITER", "NotWriterError", "StreamCommitPoint"]

NOT_WRITER: Final = "this node does not hold the writer lease"


def batch_id() -> str:
    """Unique per batch (the server keeps a batch's messages apart by it), within its 64 characters."""
    return uuid.uuid4().hex


def _nobody() -> str | None:
    return None


def _ignore(events: int) -> None:
    """No one listens (tests of the commit point alone)."""


class StreamCommitPoint:
    def __init__(
        self,
        stream: EventStream,
        node: str,
        may_write: Callable[[], bool],
        *,
        writer: Callable[[], str | None] = _nobody,
        on_fenced: Callable[[int], None] = _ignore,
        on_behind: Callable[[int], None] = _ignore,
    ) -> None:
        """``writer`` names the lease holder as last seen (for the refusal's detail); ``on_fenced(events)``
        hears of a batch the stream refused after the lease was lost; ``on_behind(events)`` of one refused while
        this node still holds the lease (the local log is behind the stream)."""
        self._stream, self._node, self._may_write = stream, node, may_write
        self._writer, self._on_fenced, self._on_behind = writer, on_fenced, on_behind

    def refusal(self) -> NotWriterError:
        holder = self._writer()
        if holder == self._node:
            detail = f"node {self._node} takes over as the writer once it holds the stream's tip: try again shortly"
        elif holder:
            detail = f"node {self._node} is a replica: the writer is node {holder}"
        else:
            detail = f"node {self._node} is a replica, and no node holds the writer lease now: try again shortly"
        return NotWriterError(detail, holder)

    async def publish(self, events: Sequence[LogEvent]) -> None:
        if not self._may_write():
            raise self.refusal()
        for start in range(0, len(events), MAX_BATCH):
            chunk = events[start : start + MAX_BATCH]
            first = chunk[0].seq
            bodies = [encode_event(e.kind, e.series_id, e.candle, e.previous) for e in chunk]
            try:
                await self._stream.append(bodies, expected_last=first - 1, batch_id=batch_id())
            except StaleWriterError:
                if await self._stored_already(first, bodies):
                    continue  # an earlier try of this very batch was stored and its acknowledgement lost
                if not self._may_write():
                    self._on_fenced(len(events) - start)
                    raise self.refusal() from None
                self._on_behind(len(events) - start)
                raise

    async def _stored_already(self, first: int, bodies: Sequence[bytes]) -> bool:
        if await self._stream.last_seq() < first + len(bodies) - 1:
            return False
        for seq, body in enumerate(bodies, start=first):
            if await self._stream.message(seq) != body:
                return False
        return True
