"""``klinectl``: the operator's control client (talks to the daemon's unix socket; version only for now)."""

from __future__ import annotations

import argparse
import sys

from daemon import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="klinectl", description="control a running klined")
    parser.add_argument("--version", action="version", version=f"klinectl {__version__}")
    parser.add_argument("command", nargs="?", choices=["version"], default="version")
    parser.parse_args(argv)
    print(f"klinectl {__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
