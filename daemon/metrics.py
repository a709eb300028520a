"""``GET /metrics``: the daemon's state in Prometheus' text format, through ``prometheus_client``.

One custom collector reads the live counters at scrape time (nothing is double-counted or kept twice):
ingest, the writer, gaps, the fan-out, projections, per-series lag and the LMDB file. Beside it, the
standard ``process_*`` and ``python_info`` metrics and ``klined_build_info``.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, Gauge, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon import __version__
from daemon.status import StoredStatus, stored_status
from protocol.health import lag_seconds

if TYPE_CHECKING:
    from actors.fanout.hub import FanOut
    from actors.projector import Projector
    from daemon.app import Wiring
    from daemon.cluster.node import ClusterNode
    from daemon.history.service import History
    from daemon.live import LiveIngest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class KlinedCollector(Collector):
    """Reads the actors' counters at scrape time and the stores from ``stored``, which the scrape reads
    first, in a worker thread (:func:`daemon.status.stored_status`): nothing here touches LMDB."""

    def __init__(self, services: Wiring) -> None:
        self.services = services
        self.stored: StoredStatus | None = None

    def collect(self) -> Iterator[Metric]:
        s, stored = self.services, self.stored
        if stored is None:  # only a scrape through MetricsPage.render reads this collector
            return
        yield from _writer_metrics(s)
        yield from _fanout_metrics(s.hub)
        yield from _repair_metrics(s.history)
        if s.live is not None:
            yield from _live_metrics(s.live)
        yield _lag_metric(s, stored)
        yield from _projection_metrics(s.projector, stored)
        yield from _lmdb_metrics(stored.log)
        if s.cluster is not None:
            yield from _cluster_metrics(s.cluster)


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, value=value)


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def _writer_metrics(s: Wiring) -> Iterator[Metric]:
    writer = s.writer.stats
    yield _counter("klined_closed_candles_appended", "closed candles appended by the writer", writer.written_events)
    yield _counter("klined_writer_flushes", "write transactions of the closed-candle writer", writer.flushes)
    yield _counter(
        "klined_writer_duplicates_dropped", "closed candles merged away before an append", writer.duplicates_dropped
    )
    yield _counter("klined_writer_append_failures", "appends that failed and were retried", writer.append_failures)
    yield _counter(
        "klined_writer_dropped_not_writer",
        "closed candles dropped: this node is not the cluster's writer",
        writer.dropped_not_writer,
    )
    yield _gauge("klined_writer_queue_depth", "closed candles waiting for the writer", s.writer.queue_depth())


ROLES: Final = ("starting", "replica", "catching_up", "writer", "broken", "stopping")


def _cluster_metrics(node: ClusterNode) -> Iterator[Metric]:
    view = node.describe()
    role = GaugeMetricFamily(
        "klined_cluster_role", "this node's role in the cluster (1 for the current)", labels=["role"]
    )
    for name in ROLES:
        role.add_metric([name], 1.0 if view["role"] == name else 0.0)
    yield role
    yield _gauge("klined_cluster_lease_held", "1 while this node holds the writer lease", float(view["lease_held"]))
    yield _counter("klined_cluster_lease_renewals", "writer lease renewals by this node", view["lease_renewals"])
    yield _counter("klined_cluster_lease_failures", "lease tries NATS did not answer", view["lease_failures"])
    yield _gauge("klined_cluster_applied_seq", "the last stream event in this node's log", view["applied_seq"])
    yield _gauge("klined_cluster_stream_seq", "the stream's last event, as last asked", view["stream_seq"])
    yield _gauge("klined_cluster_replication_lag_events", "stream events this node has not applied", view["lag_events"])
    yield _gauge(
        "klined_cluster_replication_lag_seconds",
        "time behind the stream's tip (0 at it)",
        view["lag_s"],
    )
    yield _gauge("klined_cluster_nodes", "nodes with a live heartbeat", len(node.link.registry.nodes))


def _fanout_metrics(hub: FanOut) -> Iterator[Metric]:
    yield _gauge("klined_ws_connections", "open /ws/market connections", hub.connection_count)
    yield _gauge("klined_ws_subscribers", "subscriptions over all connections", hub.stats.subscriptions)
    yield _gauge("klined_ws_outbox_depth_max", "frames queued for the slowest connection", hub.max_outbox_depth())
    yield _counter("klined_ws_slow_consumer_drops", "connections closed as slow consumers", hub.stats.slow_consumers)
    yield _counter("klined_ws_publishes", "durable publishes fanned out", hub.stats.publishes)
    yield _counter(
        "klined_gaps_healed_candles", "candles sent to subscribers by healing a hole", hub.stats.healed_candles
    )


def _repair_metrics(history: History) -> Iterator[Metric]:
    yield _counter("klined_gaps_repaired", "gap backfills that filled their hole completely", history.gaps_repaired)
    yield _counter(
        "klined_history_candles_repaired", "candles appended by repairs of the past", history.candles_repaired
    )


def _live_metrics(live: LiveIngest) -> Iterator[Metric]:
    """Upstream connections per market, and the series actors (only with live ingest)."""
    labels = ["market"]
    messages = CounterMetricFamily("klined_upstream_messages", "upstream WebSocket messages", labels=labels)
    malformed = CounterMetricFamily("klined_upstream_malformed", "malformed upstream payloads skipped", labels=labels)
    reconnects = CounterMetricFamily("klined_upstream_reconnects", "upstream reconnections", labels=labels)
    connected = GaugeMetricFamily("klined_upstream_connected", "open upstream connections", labels=labels)
    for market, ingest in live.ingest.items():
        messages.add_metric([market], ingest.stats.messages)
        malformed.add_metric([market], ingest.stats.malformed)
        reconnects.add_metric([market], ingest.stats.reconnects)
        connected.add_metric([market], sum(1 for c in ingest.connections.values() if c.connected))
    yield from (messages, malformed, reconnects, connected)
    yield _gauge("klined_series_actors", "running series actors", len(live.actors))
    yield _counter("klined_series_crashes", "series actor crashes", live.supervisor.statistics()["crashes"])
    yield _gauge(
        "klined_gaps_detected",
        "holes the actors know of",
        sum(len(a.state.holes) for a in live.actors.values()),
    )


def _lag_metric(s: Wiring, stored: StoredStatus) -> Metric:
    """How far each active series' head trails the latest closed period of the exchange clock."""
    lag = GaugeMetricFamily("klined_series_lag_seconds", "latest closed period minus head", labels=["series_id"])
    now = s.clock.now_s()
    for series in s.active_series():
        head = stored.heads.get(str(series))
        if head is not None:
            lag.add_metric([str(series)], lag_seconds(series, now, head.head_time) or 0)
    return lag


def _projection_metrics(proj: Projector, stored: StoredStatus) -> Iterator[Metric]:
    yield _gauge(
        "klined_projection_lag_events",
        "log events not yet through factors and overlays",
        max(0, stored.last_seq - stored.projected_seq),
    )
    yield _counter("klined_projection_candles_applied", "closed candles applied to projections", proj.stats.applied)
    yield _counter("klined_projection_rewinds", "rewinds on corrections and backfills", proj.stats.rewinds)
    yield _counter("klined_projection_rebuilds", "rebuilds from the log", proj.stats.rebuilds)
    yield _gauge("klined_projection_failed_series", "series whose projections stopped on an error", len(proj.failed))
    yield _gauge("klined_projection_series_in_memory", "series whose factor state is in memory", len(proj.replay.mem))


def _lmdb_metrics(stats: Mapping[str, int]) -> Iterator[Metric]:
    yield _gauge("klined_lmdb_bytes", "size of the LMDB data file in use", stats["last_pgno"] * stats["page_size"])
    yield _gauge("klined_lmdb_map_bytes", "LMDB map size", stats["map_size"])
    yield _counter("klined_lmdb_events", "events in the log (the last seq)", stats["last_seq"])


class MetricsPage:
    """The registry behind ``/metrics``; each scrape reads the stores off the loop, then renders."""

    def __init__(self, services: Wiring) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = KlinedCollector(services)
        self.registry.register(self.collector)
        register_process_metrics(self.registry)

    async def render(self) -> bytes:
        self.collector.stored = await stored_status(self.collector.services)
        return generate_latest(self.registry)  # at once, on the loop: the actors' counters are consistent


def register_process_metrics(registry: CollectorRegistry) -> None:
    """Memory, CPU, descriptors and start time (from /proc), ``python_info``, and what is running."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    build = Gauge("klined_build_info", "klined's version and Python's", ["version", "python"], registry=registry)
    build.labels(version=__version__, python=platform.python_version()).set(1)
