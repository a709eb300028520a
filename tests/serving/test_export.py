"""``klinectl export`` against the real daemon, and back: every format, spot and futures, exported to
freqtrade's layout and imported by klined's freqtrade path (tail coverage reading ``freqtrade_data_dir``),
candle by candle."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from actors.store import Store
from daemon import export
from daemon.config import load_settings
from daemon.history.exchange import CcxtSource
from daemon.history.service import History
from daemon.klinectl import main as klinectl_main
from daemon.storage.eventlog import EventLog
from protocol.candle import Candle
from protocol.series import SeriesId
from protocol.timeframes import TIMEFRAMES
from tests.history.test_freqtrade_write import candles
from tests.serving.harness import daemon

M1 = TIMEFRAMES["1m"]
SPOT = SeriesId.parse("binance:spot:BTC/USDT:1m")
PERP = SeriesId.parse("binance:futures:BTC/USDT:1m")
START = 1_700_000_040
FORMATS = ("feather", "parquet", "json", "jsongz")
LAYOUT = {
    SPOT: "binance/BTC_USDT-1m.{ext}",
    PERP: "binance/futures/BTC_USDT_USDT-1m-futures.{ext}",
}
EXT = {"feather": "feather", "parquet": "parquet", "json": "json", "jsongz": "json.gz"}


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: unix socket paths stop at 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="klinectl-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def stored(data_dir: Path) -> dict[SeriesId, list[Candle]]:
    """Two series written into a data directory before its daemon starts; the spot one has a hole."""
    spot = [c for i, c in enumerate(candles(2_500, START, seed=1)) if not 1_000 <= i < 1_010]
    series = {SPOT: spot, PERP: candles(1_200, START + 60 * 100, seed=2)}
    with EventLog(data_dir / "eventlog") as log:
        log.append(series)
    return series


async def klinectl(*args: str) -> int:
    return await trio.to_thread.run_sync(klinectl_main, list(args))


async def imported(data_dir: Path, freqtrade_dir: Path, series: SeriesId, first: int, last: int) -> list[Candle]:
    """The file read back by klined's own freqtrade import: tail coverage over [first, last] into a new log."""
    settings = load_settings(env={"KLINED_DATA_DIR": str(data_dir), "KLINED_FREQTRADE_DATA_DIR": str(freqtrade_dir)})
    nowhere = "http://127.0.0.1:9"  # the exchange level is off: only the file may fill the window
    with EventLog(data_dir / "eventlog") as log:
        history = History(
            settings, Store(log), source=CcxtSource(nowhere, nowhere), base=M1, derived=[], now_s=lambda: last + 60
        )
        result = await history.ensure_tail_coverage(series, M1.count_between(first, last), last, exchange=False)
        assert result.filled["freqtrade"] > 0, result
        return log.range(series)


async def test_every_format_round_trips_through_freqtrades_files(
    tmp_path: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(export, "CHUNK", 700)  # several chunks a series, several row groups a file
    series = stored(tmp_path / "live")
    sock = str(short_dir / "klined.sock")
    async with daemon(tmp_path / "live", KLINED_CONTROL_SOCKET=sock):
        for fmt in FORMATS:
            for s in series:
                code = await klinectl("--socket", sock, "export", str(s), "--format", fmt, "--dir", str(tmp_path / fmt))
                assert code == 0
                assert (tmp_path / fmt / LAYOUT[s].format(ext=EXT[fmt])).is_file()
        out = capsys.readouterr().out
        assert f"exported 2490 candles of {SPOT} (2023-11-14 22:14:00 .. 2023-11-16 15:53:00)" in out
    for fmt in FORMATS:
        for s, original in series.items():
            first, last = original[0].candle_time, original[-1].candle_time
            got = await imported(tmp_path / f"import-{fmt}-{s.market}", tmp_path / fmt, s, first, last)
            assert got == original, (fmt, s)


def last_json(out: str) -> dict[str, object]:
    """The indented answer klinectl printed, after whatever the in-process daemon logged to stdout."""
    lines = out.splitlines()
    start = len(lines) - 1 - lines[::-1].index("{")
    answer: dict[str, object] = json.loads("\n".join(lines[start:]))
    return answer


async def test_since_until_and_what_cannot_be_exported(
    tmp_path: Path, short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    series = stored(tmp_path / "live")
    sock = str(short_dir / "klined.sock")
    out_dir, nowhere = tmp_path / "ft", tmp_path / "none"
    async with daemon(tmp_path / "live", KLINED_CONTROL_SOCKET=sock):
        since, until = START + 60 * 10, START + 60 * 19
        args = ["--socket", sock, "export", str(SPOT), "--format", "json"]
        assert await klinectl(*args, "--dir", str(out_dir), "--since", str(since), "--until", str(until), "--json") == 0
        answer = last_json(capsys.readouterr().out)
        assert (answer["candles"], answer["first_time"], answer["last_time"]) == (10, since, until)
        path = out_dir / LAYOUT[SPOT].format(ext="json")
        assert answer["path"] == str(path)
        assert [row[0] // 1000 for row in json.loads(path.read_text())] == [c.candle_time for c in series[SPOT][10:20]]
        # a series nobody stored, a range with nothing in it: refused, and no file nor directory made
        other = "binance:spot:ETH/USDT:1m"
        assert await klinectl("--socket", sock, "export", other, "--dir", str(nowhere)) == 1
        assert f"no candles stored for {other}" in capsys.readouterr().err
        assert await klinectl(*args, "--dir", str(nowhere), "--until", "2020-01-01") == 1
        assert f"no candles of {SPOT} stored between" in capsys.readouterr().err
        assert not nowhere.exists()
    with pytest.raises(SystemExit) as bad:  # a malformed id never reaches the daemon
        klinectl_main(["--socket", sock, "export", "BTCUSDT", "--dir", str(nowhere)])
    assert bad.value.code == 2
    assert "invalid series_id" in capsys.readouterr().err
