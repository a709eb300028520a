"""klinectl on its own: finding the socket, ``--json`` anywhere, streamed commands, backup and restore.

A scripted stand-in daemon (one thread, one unix socket) answers here; the real daemon is at the end.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from daemon import backup, klinectl
from daemon.config import ConfigError
from tests.serving.harness import S1, daemon

RUN = Path("/run/klined/klined.sock")


def never(path: Path) -> bool:
    return False


# -- finding the socket -------------------------------------------------------------------------------------


def test_the_socket_flag_wins_over_everything(tmp_path: Path) -> None:
    env = {"KLINED_CONTROL_SOCKET": "/elsewhere.sock"}
    assert klinectl.find_socket("/x.sock", None, env, [RUN], lambda p: True) == Path("/x.sock")


def test_the_environment_names_the_socket_without_looking_for_it() -> None:
    assert klinectl.find_socket(None, None, {"KLINED_CONTROL_SOCKET": "/a/b.sock"}, [RUN], never) == Path("/a/b.sock")
    assert klinectl.find_socket(None, None, {"KLINED_DATA_DIR": "/data"}, [RUN], never) == Path("/data/klined.sock")


def test_a_config_file_names_the_socket(tmp_path: Path) -> None:
    config = tmp_path / "klined.toml"
    config.write_text(f'data_dir = "{tmp_path}"\n')
    assert klinectl.find_socket(None, str(config), {}, [RUN], never) == tmp_path / "klined.sock"
    config.write_text("no_such_key = 1\n")
    with pytest.raises(ConfigError, match="no_such_key"):
        klinectl.find_socket(None, str(config), {}, [RUN], never)


def test_without_config_the_first_default_that_exists_is_used() -> None:
    local = Path("var/klined.sock")
    env = {"KLINED_WHITELIST": "not even valid", "PATH": "/bin"}  # says nothing about the socket: not parsed
    assert klinectl.find_socket(None, None, env, [local, RUN], lambda p: p == RUN) == RUN
    assert klinectl.find_socket(None, None, env, [local, RUN], lambda p: True) == local


def test_no_default_socket_names_every_path_tried() -> None:
    with pytest.raises(klinectl.NoDaemonError) as caught:
        klinectl.find_socket(None, None, {}, [Path("var/klined.sock"), RUN], never)
    assert "var/klined.sock" in str(caught.value)
    assert str(RUN) in str(caught.value)


def test_the_defaults_are_the_daemons_and_the_units() -> None:
    assert klinectl.default_sockets() == (Path("var/klined.sock"), RUN)


def test_is_socket_looks_at_the_file_type(short_dir: Path) -> None:
    (short_dir / "plain").touch()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(short_dir / "s.sock"))
        assert klinectl.is_socket(short_dir / "s.sock")
    assert not klinectl.is_socket(short_dir / "plain")
    assert not klinectl.is_socket(short_dir / "missing")


# -- a scripted daemon ------------------------------------------------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: unix socket paths stop at 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="klinectl-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Scripted:
    """Answers each connection's request line with the given JSON lines; keeps the requests."""

    def __init__(self, path: Path, answers: list[dict[str, Any]]) -> None:
        self.path, self.answers = path, answers
        self.requests: list[dict[str, Any]] = []
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                self.requests.append(orjson.loads(conn.makefile("rb").readline()))
                conn.sendall(b"".join(orjson.dumps(a) + b"\n" for a in self.answers))

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def scripted(short_dir: Path) -> Iterator[Any]:
    servers: list[Scripted] = []

    def start(*answers: dict[str, Any]) -> Scripted:
        servers.append(Scripted(short_dir / "klined.sock", list(answers)))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def no_config(monkeypatch: pytest.MonkeyPatch, short_dir: Path) -> None:
    """An operator's shell: no KLINED_* variables, and the defaults pointed at the test's directory."""
    for name in klinectl.SOCKET_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(klinectl, "default_sockets", lambda: (short_dir / "var.sock", short_dir / "klined.sock"))


@pytest.mark.usefixtures("no_config")
def test_klinectl_finds_a_default_socket_with_no_flags(scripted: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = scripted({"event": "done", "version": "9.9"})
    assert klinectl.main(["version"]) == 0
    assert capsys.readouterr().out.strip().endswith("klined 9.9")
    assert server.requests == [{"cmd": "version"}]


@pytest.mark.usefixtures("no_config")
def test_klinectl_with_no_daemon_anywhere_names_the_paths(short_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert klinectl.main(["status"]) == 2
    err = capsys.readouterr().err
    assert "no daemon listening" in err
    assert str(short_dir / "var.sock") in err
    assert str(short_dir / "klined.sock") in err


def test_the_environment_points_klinectl_at_its_socket(
    scripted: Any, short_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    scripted({"event": "done", "version": "9.9"})
    monkeypatch.setenv("KLINED_DATA_DIR", str(short_dir))
    monkeypatch.delenv("KLINED_CONTROL_SOCKET", raising=False)
    assert klinectl.main(["version"]) == 0
    assert "klined 9.9" in capsys.readouterr().out


# -- --json and the streamed commands -------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--json", "status"], ["status", "--json"]])
def test_json_goes_before_or_after_the_command(
    argv: list[str], scripted: Any, short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scripted({"event": "done", "uptime_s": 5, "last_seq": 7})
    assert klinectl.main(["--socket", str(short_dir / "klined.sock"), *argv]) == 0
    assert json.loads(capsys.readouterr().out) == {"event": "done", "uptime_s": 5, "last_seq": 7}


def test_json_is_off_unless_asked() -> None:
    assert klinectl._parser().parse_args(["status"]).json is False
    assert klinectl._parser().parse_args(["rebuild", "--all", "--json"]).json is True


BACKFILL = [
    {"event": "progress", "series_id": S1, "missing_candles": 100, "filled_candles": 0},
    {"event": "progress", "series_id": S1, "missing_candles": 100, "filled_candles": 60},
]
BACKFILL_DONE = {"event": "done", "series_id": S1, "filled": {"exchange": 100}, "still_missing": 0}
BACKFILL_ARGS = ["backfill", S1, "--since", "2024-01-01"]


def test_backfill_with_json_prints_every_event_as_a_line(
    scripted: Any, short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = scripted(*BACKFILL, BACKFILL_DONE)
    assert klinectl.main(["--socket", str(short_dir / "klined.sock"), *BACKFILL_ARGS, "--json"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line) for line in out.splitlines()] == [*BACKFILL, BACKFILL_DONE]
    assert err == ""
    assert server.requests[0]["since"] == 1704067200


def test_backfill_without_a_terminal_prints_only_its_final_line(
    scripted: Any, short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scripted(*BACKFILL, {**BACKFILL_DONE, "still_missing": 3})
    assert klinectl.main(["--socket", str(short_dir / "klined.sock"), *BACKFILL_ARGS]) == 3  # incomplete
    out, err = capsys.readouterr()
    assert out == "done: filled {'exchange': 100}, still missing 3\n"
    assert err == ""  # no bar


def test_backfill_on_a_terminal_shows_a_bar(
    scripted: Any, short_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted(*BACKFILL, BACKFILL_DONE)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert klinectl.main(["--socket", str(short_dir / "klined.sock"), *BACKFILL_ARGS]) == 0
    out, err = capsys.readouterr()
    assert "60/100" in err
    assert "candle" in err
    assert out.startswith("done: ")


REBUILD = [
    {"event": "progress", "series_id": S1, "done": 5, "total": 13},
    {"event": "done", "series": S1, "candles": 13, "checkpoint": 13},
]


@pytest.mark.parametrize("as_json", [False, True])
def test_rebuild_prints_lines_or_a_final_line(
    as_json: bool, scripted: Any, short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scripted(*REBUILD)
    flag = ["--json"] if as_json else []
    assert klinectl.main(["--socket", str(short_dir / "klined.sock"), "rebuild", S1, *flag]) == 0
    out, err = capsys.readouterr()
    if as_json:
        assert [json.loads(line) for line in out.splitlines()] == REBUILD
    else:
        assert out == f"done: {S1}: 13 candles replayed, checkpoint 13\n"
    assert err == ""


@pytest.mark.parametrize("as_json", [False, True])
def test_a_streamed_error_exits_1(
    as_json: bool, scripted: Any, short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = {"event": "error", "code": "bad_request", "detail": "no candles stored for it"}
    scripted(REBUILD[0], error)
    flag = ["--json"] if as_json else []
    assert klinectl.main(["--socket", str(short_dir / "klined.sock"), *flag, "rebuild", "--all"]) == 1
    out, err = capsys.readouterr()
    if as_json:
        assert [json.loads(line) for line in out.splitlines()] == [REBUILD[0], error]
    else:
        assert "bad_request: no candles stored for it" in err


def test_a_daemon_that_hangs_up_mid_stream_is_a_failure(
    scripted: Any, short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scripted(*BACKFILL)
    assert klinectl.main(["--socket", str(short_dir / "klined.sock"), *BACKFILL_ARGS]) == 1
    assert "closed the connection" in capsys.readouterr().err


# -- export: what the client leaves behind when the daemon fails it ---------------------------------------------

EXPORT_START = {"event": "start", "series_id": S1, "first_time": 60, "last_time": 120, "candle_count": 2}
EXPORT_ROWS = {"event": "candles", "candles": [[60, 1.0, 2.0, 0.5, 1.5, 3.0], [120, 1.5, 2.0, 1.0, 1.0, 0.0]]}


@pytest.mark.parametrize(
    ("answers", "words"),
    [
        ([EXPORT_START, EXPORT_ROWS], "hung_up: the daemon closed the connection before the end"),
        (
            [EXPORT_START, {**EXPORT_ROWS, "candles": EXPORT_ROWS["candles"][:1]}, {"event": "done", "candles": 2}],
            "short: 2 candles sent, 1 received",
        ),
        ([EXPORT_START, {"event": "error", "code": "internal", "detail": "boom"}], "internal: boom"),
    ],
)
def test_an_export_cut_short_leaves_no_file(
    answers: list[dict[str, Any]], words: str, scripted: Any, short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = scripted(*answers)
    out = short_dir / "ft"
    assert klinectl.main(["--socket", str(short_dir / "klined.sock"), "export", S1, "--dir", str(out)]) == 1
    assert words in capsys.readouterr().err
    assert server.requests == [{"cmd": "export", "series_id": S1, "since": None, "until": None}]
    assert list((out / "binance").iterdir()) == []  # neither the file nor its .partial


def test_an_export_that_completes_replaces_the_file_whole(
    scripted: Any, short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scripted(
        EXPORT_START, EXPORT_ROWS, {"event": "done", "series_id": S1, "candles": 2, "first_time": 60, "last_time": 120}
    )
    target = short_dir / "ft" / "binance" / "BTC_USDT-1m.json"
    target.parent.mkdir(parents=True)
    target.write_text("[[0,1,1,1,1,1]]")
    argv = [
        "--socket",
        str(short_dir / "klined.sock"),
        "export",
        S1,
        "--dir",
        str(short_dir / "ft"),
        "--format",
        "json",
    ]
    assert klinectl.main(argv) == 0
    assert json.loads(target.read_text()) == [[60_000, 1.0, 2.0, 0.5, 1.5, 3.0], [120_000, 1.5, 2.0, 1.0, 1.0, 0.0]]
    assert capsys.readouterr().out == (
        f"exported 2 candles of {S1} (1970-01-01 00:01:00 .. 1970-01-01 00:02:00) to {target}\n"
    )


# -- backup and restore ------------------------------------------------------------------------------------------


def test_backup_prints_what_it_wrote(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[Path, Path]] = []

    def send(socket_path: Path, target: Path) -> dict[str, Any]:
        calls.append((socket_path, target))
        return {"event": "done", "path": str(target), "bytes": 20480, "last_seq": 42}

    monkeypatch.setattr(backup, "send_backup", send)
    sock = short_dir / "klined.sock"
    assert klinectl.main(["--socket", str(sock), "backup", "klined.bak"]) == 0
    assert capsys.readouterr().out == "backup written to klined.bak (20480 bytes, log through seq 42)\n"
    assert calls == [(sock, Path("klined.bak"))]


@pytest.mark.parametrize(
    ("error", "code", "words"),
    [
        (FileExistsError(17, "File exists", "klined.bak"), 2, "klined.bak exists"),
        (PermissionError(13, "Permission denied", "klined.bak"), 2, "cannot create klined.bak: Permission denied"),
        (FileNotFoundError(2, "No such file or directory"), 2, "no daemon listening on"),
        (ConnectionRefusedError(111, "Connection refused"), 2, "no daemon listening on"),
    ],
)
def test_backup_failures_before_the_daemon_answers(
    error: OSError,
    code: int,
    words: str,
    short_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def send(socket_path: Path, target: Path) -> dict[str, Any]:
        raise error

    monkeypatch.setattr(backup, "send_backup", send)
    assert klinectl.main(["--socket", str(short_dir / "klined.sock"), "backup", "klined.bak"]) == code
    assert words in capsys.readouterr().err


def test_a_backup_the_daemon_refuses_exits_1(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    refusal = {"event": "error", "code": "bad_request", "detail": "the backup destination is not empty"}
    monkeypatch.setattr(backup, "send_backup", lambda socket_path, target: refusal)
    assert klinectl.main(["--socket", str(short_dir / "klined.sock"), "backup", "x"]) == 1
    assert "not empty" in capsys.readouterr().err


def test_restore_needs_no_daemon_and_prints_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = {"data_dir": str(tmp_path), "last_seq": 3, "files": ["eventlog/data.mdb", "pins.json"]}
    monkeypatch.setattr(backup, "restore_backup", lambda archive, data_dir: summary)
    monkeypatch.setattr(klinectl, "default_sockets", lambda: (tmp_path / "none.sock",))
    assert klinectl.main(["restore", "a.bak", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        f"restored a.bak into {tmp_path} (log through seq 3)",
        "  eventlog/data.mdb",
        "  pins.json",
    ]
    assert klinectl.main(["restore", "a.bak", "--data-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == summary


def test_a_failed_restore_exits_1_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(archive: Path, data_dir: Path) -> dict[str, Any]:
        raise backup.BackupError(f"{data_dir}/eventlog already holds an event log: stop klined first")

    monkeypatch.setattr(backup, "restore_backup", refuse)
    assert klinectl.main(["restore", "a.bak", "--data-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        f"klinectl: restore failed: {tmp_path}/eventlog already holds an event log: stop klined first\n"
    )


async def test_backup_and_restore_through_the_real_daemon(
    tmp_path: Path, short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = short_dir / "klined.sock"
    target = tmp_path / "klined.bak"
    async with daemon(tmp_path / "live", KLINED_CONTROL_SOCKET=str(sock)) as d:
        for t in (120, 180):
            await d.ingest(t)
        code = await trio.to_thread.run_sync(klinectl.main, ["--socket", str(sock), "backup", str(target)])
        assert code == 0
        size = target.stat().st_size
        out = capsys.readouterr().out  # after whatever the daemon logged to stdout
        assert f"backup written to {target} ({size} bytes, log through seq 2)" in out.splitlines()
        code = await trio.to_thread.run_sync(klinectl.main, ["--socket", str(sock), "backup", str(target)])
        assert code == 2
        assert "exists" in capsys.readouterr().err
    assert klinectl.main(["restore", str(target), "--data-dir", str(tmp_path / "restored")]) == 0
    assert "(log through seq 2)" in capsys.readouterr().out
    assert klinectl.main(["restore", str(target), "--data-dir", str(tmp_path / "restored")]) == 1
    assert "already holds an event log" in capsys.readouterr().err


def test_top_markets_says_when_the_list_is_stale(capsys: pytest.CaptureFixture[str]) -> None:
    item = {"symbol": "BTC/USDT", "last_price": 1.0, "quote_volume": 2.0, "price_change_percent": 0.5}
    klinectl.show("top-markets", {"stale": False, "items": [item]})
    assert capsys.readouterr().err == ""
    klinectl.show("top-markets", {"stale": True, "stale_age_s": 42.4, "items": [item]})
    out, err = capsys.readouterr()
    assert "BTC/USDT" in out
    assert err == "stale: the exchange did not answer; this list is 42 s old\n"
