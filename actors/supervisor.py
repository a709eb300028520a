"""The series supervisor: which series actors run, for whom, and what happens when one crashes.

- whitelist series are pinned (refcount -1) and never reaped;
- on-demand series start on their first subscriber and are reaped ``idle_ttl_s`` after their refcount
  reaches 0;
- capacity (``max_jobs`` on-demand actors, 0 = unlimited): a new series evicts the longest-idle
  refcount-0 on-demand actor, else it is refused with ``ondemand_ingest_capacity`` and nothing starts;
- a crashing actor is recorded and restarted with jittered exponential backoff (reset after a healthy run); it
  runs in its own task, so one series' crash never touches another.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from typing import Final, Literal

import attrs
import structlog
import trio

from protocol.backoff import Backoff, Jitter
from protocol.series import SeriesId

log = structlog.get_logger(__name__)

Source = Literal["whitelist", "ondemand"]
ActorMain = Callable[[SeriesId], Awaitable[None]]
PINNED: Final = -1
BACKOFF_FIRST_S: Final = 1.0
BACKOFF_MAX_S: Final = 60.0
HEALTHY_RUN_S: Final = 60.0  # a run this long resets the backoff


class CapacityError(Exception):
    """No room for another on-demand series; ``code`` is the error code a client gets."""

    code = "ondemand_ingest_capacity"

    def __init__(self, series: SeriesId, max_jobs: int) -> None:
        super().__init__(f"on-demand capacity of {max_jobs} series is full; {series} refused")
        self.series = series


@attrs.define
class Job:
    """One supervised series actor (the fields of the debug ``ingest_state`` route, docs/http.md)."""

    series_id: SeriesId
    source: Source
    refcount: int
    started_at: float
    last_zero_at: float | None = None
    crashes: int = 0
    last_crash_at: float | None = None
    last_error: str | None = None
    running: bool = False
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, repr=False)

    def describe(self) -> dict[str, object]:
        return {
            "series_id": str(self.series_id),
            "source": self.source,
            "refcount": self.refcount,
            "started_at": self.started_at,
            "last_zero_at": self.last_zero_at,
            "crashes": self.crashes,
            "last_crash_at": self.last_crash_at,
            "last_error": self.last_error,
            "running": self.running,
        }


class Supervisor:
    """Owns every series actor task; call :meth:`run` under a nursery first (``await nursery.start``)."""

    def __init__(
        self,
        actor_main: ActorMain,
        *,
        max_jobs: int = 0,
        idle_ttl_s: float = 60.0,
        wall: Callable[[], float] = trio.current_time,
        jitter: Jitter = random.random,
    ) -> None:
        self._actor_main = actor_main
        self._jitter = jitter
        self._max_jobs = max_jobs
        self._idle_ttl_s = idle_ttl_s
        self._wall = wall  # what started_at / last_zero_at report (seconds)
        self._jobs: dict[SeriesId, Job] = {}
        self._nursery: trio.Nursery | None = None
        self._idle_since: dict[SeriesId, float] = {}  # trio time, for the reaper
        self._changed = trio.Event()

    # -- life cycle -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled; every actor stops with it. It may run again (a cluster node's next writer term):
        it starts from no series, as at first."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._reap_forever)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._jobs.clear()
            self._idle_since.clear()

    # -- the API of subscribers and configuration (sync: none of it blocks) -------------------------

    def pin(self, series: SeriesId) -> None:
        """Keep ``series`` running for good (whitelist)."""
        job = self._jobs.get(series)
        if job is None:
            self._start(series, "whitelist", PINNED)
        elif job.refcount != PINNED:
            job.source, job.refcount = "whitelist", PINNED
            self._idle_since.pop(series, None)

    def unpin(self, series: SeriesId, subscribers: int = 0) -> None:
        """No longer pinned: it becomes on demand with ``subscribers`` holding it (reaped after the TTL at 0)."""
        job = self._jobs.get(series)
        if job is None or job.refcount != PINNED:
            return
        job.source, job.refcount = "ondemand", subscribers
        if subscribers == 0:
            job.last_zero_at = self._wall()
            self._idle_since[series] = trio.current_time()
            self._changed.set()

    def acquire(self, series: SeriesId) -> None:
        """One more subscriber; starts the actor if needed or raises :class:`CapacityError`."""
        job = self._jobs.get(series)
        if job is not None:
            if job.refcount != PINNED:
                job.refcount += 1
                self._idle_since.pop(series, None)
            return
        if self._max_jobs and self._ondemand_count() >= self._max_jobs:
            victim = self._longest_idle()
            if victim is None:
                raise CapacityError(series, self._max_jobs)
            log.info("ondemand_evicted", series_id=str(victim), for_series_id=str(series))
            self._stop(victim)
        self._start(series, "ondemand", 1)

    def release(self, series: SeriesId) -> None:
        """One subscriber fewer (unsubscribe or disconnect); at 0 the idle TTL starts."""
        job = self._jobs.get(series)
        if job is None or job.refcount == PINNED or job.refcount == 0:
            return
        job.refcount -= 1
        if job.refcount == 0:
            job.last_zero_at = self._wall()
            self._idle_since[series] = trio.current_time()
            self._changed.set()

    def jobs(self) -> list[dict[str, object]]:
        return [job.describe() for job in self._jobs.values()]

    def job(self, series: SeriesId) -> Job | None:
        return self._jobs.get(series)

    def statistics(self) -> dict[str, int]:
        return {
            "jobs": len(self._jobs),
            "pinned": sum(1 for j in self._jobs.values() if j.refcount == PINNED),
            "ondemand": self._ondemand_count(),
            "idle": len(self._idle_since),
            "crashes": sum(j.crashes for j in self._jobs.values()),
        }

    # -- internals --------------------------------------------------------------------------------

    def _ondemand_count(self) -> int:
        return sum(1 for j in self._jobs.values() if j.source == "ondemand")

    def _longest_idle(self) -> SeriesId | None:
        return min(self._idle_since, key=self._idle_since.__getitem__, default=None)

    def _start(self, series: SeriesId, source: Source, refcount: int) -> None:
        if self._nursery is None:
            raise RuntimeError("Supervisor.run must be started before series are added")
        job = Job(series_id=series, source=source, refcount=refcount, started_at=self._wall())
        self._jobs[series] = job
        self._nursery.start_soon(self._supervise, job, name=f"series:{series}")
        log.info("series_started", series_id=str(series), source=source)

    def _stop(self, series: SeriesId) -> None:
        job = self._jobs.pop(series)
        self._idle_since.pop(series, None)
        job.scope.cancel()

    async def _supervise(self, job: Job) -> None:
        backoff = Backoff(first_s=BACKOFF_FIRST_S, cap_s=BACKOFF_MAX_S, healthy_s=HEALTHY_RUN_S)
        with job.scope:
            while True:
                started = trio.current_time()
                job.running = True
                try:
                    await self._actor_main(job.series_id)
                    error: str | None = "actor returned"
                except Exception as e:  # any crash of one actor is contained here
                    error = repr(e)
                finally:
                    job.running = False
                if trio.current_effective_deadline() == -math.inf:
                    return  # stopping (the supervisor is cancelled): what the actor raised on its way out is no crash
                job.crashes += 1
                job.last_crash_at, job.last_error = self._wall(), error
                backoff.ran(trio.current_time() - started)
                delay = backoff.next_delay(self._jitter())
                log.error("series_crashed", series_id=str(job.series_id), error=error, restart_in_s=round(delay, 3))
                await trio.sleep(delay)

    async def _reap_forever(self) -> None:
        while True:
            now = trio.current_time()
            for series, since in list(self._idle_since.items()):
                if now - since >= self._idle_ttl_s:
                    log.info("ondemand_reaped", series_id=str(series), idle_s=round(now - since, 3))
                    self._stop(series)
            next_due = min(self._idle_since.values(), default=None)
            self._changed = trio.Event()
            if next_due is None:
                await self._changed.wait()
            else:
                with trio.move_on_at(next_due + self._idle_ttl_s):
                    await self._changed.wait()
