"""On-demand ingest across a cluster: every node's subscribers want series; the writer ingests them all.

The fan-out of each node holds its series through this object (its ``IngestControl``). It counts its own
subscribers per series and tells the cluster what it wants in its heartbeat; while this node is the writer,
it keeps live ingest holding the union of every node's demand. A replica's subscriber therefore starts the
series on whichever node writes, now or after a failover, and its candles reach the replica through the
stream like any other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Protocol

import structlog

from actors.supervisor import CapacityError
from protocol.series import SeriesId

log = structlog.get_logger(__name__)


class LiveControl(Protocol):
    """What the writer's live ingest offers (``daemon.live.LiveIngest``)."""

    def acquire(self, series: SeriesId) -> bool: ...
    def release(self, series: SeriesId) -> None: ...


class ClusterDemand:
    def __init__(self, upstream: Callable[[SeriesId], SeriesId]) -> None:
        """``upstream`` maps a series to the one its ingest runs on (derived timeframes to their base)."""
        self._upstream = upstream
        self.local: Counter[SeriesId] = Counter()  # this node's subscribers, per series
        self.remote: set[SeriesId] = set()  # what the other nodes' subscribers want
        self.held: set[SeriesId] = set()  # what live ingest holds for the cluster (writer only)
        self._live: LiveControl | None = None

    # -- the fan-out's IngestControl ---------------------------------------------------------------

    def acquire(self, series: SeriesId) -> bool:
        self.local[series] += 1
        self.reconcile()
        return True

    def release(self, series: SeriesId) -> None:
        if self.local[series] > 0:
            self.local[series] -= 1
        if self.local[series] <= 0:
            del self.local[series]
        self.reconcile()

    # -- the cluster ------------------------------------------------------------------------------

    def wanted_here(self) -> list[str]:
        """What this node's heartbeat announces."""
        return sorted(str(s) for s in self.local)

    def set_remote(self, series_ids: set[str]) -> None:
        remote: set[SeriesId] = set()
        for sid in series_ids:
            try:
                remote.add(SeriesId.parse(sid))
            except ValueError:
                log.warning("cluster_demand_invalid", series_id=sid)
        self.remote = remote
        self.reconcile()

    def holders(self, upstream: SeriesId) -> int:
        """How many holds live ingest has on ``upstream`` for the cluster (0 or 1: one per series)."""
        return sum(1 for s in self.held if self._upstream(s) == upstream)

    def writing(self, live: LiveControl | None) -> None:
        """This node's writer term begins (``live`` running) or ends (None: whatever it held stopped with it)."""
        self._live = live
        self.held.clear()
        self.reconcile()

    def reconcile(self) -> None:
        live = self._live
        if live is None:
            return
        wanted = set(self.local) | self.remote
        for series in sorted(wanted - self.held, key=str):
            try:
                live.acquire(series)
            except CapacityError as e:
                log.warning("cluster_demand_refused", series_id=str(series), error=str(e))
                continue
            self.held.add(series)
        for series in sorted(self.held - wanted, key=str):
            live.release(series)
            self.held.discard(series)
