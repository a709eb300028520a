"""The names the monitoring tests read out of PromQL, and the rules they read out of a rules file."""

from __future__ import annotations

import pytest

from tests.monitoring.expressions import metric_names, rules


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (instance, market) (rate(klined_upstream_messages_total{job=~"$job"}[$__rate_interval]))',
            {"klined_upstream_messages_total"},
        ),
        ("time() - process_start_time_seconds", {"process_start_time_seconds"}),
        ("a > 1 * on (job, instance) group_left (x) b:recorded", {"a", "b:recorded"}),
        ("a > bool b unless on (job) c or d and ignoring(x) e", {"a", "b", "c", "d", "e"}),
        ('label_replace(x, "market", "$1", "series_id", "[^:]+:([^:]+):.+")', {"x"}),
        ("1e3 * foo offset 5m + bar @ 1700000000 - Inf * NaN", {"foo", "bar"}),
        ('predict_linear(node_filesystem_avail_bytes{job="node"}[6h], 24 * 3600) < 0', {"node_filesystem_avail_bytes"}),
        ('max by (instance, role) (klined_cluster_role{role="writer", x="a{b}"}) == 1', {"klined_cluster_role"}),
        ("sum without (le) (rate(h_bucket[5m:1m]))", {"h_bucket"}),
        ("vector(1)", set()),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_a_name_selector_is_refused() -> None:
    with pytest.raises(ValueError, match="__name__"):
        metric_names('{__name__=~"klined_.+"}')


def test_rules_inline_and_block_exprs() -> None:
    text = """groups:
  - name: g
    rules:
      - record: a:b
        expr: |
          x
          or y
      - alert: A
        expr: z > 1
        for: 1m
      - alert: B
        expr: 'w == 0'
"""
    assert rules(text) == [("a:b", "x\nor y"), ("A", "z > 1"), ("B", "w == 0")]
