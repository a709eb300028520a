"""The PromQL of the shipped monitoring (``monitoring/``): the dashboard's and the rules' expressions, the metric
names they select, and ``promtool`` to check them.

No PromQL parser or YAML library is a dependency, so names are read with a few regular expressions after the
parts that hold no metric name (strings, label matchers, ranges, grouping labels) are cut out; the rules file is
read for its ``expr`` keys only, in the layout it is written in (a rule that is not read fails the count).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

MONITORING: Final = Path(__file__).resolve().parents[2] / "monitoring"
DASHBOARD: Final = MONITORING / "grafana-dashboard.json"
ALERTS: Final = MONITORING / "alerts.yml"
ALERTS_TEST: Final = MONITORING / "alerts-test.yml"

_STRINGS: Final = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS: Final = re.compile(r"\{[^{}]*\}")
_RANGES: Final = re.compile(r"\[[^\[\]]*\]")
_GROUPING: Final = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_OFFSET: Final = re.compile(r"(?:\boffset|@)\s*-?[\w.]+")
# A name: not inside a number (1e3) or a variable ($job), and not a function or aggregation (followed by "(").
_NAME: Final = re.compile(r"(?<![\w.$:])[A-Za-z_:][\w:]*(?![\w:])(?!\s*\()")
_KEYWORDS: Final = {"and", "or", "unless", "bool", "group_left", "group_right", "inf", "nan"}
_LABEL_VALUES: Final = re.compile(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$", re.DOTALL)
# What Grafana puts in for its variables when the dashboard's expressions are checked by promtool.
GRAFANA_VARIABLES: Final = {"$__rate_interval": "1m", "$job": "klined", "$instance": ".*", "$series": ".*"}


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (a ``{__name__=...}`` selector is refused: it would hide one)."""
    if "__name__" in expr:
        raise ValueError(f"select metrics by name, not by __name__: {expr}")
    text = _STRINGS.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    return {name for name in _NAME.findall(text) if name.lower() not in _KEYWORDS}  # keywords: any case


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row holds its panels


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_panels() -> list[dict[str, Any]]:
    return list(_panels(dashboard()["panels"]))


def dashboard_exprs() -> list[str]:
    """Every panel target's expression, and each query variable's metric selector."""
    board = dashboard()
    exprs = [t["expr"] for p in _panels(board["panels"]) for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            inner = _LABEL_VALUES.match(query)
            assert inner, f"variable {var['name']}: expected label_values(selector, label), got {query}"
            exprs.append(inner.group(1))
    return exprs


def with_variables(expr: str) -> str:
    """``expr`` as Grafana sends it, for promtool."""
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    return expr


def rules(text: str) -> list[tuple[str, str]]:
    """``(name, expr)`` of every ``- alert:`` and ``- record:`` rule, in order; ``expr`` inline or a ``|`` block."""
    lines = text.splitlines()
    found: list[tuple[str, str]] = []
    names = [m.group(1) for line in lines if (m := re.match(r"\s*- (?:alert|record):\s*(\S+)", line))]
    for i, line in enumerate(lines):
        m = re.match(r"(\s*)expr:\s*(.*)$", line)
        if not m:
            continue
        indent, value = len(m.group(1)), m.group(2).strip()
        if value in {"|", "|-", ">", ">-"}:
            block = []
            for follow in lines[i + 1 :]:
                if follow.strip() and len(follow) - len(follow.lstrip()) <= indent:
                    break
                block.append(follow.strip())
            value = "\n".join(block).strip()
        elif value[:1] in {"'", '"'}:
            value = value[1:-1]
        found.append((names[len(found)], value))
    assert len(found) == len(names), f"read {len(found)} expr keys for {len(names)} rules"
    return found


def promtool(*args: str, cwd: Path = MONITORING) -> str:
    """Run Prometheus' ``promtool``; a failure fails the test with its output."""
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail(
            "promtool not found: it comes with Debian's prometheus package, which ./dev setup (and ./dev test) "
            "installs (apt-get install -y --no-install-recommends prometheus)"
        )
    done = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"promtool {' '.join(args)} failed ({done.returncode}):\n{output}")
    return output
