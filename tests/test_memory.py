"""Key layout 2 pinned: an individual's Redis memory, its encodings, and the migration from layout 1.

MEMORY USAGE on the test redis-server: an individual of 10 distinct actions (long action names)
costs its counts hash plus its share of the scope's rank zset, and must stay at 300 bytes or
less (docs/operations.md, Sizing; benchmarks/redis_memory.py measures the same at scale).
"""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest
import redis.asyncio as aioredis

from binormal.common.keys import LAYOUT, Keyspace, Scope
from binormal.common.migrate import LayoutError, check_layout, migrate
from binormal.common.schema import Event
from binormal.common.store import read_individual
from tests.support.redis_state import check_committed, check_counters, drained, no_uncommitted, xadd_events
from tests.support.waiting import wait_for
from tests.support.workers import binormal_command, running_worker, worker_settings

SCOPE = Scope("acme", "webserver", "users")
ACTIONS = [f"GET /api/v1/resource/{i}" for i in range(40)]
PER_INDIVIDUAL_MAX = 300  # bytes, issue 12


def ten_action_events(individuals: int) -> list[Event]:
    """Each individual does 10 distinct actions, the first of them 3 times (12 events)."""
    out = []
    for i in range(individuals):
        mine = [ACTIONS[(i + 3 * j) % len(ACTIONS)] for j in range(10)]
        out += [Event(*SCOPE, f"user-{i:05d}", a) for a in mine + mine[:1] * 2]
    return out


def truth_of(events: list[Event]) -> dict[Scope, dict[str, dict[str, int]]]:
    truth: dict[Scope, dict[str, dict[str, int]]] = {}
    for e in events:
        mine = truth.setdefault(e.scope, {}).setdefault(e.id, {})
        mine[e.action] = mine.get(e.action, 0) + 1
    return truth


async def test_an_individual_of_ten_actions_takes_at_most_300_bytes(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    keys = Keyspace(prefix, 4)
    n = 300  # past zset-max-listpack-entries (128): the rank zset is a skiplist, as in any big scope
    events = ten_action_events(n)
    async with running_worker(worker_settings(redis_url, prefix)):
        await xadd_events(aredis, keys, events)
        await wait_for(lambda: drained(aredis, keys), timeout=60, what="drained")
        await wait_for(lambda: no_uncommitted(aredis, keys), timeout=30, what="every score committed")
    truth = truth_of(events)
    assert await check_counters(aredis, keys, truth) == []
    assert await check_committed(aredis, keys, truth) == []
    rank = keys.scope_key(SCOPE, "rank")
    assert await aredis.zcard(rank) == n
    rank_bytes = int(await aredis.memory_usage(rank, samples=0))
    hashes = [keys.individual(SCOPE, f"user-{i:05d}") for i in range(n)]
    counts_bytes = sum([int(await aredis.memory_usage(k, samples=0)) for k in hashes])
    per_individual = (counts_bytes + rank_bytes) / n
    print(f"per individual: {per_individual:.0f} B (counts {counts_bytes / n:.0f} B, rank {rank_bytes / n:.0f} B)")
    assert per_individual <= PER_INDIVIDUAL_MAX
    # the compact encoding (listpack on Redis 7, ziplist on 6.2), and nothing else per individual
    assert {await aredis.object("encoding", k) for k in hashes[:20]} <= {b"listpack", b"ziplist"}
    assert not await aredis.exists(keys.scope_key(SCOPE, "ver"))
    assert int(await aredis.get(keys.layout()) or 0) == LAYOUT
    counts, score = await read_individual(aredis, keys, SCOPE, "user-00007")
    assert counts == truth[SCOPE]["user-00007"] and score is not None


async def _layout1(aredis: aioredis.Redis, keys: Keyspace) -> None:
    """What a release before issue 12 left: counts by action name under i:<id>, a ver hash, a bare mark."""
    shard = keys.shard(SCOPE)
    kp = keys.scope_prefix(SCOPE)
    await aredis.sadd(keys.scopes(shard), SCOPE.token)
    await aredis.hset(kp + "i:u1", mapping={"GET /": 2, "POST /login": 1})
    await aredis.hset(kp + "i:u2", mapping={"GET /": 1})
    await aredis.hset(kp + "i:a%3Ab", mapping={"POST /login": 4})  # id 'a:b'
    for action, (c, sq, k) in {"GET /": (3, 5, 2), "POST /login": (5, 17, 2)}.items():
        await aredis.hset(kp + "pop", action, c)
        await aredis.hset(kp + "sq", action, sq)
        await aredis.hset(kp + "k", action, k)
    await aredis.zadd(kp + "rank", {"u1": 1.5, "a:b": 2.5})
    await aredis.hset(kp + "agg", mapping={"n": 2, "sum": "4", "sumsq": "8.5"})
    await aredis.hset(kp + "ver", mapping={"u1": 3, "a:b": 3})  # a:b has a 4th event applied, not committed
    await aredis.hset(keys.uncommitted(shard), kp + "i:a%3Ab", "9-0")
    await aredis.hset(keys.uncommitted(shard), kp + "i:u2", "7-0")  # u2 never committed


async def test_layout1_is_refused_then_migrated(redis_url: str, prefix: str, aredis: aioredis.Redis) -> None:
    keys = Keyspace(prefix, 4)
    await _layout1(aredis, keys)
    with pytest.raises(LayoutError, match="binormal migrate"):
        await check_layout(aredis, keys)
    report = await migrate(aredis, keys)
    assert report == {"individuals": 3, "scopes": 1, "ver_keys_deleted": 0}
    await check_layout(aredis, keys)  # layout 2 now
    assert await migrate(aredis, keys) == {"individuals": 0, "scopes": 0, "ver_keys_deleted": 0}  # idempotent
    shard = keys.shard(SCOPE)
    kp = keys.scope_prefix(SCOPE)
    assert [k async for k in aredis.scan_iter(match=f"{prefix}:*:i:*")] == []
    assert not await aredis.exists(kp + "ver")
    marks = await aredis.hgetall(keys.uncommitted(shard))
    # the marks keep their entry and gain the committed count (from ver; 0 when there was none)
    assert marks == {keys.individual(SCOPE, "a:b").encode(): b"9-0 3", keys.individual(SCOPE, "u2").encode(): b"7-0 0"}
    for ident, want in {"u1": {"GET /": 2, "POST /login": 1}, "a:b": {"POST /login": 4}}.items():
        counts, _ = await read_individual(aredis, keys, SCOPE, ident)
        assert counts == want
    # a worker of this version takes it from there: repairs the two marks, counts new events
    events = [Event(*SCOPE, "u1", "GET /"), Event(*SCOPE, "u3", "PUT /x")]
    async with running_worker(worker_settings(redis_url, prefix, claim_idle_ms=200)):
        await xadd_events(aredis, keys, events)
        await wait_for(lambda: drained(aredis, keys), timeout=30, what="drained")
        await wait_for(lambda: no_uncommitted(aredis, keys), timeout=30, what="marks repaired")
    truth = {SCOPE: {"u1": {"GET /": 3, "POST /login": 1}, "u2": {"GET /": 1}, "a:b": {"POST /login": 4}}}
    truth[SCOPE]["u3"] = {"PUT /x": 1}
    after = [(await read_individual(aredis, keys, SCOPE, i))[0] for i in truth[SCOPE]]
    assert after == list(truth[SCOPE].values())
    assert await check_committed(aredis, keys, truth) == []
    assert await aredis.hget(kp + "pop", "GET /") == b"4" and await aredis.hget(kp + "pop", "PUT /x") == b"1"


async def test_migrate_command_and_recompute_refusing_layout1(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    keys = Keyspace(prefix, 4)
    await _layout1(aredis, keys)
    env = {"REDIS_URL": redis_url, "BINORMAL_PREFIX": prefix, "BINORMAL_SHARDS": "4", "PATH": "/usr/bin:/bin"}

    def binormal(*words: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*binormal_command(), *words], env=env, capture_output=True, text=True, timeout=60)

    refused = await asyncio.to_thread(binormal, "recompute")
    assert refused.returncode == 2 and "run `binormal migrate`" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    done = await asyncio.to_thread(binormal, "migrate")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"individuals": 3, "scopes": 1, "ver_keys_deleted": 0}
    again = await asyncio.to_thread(binormal, "recompute")
    assert again.returncode == 0 and json.loads(again.stdout)["n"] == 2, again.stderr
