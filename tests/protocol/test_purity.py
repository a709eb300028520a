"""protocol/ (every module, subpackages included) is the sans-IO core: no I/O, concurrency or clock modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROTOCOL = Path(__file__).parents[2] / "protocol"
FORBIDDEN = {
    "trio",
    "trio_websocket",
    "anyio",
    "asyncio",
    "lmdb",
    "socket",
    "ssl",
    "select",
    "selectors",
    "httpx",
    "ccxt",
    "hypercorn",
    "starlette",
    "time",
    "datetime",
    "os",
    "subprocess",
    "threading",
    "sqlite3",
    "structlog",
    "logging",
    "random",
    "daemon",
    "actors",
}


@pytest.mark.parametrize("path", sorted(PROTOCOL.rglob("*.py")), ids=lambda p: str(p.relative_to(PROTOCOL)))
def test_protocol_module_is_pure(path: Path) -> None:
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported & FORBIDDEN == set(), f"{path} imports {sorted(imported & FORBIDDEN)}"
