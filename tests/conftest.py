"""Options of the whole suite: ``--chaos-long`` runs the chaos run for many simulated hours; ``--cluster-long``
the cluster's writer-kill run with 20 kills instead of a few."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-long",
        action="store_true",
        default=False,
        help="run the chaos test for many simulated hours (minutes of wall time) instead of the short run",
    )
    parser.addoption(
        "--cluster-long",
        action="store_true",
        default=False,
        help="kill the cluster's writer 20 times (minutes of wall time) instead of the short run's few",
    )
