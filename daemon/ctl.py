"""``klinectl``: the operator's client of the daemon's control socket.

    klinectl status                                   uptime, series, connections, LMDB size
    klinectl series                                   one line per active series (source, refcount, lag)
    klinectl health                                   the health table of every active series
    klinectl pin SERIES / unpin SERIES                change the whitelist now (kept across restarts)
    klinectl backfill SERIES --since T [--until T]    repair a range now, with a live progress bar
    klinectl backup DIR                               a hot, consistent copy of the LMDB log
    klinectl top-markets [--market spot|futures]      the top markets by quote volume
    klinectl version                                  client and daemon versions

``--json`` prints the daemon's answer as JSON for scripts. Exit codes: 0 ok, 1 the daemon refused or failed,
2 no daemon / bad usage, 3 ok but not healthy (a red or yellow series, an incomplete backfill).

Times are UTC seconds or ISO dates (``2024-01-01``, ``2024-01-01T12:00``). The socket is the config's
``control_socket`` (``<data_dir>/klined.sock``), or ``--socket PATH``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from tqdm import tqdm

from daemon import __version__
from daemon.config import ConfigError, load_settings


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


def show_health(rows: list[dict[str, Any]]) -> None:
    header = f"{'series':<36} {'status':<7} {'reason':<28} {'head':>12} {'lag_s':>8} {'missing':>8} backfill"
    print(header)
    print("-" * len(header))
    for r in rows:
        backfill = r["backfill"]
        pct = backfill.get("progress_pct")
        repair = backfill["state"] + (f" {pct:.0f}%" if pct is not None and backfill["state"] == "running" else "")
        lag = "-" if r["lag_seconds"] is None else str(r["lag_seconds"])
        print(
            f"{r['series_id']:<36} {r['status']:<7} {r['status_reason']:<28} {r['head_time'] or '-':>12} "
            f"{lag:>8} {r['missing_candles']:>8} {repair}"
        )


def run_backfill(path: Path, series: str, since: int, until: int | None) -> int:
    bar: tqdm[Any] | None = None
    try:
        for event in request(path, {"cmd": "backfill", "series_id": series, "since": since, "until": until}):
            if event["event"] == "progress":
                if bar is None and event.get("missing_candles"):
                    bar = tqdm(total=event["missing_candles"], unit="candle", desc=series, dynamic_ncols=True)
                if bar is not None:
                    bar.update(max(0, event.get("filled_candles", 0) - bar.n))
            elif event["event"] == "done":
                if bar is not None:
                    bar.close()
                print(f"done: filled {event.get('filled', {})}, still missing {event.get('still_missing', 0)}")
                return 0 if not event.get("still_missing") else 3
            else:
                print(f"error: {event.get('code')}: {event.get('detail')}", file=sys.stderr)
                return 1
    finally:
        if bar is not None:
            bar.close()
    return 1


def run_rebuild(path: Path, series: str | None, everything: bool) -> int:
    payload: dict[str, Any] = {"cmd": "rebuild", "all": True} if everything else {"cmd": "rebuild", "series_id": series}
    bar: tqdm[Any] | None = None
    try:
        for event in request(path, payload):
            if event["event"] == "progress":
                if bar is None:
                    bar = tqdm(total=event["total"], unit="candle", desc="rebuild", dynamic_ncols=True)
                bar.set_postfix_str(event["series_id"])
                bar.update(max(0, event["done"] - bar.n))
            elif event["event"] == "done":
                if bar is not None:
                    bar.update(max(0, event["candles"] - bar.n))
                    bar.close()
                print(f"done: {event['series']}: {event['candles']} candles replayed, checkpoint {event['checkpoint']}")
                return 0
            else:
                print(f"klinectl: {event.get('code')}: {event.get('detail')}", file=sys.stderr)
                return 1
    finally:
        if bar is not None:
            bar.close()
    return 1


def one(path: Path, payload: dict[str, Any]) -> dict[str, Any]:
    answers = list(request(path, payload))
    if not answers:
        raise ConnectionRefusedError("the daemon closed the connection")
    return answers[-1]


def show_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_cell(r.get(c))) for r in rows)) for c in columns} if rows else {}
    print("  ".join(c.ljust(widths.get(c, len(c))) for c in columns))
    for r in rows:
        print("  ".join(_cell(r.get(c)).ljust(widths[c]) for c in columns))


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="klinectl", description="control a running klined")
    parser.add_argument("--version", action="version", version=f"klinectl {__version__}")
    parser.add_argument("--config", help="the daemon's TOML config (to find its control socket)")
    parser.add_argument("--socket", help="the control socket path (overrides the config)")
    parser.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    sub = parser.add_subparsers(dest="command")
    for name, text in (
        ("version", "client and daemon versions"),
        ("status", "uptime, series, connections, LMDB size"),
        ("series", "one line per active series"),
        ("health", "the health table of every active series"),
    ):
        sub.add_parser(name, help=text)
    for name in ("pin", "unpin"):
        sub.add_parser(name, help=f"{name} a series (persisted)").add_argument("series_id")
    backfill = sub.add_parser("backfill", help="repair a range of a series now, with progress")
    backfill.add_argument("series_id")
    backfill.add_argument("--since", required=True, type=parse_time)
    backfill.add_argument("--until", type=parse_time)
    sub.add_parser("backup", help="a hot copy of the LMDB log into an empty directory").add_argument("path")
    top = sub.add_parser("top-markets", help="the top markets by quote volume")
    top.add_argument("--market", default="spot", choices=["spot", "futures"])
    top.add_argument("--quote-asset", default="USDT")
    top.add_argument("--limit", type=int, default=20)
    rebuild = sub.add_parser("rebuild", help="rebuild factor/overlay projections from the log, with progress")
    target = rebuild.add_mutually_exclusive_group(required=True)
    target.add_argument("series_id", nargs="?")
    target.add_argument("--all", action="store_true", help="every series (outputs dropped and replayed)")
    args = parser.parse_args(argv)
    if args.socket:
        path = Path(args.socket)
    else:
        try:
            path = load_settings(args.config).control_socket_path
        except ConfigError as e:
            print(f"klinectl: {e}", file=sys.stderr)
            return 2
    command = args.command or "version"
    try:
        if command == "backfill":
            return run_backfill(path, args.series_id, args.since, args.until)
        if command == "rebuild":
            return run_rebuild(path, args.series_id, args.all)
        payload: dict[str, Any] = {"cmd": command.replace("-", "_")}
        if command in ("pin", "unpin"):
            payload["series_id"] = args.series_id
        elif command == "backup":
            payload["path"] = str(Path(args.path).resolve())
        elif command == "top-markets":
            payload.update(market=args.market, quote_asset=args.quote_asset, limit=args.limit)
        answer = one(path, payload)
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"klinectl: no daemon listening on {path} (is klined running?)", file=sys.stderr)
        return 2
    if answer.get("event") == "error":
        print(f"klinectl: {answer.get('code')}: {answer.get('detail')}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
    elif command == "version":
        print(f"klinectl {__version__}, klined {answer.get('version')}")
    elif command == "status":
        for key, value in answer.items():
            if key != "event":
                print(f"{key:<16} {value}")
    elif command == "series":
        show_table(
            answer["series"], ["series_id", "source", "refcount", "running", "head_time", "lag_seconds", "subscribers"]
        )
    elif command == "health":
        show_health(answer["series"])
    elif command in ("pin", "unpin"):
        print(f"{command}ned {answer['series_id']}; whitelist: {', '.join(answer['whitelist']) or '(empty)'}")
    elif command == "backup":
        print(f"backup written to {answer['path']} ({answer['bytes']:,} bytes)")
    elif command == "top-markets":
        show_table(answer["items"], ["symbol", "last_price", "quote_volume", "price_change_percent"])
    if command == "health" and not all(r["status"] == "green" for r in answer["series"]):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
