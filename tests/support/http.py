"""Helpers for the HTTP tests: serve an app on a real loopback socket, build settings.

Everything runs against the private redis-server of ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from binormal.common.keys import Keyspace
from binormal.common.redisapp import REDIS
from binormal.common.server import BoundedAppRunner
from binormal.ingest.app import setup as setup_ingest
from binormal.ingest.settings import IngestSettings
from binormal.web.app import setup as setup_web
from binormal.web.settings import WebSettings

SEED_BODY = (
    '{"org": "acme", "source": "webserver", "pop": "auth_getpost", "id": "individual1", "action": "GET /user/login"}'
)
SEED_KEYS = ["runtime", "score", "count", "zscore", "source", "pop", "id", "action"]


def web_settings(redis_url: str, prefix: str, **overrides: Any) -> WebSettings:
    """Web settings for a test (4 shards, 2 s timeout unless overridden)."""
    return replace(WebSettings(redis_url=redis_url, prefix=prefix, shards=4, ready_heartbeat_s=5.0), **overrides)


def ingest_settings(redis_url: str, prefix: str, **overrides: Any) -> IngestSettings:
    """Ingest settings for a test."""
    return replace(
        IngestSettings(redis_url=redis_url, prefix=prefix, shards=4, lag_check_s=0.0, ready_heartbeat_s=5.0),
        **overrides,
    )


def combined_app(ws: WebSettings, ins: IngestSettings) -> web.Application:
    """Web tier and ingest on one app, as ``binormal run`` builds it."""
    app = web.Application(client_max_size=max(ws.max_body_bytes, ins.max_body_bytes))
    setup_web(app, ws)
    setup_ingest(app, ins)
    return app


@contextlib.asynccontextmanager
async def serving(
    app: web.Application, port: int = 0, wait_redis: bool = True, bounded: bool = True
) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port by default); yields the base URL.

    With ``wait_redis`` it first waits until the app has reached Redis (an app
    without the Redis handle must pass False). ``bounded`` serves with the services'
    own :class:`BoundedAppRunner`; False, with aiohttp's plain ``AppRunner``.
    """
    if bounded:
        runner: web.AppRunner = BoundedAppRunner(app, access_log=None, shutdown_timeout=2.0)
    else:
        runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    if wait_redis:
        await asyncio.wait_for(app[REDIS].up.wait(), 10.0)
    try:
        yield f"http://127.0.0.1:{bound}"
    finally:
        await runner.cleanup()


@dataclass
class Served:
    """A served app: its base URL, a client session on it and its settings' keyspace."""

    base: str
    session: aiohttp.ClientSession
    keys: Keyspace


S = TypeVar("S", bound=Served)


@contextlib.asynccontextmanager
async def served(app: web.Application, keys: Keyspace, kind: type[S] = Served) -> AsyncIterator[S]:  # type: ignore[assignment]
    """:func:`serving` plus a client session, yielded as ``kind(base, session, keys)`` (Redis reached)."""
    async with serving(app) as base, aiohttp.ClientSession() as session:
        yield kind(base, session, keys)


async def wait_ready(session: aiohttp.ClientSession, base: str, timeout: float = 15.0) -> dict[str, Any]:
    """Poll ``/readyz`` until 200 (a service still starting may not answer yet); returns its body."""
    deadline = time.monotonic() + timeout
    body: Any = None
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{base}/readyz", timeout=aiohttp.ClientTimeout(total=2.0)) as r:
                body = await r.json(content_type=None)
                if r.status == 200:
                    return dict(body)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:  # not listening yet, or not JSON
            body = repr(exc)
        await asyncio.sleep(0.05)
    raise TimeoutError(f"not ready after {timeout}s: {body}")


async def post_json(
    session: aiohttp.ClientSession, url: str, obj: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """POST ``obj`` as JSON; returns (status, decoded JSON body)."""
    async with session.post(url, json=obj, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def post_raw(
    session: aiohttp.ClientSession, url: str, body: bytes | str, content_type: str | None, **headers: str
) -> tuple[int, Any, dict[str, str]]:
    """POST raw bytes with an explicit Content-Type (None: no header); returns (status, JSON, headers)."""
    hdrs = dict(headers)
    if content_type is not None:
        hdrs["Content-Type"] = content_type
    data = body.encode() if isinstance(body, str) else body
    async with session.post(url, data=data, headers=hdrs, skip_auto_headers=["Content-Type"]) as r:
        return r.status, await r.json(content_type=None), dict(r.headers)


async def stalled_websocket(port: int) -> socket.socket:
    """A websocket client that completes the handshake and then never reads again."""
    loop = asyncio.get_running_loop()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A tiny receive buffer makes TCP back pressure reach the server quickly.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    await loop.sock_connect(s, ("127.0.0.1", port))
    await loop.sock_sendall(
        s,
        b"GET /websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await asyncio.wait_for(loop.sock_recv(s, 1), timeout=5)
        assert chunk, "connection closed during the handshake"
        head += chunk
    assert b" 101 " in head.split(b"\r\n", 1)[0], head
    return s  # never read from again
