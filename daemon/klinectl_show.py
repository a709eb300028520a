"""How ``klinectl`` shows the daemon's answers to people (``--json`` prints them as they came)."""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any

from daemon import __version__


def utc(t: int | None) -> str | None:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def show_series(rows: list[dict[str, Any]]) -> None:
    """Times as UTC dates for people (``--json`` keeps seconds); a stored series not followed now shows
    ``-`` for what only an active one has."""
    shown = [
        {**r, "first": utc(r["first_time"]), "last": utc(r["head_time"]), "candles": r["candle_count"]} for r in rows
    ]
    columns = ["series_id", "source", "refcount", "running", "first", "last", "candles", "lag_seconds", "subscribers"]
    show_table(shown, columns)


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


def show_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_cell(r.get(c))) for r in rows)) for c in columns} if rows else {}
    print("  ".join(c.ljust(widths.get(c, len(c))) for c in columns))
    for r in rows:
        print("  ".join(_cell(r.get(c)).ljust(widths[c]) for c in columns))


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def show(command: str, answer: dict[str, Any]) -> None:
    """A one-shot answer, for people."""
    if command == "version":
        print(f"klinectl {__version__}, klined {answer.get('version')}")
    elif command == "status":
        for key, value in answer.items():
            if key != "event":
                print(f"{key:<16} {value}")
    elif command == "series":
        show_series(answer["series"])
    elif command == "health":
        show_health(answer["series"])
    elif command in ("pin", "unpin"):
        print(f"{command}ned {answer['series_id']}; whitelist: {', '.join(answer['whitelist']) or '(empty)'}")
    elif command == "top-markets":
        show_table(answer["items"], ["symbol", "last_price", "quote_volume", "price_change_percent"])
        if answer.get("stale"):
            age = answer["stale_age_s"]
            print(f"stale: the exchange did not answer; this list is {age:.0f} s old", file=sys.stderr)
    elif command == "cluster":
        show_cluster(answer)


def show_cluster(answer: dict[str, Any]) -> None:
    if not answer.get("enabled"):
        print("standalone (no cluster_nats_urls): this daemon is its own writer")
        return
    print(f"cluster {answer['cluster']}: this node {answer['node']}, writer {answer.get('writer') or '(none)'}")
    print(f"stream seq {answer['stream_seq']}")
    columns = ["node", "role", "applied_seq", "lag_events", "lag_s", "age_s", "http_url", "fenced", "broken"]
    show_table(answer["nodes"], columns)
