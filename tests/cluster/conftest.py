"""Each cluster test gets its own real 3-node NATS cluster (``tests/cluster/nats_cluster.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.nats_cluster import NatsCluster, nats_cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with nats_cluster(tmp_path / "nats") as c:
        yield c
