"""``klined``: run the daemon, or check a configuration without starting."""

from __future__ import annotations

import argparse
import sys

import trio

from daemon import __version__
from daemon.config import ConfigError, Settings, load_settings
from daemon.logs import configure_logging

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="klined", description="K-line market-data daemon")
    parser.add_argument("--version", action="version", version=f"klined {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("run", "run the daemon"), ("check-config", "validate the configuration and exit")):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--config", metavar="FILE", help="TOML config file (KLINED_* environment wins)")
    return parser


def _settings(path: str | None) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as e:
        print(f"klined: config error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = _settings(args.config)
    if args.command == "check-config":
        print(f"klined: config ok ({len(settings.whitelist)} whitelisted series, data_dir {settings.data_path})")
        return 0
    configure_logging()
    from daemon.app import run_until_signal  # keeps `check-config` free of server imports

    trio.run(run_until_signal, settings, args.config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
