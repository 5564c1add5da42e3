"""common.store against the private redis-server: the aggregate recompute, as a
function and as ``binormal recompute``."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import time
from collections import Counter

import pytest
import redis.asyncio as aioredis

from binormal.common.keys import Keyspace
from binormal.common.result import Aggregates
from binormal.common.store import (
    heartbeat_ages,
    list_scopes,
    read_aggregates,
    rebuild_population,
    recompute_aggregates,
)
from binormal.worker.worker import ensure_groups
from tests.support.events import TRICKY_SCOPES, generate
from tests.support.redis_state import drained, xadd_events
from tests.support.waiting import wait_for
from tests.support.workers import binormal_command, running_worker, worker_settings


def keys_of(prefix: str) -> Keyspace:
    return Keyspace(prefix=prefix, shards=4)


async def test_recompute_matches_running_aggregates(redis_url: str, prefix: str, aredis: aioredis.Redis) -> None:
    keys = keys_of(prefix)
    events = generate(4000, seed=41, ids=300)
    await xadd_events(aredis, keys, events)
    async with running_worker(worker_settings(redis_url, prefix, snapshot_max_age_ms=50)):
        await wait_for(lambda: drained(aredis, keys), timeout=30, what="drain")
    scopes = await list_scopes(aredis, keys)
    assert set(scopes) == {e.scope for e in events}
    for scope in scopes:
        running = await read_aggregates(aredis, keys, scope)
        rank = await aredis.zrange(keys.scope_key(scope, "rank"), 0, -1, withscores=True)
        fresh = await recompute_aggregates(aredis, keys, scope)
        assert fresh.n == running.n == len(rank) == len({e.id for e in events if e.scope == scope})
        assert math.isclose(fresh.total, running.total, rel_tol=1e-9)
        assert math.isclose(fresh.total_sq, running.total_sq, rel_tol=1e-9)
        exact = Aggregates(len(rank), math.fsum(s for _, s in rank), math.fsum(s * s for _, s in rank))
        assert math.isclose(fresh.total, exact.total, rel_tol=1e-12)
        assert math.isclose(fresh.total_sq, exact.total_sq, rel_tol=1e-12)
        assert await read_aggregates(aredis, keys, scope) == fresh  # written back


async def test_recompute_command(redis_url: str, prefix: str, aredis: aioredis.Redis) -> None:
    keys = keys_of(prefix)
    scope = TRICKY_SCOPES[2]
    await aredis.zadd(keys.scope_key(scope, "rank"), {"a": 1.5, "b": 2.5})
    await aredis.hset(keys.scope_key(scope, "agg"), mapping={"n": 7, "sum": "99", "sumsq": "1"})
    await aredis.sadd(keys.scopes(keys.shard(scope)), scope.token)
    env = {"REDIS_URL": redis_url, "BINORMAL_PREFIX": prefix, "BINORMAL_SHARDS": "4", "PATH": "/usr/bin:/bin"}
    out = await asyncio.to_thread(
        subprocess.run, [*binormal_command(), "recompute"], env=env, capture_output=True, timeout=30, check=True
    )
    [line] = out.stdout.decode().splitlines()
    report = json.loads(line)
    assert (report["org"], report["source"], report["pop"]) == (scope.org, scope.source, scope.pop)
    assert (report["n"], report["sum"], report["sumsq"], report["n_before"]) == (2, 4.0, 8.5, 7)
    assert await read_aggregates(aredis, keys, scope) == Aggregates(2, 4.0, 8.5)


async def test_heartbeat_ages_are_judged_by_the_redis_clock(
    prefix: str, aredis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ages come from Redis TIME: a local clock an hour off changes nothing."""
    keys = keys_of(prefix)
    sec, usec = await aredis.time()
    now_ms = sec * 1000 + usec // 1000
    await aredis.hset(keys.workers(), mapping={"old": now_ms - 5_000, "fresh": now_ms})
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600.0)
    ages = await heartbeat_ages(aredis, keys)
    assert set(ages) == {"old", "fresh"}
    assert 5.0 <= ages["old"] < 6.0 and 0.0 <= ages["fresh"] < 1.0
    assert await heartbeat_ages(aredis, Keyspace(prefix + "-none", 4)) == {}


async def test_readyz_judges_the_worker_heartbeat_by_the_redis_clock(
    redis_url: str, prefix: str, aredis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker beat just now (Redis TIME); the web host's clock is an hour ahead: still ready."""
    import aiohttp

    from binormal.common.redisapp import REDIS
    from binormal.web.app import create_app
    from tests.support.http import serving, web_settings

    keys = keys_of(prefix)
    settings = web_settings(redis_url, prefix)
    await ensure_groups(aredis, settings.keys.streams(), settings.keys.group)
    sec, usec = await aredis.time()
    await aredis.hset(settings.keys.workers(), "w1", sec * 1000 + usec // 1000)
    assert settings.keys.workers() == keys.workers()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600.0)
    app = create_app(settings)
    async with serving(app) as base, aiohttp.ClientSession() as session:
        await asyncio.wait_for(app[REDIS].up.wait(), 5.0)
        async with session.get(f"{base}/readyz") as r:
            body = await r.json()
    assert body["checks"]["worker"] is True, body


async def test_population_rebuild_under_the_weight_cap_equals_the_running_one(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    """``rebuild_population`` (``binormal recompute``) gives the pop/raw/sq/k and dominance counters that
    apply.lua maintained event by event under the same weight cap, heavy individuals (n > W) included."""
    keys = keys_of(prefix)
    events = generate(6000, seed=43, ids=12)  # ~100-200 events per individual and scope: many past W
    await xadd_events(aredis, keys, events)
    async with running_worker(worker_settings(redis_url, prefix, weight_cap=100)):
        await wait_for(lambda: drained(aredis, keys), timeout=60, what="drain")
    heavy = 0
    for scope in await list_scopes(aredis, keys):
        names = ("pop", "raw", "sq", "k")
        running = {n: await aredis.hgetall(keys.scope_key(scope, n)) for n in names}
        dom = await aredis.hgetall(keys.scope_key(scope, "dom"))
        per_id = Counter(e.id for e in events if e.scope == scope)
        heavy += sum(1 for n in per_id.values() if n > 100)
        await aredis.delete(*(keys.scope_key(scope, n) for n in names))  # rebuilt from the individuals alone
        await rebuild_population(aredis, keys, scope, frozenset(), weight_cap=100)
        assert {n: await aredis.hgetall(keys.scope_key(scope, n)) for n in names} == running
        rebuilt = await aredis.hgetall(keys.scope_key(scope, "dom"))
        assert (rebuilt[b"events"], rebuilt[b"top_n"]) == (dom[b"events"], dom[b"top_n"])
    assert heavy > 0  # the cap was exercised
