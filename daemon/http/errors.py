"""How the HTTP API answers: JSON bodies, and every failure as ``{"code", "detail"}`` without a stack trace."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson
import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ExceptionHandler

from actors.pipeline import WriterClosedError
from actors.ports import NotWriterError

log = structlog.get_logger(__name__)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ApiError(Exception):
    """An error the client can act on: becomes ``{"code", "detail"}`` with ``status``."""

    def __init__(self, status: int, code: str, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse({"code": exc.code, "detail": exc.detail}, status_code=exc.status, headers=exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, wrong method) in the API's shape."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse({"code": code, "detail": exc.detail}, status_code=exc.status_code)


async def not_writer(request: Request, exc: Exception) -> Response:
    """A write to a cluster node that does not hold the writer lease: the client is told which node does."""
    assert isinstance(exc, NotWriterError)
    body = {"code": "not_writer", "detail": str(exc), "writer": exc.writer}
    # No writer named: the lease is being handed over, which takes about the lease's TTL.
    return JSONResponse(body, status_code=409, headers=None if exc.writer else {"Retry-After": "1"})


async def writer_closed(request: Request, exc: Exception) -> Response:
    """A write that arrived as the daemon stops: not taken, and the client may send it again elsewhere."""
    return JSONResponse({"code": "server_shutdown", "detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})


async def internal_error(request: Request, exc: Exception) -> Response:
    """A bug: logged with the path, answered 500 without a trace of it."""
    log.error("http_internal_error", path=request.url.path, error=repr(exc))
    return JSONResponse({"code": "internal_error", "detail": "internal error"}, status_code=500)


EXCEPTION_HANDLERS: Final[Mapping[Any, ExceptionHandler]] = {
    ApiError: api_error,
    HTTPException: http_error,
    NotWriterError: not_writer,
    WriterClosedError: writer_closed,
    Exception: internal_error,
}
