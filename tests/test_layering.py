"""Imports point one way: ``daemon`` -> ``actors`` -> ``protocol``.

Every module of the three layers is read (``TYPE_CHECKING`` imports included: a type is a dependency too)
and every import of a higher layer from a lower one is an error. Tests, benchmarks and the fake exchange's
users sit above all three and may import anything.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).parents[1]
RANK: Final = {"protocol": 0, "actors": 1, "daemon": 2}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute module names ``path`` imports; a relative import is resolved against its package."""
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            found.add(".".join([*base, *(node.module.split(".") if node.module else [])]))
    return found


def upward_edges(root: Path = ROOT) -> list[str]:
    edges = []
    for layer, rank in RANK.items():
        for path in sorted((root / layer).rglob("*.py")):
            for target in sorted(imported_modules(path, root)):
                if RANK.get(target.split(".")[0], -1) > rank:
                    edges.append(f"{module_name(path, root)} -> {target}")
    return edges


def test_imports_point_one_way() -> None:
    assert upward_edges() == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    for layer in RANK:
        (tmp_path / layer).mkdir()
    (tmp_path / "protocol" / "pure.py").write_text("from actors.store import Store\n")
    (tmp_path / "actors" / "store.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from daemon.storage.eventlog import EventLog\n"
    )
    (tmp_path / "daemon" / "eventlog.py").write_text("from protocol.pure import x\nfrom actors import store\n")
    assert upward_edges(tmp_path) == ["protocol.pure -> actors.store", "actors.store -> daemon.storage.eventlog"]
