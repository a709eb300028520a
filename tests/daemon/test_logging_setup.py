"""Log lines: syslog priority prefixes when the stream is the journal, and ``klined run``'s ``log_level``."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

import daemon.app
from daemon import cli
from daemon.logging_setup import configure_logging, is_journal


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


def log_every_level() -> None:
    log = structlog.get_logger("test")
    log.debug("a_debug", n=1)
    log.info("an_info", n=2)
    log.warning("a_warning", n=3)
    log.error("an_error", n=4)
    log.critical("a_critical", n=5)
    hypercorn = logging.getLogger("hypercorn.error")
    hypercorn.info("stdlib info")
    hypercorn.warning("stdlib warning")
    hypercorn.error("stdlib error")


EXPECTED = [
    ("<7>", "a_debug"),
    ("<6>", "an_info"),
    ("<4>", "a_warning"),
    ("<3>", "an_error"),
    ("<3>", "a_critical"),
    ("<6>", "stdlib info"),
    ("<4>", "stdlib warning"),
    ("<3>", "stdlib error"),
]


def journal_env(monkeypatch: pytest.MonkeyPatch, fd: int) -> None:
    st = os.fstat(fd)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")


def split(line: str) -> tuple[str, dict[str, Any]]:
    prefix, _, rest = line.partition(">")
    return prefix + ">", json.loads(rest)


def test_lines_to_the_journal_carry_their_priority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    with os.fdopen(w, "w") as stream, os.fdopen(r) as reader:
        journal_env(monkeypatch, w)
        configure_logging(stream=stream, level="debug")
        log_every_level()
        stream.close()
        lines = reader.read().splitlines()
    parsed = [split(line) for line in lines]
    assert [(prefix, record["event"]) for prefix, record in parsed] == EXPECTED
    assert parsed[0][1]["n"] == 1  # the JSON after the prefix is the usual line
    assert parsed[5][1]["logger"] == "hypercorn.error"


def test_a_journal_file_is_recognised_by_its_inode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal"
    with path.open("w") as stream:
        journal_env(monkeypatch, stream.fileno())
        assert is_journal(stream, os.environ)
        configure_logging(stream=stream, level="warning")
        log_every_level()
    assert [line[:3] for line in path.read_text().splitlines()] == ["<4>", "<3>", "<3>", "<4>", "<3>"]


@pytest.mark.parametrize("journal", [None, "1:2", "garbage", ""])
def test_without_the_journal_lines_stay_plain_json(
    journal: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if journal is None:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    else:
        monkeypatch.setenv("JOURNAL_STREAM", journal)  # another stream's, or not a dev:inode pair
    path = tmp_path / "log"
    with path.open("w") as stream:
        configure_logging(stream=stream, level="debug")
        log_every_level()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == [event for _, event in EXPECTED]


def test_a_stream_without_a_descriptor_is_not_the_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert not is_journal(io.StringIO(), os.environ)


def test_a_stdlib_traceback_is_text(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with path.open("w") as stream:
        configure_logging(stream=stream)
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            logging.getLogger("hypercorn.error").exception("request failed")
    record = json.loads(path.read_text())
    assert "ZeroDivisionError: division by zero" in record["exception"]


# -- klined run's log_level ----------------------------------------------------------------------------------


@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``klined run`` with a daemon that only logs one line of each level."""
    levels: list[str] = []

    async def run_until_signal(settings: Any, config_path: str | None) -> None:
        levels.append(settings.log_level)
        log_every_level()

    monkeypatch.setattr(daemon.app, "run_until_signal", run_until_signal)
    return levels


@pytest.mark.parametrize(
    ("level", "events"),
    [
        (None, ["an_info", "a_warning", "an_error", "a_critical", "stdlib info", "stdlib warning", "stdlib error"]),
        ("warning", ["a_warning", "an_error", "a_critical", "stdlib warning", "stdlib error"]),
        ("debug", [event for _, event in EXPECTED]),
    ],
)
def test_klined_run_logs_at_the_configured_level(
    level: str | None,
    events: list[str],
    fake_run: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("KLINED_LOG_LEVEL", raising=False)
    config = tmp_path / "klined.toml"
    config.write_text("" if level is None else f'log_level = "{level}"\n')
    assert cli.main(["run", "--config", str(config)]) == 0
    assert fake_run == [level or "info"]
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["event"] for line in lines] == events


def test_a_bad_log_level_is_a_config_error(
    fake_run: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KLINED_LOG_LEVEL", "loud")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("klined: config error: bad value for log_level")
    assert err.count("\n") == 1
    assert fake_run == []
