"""The settings described from their own metadata: docs/configuration.md (generated, so it cannot drift from
them) and the effective settings of ``klined check-config --print``.

``python -m daemon.config_docs`` rewrites the docs; ``--check`` only says whether they are current (exit 1 if
not).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Final

import attrs

from daemon.config import ENV_PREFIX, Origin
from daemon.config_values import KINDS, toml_value
from daemon.settings import GROUPS, Settings

DOCS_PATH: Final = Path(__file__).parents[1] / "docs" / "configuration.md"
REGENERATE: Final = ".venv/bin/python -m daemon.config_docs"

_INTRO: Final = """\
# Configuration

<!-- Generated from daemon/settings.py by `{regenerate}`: edit the settings, not this file. -->

klined reads an optional TOML file (`klined run --config FILE`) and environment variables `KLINED_<KEY>`;
the environment wins over the file, and the file over the defaults. In the environment, lists are
comma-separated and booleans accept 1/0, true/false, yes/no, on/off (any case). An unknown key (in the file,
or an unknown `KLINED_*` variable) or a bad value stops start-up with a one-line message naming it.

With no configuration at all klined serves. It follows {whitelist} live,
with derived timeframes, gap backfill, tail coverage, the startup sync, on-demand ingest (up to {ondemand}
series) and the health view; the debug API stays off. Each feature is turned off by its one key. Without a
network it reports ready at once and serves what is stored.

`klined check-config --print [--config FILE]` shows the effective settings and where each value came from;
`klined.toml` is a commented example listing every key.
"""


def render() -> str:
    """The whole page: the introduction, then one table per section in :data:`GROUPS` order."""
    defaults = Settings()
    whitelist = " and ".join(f"`{s}`" for s in defaults.whitelist)
    parts = [_INTRO.format(regenerate=REGENERATE, whitelist=whitelist, ondemand=defaults.ondemand_max_jobs)]
    for group, title in GROUPS.items():
        fields = [f for f in attrs.fields(Settings) if f.metadata["group"] == group]
        rows = [
            "| Key | Environment | Type | Default | Meaning |",
            "| --- | --- | --- | --- | --- |",
        ]
        for f in fields:
            cells = (
                f"`{f.name}`",
                f"`{ENV_PREFIX}{f.name.upper()}`",
                KINDS[f.metadata["kind"]][1],
                f"`{toml_value(getattr(defaults, f.name))}`",
                f.metadata["help"],
            )
            rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        parts.append(f"## {title}\n\n" + "\n".join(rows) + "\n")
    return "\n".join(parts)


def effective(settings: Settings, origins: dict[str, Origin]) -> str:
    """The settings as a TOML file, by section, each line saying where its value came from; secrets hidden."""
    lines: list[str] = []
    for group, title in GROUPS.items():
        lines += [f"# -- {title}"] if not lines else ["", f"# -- {title}"]
        for f in attrs.fields(Settings):
            if f.metadata["group"] != group:
                continue
            value, origin = toml_value(getattr(settings, f.name)), origins[f.name]
            note = f"env {ENV_PREFIX}{f.name.upper()}" if origin == "env" else origin
            if f.name == "ingest_token" and settings.ingest_token:
                value = '"<hidden>"'
                if settings.ingest_token_file:
                    note = "ingest_token_file"
            lines.append(f"{f'{f.name} = {value}':<{_NOTE_COLUMN}}  # {note}")
    return "\n".join(lines) + "\n"


_NOTE_COLUMN: Final = 48


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a table cell ends at a bare pipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m daemon.config_docs", description=__doc__)
    parser.add_argument("path", nargs="?", type=Path, default=DOCS_PATH, help=f"default: {DOCS_PATH}")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs, write nothing")
    args = parser.parse_args(argv)
    text = render()
    current = args.path.read_text(encoding="utf-8") if args.path.exists() else None
    if args.check:
        if current != text:
            print(f"{args.path} is out of date: regenerate it with `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    if current != text:
        args.path.write_text(text, encoding="utf-8")
        print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
