"""``klinectl``: the operator's client of the daemon's control socket.

    klinectl status                                   uptime, series, connections, LMDB size
    klinectl series                                   every stored series (first, last, count) + the active ones' lag
    klinectl health                                   the health table of every active series
    klinectl pin SERIES / unpin SERIES                change the whitelist now (kept across restarts)
    klinectl backfill SERIES --since T [--until T]    repair a range now, with progress
    klinectl rebuild SERIES / rebuild --all           replay factor/overlay projections from the log, with progress
    klinectl backup FILE                              a hot, consistent backup into a new FILE (the client owns it)
    klinectl restore ARCHIVE --data-dir DIR           restore a backup into DIR (offline: the daemon stopped)
    klinectl export SERIES --dir D [--format feather|parquet|json|jsongz] [--since T] [--until T]
                                                      a stored series as freqtrade's data file (see below)
    klinectl top-markets [--market spot|futures]      the top markets by quote volume
    klinectl version                                  client and daemon versions

``--json`` (before or after the command) prints the daemon's answer as JSON for scripts; ``backfill`` and
``rebuild`` print one JSON line per event (progress, done, error) as the daemon sends them. Without it they
show a progress bar when stderr is a terminal, and only their final line otherwise. Exit codes: 0 ok, 1 the
daemon refused or failed (or the restore did), 2 no daemon / bad usage (or the backup file exists), 3 ok but
not healthy (a red or yellow series, an incomplete backfill).

``export`` writes freqtrade's names and columns where freqtrade reads them: ``D/binance/BTC_USDT-1m.feather``,
``D/binance/futures/BTC_USDT_USDT-1m-futures.feather`` (freqtrade's ``--datadir D/binance``; the file klined's own
import reads with ``freqtrade_data_dir = D``).

Times are UTC seconds or ISO dates (``2024-01-01``, ``2024-01-01T12:00``). The socket is ``--socket PATH``;
else the config's ``control_socket`` (``<data_dir>/klined.sock``) when ``--config FILE``,
``KLINED_CONTROL_SOCKET`` or ``KLINED_DATA_DIR`` says where; else the first that exists of ``./var/klined.sock``
(``klined run``'s default) and ``/run/klined/klined.sock`` (the systemd unit's).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
import stat
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import orjson
from tqdm import tqdm

from daemon import __version__
from daemon.config import ConfigError, Settings, load_settings
from daemon.klinectl_show import show, utc
from protocol.errors import ProtocolError
from protocol.series import SeriesId

SYSTEMD_SOCKET: Final = Path("/run/klined/klined.sock")  # systemd/klined.service's KLINED_CONTROL_SOCKET
# Variables that say where the socket is; other KLINED_* ones are the daemon's business.
SOCKET_ENV: Final = ("KLINED_CONTROL_SOCKET", "KLINED_DATA_DIR")
EXIT_FAILED, EXIT_NO_DAEMON, EXIT_UNHEALTHY = 1, 2, 3


class NoDaemonError(Exception):
    """No socket found where a daemon runs by default."""

    def __init__(self, tried: Sequence[Path]) -> None:
        super().__init__(
            f"no daemon listening (tried {', '.join(map(str, tried))}; pass --socket PATH or --config FILE)"
        )


def default_sockets() -> tuple[Path, ...]:
    return (Settings().control_socket_path, SYSTEMD_SOCKET)


def is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except PermissionError:
        return True  # a directory we may not enter (root's /run/klined): connecting says why
    except OSError:
        return False


def find_socket(
    flag: str | None,
    config: str | None,
    env: Mapping[str, str],
    candidates: Sequence[Path],
    exists: Callable[[Path], bool] = is_socket,
) -> Path:
    """``--socket``; else the config/environment when it names a place; else the first candidate that exists.

    Raises ``NoDaemonError`` (naming the candidates) or ``ConfigError``."""
    if flag:
        return Path(flag)
    if config is not None or any(name in env for name in SOCKET_ENV):
        return load_settings(config, env).control_socket_path
    for path in candidates:
        if exists(path):
            return path
    raise NoDaemonError(candidates)


def parse_time(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (UTC seconds or an ISO date)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp())


def series_arg(text: str) -> str:
    try:
        return str(SeriesId.parse(text))
    except ProtocolError as e:
        raise argparse.ArgumentTypeError(f"invalid series_id: {e}") from None


def request(path: Path, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Send one request; yield the answer's JSON lines."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.sendall(orjson.dumps(payload) + b"\n")
        buffer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                yield orjson.loads(line)


def one(path: Path, payload: dict[str, Any]) -> dict[str, Any]:
    answers = list(request(path, payload))
    if not answers:
        raise ConnectionRefusedError("the daemon closed the connection")
    return answers[-1]


class ProgressBar:
    """A tqdm bar on stderr when it is a terminal; nothing otherwise (a cron job's log keeps the final line)."""

    def __init__(self, desc: str, done_key: str, total_key: str, postfix_key: str | None = None) -> None:
        self.desc, self.done_key, self.total_key, self.postfix_key = desc, done_key, total_key, postfix_key
        self.enabled = sys.stderr.isatty()
        self.bar: tqdm[Any] | None = None

    def show(self, event: dict[str, Any]) -> None:
        if self.bar is None:
            if not self.enabled or not event.get(self.total_key):
                return
            self.bar = tqdm(total=event[self.total_key], unit="candle", desc=self.desc, dynamic_ncols=True)
        if self.postfix_key is not None:
            self.bar.set_postfix_str(str(event.get(self.postfix_key, "")))
        self.advance(event.get(self.done_key) or 0)

    def advance(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(max(0, done - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def follow(path: Path, payload: dict[str, Any], as_json: bool, bar: ProgressBar) -> dict[str, Any] | None:
    """A long request: each event as a JSON line with ``--json``, else progress on ``bar``. The final event, or
    None when the daemon hung up before one."""
    try:
        for event in request(path, payload):
            if as_json:
                print(orjson.dumps(event).decode(), flush=True)
            if event.get("event") != "progress":
                return event
            if not as_json:
                bar.show(event)
    finally:
        bar.close()
    return None


def failed(event: dict[str, Any] | None, as_json: bool) -> int:
    if event is None:
        print("klinectl: the daemon closed the connection before the end", file=sys.stderr)
    elif not as_json:  # with --json the error line is on stdout already
        print(f"klinectl: {event.get('code')}: {event.get('detail')}", file=sys.stderr)
    return EXIT_FAILED


def run_backfill(path: Path, series: str, since: int, until: int | None, as_json: bool) -> int:
    payload = {"cmd": "backfill", "series_id": series, "since": since, "until": until}
    final = follow(path, payload, as_json, ProgressBar(series, "filled_candles", "missing_candles"))
    if final is None or final.get("event") != "done":
        return failed(final, as_json)
    if not as_json:
        print(f"done: filled {final.get('filled', {})}, still missing {final.get('still_missing', 0)}")
    return EXIT_UNHEALTHY if final.get("still_missing") else 0


def run_rebuild(path: Path, series: str | None, everything: bool, as_json: bool) -> int:
    payload: dict[str, Any] = {"cmd": "rebuild", "all": True} if everything else {"cmd": "rebuild", "series_id": series}
    bar = ProgressBar("rebuild", "done", "total", postfix_key="series_id")
    final = follow(path, payload, as_json, bar)
    if final is None or final.get("event") != "done":
        return failed(final, as_json)
    if not as_json:
        print(f"done: {final['series']}: {final['candles']} candles replayed, checkpoint {final['checkpoint']}")
    return 0


def run_backup(path: Path, target: Path, as_json: bool) -> int:
    from daemon.backup import send_backup  # keeps the other commands free of the backup's imports

    try:
        answer = send_backup(path, target)
    except FileExistsError:
        print(
            f"klinectl: {target} exists: a backup goes to a new file (remove it or pick another name)", file=sys.stderr
        )
        return EXIT_NO_DAEMON
    except OSError as e:
        if e.filename is None:  # the socket's (no daemon, not ours): main says so
            raise
        print(f"klinectl: cannot create {target}: {e.strerror}", file=sys.stderr)
        return EXIT_NO_DAEMON
    if answer.get("event") != "done":
        return failed(answer, as_json=False)
    if as_json:
        print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"backup written to {target} ({answer['bytes']} bytes, log through seq {answer['last_seq']})")
    return 0


def run_restore(archive: Path, data_dir: Path, as_json: bool) -> int:
    from daemon.backup import BackupError, restore_backup

    try:
        summary = restore_backup(archive, data_dir)
    except BackupError as e:
        print(f"klinectl: restore failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    if as_json:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"restored {archive} into {summary['data_dir']} (log through seq {summary['last_seq']})")
    for name in summary.get("files", []):
        print(f"  {name}")
    return 0


def run_export(path: Path, args: argparse.Namespace) -> int:
    from daemon.export import export_series  # pyarrow only for this command

    bar = ProgressBar(args.series_id, "done", "total")
    series = SeriesId.parse(args.series_id)
    try:
        answer = export_series(path, series, args.format, Path(args.dir), args.since, args.until, bar.show)
    except (FileNotFoundError, ConnectionRefusedError, PermissionError) as e:
        if e.filename is None:  # the socket's (no daemon, not ours): main says so
            raise
        print(f"klinectl: cannot write {e.filename}: {e.strerror}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:  # a full disk, a reset: the partial file is gone already
        print(f"klinectl: export failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        bar.close()
    if answer.get("event") != "done":
        return failed(answer, as_json=False)
    if args.json:
        print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
    else:
        span = f"{utc(answer['first_time'])} .. {utc(answer['last_time'])}"
        print(f"exported {answer['candles']} candles of {series} ({span}) to {answer['path']}")
    return 0


def run_one(path: Path, command: str, args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {"cmd": command.replace("-", "_")}
    if command in ("pin", "unpin"):
        payload["series_id"] = args.series_id
    elif command == "top-markets":
        payload.update(market=args.market, quote_asset=args.quote_asset, limit=args.limit)
    answer = one(path, payload)
    if answer.get("event") == "error":
        return failed(answer, as_json=False)
    if args.json:
        print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
    else:
        show(command, answer)
    if command == "health" and not all(r["status"] == "green" for r in answer["series"]):
        return EXIT_UNHEALTHY
    if command == "cluster" and answer.get("enabled") and not answer.get("writer"):
        return EXIT_UNHEALTHY  # nobody writes: scripts and monitors hear it
    return 0


def run_command(path: Path, command: str, args: argparse.Namespace) -> int:
    if command == "backfill":
        return run_backfill(path, args.series_id, args.since, args.until, args.json)
    if command == "rebuild":
        return run_rebuild(path, args.series_id, args.all, args.json)
    if command == "backup":
        return run_backup(path, Path(args.path), args.json)
    if command == "export":
        return run_export(path, args)
    return run_one(path, command, args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="klinectl", description="control a running klined")
    parser.add_argument("--version", action="version", version=f"klinectl {__version__}")
    parser.add_argument("--config", help="the daemon's TOML config (to find its control socket)")
    parser.add_argument("--socket", help="the control socket path (overrides the config)")
    parser.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    # --json after the command too; SUPPRESS keeps a subcommand without it from resetting one given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the answer as JSON")
    sub = parser.add_subparsers(dest="command")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, parents=[common])

    command("version", "client and daemon versions")
    command("status", "uptime, series, connections, LMDB size")
    listing = command("series", "every stored series (first/last candle, count) and what runs the active ones")
    listing.description = (
        "One row per stored series, like freqtrade's list-data: its first and last candle (UTC) and how many the log "
        "holds; an active series adds its source, refcount, lag and subscribers (- for a series not followed now)."
    )
    command("health", "the health table of every active series")
    command("cluster", "the cluster's nodes, their roles, the writer, applied seqs and lag")
    for name in ("pin", "unpin"):
        command(name, f"{name} a series (persisted)").add_argument("series_id")
    backfill = command("backfill", "repair a range of a series now, with progress")
    backfill.add_argument("series_id")
    backfill.add_argument("--since", required=True, type=parse_time)
    backfill.add_argument("--until", type=parse_time)
    command("backup", "a hot, consistent backup into a new file").add_argument("path", metavar="FILE")
    restore = command("restore", "restore a backup into a data directory (the daemon stopped)")
    restore.add_argument("archive", metavar="ARCHIVE")
    restore.add_argument("--data-dir", required=True, metavar="DIR", help="the daemon's data_dir")
    export = command("export", "a stored series as freqtrade's data file (freqtrade's names and columns)")
    export.description = (
        "Write the stored candles of SERIES as freqtrade writes them: D/<exchange>/BTC_USDT-1m.<ext> (spot), "
        "D/<exchange>/futures/BTC_USDT_USDT-1m-futures.<ext> (futures); columns date (ms, UTC), open, high, low, "
        "close, volume. freqtrade reads them with --datadir D/<exchange>; klined imports them back with "
        "freqtrade_data_dir = D. The daemon streams the candles; klinectl writes the file (replacing it once whole)."
    )
    export.add_argument("series_id", type=series_arg, metavar="SERIES", help="e.g. binance:futures:BTC/USDT:1m")
    export.add_argument("--dir", required=True, metavar="D", help="written to D/<exchange>/[futures/]")
    export.add_argument("--format", default="feather", choices=["feather", "parquet", "json", "jsongz"])
    export.add_argument("--since", type=parse_time, metavar="T", help="the first candle time (default: the first)")
    export.add_argument("--until", type=parse_time, metavar="T", help="the last candle time (default: the last)")
    top = command("top-markets", "the top markets by quote volume")
    top.add_argument("--market", default="spot", choices=["spot", "futures"])
    top.add_argument("--quote-asset", default="USDT")
    top.add_argument("--limit", type=int, default=20)
    rebuild = command("rebuild", "rebuild factor/overlay projections from the log, with progress")
    target = rebuild.add_mutually_exclusive_group(required=True)
    target.add_argument("series_id", nargs="?")
    target.add_argument("--all", action="store_true", help="every series (outputs dropped and replayed)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "version"
    if command == "restore":  # offline: no daemon to find
        return run_restore(Path(args.archive), Path(args.data_dir), args.json)
    try:
        path = find_socket(args.socket, args.config, os.environ, default_sockets())
    except (ConfigError, NoDaemonError) as e:
        print(f"klinectl: {e}", file=sys.stderr)
        return EXIT_NO_DAEMON
    try:
        return run_command(path, command, args)
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"klinectl: no daemon listening on {path} (is klined running?)", file=sys.stderr)
    except PermissionError:
        print(f"klinectl: permission denied on {path}: the socket is the daemon user's (try sudo)", file=sys.stderr)
    return EXIT_NO_DAEMON


if __name__ == "__main__":
    sys.exit(main())
