"""docs/configuration.md is generated from the settings and cannot drift from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon import config_docs
from daemon.config import KEYS


def test_the_docs_are_the_settings_own() -> None:
    text = config_docs.DOCS_PATH.read_text(encoding="utf-8")
    if text != config_docs.render():
        pytest.fail(f"docs/configuration.md is out of date: regenerate it with `{config_docs.REGENERATE}`")


def test_every_key_has_its_row() -> None:
    text = config_docs.render()
    for key in KEYS:
        assert f"| `{key}` | `KLINED_{key.upper()}` |" in text, key


def test_the_generator_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "configuration.md"
    assert config_docs.main(["--check", str(path)]) == 1
    assert "regenerate it with `.venv/bin/python -m daemon.config_docs`" in capsys.readouterr().err
    assert config_docs.main([str(path)]) == 0
    assert path.read_text() == config_docs.render()
    assert config_docs.main(["--check", str(path)]) == 0
