"""common/auth.py: tokens file parser, store reload, roles, tenancy, Origin/Host, sessions over real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from common.health import REDIS
from http_helpers import combined_app, ingest_settings, serving, web_settings
from web.settings import WebSettings

GOOD = {"org": "acme", "source": "web", "pop": "users", "id": "u1", "action": "GET /"}


def token_line(name: str, role: str, orgs: str, token: str) -> str:
    return f"{name} {role} {orgs} sha256:{hashlib.sha256(token.encode()).hexdigest()}\n"


# ---------------------------------------------------------------- reproductions of issue 9, defect 3


@pytest.fixture
async def open_base(redis_url: str, prefix: str) -> AsyncIterator[str]:
    """web + ingest on one app, auth off (no tokens file), loopback."""
    app = combined_app(web_settings(redis_url, prefix), ingest_settings(redis_url, prefix))
    async with serving(app) as base:
        yield base


async def test_websocket_from_another_origin_is_refused(open_base: str) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            async with http.ws_connect(f"{open_base}/websocket", headers={"Origin": "http://evil.example:8000"}):
                pass
        assert err.value.status == 403
        # the page's own origin is fine, and so is a program that sends no Origin
        async with http.ws_connect(f"{open_base}/websocket", headers={"Origin": open_base}) as ws:
            assert not ws.closed
        async with http.ws_connect(f"{open_base}/websocket") as ws:
            assert not ws.closed


async def test_foreign_host_header_is_421(open_base: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{open_base}/api/scopes", headers={"Host": "evil.example"}) as r:
            assert r.status == 421
            body = await r.json()
            assert body["field"] == "Host" and "evil.example" not in r.headers.get("Content-Type", "")
        for host in ("localhost:1234", "127.0.0.1", "[::1]:80"):
            async with http.get(f"{open_base}/api/scopes", headers={"Host": host}) as r:
                assert r.status == 200, host


async def test_with_a_tokens_file_every_data_route_needs_a_token(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(token_line("alice", "admin", "*", "s3cret-token"))
    env = {"REDIS_URL": redis_url, "BINORMAL_PREFIX": prefix, "BINORMAL_TOKENS_FILE": str(tokens)}
    ws = WebSettings.from_env(env)
    from ingest.settings import IngestSettings

    app = combined_app(ws, IngestSettings.from_env(env))
    async with serving(app) as base, aiohttp.ClientSession() as http:
        for method, path in [("GET", "/api/scopes"), ("GET", "/metrics"), ("POST", "/discrete"), ("POST", "/events"),
                             ("GET", "/api/outliers?org=a&source=b&pop=c")]:
            async with http.request(method, base + path, json=GOOD) as r:
                assert r.status == 401, (method, path, r.status)
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                body = await r.json()
                assert set(body) >= {"error", "field"}
        async with http.get(base + "/api/scopes", headers={"Authorization": "Bearer s3cret-token"}) as r:
            assert r.status == 200
