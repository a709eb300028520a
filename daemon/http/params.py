"""What a request carries, parsed or refused: query parameters and write bodies become values or a 4xx."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import orjson
import structlog
from starlette.requests import Request

from daemon.http.errors import ApiError
from daemon.request_body import CLOSE, BodyRefusedError, drain_body, read_body
from daemon.write_auth import check_write
from protocol.candle import Candle, check_candle
from protocol.codec import CodecError, candle_from_wire
from protocol.errors import ProtocolError
from protocol.series import SeriesId

if TYPE_CHECKING:
    from daemon.config import Settings

log = structlog.get_logger(__name__)

MAX_INT: Final = 2**63 - 1


def bad_param(detail: str) -> ApiError:
    return ApiError(422, "bad_request", detail)


def _series_id(raw: object) -> SeriesId:
    try:
        return SeriesId.parse(raw)
    except ProtocolError as e:
        raise bad_param(f"invalid series_id: {e}") from None


def series_param(request: Request) -> SeriesId:
    raw = request.query_params.get("series_id")
    if raw is None:
        raise bad_param("missing series_id")
    return _series_id(raw)


def int_param(request: Request, name: str, *, low: int, high: int | None = None) -> int | None:
    """An integer in ``low..high``; never beyond 64 bits, since answers may echo it and JSON here stops there."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise bad_param(f"invalid {name}: expected an integer, got {raw!r}") from None
    top = MAX_INT if high is None else min(high, MAX_INT)
    if not low <= value <= top:
        bounds = f"{low}..{top}" if high is not None or value > top else f">= {low}"
        raise bad_param(f"invalid {name}: expected {bounds}, got {value}")
    return value


def float_param(request: Request, name: str, default: float, low: float, high: float) -> float:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise bad_param(f"invalid {name}: expected a number, got {raw!r}") from None
    if not low <= value <= high:
        raise bad_param(f"invalid {name}: expected {low}..{high}, got {value}")
    return value


def bool_param(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "false").lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off", ""):
        return False
    raise bad_param(f"invalid {name}: expected a boolean, got {raw!r}")


async def write_body(settings: Settings, request: Request) -> dict[str, Any]:
    """A write's JSON object, once the peer may write (checked before any byte of the body is parsed)."""
    peer = request.client.host if request.client else None
    refusal = check_write(settings, peer, request.headers)
    within_s = settings.http_idle_timeout_s
    if refusal is not None:
        log.warning("write_refused", path=request.url.path, peer=peer, code=refusal.code)
        headers = dict(refusal.headers)
        if not await drain_body(request, within_s=within_s):
            headers.update(CLOSE)
        raise ApiError(refusal.status, refusal.code, refusal.detail, headers)
    try:
        raw = await read_body(request, within_s=within_s)
    except BodyRefusedError as e:
        raise ApiError(e.status, e.code, e.detail, CLOSE) from None
    return json_object(raw)


def json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_param("invalid json") from None
    if not isinstance(body, dict):
        raise bad_param("body must be a JSON object")
    return body


def body_series(body: dict[str, Any]) -> SeriesId:
    if "series_id" not in body:  # a JSON null is there, and invalid
        raise bad_param("missing series_id")
    return _series_id(body["series_id"])


def body_candle(series: SeriesId, raw: object) -> Candle:
    """A wire candle valid for ``series`` (aligned, ordered prices, finite), or 422."""
    try:
        return check_candle(candle_from_wire(raw), series.timeframe)
    except (CodecError, ProtocolError) as e:
        raise bad_param(f"invalid candle: {e}") from None


def body_single_candle(body: dict[str, Any]) -> tuple[SeriesId, Candle]:
    """The series and the one candle of a ``candle_closed`` / ``candle_forming`` write."""
    series = body_series(body)
    if "candle" not in body:
        raise bad_param("missing candle")
    return series, body_candle(series, body["candle"])
