"""The repository stands alone: no tracked file points at notes that live outside it.

klined's own references are docs/protocol.md, docs/http.md, docs/configuration.md, docs/factors.md and
docs/design.md; a clone has nothing else. The patterns are spelled in pieces so this file does not match itself.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).parents[1]
FORBIDDEN: Final = (
    "../" + "shared",
    "SPEC" + ".md",
    "FACTORS" + ".md",
    "STYLE" + ".md",
    "LAYOUT" + "-SKETCH",
    "CLUSTER" + "-NOTES",
    "SPEC" + " §",
)
SKIPPED: Final = frozenset({"web/package-lock.json"})  # npm's lockfile: third-party text, not ours


def tracked_files() -> list[str]:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run([git, "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
    return [name for name in out.decode().split("\0") if name and name not in SKIPPED]


def mentions(text: str) -> list[tuple[int, str]]:
    """(line number, pattern) of every forbidden pattern in ``text``."""
    return [(n, p) for n, line in enumerate(text.splitlines(), 1) for p in FORBIDDEN if p in line]


def test_mentions_are_found() -> None:
    assert mentions("a\nsee " + "SPEC" + " §3 and ../" + "shared/x\n") == [(2, "../" + "shared"), (2, "SPEC" + " §")]
    assert mentions("docs/factors.md, docs/protocol.md") == []


def test_no_tracked_file_points_outside_the_repository() -> None:
    found = []
    for name in tracked_files():
        path = ROOT / name
        if not path.is_file():  # deleted in the work tree, or a submodule
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        text = data.decode("utf-8", errors="replace")
        found += [f"{name}:{n}: {pattern!r}" for n, pattern in mentions(text)]
    assert not found, "pointers outside the repository:\n" + "\n".join(found)
