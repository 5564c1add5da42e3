"""common/server.py (and read_body's timeout): slow clients are cut, connections capped,
protocol errors are JSON that does not echo the input. Real sockets, real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from binormal.common.server import HTTP_STATE, MAX_HEADER_BYTES, MAX_URL_BYTES
from tests.support.http import SEED_BODY, combined_app, ingest_settings, serving, stalled_websocket, web_settings
from tests.support.waiting import wait_for

FAST = {"header_timeout_s": 0.5, "body_timeout_s": 0.5}


@contextlib.asynccontextmanager
async def app_serving(redis_url: str, prefix: str, **limits: Any) -> AsyncIterator[tuple[str, int, Any]]:
    """Web tier and ingest on one app with ``limits``; yields (host, port, app)."""
    app = combined_app(web_settings(redis_url, prefix, **limits), ingest_settings(redis_url, prefix, **limits))
    async with serving(app) as base:
        host, _, port = base.removeprefix("http://").rpartition(":")
        yield host, int(port), app


async def read_until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection; TimeoutError if it never does."""
    out = b""
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(65536):
            out += chunk
    return out


class Recorder(asyncio.Protocol):
    """A raw client connection: every byte the server sent, and when the connection ended.

    (asyncio's StreamReader raises a reset before handing over bytes it already holds; a server
    closing with our unread trickle in its buffer sends a reset after its answer, so the bytes are
    kept here as they arrive and a reset after them still counts as the server closing.)
    """

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)


async def trickle(conn: Recorder, data: bytes, interval: float) -> None:
    """Send ``data`` one byte per ``interval`` until done or the peer is gone."""
    for i in range(len(data)):
        if conn.closed.done() or conn.transport is None or conn.transport.is_closing():
            return
        conn.transport.write(data[i : i + 1])
        await asyncio.sleep(interval)


async def trickled_exchange(host: str, port: int, first: bytes, trickled: bytes) -> tuple[bytes, float]:
    """Send ``first``, then ``trickled`` a byte per 50 ms; (all the server sent, seconds until it closed)."""
    _, conn = await asyncio.get_running_loop().create_connection(Recorder, host, port)
    assert conn.transport is not None
    conn.transport.write(first)
    sender = asyncio.create_task(trickle(conn, trickled, 0.05))
    started = time.monotonic()
    try:
        await asyncio.wait_for(asyncio.shield(conn.closed), 5.0)
    finally:
        sender.cancel()
        conn.transport.close()
    return bytes(conn.data), time.monotonic() - started


def parse_response(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, orjson.loads(body) if body else None


# ---------------------------------------------------------------- timeouts


async def test_a_trickled_request_head_is_cut_with_408(redis_url: str, prefix: str) -> None:
    async with app_serving(redis_url, prefix, **FAST) as (host, port, _):
        head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
        raw, took = await trickled_exchange(host, port, b"", head)  # 10 s to send it all
        assert took < 3.0
        status, headers, body = parse_response(raw)
        assert status == 408 and headers["content-type"].startswith("application/json"), raw
        assert body == {"error": "request head not received within 0.5s", "field": "headers"}


@pytest.mark.parametrize("path,content_type", [("/discrete", "application/json"), ("/events", "application/x-ndjson")])
async def test_a_trickled_body_is_cut_with_408(redis_url: str, prefix: str, path: str, content_type: str) -> None:
    async with app_serving(redis_url, prefix, **FAST) as (host, port, _):
        body = SEED_BODY.encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        raw, took = await trickled_exchange(host, port, head.encode(), body)
        assert took < 3.0
        status, _, answer = parse_response(raw)
        assert status == 408, raw
        assert answer["field"] == "body" and "0.5s" in answer["error"]


async def test_an_idle_keepalive_connection_outlives_the_head_timeout(redis_url: str, prefix: str) -> None:
    """The head timer starts at a request's first byte, not when the connection goes idle."""
    async with app_serving(redis_url, prefix, **FAST) as (host, port, _):
        reader, writer = await asyncio.open_connection(host, port)
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        for _ in range(2):
            writer.write(request)
            status_line = await asyncio.wait_for(reader.readline(), 5.0)
            assert status_line.startswith(b"HTTP/1.1 200"), status_line
            await asyncio.wait_for(reader.readuntil(b'"alive"}'), 5.0)
            await asyncio.sleep(1.0)  # idle for twice the head timeout on purpose
        writer.close()


# ---------------------------------------------------------------- connection cap


async def test_connections_past_the_cap_get_503_json_and_are_closed(redis_url: str, prefix: str) -> None:
    cap = 5
    async with app_serving(redis_url, prefix, max_connections=cap) as (host, port, app):
        idle = [await asyncio.open_connection(host, port) for _ in range(cap)]
        state = app[HTTP_STATE]
        await wait_for(lambda: state.connections >= cap, timeout=5.0, what="idle connections accepted")
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        raw = await read_until_closed(reader, timeout=5.0)
        status, headers, body = parse_response(raw)
        assert status == 503 and headers["connection"] == "close" and headers["retry-after"] == "1", raw
        assert body == {"error": f"too many connections (limit {cap}); retry later", "field": None}
        # freeing one slot lets a new client in
        _, w0 = idle.pop()
        w0.close()
        await wait_for(lambda: state.connections < cap, timeout=5.0, what="a slot freed")
        async with aiohttp.ClientSession() as session, session.get(f"http://{host}:{port}/healthz") as r:
            assert r.status == 200
        for _, w in idle:
            w.close()


async def test_a_refused_connection_that_sends_nothing_is_closed(redis_url: str, prefix: str) -> None:
    async with app_serving(redis_url, prefix, max_connections=1, **FAST) as (host, port, app):
        first = await asyncio.open_connection(host, port)
        await wait_for(lambda: app[HTTP_STATE].connections >= 1, timeout=5.0, what="first connection")
        reader, writer = await asyncio.open_connection(host, port)
        await read_until_closed(reader, timeout=5.0)
        writer.close()
        first[1].close()


# ---------------------------------------------------------------- protocol errors: JSON, no echo


async def raw_exchange(host: str, port: int, request: bytes) -> tuple[int, dict[str, str], Any, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    raw = await read_until_closed(reader, timeout=5.0)
    writer.close()
    status, headers, body = parse_response(raw)
    return status, headers, body, raw


async def test_an_oversize_url_is_414_json_without_echo(redis_url: str, prefix: str) -> None:
    marker = b"ECHOME"
    path = b"/api/scopes?x=" + marker * (MAX_URL_BYTES // len(marker) + 10)
    async with app_serving(redis_url, prefix) as (host, port, _):
        status, headers, body, raw = await raw_exchange(
            host, port, b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
    assert status == 414 and headers["content-type"].startswith("application/json"), raw[:300]
    assert body["field"] == "url" and marker not in raw


async def test_an_oversize_header_is_431_json_without_echo(redis_url: str, prefix: str) -> None:
    marker = b"ECHOME"
    value = marker * (MAX_HEADER_BYTES // len(marker) + 10)
    async with app_serving(redis_url, prefix) as (host, port, _):
        status, headers, body, raw = await raw_exchange(
            host, port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + value + b"\r\n\r\n"
        )
    assert status == 431 and headers["content-type"].startswith("application/json"), raw[:300]
    assert body["field"] == "headers" and marker not in raw


async def test_too_many_headers_is_431(redis_url: str, prefix: str) -> None:
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    async with app_serving(redis_url, prefix) as (host, port, _):
        status, _, body, _ = await raw_exchange(
            host, port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + many + b"\r\n"
        )
    assert status == 431 and body["field"] == "headers"


async def test_a_malformed_request_is_400_json_without_echo(redis_url: str, prefix: str) -> None:
    async with app_serving(redis_url, prefix) as (host, port, _):
        status, headers, body, raw = await raw_exchange(
            host, port, b"GET /healthz HTTP/1.1\r\nBad Header ECHOME\r\n\r\n"
        )
    assert status == 400 and headers["content-type"].startswith("application/json"), raw
    assert body["error"].startswith("malformed HTTP request") and b"ECHOME" not in raw


async def test_non_utf8_header_values_are_4xx_json(redis_url: str, prefix: str) -> None:
    """Header bytes that are not UTF-8, where the service reads a header (Content-Type) and where it does not."""
    body = SEED_BODY.encode()
    async with app_serving(redis_url, prefix) as (host, port, _):
        for path in ("/discrete", "/events"):
            status, _, answer, raw = await raw_exchange(
                host,
                port,
                b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/\xe9\xff\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (path.encode(), len(body), body),
            )
            assert status == 415 and answer["field"] == "Content-Type", raw
            status, _, answer, raw = await raw_exchange(
                host,
                port,
                b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json; charset=\xe9\xff\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (path.encode(), len(body), body),
            )
            assert status == 415 and answer["field"] == "Content-Type", raw
        status, _, answer, raw = await raw_exchange(
            host,
            port,
            b"GET /api/scopes HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Whatever: \xe9\xff\r\nConnection: close\r\n\r\n",
        )
        assert status == 200, raw


async def test_errors_do_not_echo_the_content_type(redis_url: str, prefix: str) -> None:
    async with app_serving(redis_url, prefix) as (host, port, _), aiohttp.ClientSession() as session:
        for ctype in ("text/ECHOME", "application/json; charset=ECHOME"):
            async with session.post(f"http://{host}:{port}/discrete", data=b"{}", headers={"Content-Type": ctype}) as r:
                assert r.status == 415
                assert b"ECHOME" not in await r.read()


async def test_metrics_count_connections_and_refusals(redis_url: str, prefix: str) -> None:
    async with app_serving(redis_url, prefix, max_connections=1, **FAST) as (host, port, app):
        first = await asyncio.open_connection(host, port)
        await wait_for(lambda: app[HTTP_STATE].connections >= 1, timeout=5.0, what="first connection")
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert b"503" in (await read_until_closed(reader, timeout=5.0)).split(b"\r\n")[0]
        writer.close()
        first[1].close()
        await wait_for(lambda: app[HTTP_STATE].connections == 0, timeout=5.0, what="connections closed")
        async with aiohttp.ClientSession() as session, session.get(f"http://{host}:{port}/metrics") as r:
            text = await r.text()
    assert 'binormal_http_refused_total{reason="connections"}' in text
    gauge = next(line for line in text.splitlines() if line.startswith("binormal_http_connections "))
    assert float(gauge.split()[1]) >= 1  # at least this request's own connection (the gauge is per process)


WEIRD_REQUESTS = [
    b"GET /api/scopes?limit=%ff HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET /api/outliers?org=%ff%fe&source=%00&pop=%c3 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET /api/individual?org=a&source=b&pop=c&id=%ed%a0%80 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET /%ff%fe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET /api/scopes?%ff=1&limit=1%00 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"POST /discrete HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: abc\r\n\r\n{}",
    b"POST /discrete HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
    b"Content-Length: 3\r\n\r\n{}",
    b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-ndjson\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
    b"zz\r\n",
    b"GET /websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET /healthz HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03ECHOME\r\n\r\n",  # TLS on the plain port
]


@pytest.mark.parametrize("request_bytes", WEIRD_REQUESTS)
async def test_odd_requests_are_never_a_5xx_and_never_echoed(redis_url: str, prefix: str, request_bytes: bytes) -> None:
    async with app_serving(redis_url, prefix) as (host, port, _):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request_bytes)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        status, headers, _ = parse_response(head)
        raw = head + await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 5.0)
        writer.close()
    assert status < 500, raw
    assert headers.get("content-type", "").startswith("application/json"), raw
    assert b"ECHOME" not in raw and b"%ff" not in raw.lower() and b"\xff" not in raw


def test_limits_come_from_the_environment_with_bounds() -> None:
    from aiohttp import web

    from binormal.common.config import ConfigError
    from binormal.common.server import HttpLimits, setup_limits
    from binormal.ingest.settings import IngestSettings
    from binormal.web.settings import WebSettings

    env = {
        "BINORMAL_HEADER_TIMEOUT_S": "2",
        "BINORMAL_BODY_TIMEOUT_S": "3",
        "BINORMAL_KEEPALIVE_TIMEOUT_S": "4",
        "BINORMAL_MAX_CONNECTIONS": "5",
        "BINORMAL_MAX_WEBSOCKETS": "6",
        "BINORMAL_RATE_LIMIT": "7",
        "BINORMAL_RATE_BURST": "8",
    }
    env["BINORMAL_SEND_TIMEOUT_S"] = "9"
    want = HttpLimits(2.0, 3.0, 9.0, 4.0, 5, 7.0, 8.0)
    ws, ins = WebSettings.from_env(env), IngestSettings.from_env(env)
    assert ws.http_limits == ins.http_limits == want and ws.max_websockets == 6
    assert WebSettings.from_env({}).http_limits == HttpLimits() == IngestSettings.from_env({}).http_limits
    for name, bad in (
        ("BINORMAL_MAX_CONNECTIONS", "0"),
        ("BINORMAL_HEADER_TIMEOUT_S", "0"),
        ("BINORMAL_RATE_LIMIT", "-1"),
    ):
        with pytest.raises(ConfigError, match=name):
            WebSettings.from_env({name: bad})
    app = web.Application()
    setup_limits(app, want)
    setup_limits(app, want)  # idempotent
    with pytest.raises(ValueError, match="share HTTP limits"):
        setup_limits(app, HttpLimits())


async def test_a_client_that_stops_reading_is_cut_after_the_send_timeout(redis_url: str, prefix: str) -> None:
    """TCP back pressure for longer than send_timeout_s aborts the connection (here a websocket whose
    heartbeat alone would keep it for a minute)."""
    from binormal.web.app import create_app
    from binormal.web.live import HUB_KEY, SOCKETS_KEY

    app = create_app(web_settings(redis_url, prefix, send_timeout_s=0.5, ws_heartbeat_s=60.0, ws_queue=100))
    line = orjson.dumps({"score": 3.2, "org": "acme", "source": "flood", "pop": "p", "id": "x" * 400, "action": "a"})
    async with serving(app) as base:
        hub = app[HUB_KEY]
        sock = await stalled_websocket(int(base.rsplit(":", 1)[1]))
        stop = asyncio.Event()

        async def flood() -> None:
            while not stop.is_set():
                hub.publish(b"\n".join([line] * 100))
                await asyncio.sleep(0.01)

        flooder = asyncio.create_task(flood())
        try:
            await wait_for(lambda: len(app[SOCKETS_KEY]) == 1, timeout=5.0, what="websocket open")
            await wait_for(lambda: not app[SOCKETS_KEY], timeout=10.0, what="the stalled client cut")
        finally:
            stop.set()
            await flooder
            sock.close()
    assert app[HTTP_STATE].connections == 0
