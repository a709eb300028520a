"""Who may write to the log: one decision every write endpoint (``POST .../ingest/...``) makes first.

Pure: settings, the peer's address and the request headers in, a refusal or None out, so each rule is tested
without a socket. Reads never come here; they stay open.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping
from typing import Final

import attrs

from daemon.config import Settings

JSON_MEDIA_TYPE: Final = "application/json"


@attrs.frozen
class Refusal:
    """A refused write: answered as ``{"code", "detail"}`` with ``status`` and ``headers``."""

    status: int
    code: str
    detail: str
    headers: tuple[tuple[str, str], ...] = ()


_NO_TOKEN: Final = Refusal(
    401, "unauthorized", "writes need Authorization: Bearer <ingest_token>", (("WWW-Authenticate", "Bearer"),)
)
_BAD_TOKEN: Final = Refusal(401, "unauthorized", "invalid bearer token", (("WWW-Authenticate", "Bearer"),))
_NOT_LOOPBACK: Final = Refusal(
    403, "forbidden", "writes from non-loopback peers need ingest_token set and sent as Authorization: Bearer"
)
_NOT_JSON: Final = Refusal(415, "unsupported_media_type", "writes need Content-Type: application/json")


def check_write(settings: Settings, client_host: str | None, headers: Mapping[str, str]) -> Refusal | None:
    """None when the write may go on, else the first rule it breaks: who (401/403), Origin (403), type (415).

    ``headers`` has lower-case names and latin-1 decoded values, as Starlette's ``Headers``.
    """
    return _check_peer(settings, client_host, headers) or _check_origin(settings, headers) or _check_type(headers)


def _check_peer(settings: Settings, client_host: str | None, headers: Mapping[str, str]) -> Refusal | None:
    if settings.ingest_token:  # then loopback is no pass: a local process may be anyone's
        return _check_bearer(headers.get("authorization"), settings.ingest_token)
    # Only the socket's peer counts: X-Forwarded-For is whatever the client chose to write.
    return None if is_loopback(client_host) else _NOT_LOOPBACK


def _check_bearer(authorization: str | None, token: str) -> Refusal | None:
    scheme, _, presented = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return _NO_TOKEN
    try:
        wire = presented.strip().encode("latin-1")  # the bytes the client sent (Starlette decoded them as latin-1)
    except UnicodeEncodeError:
        return _BAD_TOKEN
    # Constant time: how long a wrong token takes must not tell how much of it was right.
    return None if hmac.compare_digest(wire, token.encode("utf-8")) else _BAD_TOKEN


def _check_origin(settings: Settings, headers: Mapping[str, str]) -> Refusal | None:
    """A page on another origin may write only when named: else its browser could reach a loopback daemon."""
    origin = headers.get("origin")
    if origin is None or origin in settings.http_cors_origins:  # exact names: "*" lets no page write
        return None
    return Refusal(403, "forbidden_origin", f"origin {origin!r} is not in http_cors_origins")


def _check_type(headers: Mapping[str, str]) -> Refusal | None:
    """JSON only: a browser sends it cross-origin only after a CORS preflight, unlike text/plain or a form."""
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    return None if media_type == JSON_MEDIA_TYPE else _NOT_JSON


def is_loopback(host: str | None) -> bool:
    """127.0.0.0/8, ::1 and IPv4-mapped ::ffff:127.x; a name, or no peer address at all, is not."""
    if host is None:
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback  # a dual-stack listener reports IPv4 peers this way
    return ip.is_loopback
