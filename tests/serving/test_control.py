"""The control socket and the real klinectl commands against the running daemon."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import trio

from daemon import ctl
from daemon.eventlog import EventLog
from tests.serving.harness import S1, daemon

S2 = "binance:spot:ETH/USDT:1m"


async def klinectl(*args: str) -> int:
    return await trio.to_thread.run_sync(ctl.main, list(args))


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


async def test_backup_is_a_consistent_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with daemon(tmp_path) as d:
        for t in (120, 180, 240):
            await d.ingest(t)
        target = tmp_path / "backup"
        assert await klinectl("--socket", str(tmp_path / "klined.sock"), "backup", str(target)) == 0
        assert "backup written" in capsys.readouterr().out
        assert await klinectl("--socket", str(tmp_path / "klined.sock"), "backup", str(target)) == 1  # not empty
        assert "not empty" in capsys.readouterr().err
    with EventLog(target) as copy:
        assert [c.candle_time for c in copy.range(S1)] == [120, 180, 240]


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
            code = (
                "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
                's.sendall(b\'{\\"cmd\\": \\"status\\"}\\n\'); print(s.recv(4096).decode())'
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
