"""``monitoring/grafana-dashboard.json`` imports anywhere (a ``${DS_PROMETHEUS}`` input, ``job`` and ``instance``
variables), has the panels operators look for, and every expression is PromQL that Prometheus' parser takes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.monitoring.expressions import (
    dashboard,
    dashboard_exprs,
    dashboard_panels,
    metric_names,
    promtool,
    with_variables,
)

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def test_it_imports_anywhere() -> None:
    board = dashboard()
    assert 39 <= board["schemaVersion"] < 42
    assert board["id"] is None
    assert board["uid"] == "klined"
    assert [(i["name"], i["type"], i["pluginId"]) for i in board["__inputs"]] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")
    ]
    for panel in dashboard_panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DS, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DS, panel["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables.keys() >= {"job", "instance"}
    assert all(v["datasource"] == DS for v in variables.values())


def test_every_panel_follows_the_job_and_instance_variables() -> None:
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            expr = target["expr"]
            assert metric_names(expr), f"{panel['title']}: no metric in {expr}"
            for name in metric_names(expr):
                for matchers in re.findall(rf"(?<![\w:]){re.escape(name)}(\{{[^}}]*\}})?", expr):
                    assert 'job=~"$job"' in matchers, (panel["title"], expr)
                    assert 'instance=~"$instance"' in matchers, (panel["title"], expr)
    variables = {v["name"]: v["definition"] for v in dashboard()["templating"]["list"]}
    assert variables["job"] == "label_values(klined_build_info, job)"
    assert variables["instance"] == 'label_values(klined_build_info{job=~"$job"}, instance)'


def test_the_panels_operators_look_for() -> None:
    panels = dashboard_panels()
    shown = {name for p in panels for t in p.get("targets", []) for name in metric_names(t["expr"])}
    assert shown >= {
        "klined_series_lag_seconds",
        "klined_closed_candles_appended_total",
        "klined_ws_connections",
        "klined_ws_subscribers",
        "klined_writer_queue_depth",
        "klined_writer_append_failures_total",
        "klined_projection_lag_events",
        "klined_projection_failed_series",
        "klined_gaps_repaired_total",
        "klined_history_candles_repaired_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    }
    lag = next(p for p in panels if p["title"] == "Series lag")
    assert "by (series_id)" in lag["targets"][0]["expr"]  # one line per series
    candles = next(p for p in panels if p["title"] == "Closed candles per second")
    assert "rate(klined_closed_candles_appended_total" in candles["targets"][0]["expr"]
    cluster = next(p for p in dashboard()["panels"] if p["type"] == "row" and p["title"] == "Cluster")
    assert cluster["collapsed"] is True
    in_row = {name for p in cluster["panels"] for t in p["targets"] for name in metric_names(t["expr"])}
    assert in_row >= {
        "klined_cluster_role",
        "klined_cluster_lease_held",
        "klined_cluster_replication_lag_seconds",
        "klined_cluster_replication_lag_events",
    }
    assert {p["id"] for p in panels} == set(range(1, len(panels) + 1))


def test_promtool_parses_every_expression(tmp_path: Path) -> None:
    """Each expression, with Grafana's variables put in, as a recording rule: ``promtool check rules`` parses it."""
    exprs = [with_variables(e) for e in dashboard_exprs()]
    assert not [e for e in exprs if re.search(r"\$(?!\d)", e)], "a Grafana variable the check does not fill in"
    rules = "\n".join(f"      - record: dashboard:expr_{i}\n        expr: {json.dumps(e)}" for i, e in enumerate(exprs))
    (tmp_path / "dashboard.yml").write_text(f"groups:\n  - name: dashboard\n    rules:\n{rules}\n")
    assert f"SUCCESS: {len(exprs)} rules found" in promtool("check", "rules", "dashboard.yml", cwd=tmp_path)
