"""``GET /metrics``: the daemon's counters in Prometheus' text format (version 0.0.4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from daemon.app import Services

_HELP = {
    "klined_ws_connections": ("gauge", "open /ws/market connections"),
    "klined_ws_subscriptions": ("gauge", "subscriptions over all connections"),
    "klined_ws_publishes_total": ("counter", "durable publishes fanned out"),
    "klined_ws_frames_shared_total": ("counter", "frames sent from a publish's shared encoding"),
    "klined_ws_frames_custom_total": ("counter", "frames encoded for one subscriber (gaps, partial runs)"),
    "klined_ws_catchups_total": ("counter", "catchup reads"),
    "klined_ws_slow_consumers_total": ("counter", "connections closed as slow consumers"),
    "klined_writer_flushes_total": ("counter", "closed-candle write transactions"),
    "klined_writer_events_total": ("counter", "events appended by the writer"),
    "klined_writer_duplicates_dropped_total": ("counter", "closed candles merged away before the append"),
    "klined_store_write_batches_total": ("counter", "write transactions of the event log"),
    "klined_series_actors": ("gauge", "running series actors"),
    "klined_series_crashes_total": ("counter", "series actor crashes"),
    "klined_upstream_messages_total": ("counter", "upstream WebSocket messages, by market"),
    "klined_upstream_malformed_total": ("counter", "malformed upstream payloads skipped, by market"),
    "klined_upstream_connected": ("gauge", "open upstream connections, by market"),
}


def render_metrics(services: Services) -> str:
    hub, writer = services.hub.stats, services.writer.stats
    values: list[tuple[str, str, float]] = [
        ("klined_ws_connections", "", hub.connections),
        ("klined_ws_subscriptions", "", hub.subscriptions),
        ("klined_ws_publishes_total", "", hub.publishes),
        ("klined_ws_frames_shared_total", "", hub.frames_shared),
        ("klined_ws_frames_custom_total", "", hub.frames_custom),
        ("klined_ws_catchups_total", "", hub.catchups),
        ("klined_ws_slow_consumers_total", "", hub.slow_consumers),
        ("klined_writer_flushes_total", "", writer.flushes),
        ("klined_writer_events_total", "", writer.written_events),
        ("klined_writer_duplicates_dropped_total", "", writer.duplicates_dropped),
        ("klined_store_write_batches_total", "", services.store.statistics()["write_batches"]),
    ]
    live = services.live
    if live is not None:
        values.append(("klined_series_actors", "", len(live.actors)))
        values.append(("klined_series_crashes_total", "", live.supervisor.statistics()["crashes"]))
        for market, ingest in live.ingest.items():
            label = f'{{market="{market}"}}'
            values.append(("klined_upstream_messages_total", label, ingest.stats.messages))
            values.append(("klined_upstream_malformed_total", label, ingest.stats.malformed))
            connected = sum(1 for c in ingest.connections.values() if c.connected)
            values.append(("klined_upstream_connected", label, connected))
    lines: list[str] = []
    seen: set[str] = set()
    for name, labels, value in values:
        if name not in seen:
            kind, text = _HELP[name]
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            seen.add(name)
        lines.append(f"{name}{labels} {value:g}")
    return "\n".join(lines) + "\n"
