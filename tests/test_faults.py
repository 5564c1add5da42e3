"""Exactly-once under faults: SIGKILL ``binormal worker`` processes while a stream drains.

Two worker processes drain ~30,000 events over several scopes. A random one is
killed (SIGKILL, no goodbye) at random moments, at least five times while work
is left, and restarted: sometimes under the same consumer name (it must read
its own backlog), sometimes under a new one (the survivors must take its
pending entries over with XAUTOCLAIM). After the drain every population counter
(C_a, S2_a, K_a) and every individual's counts must equal the ground truth
counted from the input: nothing lost, nothing counted twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from binormal.common.keys import Keyspace
from tests.support.backends import both_backends
from tests.support.events import counts_from_events, fault_events
from tests.support.redis_state import check_committed, check_counters, drained, no_uncommitted, xadd_events
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess

BASE_EVENTS = 30_000
MIN_MID_BATCH_KILLS = 5  # kills that left entries read but not applied
MAX_ROUNDS = 30


@both_backends
@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_sigkill_workers_while_draining(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    seed = int(os.environ.get("BINORMAL_FAULT_SEED", str(random.randrange(1 << 30))))
    print(f"fault seed {seed} (rerun with BINORMAL_FAULT_SEED={seed})")
    rng = random.Random(seed)
    keys = Keyspace(prefix=prefix, shards=4)
    env = {
        "BINORMAL_SHARDS": "4",
        "BINORMAL_BATCH": "100",  # small batches: more moments to die in
        "BINORMAL_CLAIM_IDLE_MS": "1500",
        "BINORMAL_BLOCK_MS": "100",
        "BINORMAL_MAX_DELIVERIES": "1000",  # kills must not push entries to the dead letters
        "BINORMAL_SNAPSHOT_MAX_AGE_MS": "200",
    }
    generations = {0: 0, 1: 0}

    def spawn(slot: int, name: str) -> WorkerProcess:
        return WorkerProcess(redis_url, prefix, name, tmp_path / f"worker-{slot}.log", dict(env)).start()

    events = fault_events(rng, BASE_EVENTS, 0)
    first, rest = events[:9000], events[9000:]
    await xadd_events(aredis, keys, first)
    workers = [spawn(0, "slot0-g0"), spawn(1, "slot1-g0")]
    spawned = [time.time(), time.time()]
    written = list(first)
    kills: list[dict[str, object]] = []
    try:
        rounds = 0
        while (rest or sum(1 for k in kills if k["pending_left"]) < MIN_MID_BATCH_KILLS) and rounds < MAX_ROUNDS:
            rounds += 1
            slot = rng.randrange(2)
            victim = workers[slot]
            # Aim at a moment inside a batch: the victim is up (it sent a heartbeat
            # since it was spawned), then gets fresh work (written only now: while
            # it restarted, the other worker may have drained everything), and
            # holds entries it read but has not applied (polled at a random
            # phase, up to 2 s).
            await wait_for(lambda: _running_since(aredis, keys, victim.consumer, spawned[slot]), timeout=20)
            chunk = rest[:3000] if rest else fault_events(rng, 5000, BASE_EVENTS + 5000 * rounds)
            rest = rest[3000:]
            await xadd_events(aredis, keys, chunk)
            written += chunk
            await asyncio.sleep(rng.uniform(0.0, 0.1))
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and not await _pending_of(aredis, keys, victim.consumer):
                await asyncio.sleep(rng.uniform(0.0, 0.01))
            victim.kill()
            left = await _pending_of(aredis, keys, victim.consumer)
            same = rounds % 2 == 1
            if not same:
                generations[slot] += 1
            name = victim.consumer if same else f"slot{slot}-g{generations[slot]}"
            kills.append({"victim": victim.consumer, "pending_left": left, "restart_as": name})
            workers[slot] = spawn(slot, name)
            spawned[slot] = time.time()
        print("kills:", json.dumps(kills))
        mid = [k for k in kills if k["pending_left"]]
        assert len(mid) >= MIN_MID_BATCH_KILLS, f"only {len(mid)} kills landed inside a batch: {kills}"
        assert any(k["restart_as"] != k["victim"] for k in mid), "no take-over by XAUTOCLAIM was needed"
        assert any(k["restart_as"] == k["victim"] for k in mid), "no restart had to read its own backlog"
        await wait_for(lambda: drained(aredis, keys), timeout=150, interval=0.2, what="drain after the kills")
        # A kill between apply and commit leaves a score uncommitted; the live
        # workers repair it after one claim round (0.75 s here) or two.
        await wait_for(lambda: no_uncommitted(aredis, keys), timeout=30, interval=0.2, what="score repair")
        assert all(w.alive() for w in workers)
        # A worker restarted just before the drain finished may still be starting;
        # the graceful stop below is for running workers (heartbeat seen).
        for slot, w in enumerate(workers):
            await wait_for(lambda: _running_since(aredis, keys, w.consumer, spawned[slot]), timeout=20)
    finally:
        for w in workers:
            w.signal(15)
        codes = [await asyncio.to_thread(w.wait, 20.0) for w in workers]
    assert codes == [0, 0]

    truth = counts_from_events(written)
    problems = await check_counters(aredis, keys, truth)
    assert problems == [], f"{len(problems)} counters differ from the input, e.g. {problems[:5]}"
    stale = await check_committed(aredis, keys, truth)
    assert stale == [], f"{len(stale)} scopes without every individual's newest score, e.g. {stale[:3]}"
    total = 0
    for scope in truth:
        total += sum(int(c) for c in (await aredis.hgetall(keys.scope_key(scope, "pop"))).values())
    assert total == len(written)
    for shard in range(keys.shards):
        assert await aredis.xlen(keys.dead(shard)) == 0, "no entry may end as a dead letter"
    # a kill under a new name that left entries pending can only be healed by XAUTOCLAIM
    logs = (tmp_path / "worker-0.log").read_text() + (tmp_path / "worker-1.log").read_text()
    assert '"event": "claimed"' in logs or '"event":"claimed"' in logs


async def _pending_of(client: aioredis.Redis, keys: Keyspace, consumer: str) -> int:
    """Entries pending under ``consumer`` across all shards."""
    total = 0
    for stream in keys.streams():
        try:
            consumers = await client.xinfo_consumers(stream, keys.group)
        except ResponseError as exc:  # no stream or group yet: the workers are still starting
            if "NOGROUP" not in str(exc) and "no such key" not in str(exc):
                raise
            continue
        for c in consumers:
            if c["name"] == consumer.encode():
                total += int(c["pending"])
    return total


async def _running_since(client: aioredis.Redis, keys: Keyspace, consumer: str, since: float) -> bool:
    """Has ``consumer`` sent a heartbeat after ``since`` (epoch s)?"""
    beat = await client.hget(keys.workers(), consumer)
    return beat is not None and int(beat) / 1000.0 >= since
