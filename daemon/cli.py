"""``klined``: run the daemon, or check a configuration without starting."""

from __future__ import annotations

import argparse
import sys

import trio

from daemon import __version__
from daemon.config import ConfigError, Origin, Settings, load_with_origins
from daemon.logging_setup import configure_logging

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="klined", description="K-line market-data daemon")
    parser.add_argument("--version", action="version", version=f"klined {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("run", "run the daemon"), ("check-config", "validate the configuration and exit")):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--config", metavar="FILE", help="TOML config file (KLINED_* environment wins)")
        if name == "check-config":
            cmd.add_argument(
                "--print",
                action="store_true",
                dest="print_settings",
                help="print the effective settings and where each came from (default, file, env)",
            )
    _demo_parser(sub)
    return parser


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a TCP port, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port 0..65535, got {value}")
    return value


def _demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        help="the daemon on a simulated exchange: live candles, a gap healing, factors (no internet needed)",
        description="Run the daemon against the built-in simulated Binance (BTC, ETH, SOL 1m with history, "
        "derived timeframes, factors) and cut the exchange now and then so a gap shows and heals. "
        "KLINED_* variables and config files are ignored.",
    )
    demo.add_argument("--host", default="127.0.0.1", help="HTTP listen address (default 127.0.0.1)")
    demo.add_argument("--port", type=_port, default=8710, help="HTTP port (default 8710; 0: any free port)")
    demo.add_argument(
        "--speed", type=_positive, default=1.0, help="exchange clock speed (default 1; 60: a minute a second)"
    )
    demo.add_argument("--data-dir", metavar="DIR", help="keep the data here (default: a temporary directory)")
    demo.add_argument(
        "--gap-every", type=_positive, default=10.0, metavar="MINUTES", help="exchange minutes between outages"
    )
    demo.add_argument("--no-gaps", action="store_true", help="no forced outages")
    demo.add_argument("--verbose", action="store_true", help="the daemon's info log lines too (default: warnings)")


def _demo(args: argparse.Namespace) -> int:
    from daemon.demo import DemoError, DemoOptions, run_demo  # keeps `check-config` free of server imports

    options = DemoOptions(
        host=args.host,
        port=args.port,
        speed=args.speed,
        data_dir=args.data_dir,
        gap_every_min=args.gap_every,
        gaps=not args.no_gaps,
        verbose=args.verbose,
    )
    configure_logging(level="info" if options.verbose else "warning")
    try:
        trio.run(run_demo, options)
    except DemoError as e:
        print(f"klined demo: {e}", file=sys.stderr)
        return 1
    return 0


def _settings(path: str | None) -> tuple[Settings, dict[str, Origin]]:
    try:
        return load_with_origins(path)
    except ConfigError as e:
        print(f"klined: config error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    settings, origins = _settings(args.config)
    if args.command == "check-config":
        print(f"klined: config ok ({len(settings.whitelist)} whitelisted series, data_dir {settings.data_path})")
        if args.print_settings:
            from daemon.config_docs import effective

            print(effective(settings, origins), end="")
        return 0
    configure_logging(level=settings.log_level)  # after the settings: a config error is one line on stderr
    from daemon.app import run_until_signal  # keeps `check-config` free of server imports

    trio.run(run_until_signal, settings, args.config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
