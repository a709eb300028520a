"""structlog set-up: JSON lines on stdout for journald, a readable console on a tty.

Standard-library records (hypercorn's) go through the same renderer, so every line of the stream has
one format. When the stream is the journal (systemd's ``JOURNAL_STREAM``), each line starts with its syslog
priority (``<4>`` a warning, ...), so ``journalctl -p warning`` selects by level.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, Final, TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

# sd-daemon.h's SD_ERR, SD_WARNING, SD_INFO, SD_DEBUG; journald strips the prefix and keeps the priority.
PRIORITY: Final = {"critical": "<3>", "error": "<3>", "warning": "<4>", "info": "<6>", "debug": "<7>"}


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode()


def is_journal(stream: TextIO, env: Mapping[str, str]) -> bool:
    """Whether ``stream`` is the file systemd connected to the journal (``JOURNAL_STREAM=<dev>:<inode>``)."""
    dev, _, ino = env.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):  # no descriptor (a test's capture), or not a dev:inode pair
        return False


def with_priority(renderer: Processor) -> Processor:
    """``renderer`` with each line prefixed by its level's syslog priority."""

    def render(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        prefix = PRIORITY.get(event_dict.get("level", method_name), PRIORITY["info"])
        return prefix + str(renderer(logger, method_name, event_dict))

    return render


def configure_logging(*, stream: TextIO | None = None, json: bool | None = None, level: str = "info") -> None:
    """Route structlog and stdlib logging to ``stream``; JSON unless it is a tty."""
    stream = stream or sys.stdout
    use_json = not stream.isatty() if json is None else json
    renderer: Processor = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps) if use_json else structlog.dev.ConsoleRenderer()
    )
    if is_journal(stream, os.environ):
        renderer = with_priority(renderer)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    numeric_level = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # format_exc_info: a hypercorn traceback as text, not the repr of an exc_info tuple
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.processors.format_exc_info],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric_level)
    # httpx logs every request at info; klined logs the REST calls that matter itself.
    logging.getLogger("httpx").setLevel(max(numeric_level, logging.WARNING))
