"""common/ratelimit.py and its use on the producer routes: token buckets per token or client
address, 429 with Retry-After, bounded memory."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from binormal.common.auth import PRINCIPAL, Principal
from binormal.common.http import Handler
from binormal.common.keys import Keyspace
from binormal.common.ratelimit import TokenBuckets, retry_after
from binormal.common.redisapp import REDIS
from tests.support.http import SEED_BODY, Served, combined_app, ingest_settings, post_raw, serving, web_settings

NDJSON = "application/x-ndjson"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_the_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    b = TokenBuckets(rate=10, burst=5, clock=clock)
    assert [b.charge("k", 1) for _ in range(5)] == [0.0] * 5
    assert b.charge("k", 1) == pytest.approx(0.1)  # one token short, refilled in 0.1 s
    clock.now += 0.1
    assert b.charge("k", 1) == 0.0
    assert b.charge("other", 5) == 0.0  # keys are independent


def test_a_batch_larger_than_the_burst_passes_on_a_full_bucket_and_leaves_a_debt() -> None:
    clock = Clock()
    b = TokenBuckets(rate=100, burst=10, clock=clock)
    assert b.charge("k", 1000) == 0.0
    assert b.wait_s("k") == pytest.approx((1000 - 10 + 1) / 100)  # the debt is paid by waiting
    assert b.charge("k", 1) > 9.0


def test_off_when_rate_is_zero() -> None:
    b = TokenBuckets(rate=0, burst=0)
    assert not b.enabled and b.charge("k", 10**9) == 0.0 and len(b) == 0


def test_the_bucket_table_is_bounded() -> None:
    b = TokenBuckets(rate=1, burst=1, max_keys=100)
    for i in range(1000):
        b.charge(f"k{i}", 1)
    assert len(b) == 100


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.1, 1000),
    burst=st.floats(1, 1000),
    steps=st.lists(st.tuples(st.floats(0, 5), st.integers(1, 2000)), max_size=50),
)
def test_never_more_than_burst_plus_rate_times_elapsed_plus_one_batch(
    rate: float, burst: float, steps: list[tuple[float, int]]
) -> None:
    clock = Clock()
    b = TokenBuckets(rate=rate, burst=burst, clock=clock)
    start, allowed, largest = clock.now, 0, 0
    for dt, n in steps:
        clock.now += dt
        wait = b.charge("k", n)
        assert wait >= 0.0 and retry_after(wait) >= 1
        if wait == 0.0:
            allowed += n
            largest = max(largest, n)
    assert allowed <= burst + rate * (clock.now - start) + largest + 1e-6


# ---------------------------------------------------------------- over HTTP


@web.middleware
async def fake_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What the auth middleware does: name the caller in request[PRINCIPAL]."""
    name = request.headers.get("X-Test-Token")
    if name:
        request[PRINCIPAL] = Principal(name, "producer", None)
    return await handler(request)


def lines(n: int) -> bytes:
    ev = {"org": "acme", "source": "web", "pop": "p", "id": "u", "action": "a"}
    return b"".join(orjson.dumps(ev) + b"\n" for _ in range(n))


async def total_len(client: aioredis.Redis, keys: Keyspace) -> int:
    return sum([await client.xlen(s) for s in keys.streams()])


async def test_events_past_the_rate_are_429_with_retry_after_and_not_written(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    limits = {"rate_limit": 1.0, "rate_burst": 10.0}
    ws, ins = web_settings(redis_url, prefix, **limits), ingest_settings(redis_url, prefix, **limits)
    app = combined_app(ws, ins)
    app.middlewares.insert(0, fake_auth)
    async with serving(app) as base, aiohttp.ClientSession() as session:
        await asyncio.wait_for(app[REDIS].up.wait(), 5.0)
        status, body, _ = await post_raw(session, f"{base}/events", lines(10), NDJSON)
        assert status == 202 and body["accepted"] == 10, body
        status, body, headers = await post_raw(session, f"{base}/events", lines(1), NDJSON)
        assert status == 429, body
        assert int(headers["Retry-After"]) >= 1 and body["field"] is None and "rate limit" in body["error"]
        # /discrete shares the bucket (one event per request)
        status, body, headers = await post_raw(session, f"{base}/discrete", SEED_BODY, "application/json")
        assert status == 429 and int(headers["Retry-After"]) >= 1, body
        assert await total_len(aredis, ws.keys) == 10
        # another token has its own bucket; anonymous callers are keyed by address
        status, body, _ = await post_raw(session, f"{base}/events", lines(10), NDJSON, **{"X-Test-Token": "beta"})
        assert status == 202, body
        status, body, _ = await post_raw(session, f"{base}/events", lines(1), NDJSON, **{"X-Test-Token": "beta"})
        assert status == 429, body
        assert await total_len(aredis, ws.keys) == 20


async def test_default_is_off(combined: Served) -> None:
    for _ in range(3):
        status, body, _ = await post_raw(combined.session, f"{combined.base}/events", lines(5000), NDJSON)
        assert status == 202, body
