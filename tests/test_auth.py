"""common/auth.py: tokens file parser, store reload, roles, tenancy, Origin/Host, sessions over real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from binormal.common.auth import (
    Principal,
    TokensFileError,
    TokenStore,
    auth_env,
    check_session,
    format_line,
    hash_token,
    make_session,
    parse_tokens,
)
from binormal.common.config import ConfigError
from binormal.common.guard import SESSION_COOKIE, AuthConfig, AuthState, host_name
from binormal.common.guard import guard as guard_middleware
from binormal.common.http import observe
from binormal.common.keys import Keyspace, Scope
from binormal.ingest.settings import IngestSettings
from binormal.web.settings import WebSettings
from tests.support.http import Served, combined_app, ingest_settings, serving, web_settings
from tests.support.openapi import assert_documented as documented
from tests.support.workers import binormal_command

GOOD = {"org": "acme", "source": "web", "pop": "users", "id": "u1", "action": "GET /"}


def token_line(name: str, role: str, orgs: str, token: str) -> str:
    return f"{name} {role} {orgs} sha256:{hashlib.sha256(token.encode()).hexdigest()}\n"


# ---------------------------------------------------------------- reproductions of issue 9, defect 3


@pytest.fixture
def open_base(combined: Served) -> str:
    """web + ingest on one app, auth off (no tokens file), loopback."""
    return combined.base


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
            documented("/api/scopes", "GET", 421, body)
            assert body["field"] == "Host" and "evil.example" not in r.headers.get("Content-Type", "")
        for host in ("localhost:1234", "127.0.0.1", "[::1]:80"):
            async with http.get(f"{open_base}/api/scopes", headers={"Host": host}) as r:
                assert r.status == 200, host


async def test_with_a_tokens_file_every_data_route_needs_a_token(tmp_path: Path, redis_url: str, prefix: str) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(token_line("alice", "admin", "*", "s3cret-token"))
    env = {"REDIS_URL": redis_url, "BINORMAL_PREFIX": prefix, "BINORMAL_TOKENS_FILE": str(tokens)}
    ws = WebSettings.from_env(env)
    app = combined_app(ws, IngestSettings.from_env(env))
    # web and ingest on one app: one guard, inside the JSON/timing middleware
    assert list(app.middlewares) == [observe, guard_middleware]
    async with serving(app) as base, aiohttp.ClientSession() as http:
        for method, path in [
            ("GET", "/api/scopes"),
            ("GET", "/metrics"),
            ("POST", "/discrete"),
            ("POST", "/events"),
            ("GET", "/api/outliers?org=a&source=b&pop=c"),
        ]:
            async with http.request(method, base + path, json=GOOD) as r:
                assert r.status == 401, (method, path, r.status)
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                body = await r.json()
                assert set(body) >= {"error", "field"}
                documented(path.split("?")[0], method, 401, body)
        async with http.get(base + "/api/scopes", headers={"Authorization": "Bearer s3cret-token"}) as r:
            assert r.status == 200


# ---------------------------------------------------------------- the tokens file parser

HEX = "ab" * 32


def test_parser_reads_names_roles_orgs_comments_and_blank_lines() -> None:
    text = f"# comment\n\n  alice producer acme,beta sha256:{HEX}  \nbob viewer * sha256:{'cd' * 32}\n"
    got = parse_tokens(text)
    assert got["alice"].principal == Principal("alice", "producer", frozenset({"acme", "beta"}))
    assert got["alice"].line == 3 and got["alice"].digest == bytes.fromhex(HEX)
    assert got["bob"].principal == Principal("bob", "viewer", None)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (f"alice producer acme sha256:{HEX} extra", "expected 4 fields"),
        ("alice producer acme", "expected 4 fields"),
        (f"alice root acme sha256:{HEX}", "ROLE must be"),
        (f"al ice producer acme sha256:{HEX}", "expected 4 fields"),
        (f"al.ice producer acme sha256:{HEX}", "NAME must be"),
        (f"alice producer acme,,beta sha256:{HEX}", "ORGS must be"),
        (f"alice producer acme,* sha256:{HEX}", "ORGS must be"),
        ("alice producer acme sha256:XYZ", "64 lowercase hex"),
        (f"alice producer acme md5:{HEX}", "64 lowercase hex"),
        (f"alice producer acme sha256:{HEX.upper()}", "64 lowercase hex"),
    ],
)
def test_a_bad_line_is_an_error_naming_its_number_and_never_its_value(line: str, why: str) -> None:
    with pytest.raises(TokensFileError) as err:
        parse_tokens(f"# header\n{line}\n")
    msg = str(err.value)
    assert "line 2" in msg and why in msg, msg
    assert HEX not in msg and "XYZ" not in msg and "root" not in msg


def test_names_and_tokens_are_unique() -> None:
    with pytest.raises(TokensFileError, match="line 2: NAME is already used on line 1"):
        parse_tokens(f"a admin * sha256:{HEX}\na viewer * sha256:{'cd' * 32}\n")
    with pytest.raises(TokensFileError, match="line 2: same token hash as line 1"):
        parse_tokens(f"a admin * sha256:{HEX}\nb viewer * sha256:{HEX}\n")


NAMES = st.text(alphabet="abcXYZ019_-", min_size=1, max_size=64)
ORGS = st.none() | st.frozensets(
    st.text(
        alphabet=st.characters(blacklist_categories=["Cs", "Z", "Cc"], blacklist_characters=",*"),
        min_size=1,
        max_size=20,
    ).filter(lambda o: o.strip() == o and len(o.encode()) <= 256 and not any(c.isspace() for c in o)),
    min_size=1,
    max_size=4,
)


@given(
    st.lists(
        st.tuples(NAMES, st.sampled_from(["producer", "viewer", "admin"]), ORGS, st.binary(min_size=32, max_size=32)),
        max_size=8,
        unique_by=(lambda t: t[0], lambda t: t[3]),
    )
)
@hsettings(max_examples=300, deadline=None)
def test_format_line_round_trips_through_the_parser(
    entries: list[tuple[str, str, frozenset[str] | None, bytes]],
) -> None:
    text = "# tokens\n" + "".join(format_line(n, r, o, d) + "\n" for n, r, o, d in entries)
    got = parse_tokens(text)
    assert {n: (e.principal.role, e.principal.orgs, e.digest) for n, e in got.items()} == {
        n: (r, o, d) for n, r, o, d in entries
    }


@given(st.text(max_size=300))
@hsettings(max_examples=500, deadline=None)
def test_the_parser_accepts_or_names_a_line_for_any_text(text: str) -> None:
    try:
        parse_tokens(text)
    except TokensFileError as exc:
        assert str(exc).startswith("tokens file line ")


# ---------------------------------------------------------------- the store


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_store_rereads_the_file_when_it_changes_at_most_once_a_second(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(token_line("alice", "viewer", "acme", "tok-a"))
    clock = Clock()
    store = TokenStore(path, clock=clock).load()
    assert store.lookup("tok-a") == Principal("alice", "viewer", frozenset({"acme"}))
    assert store.lookup("tok-b") is None and store.lookup("") is None and store.lookup("x" * 10_000) is None
    with open(path, "a") as fh:
        fh.write(token_line("bob", "admin", "*", "tok-b"))
    clock.now = 0.5
    assert store.lookup("tok-b") is None  # not re-checked yet
    clock.now = 1.01
    assert store.lookup("tok-b") == Principal("bob", "admin", None)
    # revoke by rewriting (new inode, same size class): alice is gone
    tmp = tmp_path / "t.tmp"
    tmp.write_text(token_line("bob", "admin", "*", "tok-b"))
    tmp.replace(path)
    clock.now = 2.02
    assert store.lookup("tok-a") is None and store.lookup("tok-b") is not None
    # an invalid file fails closed, and recovers when fixed
    path.write_text("bob admin * sha256:nothex\n")
    clock.now = 3.03
    with pytest.raises(Exception, match="line 1"):
        store.lookup("tok-b")
    path.write_text(token_line("bob", "admin", "*", "tok-b"))
    clock.now = 4.04
    assert store.lookup("tok-b") is not None
    path.unlink()
    clock.now = 5.05
    assert store.lookup("tok-b") is None  # removed file: every token refused


def test_store_refuses_a_missing_or_invalid_file_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="binormal token add"):
        TokenStore(tmp_path / "nope").load()
    (tmp_path / "bad").write_text("x y z\n")
    with pytest.raises(ConfigError, match="line 1"):
        TokenStore(tmp_path / "bad").load()


def test_session_cookie_is_signed_expires_and_dies_with_its_token(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(token_line("alice", "viewer", "acme", "tok-a"))
    store = TokenStore(path, check_interval_s=0.0).load()
    entry = store.entry("alice")
    assert entry is not None
    value, expiry = make_session(entry, now=1000.0)
    assert "tok-a" not in value and hash_token("tok-a").hex() not in value
    assert check_session(store, value, now=1001.0) == entry.principal
    assert check_session(store, value, now=expiry + 1) is None
    name, exp, mac = value.split(".")
    assert check_session(store, f"{name}.{int(exp) + 999}.{mac}", now=1001.0) is None  # extended expiry
    assert check_session(store, f"{name}.{exp}.{'0' * 64}", now=1001.0) is None
    assert check_session(store, "garbage", now=1001.0) is None
    path.write_text(token_line("alice", "viewer", "acme", "tok-new"))  # rotated: old sessions die
    assert check_session(store, value, now=1001.0) is None


def test_auth_settings_have_bounds() -> None:
    got = auth_env(
        {
            "BINORMAL_ALLOWED_ORIGINS": "https://a.example, http://b.example:8080",
            "BINORMAL_ALLOWED_HOSTS": "A.example,[::1]",
            "BINORMAL_ALLOW_ANONYMOUS": "1",
        }
    )
    assert got["allowed_origins"] == ("https://a.example", "http://b.example:8080")
    assert got["allowed_hosts"] == ("a.example", "[::1]") and got["allow_anonymous"] is True
    for env in [
        {"BINORMAL_ALLOWED_ORIGINS": "https://a.example/path"},
        {"BINORMAL_ALLOWED_ORIGINS": "a.example"},
        {"BINORMAL_ALLOWED_HOSTS": "a.example:80"},
        {"BINORMAL_ALLOW_ANONYMOUS": "maybe"},
        {"BINORMAL_ALLOWED_HOSTS": ",".join(f"h{i}" for i in range(101))},
    ]:
        with pytest.raises(ConfigError, match=next(iter(env))):
            auth_env(env)
    assert WebSettings.from_env({"BINORMAL_TOKENS_FILE": "/x"}).tokens_file == "/x"


@pytest.mark.parametrize(
    ("header", "want"),
    [
        ("Example.com:8080", "example.com"),
        ("[::1]:80", "[::1]"),
        ("localhost.", "localhost"),
        ("127.0.0.1", "127.0.0.1"),
    ],
)
def test_host_name(header: str, want: str) -> None:
    assert host_name(header) == want


def test_anonymous_off_loopback_refuses_to_start_naming_the_fix() -> None:
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.com"):
        with pytest.raises(ConfigError) as err:
            AuthState(AuthConfig(host, "", False, (), ()))
        assert "binormal token add" in str(err.value) and "BINORMAL_ALLOW_ANONYMOUS=1" in str(err.value)
        AuthState(AuthConfig(host, "", True, (), ()))
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        AuthState(AuthConfig(host, "", False, (), ()))


# ---------------------------------------------------------------- roles and tenancy over real HTTP

TOKENS = {
    "prod-acme": ("producer", "acme"),
    "view-acme": ("viewer", "acme"),
    "view-all": ("viewer", "*"),
    "admin": ("admin", "*"),
}


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer tok-{name}"}


class Service:
    def __init__(
        self, base: str, http: aiohttp.ClientSession, keys: Keyspace, tokens: Path, rc: aioredis.Redis
    ) -> None:
        self.base, self.http, self.keys, self.tokens, self.redis = base, http, keys, tokens, rc

    async def written(self) -> int:
        return sum([await self.redis.xlen(s) for s in self.keys.streams()])


@pytest.fixture
async def svc(tmp_path: Path, redis_url: str, prefix: str, aredis: aioredis.Redis) -> AsyncIterator[Service]:
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(token_line(n, r, o, f"tok-{n}") for n, (r, o) in TOKENS.items()))
    ws = web_settings(redis_url, prefix, tokens_file=str(tokens), discrete_timeout_s=0.2)
    ins = ingest_settings(redis_url, prefix, tokens_file=str(tokens))
    app = combined_app(ws, ins)
    async with serving(app) as base, aiohttp.ClientSession() as http:
        yield Service(base, http, ws.keys, tokens, aredis)


async def test_roles_gate_routes(svc: Service) -> None:
    cases = [  # (token, method, path, expected status)
        ("prod-acme", "GET", "/api/scopes", 403),
        ("prod-acme", "GET", "/metrics", 403),
        ("prod-acme", "GET", "/websocket", 403),
        ("prod-acme", "GET", "/", 403),
        ("view-acme", "POST", "/events", 403),
        ("view-acme", "POST", "/discrete", 403),
        ("view-acme", "GET", "/metrics", 403),
        ("view-acme", "GET", "/api/scopes", 200),
        ("view-acme", "GET", "/", 200),
        ("admin", "GET", "/metrics", 200),
        ("admin", "GET", "/api/scopes", 200),
    ]
    for name, method, path, want in cases:
        async with svc.http.request(method, svc.base + path, headers=bearer(name), json=GOOD) as r:
            assert r.status == want, (name, method, path, r.status, await r.text())
            if want == 403:
                body = await r.json()
                documented(path, method, 403, body)
                assert body["field"] == "Authorization" and name in body["error"] and body["role"] in body["error"]
    for path in ("/healthz", "/readyz", "/static/app.js"):
        async with svc.http.get(svc.base + path) as r:
            assert r.status in (200, 503), path  # open for probes and the page's assets
    for header in ("Bearer nope", "Basic YWxhZGRpbjpvcGVuc2VzYW1l", "Bearer", "tok-admin"):
        async with svc.http.get(svc.base + "/api/scopes", headers={"Authorization": header}) as r:
            assert r.status == 401 and "WWW-Authenticate" in r.headers
            assert "tok-" not in await r.text()
    for headers in ({}, {"Cookie": "binormal_session=stale.1.x"}, {"Authorization": "Bearer nope"}):
        async with svc.http.get(svc.base + "/", headers=headers) as r:  # the page without credentials: 401 + login form
            assert r.status == 401 and 'id="login"' in await r.text() and "text/html" in r.headers["Content-Type"]


async def test_a_producer_for_acme_cannot_write_beta_and_nothing_is_written(svc: Service) -> None:
    beta = dict(GOOD, org="beta")
    async with svc.http.post(svc.base + "/discrete", json=beta, headers=bearer("prod-acme")) as r:
        body = await r.json()
        assert r.status == 403 and body["field"] == "org" and body["org"] == "beta" and "'beta'" in body["error"]
    lines = [GOOD, GOOD, beta, GOOD, dict(beta, id="u9")]
    ndjson = b"\n".join(orjson.dumps(x) for x in lines)
    async with svc.http.post(
        svc.base + "/events", data=ndjson, headers={**bearer("prod-acme"), "Content-Type": "application/x-ndjson"}
    ) as r:
        body = await r.json()
        assert r.status == 403 and body["org"] == "beta" and body["lines"] == [3, 5] and body["accepted"] == 0, body
        documented("/events", "POST", 403, body)
    assert await svc.written() == 0
    async with svc.http.post(svc.base + "/events", json=[GOOD, GOOD], headers=bearer("prod-acme")) as r:
        assert r.status == 202 and (await r.json())["accepted"] == 2
    async with svc.http.post(svc.base + "/discrete", json=GOOD, headers=bearer("prod-acme")) as r:
        assert r.status == 504  # no worker here: queued, which is what we check
    assert await svc.written() == 3
    async with svc.http.post(svc.base + "/events", json=[beta], headers=bearer("admin")) as r:
        assert r.status == 202


async def test_a_viewer_for_acme_sees_only_acme(svc: Service) -> None:
    for org in ("acme", "beta"):
        async with svc.http.post(svc.base + "/events", json=[dict(GOOD, org=org)], headers=bearer("admin")) as r:
            assert r.status == 202
    for org in ("acme", "beta"):  # the scope registry is written by the worker: write it directly here
        scope = Scope(org, "web", "users")
        await svc.redis.sadd(svc.keys.scopes(svc.keys.shard(scope)), scope.token)
    async with svc.http.get(svc.base + "/api/scopes", headers=bearer("view-acme")) as r:
        body = await r.json()
        assert r.status == 200 and [s["org"] for s in body["scopes"]] == ["acme"] and body["total"] == 1, body
    async with svc.http.get(svc.base + "/api/scopes", headers=bearer("view-all")) as r:
        assert sorted(s["org"] for s in (await r.json())["scopes"]) == ["acme", "beta"]
    for path in ("/api/outliers?org=beta&source=web&pop=users", "/api/individual?org=beta&source=web&pop=users&id=u1"):
        async with svc.http.get(svc.base + path, headers=bearer("view-acme")) as r:
            body = await r.json()
            assert r.status == 403 and body["field"] == "org" and body["org"] == "beta", body
            documented(path.split("?")[0], "GET", 403, body)


async def test_a_viewers_websocket_carries_only_its_orgs(svc: Service, prefix: str) -> None:
    channel = svc.keys.broadcast_channel()
    lines = [
        orjson.dumps(
            {
                "score": 1.0,
                "count": 1,
                "zscore": 0.5,
                "org": org,
                "source": "web",
                "pop": "p",
                "id": f"{org}-{i}",
                "action": "GET /",
            }
        )
        for i, org in enumerate(["acme", "beta"] * 5)
    ]
    lines.append(b'{"org": 42, "id": "no-org"}')
    async with (
        svc.http.ws_connect(svc.base + "/websocket", headers=bearer("view-acme")) as acme,
        svc.http.ws_connect(svc.base + "/websocket", headers=bearer("view-all")) as every,
    ):
        deadline = asyncio.get_running_loop().time() + 10
        while (await svc.redis.pubsub_numsub(channel))[0][1] < 1:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        await svc.redis.publish(channel, b"\n".join(lines))
        await svc.redis.publish(channel, lines[1])  # beta alone: nothing for acme
        await svc.redis.publish(channel, lines[0])
        got_all: list[Any] = []
        while len(got_all) < 13:
            msg = await every.receive(timeout=5)
            got_all += [orjson.loads(x) for x in msg.data.split("\n")]
        got_acme: list[Any] = []
        while len(got_acme) < 6:
            msg = await acme.receive(timeout=5)
            got_acme += [orjson.loads(x) for x in msg.data.split("\n")]
        assert {o["org"] for o in got_acme} == {"acme"} and len(got_acme) == 6
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        async with svc.http.ws_connect(svc.base + "/websocket"):  # no credentials
            pass
    assert err.value.status == 401


async def test_revoking_a_token_takes_effect_without_restart_and_closes_its_websocket(svc: Service) -> None:
    async with svc.http.ws_connect(svc.base + "/websocket", headers=bearer("view-acme")) as ws:
        text = svc.tokens.read_text()
        svc.tokens.write_text("".join(line + "\n" for line in text.splitlines() if not line.startswith("view-acme ")))
        msg = await ws.receive(timeout=10)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) and ws.close_code == 1008
    async with svc.http.get(svc.base + "/api/scopes", headers=bearer("view-acme")) as r:
        assert r.status == 401


async def test_login_sets_a_strict_httponly_cookie_that_authorises_the_page(svc: Service) -> None:
    # cookies for an IP address need an unsafe jar on the client side
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(svc.base + "/login", json={"token": "nope"}) as r:
            assert r.status == 401 and SESSION_COOKIE not in r.cookies
        repeated = b'{"token": "nope", "token": "tok-view-acme"}'  # orjson alone would keep the last
        async with http.post(svc.base + "/login", data=repeated, headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400 and SESSION_COOKIE not in r.cookies
        async with http.post(
            svc.base + "/login",
            data="token=tok-view-acme",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as r:
            assert r.status == 415  # a cross-site HTML form cannot log anyone in
        async with http.post(svc.base + "/login", json={"token": "tok-view-acme"}) as r:
            assert r.status == 200 and (await r.json())["name"] == "view-acme"
            cookie = r.headers["Set-Cookie"]
            assert (
                "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie and "Secure" not in cookie
            )
            assert "tok-view-acme" not in cookie
        async with http.get(svc.base + "/api/scopes") as r:  # the session jar sends the cookie
            assert r.status == 200
        async with http.get(svc.base + "/api/scopes", headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403 and (await r.json())["field"] == "Origin"  # cookie + foreign Origin
        async with http.ws_connect(svc.base + "/websocket", headers={"Origin": svc.base}) as ws:
            assert not ws.closed
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            async with http.ws_connect(svc.base + "/websocket", headers={"Origin": "http://evil.example"}):
                pass
        assert err.value.status == 403
        async with http.post(svc.base + "/logout") as r:
            assert r.status == 200
        async with http.get(svc.base + "/api/scopes") as r:
            assert r.status == 401


async def test_security_headers_on_the_page_and_the_api(svc: Service) -> None:
    for path in ("/", "/static/app.js", "/api/scopes", "/healthz"):
        async with svc.http.get(svc.base + path, headers=bearer("view-all")) as r:
            csp = r.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
            assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["Referrer-Policy"] == "no-referrer"


async def test_allowed_origins_and_hosts_settings(redis_url: str, prefix: str) -> None:
    ws = web_settings(redis_url, prefix, allowed_origins=("http://dash.example",), allowed_hosts=("binormal.example",))
    app = combined_app(
        ws,
        replace(ingest_settings(redis_url, prefix), allowed_origins=ws.allowed_origins, allowed_hosts=ws.allowed_hosts),
    )
    async with serving(app) as base, aiohttp.ClientSession() as http:
        async with http.ws_connect(
            base + "/websocket", headers={"Origin": "http://dash.example", "Host": "binormal.example"}
        ) as sock:
            assert not sock.closed
        async with http.get(base + "/api/scopes", headers={"Host": "binormal.example:9000"}) as r:
            assert r.status == 200
        async with http.get(base + "/api/scopes", headers={"Host": "localhost"}) as r:
            assert r.status == 421  # an explicit list replaces the defaults
        async with http.get(base + "/healthz", headers={"Host": "10.0.0.7:8080"}) as r:
            assert r.status == 200  # probes are exempt


async def test_the_feeder_sends_binormal_token_and_stops_on_401_or_403(svc: Service, tmp_path: Path) -> None:
    log = tmp_path / "log.ndjson"
    log.write_bytes(b"".join(orjson.dumps(dict(GOOD, id=f"u{i}")) + b"\n" for i in range(3)))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("BINORMAL_")}

    def feed(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*binormal_command(), "feed", "--no-progress", "--url", svc.base, str(path)],
            env={**base_env, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    got = await asyncio.to_thread(feed, log)
    assert got.returncode != 0 and "401" in got.stderr and "BINORMAL_TOKEN" in got.stderr, got.stderr
    assert await svc.written() == 0
    beta = tmp_path / "beta.ndjson"
    beta.write_bytes(orjson.dumps(dict(GOOD, org="beta")) + b"\n")
    got = await asyncio.to_thread(feed, beta, BINORMAL_TOKEN="tok-prod-acme")
    assert got.returncode != 0 and "403" in got.stderr and "beta" in got.stderr, got.stderr
    got = await asyncio.to_thread(feed, log, BINORMAL_TOKEN="tok-prod-acme")
    assert got.returncode == 0, got.stderr
    assert "tok-prod-acme" not in got.stderr + got.stdout
    assert await svc.written() == 3
