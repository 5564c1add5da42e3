"""binormal/deadletters.py: ``binormal dead`` lists dead letters and replays them, once, after a fix."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from dataclasses import dataclass

import redis.asyncio as aioredis

from binormal.common.keys import Keyspace, Scope
from binormal.common.schema import Event
from binormal.common.scripts import Scripts
from binormal.deadletters import PAGE, dead_letters, replay_one
from binormal.worker.worker import ensure_groups
from tests.support.backends import both_backends
from tests.support.events import counts_from_events
from tests.support.redis_state import check_counters, drained, xadd_events
from tests.support.waiting import wait_for
from tests.support.workers import binormal_command, running_worker, worker_settings

SCOPE = Scope("acme", "web", "auth")
BROKEN = Scope("acme", "web", "broken:{pop}")


@dataclass
class Cli:
    rc: int
    out: str
    err: str


async def dead(redis_url: str, prefix: str, *args: str) -> Cli:
    """Run ``binormal dead ARGS`` against the test's Redis and prefix."""
    env = {**os.environ, "REDIS_URL": redis_url, "BINORMAL_PREFIX": prefix, "BINORMAL_SHARDS": "4"}
    done = await asyncio.to_thread(
        subprocess.run, [*binormal_command(), "dead", *args], env=env, capture_output=True, timeout=30
    )
    return Cli(done.returncode, done.stdout.decode(), done.stderr.decode())


async def make_dead_letters(redis_url: str, prefix: str, aredis: aioredis.Redis) -> Keyspace:
    """Three dead letters: a missing field, an unknown field, and bad state under BROKEN's pop key."""
    keys = Keyspace(prefix, 4)
    await ensure_groups(aredis, keys.streams(), keys.group)
    await aredis.rpush(keys.scope_key(BROKEN, "pop"), "someone else's list")
    shard = keys.shard(SCOPE)
    await aredis.xadd(keys.stream(shard), {"org": "acme", "source": "web", "pop": "auth", "id": "u1"})
    await aredis.xadd(keys.stream(shard), {**Event(*SCOPE, "u1", "GET /").to_fields(), "acton": "typo"})
    await xadd_events(aredis, keys, [Event(*BROKEN, "u9", "GET /x", event_id="e-9")])
    async with running_worker(worker_settings(redis_url, prefix)) as w:
        await wait_for(lambda: drained(aredis, keys), what="drain")
        assert w.counters.dead == 3 and w.counters.applied == 0
    return keys


@both_backends
async def test_list_shows_reasons_and_original_fields(redis_url: str, prefix: str, aredis: aioredis.Redis) -> None:
    keys = await make_dead_letters(redis_url, prefix, aredis)
    got = await dead(redis_url, prefix, "--json")
    assert got.rc == 0, got.err
    letters = [json.loads(line) for line in got.out.splitlines()]
    by_reason = {d["reason"]: d for d in letters}
    assert set(by_reason) == {
        "invalid: action: is missing",
        "invalid: acton: unknown field",
        f"bad state: key {keys.scope_key(BROKEN, 'pop')} holds a list, not a hash",
    }
    broken = by_reason[f"bad state: key {keys.scope_key(BROKEN, 'pop')} holds a list, not a hash"]
    assert broken["shard"] == keys.shard(BROKEN) and broken["consumer"] == "w1"
    assert broken["fields"] == {
        "org": "acme",
        "source": "web",
        "pop": "broken:{pop}",
        "id": "u9",
        "action": "GET /x",
        "event_id": "e-9",
    }
    text = await dead(redis_url, prefix, "list", "--reason", "invalid")
    assert text.rc == 0 and text.out.count("\n  {") == 2 and "unknown field" in text.out
    assert text.err.strip() == "2 dead letters (2 invalid)"
    none = await dead(redis_url, prefix, "--shard", str((keys.shard(SCOPE) + 1) % 4), "--reason", "invalid")
    assert none.rc == 0 and none.out == "" and "0 dead letters" in none.err


@both_backends
async def test_replay_after_the_fix_counts_the_entry_once(redis_url: str, prefix: str, aredis: aioredis.Redis) -> None:
    keys = await make_dead_letters(redis_url, prefix, aredis)
    await aredis.delete(keys.scope_key(BROKEN, "pop"))  # the fix: the foreign value is gone
    got = await dead(redis_url, prefix, "replay", "--reason", "bad state")
    assert got.rc == 0, got.err
    assert got.out.count("replayed as") == 1 and "replayed 1, skipped 0" in got.err
    async with running_worker(worker_settings(redis_url, prefix)) as w:
        await wait_for(lambda: drained(aredis, keys), what="drain")
        assert w.counters.applied == 1 and w.counters.dead == 0
    assert await check_counters(aredis, keys, counts_from_events([Event(*BROKEN, "u9", "GET /x")])) == []
    # The two invalid ones stay; replaying them again just brings them back with their reasons.
    assert sum([await aredis.xlen(keys.dead(s)) for s in range(4)]) == 2
    again = await dead(redis_url, prefix, "replay")
    assert "replayed 2, skipped 0" in again.err
    async with running_worker(worker_settings(redis_url, prefix)) as w:
        await wait_for(lambda: drained(aredis, keys), what="drain")
        assert w.counters.dead == 2 and w.counters.applied == 0
    reasons = sorted([d.reason async for d in dead_letters(aredis, keys, list(range(4)))])
    assert reasons == ["invalid: action: is missing", "invalid: acton: unknown field"]


async def test_a_dead_letter_is_replayed_once_by_concurrent_replays(prefix: str, aredis: aioredis.Redis) -> None:
    keys = Keyspace(prefix, 4)
    shard = keys.shard(SCOPE)
    dead_id = await aredis.xadd(
        keys.dead(shard),
        {
            "reason": "r",
            "entry_id": "1-0",
            "stream": keys.stream(shard),
            "consumer": "c",
            "f.org": "acme",
            "f.id": "\xff",
        },
    )
    [letter] = [d async for d in dead_letters(aredis, keys, [shard])]
    assert letter.dead_id == dead_id.decode()
    scripts = Scripts()
    outcomes = await asyncio.gather(*(replay_one(aredis, keys, scripts, letter) for _ in range(5)))
    assert sorted(ok for ok, _ in outcomes) == [False] * 4 + [True]
    assert all("already replayed" in why for ok, why in outcomes if not ok)
    [(_, fields)] = await aredis.xrange(keys.stream(shard))
    assert fields == {b"org": b"acme", b"id": "\xff".encode()}  # names unprefixed, bytes kept
    assert await aredis.xlen(keys.dead(shard)) == 0


async def test_nothing_to_replay_is_skipped_and_kept(prefix: str, aredis: aioredis.Redis) -> None:
    keys = Keyspace(prefix, 4)
    await aredis.xadd(keys.dead(0), {"reason": "entry has no fields", "entry_id": "1-0", "stream": keys.stream(0)})
    await aredis.xadd(keys.dead(0), {"reason": "x", "entry_id": "2-0", "stream": "elsewhere", "f.org": "a"})
    scripts = Scripts()
    await aredis.script_flush()  # as after a Redis restart: the first EVALSHA answers NOSCRIPT
    results = [await replay_one(aredis, keys, scripts, d) async for d in dead_letters(aredis, keys, [0])]
    assert results == [
        (False, "no fields to replay (the entry was deleted before it was read)"),
        (False, f"recorded from elsewhere, not {keys.stream(0)}"),
    ]
    assert await aredis.xlen(keys.dead(0)) == 2 and not await aredis.exists(keys.stream(0))


async def test_listing_pages_through_long_streams(prefix: str, aredis: aioredis.Redis) -> None:
    keys = Keyspace(prefix, 4)
    pipe = aredis.pipeline(transaction=False)
    for i in range(PAGE * 2 + 3):
        pipe.xadd(keys.dead(1), {"reason": f"r{i}", "entry_id": f"{i}-0", "stream": keys.stream(1)})
    await pipe.execute()
    seen = [d.reason async for d in dead_letters(aredis, keys, [1])]
    assert seen == [f"r{i}" for i in range(PAGE * 2 + 3)]


async def test_bad_arguments_and_unreachable_redis(redis_url: str, prefix: str) -> None:
    got = await dead(redis_url, prefix, "--shard", "4")
    assert got.rc == 2 and "--shard must be 0 to 3" in got.err
    got = await dead(redis_url, prefix, "--limit", "0")
    assert got.rc == 2 and "--limit must be at least 1" in got.err
    got = await dead("redis://127.0.0.1:1/0", prefix)
    assert got.rc == 1 and "cannot reach Redis at redis://127.0.0.1:1/0" in got.err
