"""web/app.py: POST /discrete over real sockets, bad input, duplicates, health, metrics, startup order."""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from binormal.common.embedded import RedisServer, find_binary, free_port
from binormal.common.keys import Keyspace, Scope
from binormal.web.app import create_app
from tests.support.http import SEED_BODY, Served, post_json, post_raw, served, serving, wait_ready, web_settings
from tests.support.openapi import assert_documented as documented
from tests.support.workers import running_worker, worker_settings

GOOD = {"org": "acme", "source": "webserver", "pop": "auth_getpost", "id": "individual1", "action": "GET /user/login"}


class Web(Served):
    """A running web tier: base URL, client session, its settings' keyspace."""

    @property
    def discrete(self) -> str:
        return f"{self.base}/discrete"


@pytest.fixture
async def webapp(redis_url: str, prefix: str) -> AsyncIterator[Web]:
    """The web tier on a free port, Redis reached, no worker."""
    settings = web_settings(redis_url, prefix, discrete_timeout_s=0.5)
    app = create_app(settings)
    async with served(app, settings.keys, Web) as running:
        yield running


async def total_len(client: aioredis.Redis, keys: Keyspace) -> int:
    """Entries in every stream shard."""
    return sum([await client.xlen(s) for s in keys.streams()])


# ---------------------------------------------------------------- bad input: 4xx JSON naming the field, nothing written

BAD_JSON_BODIES = [
    pytest.param(b"not json", "body", id="not-json"),
    pytest.param(b'{"org": "acme",', "body", id="truncated-json"),
    pytest.param(b"", "body", id="empty-body"),
    pytest.param(b"[1, 2]", "body", id="json-list"),
    pytest.param(b'"a string"', "body", id="json-string"),
    pytest.param(b"42", "body", id="json-number"),
    pytest.param(b"null", "body", id="json-null"),
    pytest.param(b'{"org": "\xff\xfe", "source": "s", "pop": "p", "id": "i", "action": "a"}', "body", id="non-utf8"),
    pytest.param(b"\xff\xfe\x00{", "body", id="binary"),
    pytest.param(
        b'{"org": "acme", "org": "beta", "source": "s", "pop": "p", "id": "i", "action": "a"}',
        "org",
        id="duplicate-key",
    ),
]


def _with(**changes: Any) -> bytes:
    obj: dict[str, Any] = dict(GOOD)
    for k, v in changes.items():
        if v is _DROP:
            obj.pop(k)
        else:
            obj[k] = v
    return orjson.dumps(obj)


_DROP = object()
BAD_EVENTS = [
    *[pytest.param(_with(**{f: _DROP}), f, id=f"missing-{f}") for f in ("org", "source", "pop", "id", "action")],
    *[pytest.param(_with(**{f: ""}), f, id=f"empty-{f}") for f in ("org", "source", "pop", "id", "action")],
    pytest.param(_with(id=42), "id", id="number-id"),
    pytest.param(_with(action=None), "action", id="null-action"),
    pytest.param(_with(pop=["a"]), "pop", id="list-pop"),
    pytest.param(_with(org={"a": 1}), "org", id="object-org"),
    pytest.param(_with(source=True), "source", id="bool-source"),
    pytest.param(_with(org="o" * 257), "org", id="org-over-limit"),
    pytest.param(_with(id="i" * 1025), "id", id="id-over-limit"),
    pytest.param(_with(action="é" * 513), "action", id="action-over-limit-in-bytes"),
    pytest.param(_with(acton="GET /"), "acton", id="unknown-field"),
    pytest.param(_with(ts="yesterday"), "ts", id="ts-string"),
    pytest.param(_with(ts=-1), "ts", id="ts-negative"),
    pytest.param(_with(ts=1.5), "ts", id="ts-float"),
    pytest.param(_with(event_id=""), "event_id", id="empty-event-id"),
    pytest.param(_with(rid="mine"), "rid", id="rid-not-accepted"),
    pytest.param(_with(reply_to="bn:reply:x"), "reply_to", id="reply-to-not-accepted"),
]


@pytest.mark.parametrize(("body", "field"), BAD_JSON_BODIES + BAD_EVENTS)
async def test_bad_body_is_400_naming_the_field_and_writes_nothing(
    webapp: Web, aredis: aioredis.Redis, body: bytes, field: str
) -> None:
    status, got, _ = await post_raw(webapp.session, webapp.discrete, body, "application/json")
    assert status == 400, got
    assert got["field"] == field, got
    assert isinstance(got["error"], str) and got["error"]
    documented("/discrete", "post", status, got)
    assert await total_len(aredis, webapp.keys) == 0


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/x-ndjson",
        "application/json; charset=latin-1",
    ],
)
async def test_wrong_content_type_is_415(webapp: Web, aredis: aioredis.Redis, content_type: str | None) -> None:
    status, got, _ = await post_raw(webapp.session, webapp.discrete, SEED_BODY, content_type)
    assert status == 415, got
    assert got["field"] == "Content-Type"
    documented("/discrete", "post", status, got)
    assert await total_len(aredis, webapp.keys) == 0


async def test_charset_utf8_is_accepted_as_json(webapp: Web) -> None:
    # No worker: the event is queued and the request times out (504), which proves it passed validation.
    status, got, _ = await post_raw(webapp.session, webapp.discrete, SEED_BODY, "application/json; charset=UTF-8")
    assert status == 504, got


@pytest.mark.parametrize(
    ("body", "coding", "status", "field", "says"),
    [
        (gzip.compress(SEED_BODY.encode()), "gzip", 504, None, ""),  # decoded, valid, queued (no worker)
        (gzip.compress(SEED_BODY.encode())[:-8], "gzip", 400, "body", "truncated"),
        (zlib.compress(SEED_BODY.encode())[:-3], "deflate", 400, "body", "truncated"),
        (SEED_BODY.encode(), "br", 415, "Content-Encoding", "Content-Encoding must be"),
    ],
    ids=["gzip", "truncated-gzip", "truncated-deflate", "br"],
)
async def test_a_compressed_body_is_decoded_only_when_complete(
    webapp: Web, aredis: aioredis.Redis, body: bytes, coding: str, status: int, field: str | None, says: str
) -> None:
    got_status, got, _ = await post_raw(
        webapp.session, webapp.discrete, body, "application/json", **{"Content-Encoding": coding}
    )
    assert got_status == status, got
    if status == 504:
        assert await total_len(aredis, webapp.keys) == 1
        return
    assert got["field"] == field and says in got["error"], got
    documented("/discrete", "post", status, got)
    assert await total_len(aredis, webapp.keys) == 0


async def test_body_over_the_limit_is_413(webapp: Web, aredis: aioredis.Redis) -> None:
    big = orjson.dumps(dict(GOOD, id="x" * 20_000))  # over the 16 KiB default
    status, got, _ = await post_raw(webapp.session, webapp.discrete, big, "application/json")
    assert status == 413, got
    assert got["field"] == "body"
    documented("/discrete", "post", status, got)
    # Chunked (no Content-Length): refused while reading, not after buffering it all.

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b" " * 1024

    async with webapp.session.post(webapp.discrete, data=chunks(), headers={"Content-Type": "application/json"}) as r:
        assert r.status == 413
        assert (await r.json())["field"] == "body"
    assert await total_len(aredis, webapp.keys) == 0


async def test_get_on_post_route_is_405_json(webapp: Web, aredis: aioredis.Redis) -> None:
    async with webapp.session.get(webapp.discrete) as r:
        got = await r.json()
        assert r.status == 405
        assert "POST" in r.headers["Allow"]
    assert got["field"] == "method"
    documented("/discrete", "get", 405, got)
    assert await total_len(aredis, webapp.keys) == 0


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        pytest.param({"Idempotency-Key": " "}, GOOD, id="blank-key"),
        pytest.param({"Idempotency-Key": "k" * 257}, GOOD, id="key-over-limit"),
        pytest.param({"Idempotency-Key": "a"}, dict(GOOD, event_id="b"), id="key-differs-from-event-id"),
    ],
)
async def test_bad_idempotency_key_is_400(
    webapp: Web, aredis: aioredis.Redis, headers: dict[str, str], body: dict[str, Any]
) -> None:
    status, got = await post_json(webapp.session, webapp.discrete, body, headers)
    assert status == 400
    assert got["field"] == "Idempotency-Key"
    assert await total_len(aredis, webapp.keys) == 0


async def test_unknown_path_is_404_json(webapp: Web) -> None:
    async with webapp.session.get(f"{webapp.base}/nope") as r:
        assert r.status == 404
        assert (await r.json())["error"]


# ---------------------------------------------------------------- the happy path, with a worker


async def test_seed_example_answers_seed_keys_and_types(webapp: Web, redis_url: str, prefix: str) -> None:
    async with running_worker(worker_settings(redis_url, prefix)):
        status, got, headers = await post_raw(webapp.session, webapp.discrete, SEED_BODY, "application/json")
    assert status == 200, got
    assert headers["Content-Type"].startswith("application/json")
    documented("/discrete", "post", 200, got)
    assert list(got)[:8] == ["runtime", "score", "count", "zscore", "source", "pop", "id", "action"]
    assert isinstance(got["runtime"], int) and 0 <= got["runtime"] < 2000
    assert (got["score"], got["count"], got["zscore"], got["thisActionCount"]) == (0.0, 1, 0.0, 1)
    assert (got["org"], got["source"], got["pop"], got["id"], got["action"]) == (
        "acme",
        "webserver",
        "auth_getpost",
        "individual1",
        "GET /user/login",
    )
    assert "rid" not in got and len(got["event_id"]) == 32


async def test_timeout_is_504_naming_the_event_id_and_event_is_queued(
    webapp: Web, aredis: aioredis.Redis, redis_url: str, prefix: str
) -> None:
    started = time.monotonic()
    status, got = await post_json(webapp.session, webapp.discrete, GOOD)
    assert status == 504, got
    assert 0.4 < time.monotonic() - started < 2.0  # discrete_timeout_s=0.5
    documented("/discrete", "post", 504, got)
    assert got["queued"] is True and got["event_id"] in got["error"]
    assert f"Idempotency-Key: {got['event_id']} within 600s" in got["error"]
    assert await total_len(aredis, webapp.keys) == 1
    shard = webapp.keys.shard(Scope("acme", "webserver", "auth_getpost"))
    [(_, fields)] = await aredis.xrange(webapp.keys.stream(shard))
    # A made-up id is remembered for BINORMAL_GENERATED_ID_TTL_S, not the full hour.
    assert fields[b"event_id"] == got["event_id"].encode() and fields[b"id_ttl"] == b"600"
    # A worker started later counts it; retrying with its event id gives its result, not a second count.
    async with running_worker(worker_settings(redis_url, prefix)):
        for _ in range(200):
            if await aredis.exists(webapp.keys.reply(Scope("acme", "webserver", "auth_getpost"), got["event_id"])):
                break
            await asyncio.sleep(0.02)
        status2, again = await post_json(webapp.session, webapp.discrete, GOOD, {"Idempotency-Key": got["event_id"]})
    assert status2 == 200, again
    assert again["duplicate"] is True and again["count"] == 1 and again["event_id"] == got["event_id"]
    documented("/discrete", "post", 200, again)
    assert 0 < await aredis.ttl(webapp.keys.seen(Scope("acme", "webserver", "auth_getpost"), got["event_id"])) <= 600


async def test_idempotency_key_counts_once_and_replays_the_first_result(
    webapp: Web, redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    async with running_worker(worker_settings(redis_url, prefix)):
        s1, first = await post_json(webapp.session, webapp.discrete, GOOD, {"Idempotency-Key": "evt-1"})
        s2, second = await post_json(webapp.session, webapp.discrete, GOOD, {"Idempotency-Key": "evt-1"})
        s3, third = await post_json(webapp.session, webapp.discrete, dict(GOOD, event_id="evt-2"))
    assert (s1, s2, s3) == (200, 200, 200)
    assert first["event_id"] == "evt-1" and "duplicate" not in first
    assert second["duplicate"] is True
    assert {k: v for k, v in second.items() if k not in ("runtime", "duplicate")} == {
        k: v for k, v in first.items() if k != "runtime"
    }
    assert third["count"] == 2 and third["event_id"] == "evt-2"
    # Ids the caller chose keep the worker's full window (BINORMAL_IDEMPOTENCY_TTL_S, 1 h).
    for chosen in ("evt-1", "evt-2"):
        assert 600 < await aredis.ttl(webapp.keys.seen(Scope("acme", "webserver", "auth_getpost"), chosen)) <= 3600


async def test_concurrent_requests_share_one_subscription(
    webapp: Web, redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    async with running_worker(worker_settings(redis_url, prefix)):
        results = await asyncio.gather(
            *(
                post_json(webapp.session, webapp.discrete, dict(GOOD, id=f"u{i % 7}", action=f"a{i % 3}"))
                for i in range(200)
            )
        )
        channels = await aredis.pubsub_channels(f"{webapp.keys.prefix}:reply:*")
    assert all(s == 200 for s, _ in results), [r for r in results if r[0] != 200][:3]
    assert len({r["event_id"] for _, r in results}) == 200
    assert len(channels) == 1  # one pub/sub subscription for the whole process


# ---------------------------------------------------------------- health and metrics


async def test_healthz_readyz_metrics(webapp: Web, redis_url: str, prefix: str) -> None:
    async with webapp.session.get(f"{webapp.base}/healthz") as r:
        assert r.status == 200
        documented("/healthz", "get", 200, await r.json())
    async with webapp.session.get(f"{webapp.base}/readyz") as r:
        body = await r.json()
        assert r.status == 503 and body["checks"]["redis"] is True and body["checks"]["worker"] is False
        documented("/readyz", "get", 503, body)
    async with running_worker(worker_settings(redis_url, prefix)):
        ready = await wait_ready(webapp.session, webapp.base)
        documented("/readyz", "get", 200, ready)
        await post_json(webapp.session, webapp.discrete, GOOD)
    async with webapp.session.get(f"{webapp.base}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    for name in (
        'binormal_events_accepted_total{endpoint="/discrete"}',
        'binormal_discrete_requests_total{outcome="ok"}',
        "binormal_scored_total",
        'binormal_request_seconds_bucket{le="0.005",method="POST",route="/discrete",status="2xx"}',
        'binormal_stream_lag{shard="0"}',
        'binormal_dead_lettered_entries{shard="0"}',
    ):
        assert name in text, name


def _metric(text: str, line_prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_count_rejections(webapp: Web) -> None:
    async def scrape() -> str:
        async with webapp.session.get(f"{webapp.base}/metrics") as r:
            return await r.text()

    key = 'binormal_events_rejected_total{endpoint="/discrete"}'
    before = _metric(await scrape(), key)
    for _ in range(3):
        await post_raw(webapp.session, webapp.discrete, b"nope", "application/json")
    assert _metric(await scrape(), key) == before + 3


# ---------------------------------------------------------------- startup before Redis, Redis lost and back


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_starts_before_redis_then_becomes_ready(tmp_path: Any, prefix: str) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    app = create_app(web_settings(url, prefix, discrete_timeout_s=2.0))
    async with serving(app, wait_redis=False) as base, aiohttp.ClientSession() as session:
        async with session.get(f"{base}/healthz") as r:
            assert r.status == 200
        async with session.get(f"{base}/readyz") as r:
            body = await r.json()
            assert r.status == 503 and body["checks"]["redis"] is False, body
        started = time.monotonic()
        status, got, headers = await post_raw(session, f"{base}/discrete", SEED_BODY, "application/json")
        assert status == 503 and got["error"] == "redis unavailable" and "Retry-After" in headers
        assert time.monotonic() - started < 1.0  # refused at once, not hanging
        documented("/discrete", "post", 503, got)

        server = RedisServer(tmp_path / "late", binary=find_binary("path"), port=port).start()
        try:
            async with running_worker(worker_settings(url, prefix)):
                await wait_ready(session, base, timeout=20.0)
                status, got, _ = await post_raw(session, f"{base}/discrete", SEED_BODY, "application/json")
                assert status == 200 and got["count"] == 1, got

                # Redis dies: requests fail fast with 503; it comes back: the reply subscription is renewed.
                server.kill()
                status, got, _ = await post_raw(session, f"{base}/discrete", SEED_BODY, "application/json")
                assert status in (503, 504), got
                server = RedisServer(tmp_path / "late", binary=find_binary("path"), port=port).start()
                deadline = time.monotonic() + 30.0
                while True:
                    status, got, _ = await post_raw(session, f"{base}/discrete", SEED_BODY, "application/json")
                    if status == 200:
                        break
                    assert time.monotonic() < deadline, got
                    await asyncio.sleep(0.2)
                assert got["count"] >= 1
        finally:
            server.stop()
