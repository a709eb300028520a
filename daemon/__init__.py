"""klined's daemon: configuration, the LMDB event log, listeners and process wiring."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("klined")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+unknown"
