"""The one status query: what the stores hold, read once in a worker thread, for health, the control socket
and ``/metrics`` alike.

Every figure that needs an LMDB read (the series heads, the log's statistics, the projections' checkpoint)
is read here, off the event loop; the readers then add what the actors hold in memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import trio

from protocol.logrecords import SeriesHead

if TYPE_CHECKING:
    from daemon.app import Wiring
    from daemon.storage.eventlog import EventLog
    from daemon.storage.projection_store import ProjectionStore


@attrs.frozen
class StoredStatus:
    """The stores at one moment."""

    heads: dict[str, SeriesHead]
    log: dict[str, int]  # the event log's statistics: last_seq, map and file sizes
    projected_seq: int  # the factor projections' checkpoint

    @property
    def last_seq(self) -> int:
        return self.log["last_seq"]


def _read(eventlog: EventLog, projections: ProjectionStore) -> StoredStatus:
    return StoredStatus(eventlog.heads(), eventlog.statistics(), projections.checkpoint())


async def stored_status(services: Wiring) -> StoredStatus:
    return await trio.to_thread.run_sync(_read, services.eventlog, services.projections)
