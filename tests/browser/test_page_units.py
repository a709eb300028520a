"""The chart page's own unit tests (``web/test``, node's built-in runner): the candle book's gap and
duplicate rules and the series id checks, without a browser."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[2] / "web"


def test_the_page_logic_passes_its_node_tests() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("needs Node.js 20+ (the chart page's build needs it too)")
    run = subprocess.run([node, "--test", "test/"], cwd=WEB, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "# fail 0" in run.stdout
