"""Writes need a key: the bearer token, else a loopback peer; then a named Origin and a JSON body. Reads stay open.

Peers on another host cannot be made over a real socket here: those requests go through the daemon's own ASGI
app (``build_app`` over the running daemon's services) with httpx's ASGITransport and a made-up client address.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.testing

from daemon.config import Settings
from daemon.http.app import build_app
from daemon.request_body import MAX_WRITE_BODY
from daemon.write_auth import check_write, is_loopback
from tests.serving.harness import S1, Daemon, candle, daemon

TOKEN = "s3cret-token"
REMOTE = "203.0.113.7"  # TEST-NET-3: a peer that is not this machine
ORIGIN = "https://charts.example"
BEARER = {"Authorization": f"Bearer {TOKEN}"}

CLOSED = "/api/market/ingest/candle_closed"
FORMING = "/api/market/ingest/candle_forming"
BATCH = "/api/dev/market/ingest/candles_closed_batch"
BODIES: dict[str, Callable[[int], dict[str, Any]]] = {
    CLOSED: lambda t: {"series_id": S1, "candle": candle(t)},
    FORMING: lambda t: {"series_id": S1, "candle": candle(t)},
    BATCH: lambda t: {"series_id": S1, "candles": [candle(t)], "publish_ws": False},
}
WRITES = list(BODIES)


async def post(
    http: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None, *, t: int = 120
) -> httpx.Response:
    return await http.post(path, json=BODIES[path](t), headers=headers)


def stored(d: Daemon, path: str, t: int) -> bool:
    """Whether the write reached the log; a forming candle never does, so it counts as there."""
    return path == FORMING or d.running.store.log.get(S1, t) is not None


@asynccontextmanager
async def remote(d: Daemon) -> AsyncIterator[httpx.AsyncClient]:
    """A client on another host, as the daemon's app sees it (the peer address comes from the ASGI scope)."""
    assert d.running.services is not None
    transport = httpx.ASGITransport(app=build_app(d.running.services), client=(REMOTE, 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://klined.example") as http:
        yield http


def assert_refused(r: httpx.Response, status: int, code: str) -> None:
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert r.json()["detail"]


# -- the pure decision ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:127.1.2.3", True),
        (REMOTE, False),
        ("::ffff:203.0.113.7", False),
        ("10.0.0.1", False),
        ("0.0.0.0", False),
        ("::", False),
        ("fe80::1", False),
        ("localhost", False),  # a name is whatever a resolver says: only addresses count
        ("", False),
        (None, False),  # no peer address (e.g. a Unix socket)
    ],
)
def test_loopback_peers(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


TOKENED = Settings(ingest_token=TOKEN, http_cors_origins=(ORIGIN,))
OPEN = Settings(http_cors_origins=(ORIGIN,))
CT = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("settings", "host", "headers", "expected"),
    [
        (TOKENED, REMOTE, {**CT, "authorization": f"Bearer {TOKEN}"}, None),
        (TOKENED, REMOTE, {**CT, "authorization": f"bearer  {TOKEN}"}, None),  # the scheme is case-insensitive
        (TOKENED, "127.0.0.1", CT, (401, "unauthorized")),  # loopback is no pass once a token is set
        (TOKENED, REMOTE, {**CT, "authorization": "Bearer wrong"}, (401, "unauthorized")),
        (TOKENED, REMOTE, {**CT, "authorization": f"Bearer {TOKEN}x"}, (401, "unauthorized")),
        (TOKENED, REMOTE, {**CT, "authorization": f"Basic {TOKEN}"}, (401, "unauthorized")),
        (TOKENED, REMOTE, {**CT, "authorization": TOKEN}, (401, "unauthorized")),
        (TOKENED, REMOTE, {**CT, "authorization": "Bearer "}, (401, "unauthorized")),
        (TOKENED, REMOTE, {**CT, "authorization": "Bearer tök"}, (401, "unauthorized")),  # not latin-1: no match
        (OPEN, "127.0.0.1", CT, None),
        (OPEN, "::1", CT, None),
        (OPEN, REMOTE, {**CT, "x-forwarded-for": "127.0.0.1"}, (403, "forbidden")),
        (OPEN, REMOTE, {**CT, "authorization": f"Bearer {TOKEN}"}, (403, "forbidden")),  # no token to match
        (OPEN, "127.0.0.1", {**CT, "origin": ORIGIN}, None),
        (OPEN, "127.0.0.1", {**CT, "origin": "https://evil.example"}, (403, "forbidden_origin")),
        (OPEN, "127.0.0.1", {**CT, "origin": "null"}, (403, "forbidden_origin")),
        (OPEN, "127.0.0.1", {"content-type": "application/json; charset=utf-8"}, None),
        (OPEN, "127.0.0.1", {"content-type": "Application/JSON"}, None),
        (OPEN, "127.0.0.1", {"content-type": "text/plain"}, (415, "unsupported_media_type")),
        (OPEN, "127.0.0.1", {"content-type": "application/x-www-form-urlencoded"}, (415, "unsupported_media_type")),
        (OPEN, "127.0.0.1", {"content-type": "multipart/form-data; boundary=x"}, (415, "unsupported_media_type")),
        (OPEN, "127.0.0.1", {"content-type": "application/jsonx"}, (415, "unsupported_media_type")),
        (OPEN, "127.0.0.1", {}, (415, "unsupported_media_type")),
        # the order: who, then Origin, then content type
        (TOKENED, REMOTE, {"origin": "https://evil.example"}, (401, "unauthorized")),
        (OPEN, REMOTE, {"origin": "https://evil.example"}, (403, "forbidden")),
        (OPEN, "127.0.0.1", {"origin": "https://evil.example"}, (403, "forbidden_origin")),
    ],
)
def test_check_write(
    settings: Settings, host: str | None, headers: dict[str, str], expected: tuple[int, str] | None
) -> None:
    refusal = check_write(settings, host, headers)
    assert (refusal and (refusal.status, refusal.code)) == expected


def test_refusals_say_what_to_do() -> None:
    unauthorized = check_write(TOKENED, REMOTE, CT)
    assert unauthorized is not None
    assert ("WWW-Authenticate", "Bearer") in unauthorized.headers
    forbidden = check_write(OPEN, REMOTE, CT)
    assert forbidden is not None
    assert "ingest_token" in forbidden.detail
    assert "Authorization: Bearer" in forbidden.detail


# -- through the daemon --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", WRITES)
async def test_a_token_is_needed_from_every_peer(tmp_path: Path, path: str) -> None:
    async with daemon(tmp_path, KLINED_INGEST_TOKEN=TOKEN) as d, remote(d) as far:
        for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            for http in (d.http, far):
                r = await post(http, path, auth)
                assert_refused(r, 401, "unauthorized")
                assert r.headers["www-authenticate"] == "Bearer"
        assert d.running.store.log.last_seq() == 0
        assert (await post(d.http, path, BEARER)).status_code == 200
        assert (await post(far, path, BEARER, t=180)).status_code == 200
        assert stored(d, path, 120)
        assert stored(d, path, 180)


async def test_the_token_can_come_from_a_file(tmp_path: Path) -> None:
    """As systemd's LoadCredential= hands it over: a file with a trailing newline."""
    (tmp_path / "token").write_text(TOKEN + "\n")
    async with daemon(tmp_path / "data", KLINED_INGEST_TOKEN_FILE=str(tmp_path / "token")) as d:
        assert (await post(d.http, CLOSED)).status_code == 401
        assert (await post(d.http, CLOSED, BEARER)).status_code == 200
        assert stored(d, CLOSED, 120)


@pytest.mark.parametrize("path", WRITES)
async def test_without_a_token_only_loopback_writes(tmp_path: Path, path: str) -> None:
    async with daemon(tmp_path) as d, remote(d) as far:
        r = await post(far, path, {"X-Forwarded-For": "127.0.0.1"})  # a header anyone can write
        assert_refused(r, 403, "forbidden")
        assert "ingest_token" in r.json()["detail"]
        assert d.running.store.log.last_seq() == 0
        assert (await post(d.http, path)).status_code == 200
        assert stored(d, path, 120)


@pytest.mark.parametrize("path", WRITES)
async def test_a_page_on_another_origin_must_be_named(tmp_path: Path, path: str) -> None:
    async with daemon(tmp_path, KLINED_HTTP_CORS_ORIGINS=ORIGIN) as d:
        assert_refused(await post(d.http, path, {"Origin": "https://evil.example"}), 403, "forbidden_origin")
        assert d.running.store.log.last_seq() == 0
        r = await post(d.http, path, {"Origin": ORIGIN})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == ORIGIN
        assert stored(d, path, 120)
        preflight = {
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        r = await d.http.options(path, headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == ORIGIN
        allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
        assert {"content-type", "authorization"} <= allowed


async def test_with_no_origins_configured_no_page_writes(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d:
        assert_refused(await post(d.http, CLOSED, {"Origin": ORIGIN}), 403, "forbidden_origin")
        assert d.running.store.log.last_seq() == 0


@pytest.mark.parametrize("path", WRITES)
async def test_a_write_must_be_json(tmp_path: Path, path: str) -> None:
    body = orjson.dumps(BODIES[path](120))
    async with daemon(tmp_path) as d:
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {} if content_type is None else {"Content-Type": content_type}
            r = await d.http.post(path, content=body, headers=headers)
            assert_refused(r, 415, "unsupported_media_type")
        r = await d.http.post(path, files={"candle": b"{}"}, data={"series_id": S1})  # multipart/form-data
        assert_refused(r, 415, "unsupported_media_type")
        assert d.running.store.log.last_seq() == 0
        r = await d.http.post(
            path,
            content=body,
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        assert r.status_code == 200, r.text
        assert stored(d, path, 120)


async def test_reads_stay_open_with_a_token_set(tmp_path: Path) -> None:
    async with daemon(tmp_path, KLINED_INGEST_TOKEN=TOKEN) as d, remote(d) as far:
        assert (await post(d.http, CLOSED, BEARER)).status_code == 200
        for http in (d.http, far):
            r = await http.get("/api/market/candles", params={"series_id": S1}, headers={"Origin": ORIGIN})
            assert r.status_code == 200
            assert [c["candle_time"] for c in r.json()["candles"]] == [120]
            assert (await http.get("/api/market/whitelist")).status_code == 200


async def test_a_disabled_debug_write_is_404_before_any_key_is_asked(tmp_path: Path) -> None:
    async with daemon(tmp_path, KLINED_ENABLE_DEBUG_API="0", KLINED_INGEST_TOKEN=TOKEN) as d:
        for path in (FORMING, BATCH):
            assert_refused(await post(d.http, path), 404, "not_found")


# -- the body of a write: drained before a refusal, bounded in size and time ---------------------------------


async def raw_exchange(d: Daemon, head: bytes, rest: bytes) -> bytes:
    """Send ``head``, let the daemon act on it, then ``rest``; everything it answers until it closes."""
    port = int(d.running.http_url.rsplit(":", 1)[1])
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(head)
        await trio.testing.wait_all_tasks_blocked()  # the daemon has the head alone: it could answer now
        await stream.send_all(rest)
        answer = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                answer += chunk
    return answer


async def test_a_refused_write_keeps_the_connection_for_the_next_request(tmp_path: Path) -> None:
    """The refusal waits for the body it refuses: the request after it, on the same connection, is answered.
    Answered early, the refusal left a pooled connection that hypercorn had to close under the client."""
    body = orjson.dumps(BODIES[CLOSED](120))
    head = f"POST {CLOSED} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
    after = b"GET /api/version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    async with daemon(tmp_path) as d:
        answer = await raw_exchange(d, head.encode(), body + after)
    assert answer.startswith(b"HTTP/1.1 415 "), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 2, answer
    assert b"HTTP/1.1 200 " in answer, answer


async def test_a_pooled_client_survives_many_refused_writes(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d:
        for i in range(50):
            r = await d.http.post(CLOSED, content=orjson.dumps(BODIES[CLOSED](60 * (i + 1))))  # no content type
            assert_refused(r, 415, "unsupported_media_type")
        assert (await post(d.http, CLOSED)).status_code == 200


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_body_over_the_limit_is_refused_and_the_connection_closed(tmp_path: Path, chunked: bool) -> None:
    big = b'{"series_id": "' + b"x" * MAX_WRITE_BODY + b'"}'

    async def stream_it() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 1 << 20):
            yield big[i : i + (1 << 20)]

    async with daemon(tmp_path) as d:
        content: Any = stream_it() if chunked else big
        try:
            r = await d.http.post(CLOSED, content=content, headers={"Content-Type": "application/json"})
        except httpx.WriteError:
            pass  # the daemon answered and closed before all of it was sent: also a refusal
        else:
            assert_refused(r, 413, "payload_too_large")
            assert r.headers["connection"] == "close"
        assert (await post(d.http, CLOSED)).status_code == 200  # on a new connection
        assert d.running.store.log.last_seq() == 1


async def test_a_body_that_never_arrives_is_cut_after_the_idle_timeout(tmp_path: Path) -> None:
    head = f"POST {CLOSED} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
    async with daemon(tmp_path, KLINED_HTTP_IDLE_TIMEOUT_S="0.5") as d:
        answer = await raw_exchange(d, head.encode(), b'{"series_id": ')  # and nothing more
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b'"request_timeout"' in answer
        assert b"connection: close" in answer.lower()
        assert (await post(d.http, CLOSED)).status_code == 200
