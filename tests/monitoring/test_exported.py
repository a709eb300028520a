"""The dashboard and the alerting rules against a real ``klined run`` that exports every metric (a cluster's
writer on real NATS, with live ingest from the fake exchange): every metric their PromQL names is in its
``/metrics``, and a real Prometheus scraping it answers every panel's query and evaluates every rule."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from daemon.fakex.market import Market
from daemon.fakex.server import FakeExchange, exchange_clock
from tests.cluster.nats_cluster import NatsCluster, nats_cluster
from tests.cluster.nodes import klined_node, wait_for
from tests.klined_process import free_port
from tests.monitoring.expressions import ALERTS, dashboard_exprs, metric_names, rules, with_variables

SPEED: Final = 120.0  # a 1m period closes every 0.5 s: the series has a head (and a lag) at once
PROMETHEUS: Final = {"up"}  # Prometheus' own, per target
# node_exporter's, for the disk alerts (alerts.yml says why the disk is node_exporter's to measure).
NODE_EXPORTER: Final = {"node_filesystem_avail_bytes", "node_filesystem_size_bytes"}
# Exported, and not worth a panel: what the process collector and python_info say beside RSS, CPU and descriptors.
NOT_ON_THE_DASHBOARD: Final = {"process_virtual_memory_bytes", "python_info"}


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsCluster]:
    with nats_cluster(tmp_path / "nats") as cluster:
        yield cluster


@asynccontextmanager
async def writer(nats: NatsCluster, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """A node that is the writer and ingests a series: its URL, and its ``/metrics`` once it has them all."""
    fake = FakeExchange(Market.default(spot=["BTCUSDT"]), exchange_clock(speed=SPEED))
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(fake.serve)
        async with klined_node(tmp_path, "k1", urls, nats, KLINED_DEV_CLOCK_SPEED=str(SPEED)) as node:
            async with httpx.AsyncClient(base_url=node.url) as http:

                async def complete() -> str | None:
                    text = (await http.get("/metrics")).text
                    writes = 'klined_cluster_role{role="writer"} 1.0' in text
                    return text if writes and "klined_series_lag_seconds{" in text else None

                text: str = await wait_for(complete, "the writer with a series")
            yield node.url, text
        nursery.cancel_scope.cancel()


async def test_every_metric_named_is_exported(nats: NatsCluster, tmp_path: Path) -> None:
    async with writer(nats, tmp_path) as (_, text):
        exported = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    # The scrape has every family: live ingest's, the series', the cluster's and the process'.
    assert {"klined_upstream_connected", "klined_series_lag_seconds", "klined_cluster_role"} <= exported
    assert {"process_resident_memory_bytes", "klined_build_info"} <= exported

    on_dashboard = {name for expr in dashboard_exprs() for name in metric_names(expr)}
    assert on_dashboard - exported - PROMETHEUS == set(), "the dashboard names metrics klined does not export"

    rule_list = rules(ALERTS.read_text())
    recorded = {name for name, _ in rule_list if ":" in name}
    in_rules = {name for _, expr in rule_list for name in metric_names(expr)}
    assert in_rules - exported - recorded - PROMETHEUS - NODE_EXPORTER == set(), "the rules name unknown metrics"

    # And the other way: a metric klined exports has a panel (add one with a new metric).
    assert exported - on_dashboard - NOT_ON_THE_DASHBOARD == set(), "exported metrics with no panel"


@contextmanager
def prometheus(tmp_path: Path, target: str) -> Iterator[int]:
    """Debian's Prometheus (the package that brings promtool) scraping ``target`` every second as job klined,
    with the shipped rules; its port."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: ./dev setup installs Debian's prometheus package (with promtool)")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{json.dumps(str(ALERTS))}]\n"
        f"scrape_configs:\n  - job_name: klined\n    static_configs: [{{targets: [{json.dumps(target)}]}}]\n"
    )
    args = [f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"]
    with (tmp_path / "prometheus.log").open("wb") as log:
        process = subprocess.Popen([binary, *args, f"--web.listen-address=127.0.0.1:{port}"], stderr=log)
        try:
            yield port
        finally:
            process.terminate()
            process.wait(timeout=10)


def api(port: int, path: str, query: str = "") -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode({'query': query} if query else {})}"
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.load(answer)["data"]


async def test_prometheus_answers_every_panel_and_no_alert_fires(nats: NatsCluster, tmp_path: Path) -> None:
    exprs = [with_variables(e).replace("[1m]", "[5s]") for e in dashboard_exprs()]  # rates over a few scrapes
    async with writer(nats, tmp_path) as (url, _):
        with prometheus(tmp_path, url.removeprefix("http://")) as port:
            empty: list[str] | str = "Prometheus never answered"
            with trio.move_on_after(60):  # a few scrapes, for the rates; bounded, and says what stayed empty
                while empty:
                    await trio.sleep(0.5)  # another process' scrapes: there is no event to wait on
                    try:
                        answers = [await trio.to_thread.run_sync(api, port, "query", e) for e in exprs]
                    except OSError:
                        continue  # not listening yet
                    empty = [e for e, a in zip(exprs, answers, strict=True) if not a["result"]]
            assert not empty, f"panels with no data: {empty}"
            groups = (await trio.to_thread.run_sync(api, port, "rules"))["groups"]
            alerts = (await trio.to_thread.run_sync(api, port, "query", "ALERTS"))["result"]
    evaluated = [r for g in groups for r in g["rules"]]
    assert len(evaluated) == len(rules(ALERTS.read_text()))
    assert [(r["name"], r.get("lastError")) for r in evaluated if r["health"] != "ok"] == []
    # None fires; none is even pending, but the lag's: at 120x a candle is a period late after half a second.
    assert [a["metric"] for a in alerts if a["metric"]["alertname"] != "KlinedSeriesLagging"] == []
    assert [a["metric"] for a in alerts if a["metric"]["alertstate"] == "firing"] == []
