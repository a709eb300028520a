"""The control socket and the real klinectl commands against the running daemon."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio

from daemon import backup
from daemon.klinectl import main as klinectl_main
from daemon.storage.eventlog import EventLog
from protocol.candle import Candle
from protocol.series import SeriesId
from tests.serving.harness import S1, daemon

S2 = "binance:spot:ETH/USDT:1m"
PERP = "binance:futures:BTC/USDT:5m"


async def klinectl(*args: str) -> int:
    return await trio.to_thread.run_sync(klinectl_main, list(args))


async def test_status_series_pin_unpin_and_they_survive_a_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = str(tmp_path / "klined.sock")
    async with daemon(tmp_path, KLINED_WHITELIST=S1) as d:
        await d.ingest(120)
        assert await klinectl("--socket", sock, "--json", "status") == 0
        out = capsys.readouterr().out
        status = json.loads(out[out.index("\n{\n") :])  # after whatever the daemon logged to stdout
        assert (status["whitelist"], status["last_seq"], status["series_stored"]) == ([S1], 1, 1)
        assert status["lmdb_bytes"] > 0
        assert await klinectl("--socket", sock, "pin", S2) == 0
        assert await klinectl("--socket", sock, "unpin", S1) == 0
        assert "whitelist: " + S2 in capsys.readouterr().out
        assert (await d.http.get("/api/market/whitelist")).json() == {"series_ids": [S2]}
        assert await klinectl("--socket", sock, "series") == 0
        out = capsys.readouterr().out
        assert out.splitlines()[0].split()[:3] == ["series_id", "source", "refcount"]
        assert S2 in out
    async with daemon(tmp_path, KLINED_WHITELIST=S1) as d:  # the same config: the pins were kept
        assert (await d.http.get("/api/market/whitelist")).json() == {"series_ids": [S2]}


def printed_json(out: str) -> dict[str, Any]:
    """klinectl's indented answer, after whatever the in-process daemon logged to stdout."""
    lines = out.splitlines()
    start = len(lines) - 1 - lines[::-1].index("{")
    answer: dict[str, Any] = json.loads("\n".join(lines[start:]))
    return answer


async def test_series_lists_every_stored_series_with_its_first_last_and_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Like freqtrade's list-data: a series stored but not followed now is listed too."""
    with EventLog(tmp_path / "eventlog") as log:
        log.append(
            {
                SeriesId.parse(S2): [Candle(t, 10.0, 11.0, 9.0, 10.0, 1.0) for t in (1_704_067_200, 1_704_067_260)],
                SeriesId.parse(PERP): [Candle(1_704_067_200 + 300 * i, 10.0, 11.0, 9.0, 10.0, 1.0) for i in range(5)],
            }
        )
    sock = str(tmp_path / "klined.sock")
    async with daemon(tmp_path, KLINED_WHITELIST=S1) as d:
        for t in (120, 180, 240):
            await d.ingest(t)
        assert await klinectl("--socket", sock, "series", "--json") == 0
        rows = {r["series_id"]: r for r in printed_json(capsys.readouterr().out)["series"]}
        assert list(rows)[:3] == [S1, PERP, S2]  # the active one first, then the stored ones by id
        assert {k: rows[S1][k] for k in ("active", "source", "first_time", "head_time", "candle_count")} == {
            "active": True,
            "source": "stored",
            "first_time": 120,
            "head_time": 240,
            "candle_count": 3,
        }
        assert rows[S1]["lag_seconds"] is not None
        assert rows[S2] == {
            "series_id": S2,
            "active": False,
            "source": None,
            "refcount": None,
            "running": False,
            "crashes": 0,
            "first_time": 1_704_067_200,
            "head_time": 1_704_067_260,
            "candle_count": 2,
            "lag_seconds": None,
            "subscribers": 0,
        }
        assert (rows[PERP]["first_time"], rows[PERP]["head_time"], rows[PERP]["candle_count"]) == (
            1_704_067_200,
            1_704_068_400,
            5,
        )
        assert await klinectl("--socket", sock, "series") == 0
        lines = capsys.readouterr().out.splitlines()
        table = lines[next(i for i, line in enumerate(lines) if line.startswith("series_id")) :]
        assert table[0].split() == [
            "series_id", "source", "refcount", "running", "first", "last", "candles", "lag_seconds", "subscribers"
        ]  # fmt: skip
        by_id = {line.split()[0]: line for line in table[1:]}
        assert by_id[S2].split() == [
            S2,
            "-",
            "-",
            "False",
            "2024-01-01",
            "00:00:00",
            "2024-01-01",
            "00:01:00",
            "2",
            "-",
            "0",
        ]
        assert by_id[PERP].split()[4:9] == ["2024-01-01", "00:00:00", "2024-01-01", "00:20:00", "5"]
        assert by_id[S1].split()[1:3] == ["stored", "-"]


async def test_backup_goes_into_the_clients_file_and_restores(tmp_path: Path) -> None:
    sock = tmp_path / "klined.sock"
    async with daemon(tmp_path / "live", KLINED_CONTROL_SOCKET=str(sock), KLINED_WHITELIST=S1) as d:
        for t in (120, 180, 240):
            await d.ingest(t)
        assert await klinectl("--socket", str(sock), "pin", S2) == 0
        target = tmp_path / "klined.backup"
        answer = await trio.to_thread.run_sync(backup.send_backup, sock, target)
        assert answer["event"] == "done", answer
        assert (answer["last_seq"], answer["bytes"]) == (3, target.stat().st_size)
        with pytest.raises(FileExistsError):  # an existing file is never overwritten
            await trio.to_thread.run_sync(backup.send_backup, sock, target)
    with tarfile.open(target) as tar:  # a plain tar: tar -tvf lists it
        assert tar.getnames() == ["eventlog/data.mdb", "pins.json", "klined-backup.json"]
    restored = tmp_path / "restored"
    summary = backup.restore_backup(target, restored)
    assert (summary["last_seq"], summary["files"]) == (3, ["eventlog/data.mdb", "pins.json"])
    with EventLog(restored / "eventlog") as copy:
        assert [c.candle_time for c in copy.range(S1)] == [120, 180, 240]
    with pytest.raises(backup.BackupError, match="already holds an event log"):
        backup.restore_backup(target, restored)
    async with daemon(restored, KLINED_WHITELIST=S1) as d:  # the pins came back with the log
        assert (await d.http.get("/api/market/whitelist")).json() == {"series_ids": [S1, S2]}


async def test_restore_refuses_what_is_not_a_klined_backup(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(backup.BackupError, match="not a klined backup"):
        backup.restore_backup(junk, tmp_path / "data")
    with tarfile.open(tmp_path / "other.tar", "w") as tar:
        tar.add(__file__, arcname="eventlog/data.mdb")
    with pytest.raises(backup.BackupError, match=r"no klined-backup\.json"):
        backup.restore_backup(tmp_path / "other.tar", tmp_path / "data")


async def _ask_with_fds(path: Path, fds: list[int], line: bytes = b'{"cmd": "backup"}\n') -> dict[str, object]:
    def ask() -> dict[str, object]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(path))
            socket.send_fds(s, [line], fds)
            reply: dict[str, object] = json.loads(s.makefile("rb").readline())
            return reply

    return await trio.to_thread.run_sync(ask)


def open_descriptors() -> set[str]:
    """What every open descriptor of this process (the test and the in-process daemon) points at."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            out.add(os.readlink(f"/proc/self/fd/{name}"))
    return out


async def test_backup_refuses_a_destination_it_cannot_use_and_leaks_no_descriptor(tmp_path: Path) -> None:
    sock = tmp_path / "klined.sock"
    full = tmp_path / "full"
    full.write_bytes(b"precious")
    read_only = tmp_path / "ro"
    read_only.touch()
    async with daemon(tmp_path) as d:
        await d.ingest(120)
        r, w = os.pipe()
        handed = {f"pipe:[{os.fstat(r).st_ino}]", str(full), str(read_only)}  # what the daemon is given
        cases = {
            "regular file": [r],
            "not empty": [os.open(full, os.O_WRONLY)],
            "not open for writing": [os.open(read_only, os.O_RDONLY)],
            "passed beside": [],
        }
        try:
            for words, fds in cases.items():
                reply = await _ask_with_fds(sock, fds)
                assert (reply["event"], reply["code"]) == ("error", "bad_request"), reply
                assert words in str(reply["detail"]), reply
            # descriptors sent with another command are closed too
            assert (await _ask_with_fds(sock, [w], b'{"cmd": "version"}\n'))["event"] == "done"
        finally:
            for fds in cases.values():
                for fd in fds:
                    os.close(fd)
            os.close(w)
        assert full.read_bytes() == b"precious"
        assert handed.isdisjoint(open_descriptors()), "the daemon kept a descriptor it was handed"


async def test_a_peer_that_vanishes_or_stalls_ends_only_its_own_connection(tmp_path: Path) -> None:
    """Issue 16's defect: garbage, then close at once without reading, ended the whole daemon."""
    sock = tmp_path / "klined.sock"
    async with daemon(tmp_path, KLINED_CONTROL_REQUEST_TIMEOUT_S="0.5") as d:
        for _ in range(20):
            stream = await trio.open_unix_socket(str(sock))
            await stream.send_all(b"\x00\xff garbage {{{\n" * 50)
            await stream.aclose()
        silent = await trio.open_unix_socket(str(sock))
        async with silent:
            with trio.fail_after(5):
                reply = json.loads(await silent.receive_some(65536))
        assert (reply["event"], reply["code"]) == ("error", "timeout")
        assert (await d.http.get("/api/version")).status_code == 200
        assert await klinectl("--socket", str(sock), "status") == 0


async def test_bad_requests_get_an_error_and_the_daemon_carries_on(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d:
        path = str(tmp_path / "klined.sock")
        for raw, code in (
            (b"not json\n", "bad_request"),
            (b'{"cmd": "explode"}\n', "bad_request"),
            (b"[]\n", "bad_request"),
        ):
            stream = await trio.open_unix_socket(path)
            async with stream:
                await stream.send_all(raw)
                reply = json.loads(await stream.receive_some(65536))
            assert (reply["event"], reply["code"]) == ("error", code)
        assert (await d.http.get("/api/version")).status_code == 200


PLAIN_PYTHON = "/usr/bin/python3"  # one another user may run (the venv's lives under root's home)


@pytest.mark.skipif(os.geteuid() != 0 or not os.access(PLAIN_PYTHON, os.X_OK), reason="needs root and a system python3")
async def test_another_uid_is_refused_even_if_the_socket_mode_lets_it_in(tmp_path: Path) -> None:
    public = Path(tempfile.mkdtemp(prefix="klined-ctl-"))  # pytest's tmp dirs are closed to other users
    os.chmod(public, 0o755)
    path = public / "klined.sock"
    try:
        async with daemon(tmp_path, KLINED_CONTROL_SOCKET=str(path)):
            os.chmod(path, 0o666)  # a misconfigured mode: SO_PEERCRED still guards
            # The daemon refuses on accept, without reading: the request may meet a closed socket (EPIPE), and
            # the refusal written before the close is still there to read.
            code = (
                "import socket,sys,contextlib; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
                'with contextlib.suppress(BrokenPipeError): s.sendall(b\'{"cmd": "status"}\\n\')\n'
                "print(s.recv(4096).decode())"
            )

            def run_as_nobody() -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [PLAIN_PYTHON, "-c", code, str(path)], capture_output=True, text=True, check=False, user=65534
                )

            result = await trio.to_thread.run_sync(run_as_nobody)
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout)["code"] == "forbidden"
    finally:
        shutil.rmtree(public, ignore_errors=True)


def test_the_socket_is_owner_only(tmp_path: Path) -> None:
    async def main() -> None:
        async with daemon(tmp_path):
            st = (tmp_path / "klined.sock").stat()
            assert st.st_mode & 0o777 == 0o600
            assert socket.AF_UNIX  # a unix stream socket: there is no TCP control port

    trio.run(main)
