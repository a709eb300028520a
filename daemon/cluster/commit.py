"""The writer's commit point in cluster mode: a batch's events go to the stream before the local log.

``actors.store.Store`` computes an append in its open transaction, hands the events here, and commits only
once the stream has stored them (all or nothing, fenced on the stream's last sequence). A node that does
not hold the lease does not even try. A batch of more events than one atomic batch may hold goes as several,
each fenced on the last. A refused batch whose very events the stream already holds at those seqs was this
node's own earlier try, stored with its acknowledgement lost: it counts as stored, so a retry never doubles
and never loses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from actors.ports import StoreError
from daemon.cluster.stream import MAX_BATCH, EventStream, StaleWriterError
from protocol.cluster_events import encode_event
from protocol.logrecords import LogEvent

NOT_WRITER: Final = "this node does not hold the writer lease"


class NotWriterError(StoreError):
    """This node may not append (it does not hold the lease, or no longer)."""


class StreamCommitPoint:
    def __init__(self, stream: EventStream, node: str, may_write: Callable[[], bool]) -> None:
        self._stream, self._node, self._may_write = stream, node, may_write

    async def publish(self, events: Sequence[LogEvent]) -> None:
        if not self._may_write():
            raise NotWriterError(NOT_WRITER)
        for start in range(0, len(events), MAX_BATCH):
            chunk = events[start : start + MAX_BATCH]
            first = chunk[0].seq
            bodies = [encode_event(e.kind, e.series_id, e.candle, e.previous) for e in chunk]
            try:
                await self._stream.append(bodies, expected_last=first - 1, batch_id=f"{self._node}-{first}")
            except StaleWriterError:
                if not await self._stored_already(first, bodies):
                    raise
                # An earlier try of this very batch was stored and its acknowledgement lost: it is durable.

    async def _stored_already(self, first: int, bodies: Sequence[bytes]) -> bool:
        if await self._stream.last_seq() < first + len(bodies) - 1:
            return False
        for seq, body in enumerate(bodies, start=first):
            if await self._stream.message(seq) != body:
                return False
        return True
