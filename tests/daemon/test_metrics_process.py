"""``/metrics`` carries the standard process and Python metrics and ``klined_build_info`` beside klined's own."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from daemon import __version__
from daemon.metrics import register_process_metrics
from tests.serving.harness import daemon

PROCESS = {
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_start_time_seconds",
}


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def check_standard(found: dict[str, list[tuple[dict[str, str], float]]]) -> None:
    assert found.keys() >= PROCESS
    assert found["process_resident_memory_bytes"][0][1] > 0
    assert found["process_open_fds"][0][1] > 0
    assert found["python_info"][0][0]["version"] == platform.python_version()
    assert found["klined_build_info"] == [({"version": __version__, "python": platform.python_version()}, 1.0)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process metrics come from /proc")
def test_process_metrics_are_registered() -> None:
    registry = CollectorRegistry(auto_describe=False)
    register_process_metrics(registry)
    check_standard(samples(generate_latest(registry).decode()))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process metrics come from /proc")
async def test_the_daemons_metrics_include_them(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d:
        r = await d.http.get("/metrics")
    assert r.status_code == 200
    found = samples(r.text)
    check_standard(found)
    assert "klined_lmdb_events_total" in found  # klined's own are still there
