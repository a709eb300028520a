"""structlog set-up: JSON lines on stdout for journald, a readable console on a tty.

Standard-library records (hypercorn's) go through the same renderer, so every line of the stream has
one format.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson
import structlog


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode()


def configure_logging(*, stream: TextIO | None = None, json: bool | None = None, level: str = "info") -> None:
    """Route structlog and stdlib logging to ``stream``; JSON unless it is a tty."""
    stream = stream or sys.stdout
    use_json = not stream.isatty() if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps) if use_json else structlog.dev.ConsoleRenderer()
    )
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
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric_level)
    # httpx logs every request at info; klined logs the REST calls that matter itself.
    logging.getLogger("httpx").setLevel(max(numeric_level, logging.WARNING))
