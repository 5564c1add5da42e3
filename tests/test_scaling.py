"""Many workers, on one node and on the private 3-master cluster: three ``binormal worker``
processes share the shards through the consumer group alone (no lock of ours) and the
counters equal the input's totals.

Redis hands every stream entry to exactly one consumer of the group (XREADGROUP ``>``),
and apply.lua applies an entry only together with its XACK, so however the entries
are split between the workers, each is counted once.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from binormal.common.keys import Keyspace
from tests.support.backends import both_backends
from tests.support.events import counts_from_events, generate
from tests.support.redis_state import check_committed, check_counters, drained, no_uncommitted, xadd_events
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess

WORKERS = 3


def applied_by(worker: WorkerProcess) -> int:
    """Entries the worker says it applied (its ``worker_stopped`` log line)."""
    for line in worker.log_lines():
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict) and obj.get("event") == "worker_stopped":
            return int(obj["applied"])
    raise AssertionError(f"{worker.consumer} logged no worker_stopped")


@both_backends
@pytest.mark.timeout(120)
async def test_three_worker_processes_count_every_event_once(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    keys = Keyspace(prefix=prefix, shards=4)
    env = {"BINORMAL_SHARDS": "4", "BINORMAL_BATCH": "50", "BINORMAL_SNAPSHOT_MAX_AGE_MS": "200"}
    events = generate(9_000, seed=12)
    first, rest = events[:3_000], events[3_000:]
    await xadd_events(aredis, keys, first)  # a backlog before any worker runs
    workers = [
        WorkerProcess(redis_url, prefix, f"w{i}", tmp_path / f"w{i}.log", dict(env)).start() for i in range(WORKERS)
    ]
    try:
        for w in workers:
            await wait_for(lambda w=w: aredis.hexists(keys.workers(), w.consumer), timeout=30, what=f"{w.consumer} up")
        for i in range(0, len(rest), 500):  # more while they run
            await xadd_events(aredis, keys, rest[i : i + 500])
            await asyncio.sleep(0.01)
        await wait_for(lambda: drained(aredis, keys), timeout=60, interval=0.1, what="drain")
        await wait_for(lambda: no_uncommitted(aredis, keys), timeout=30, interval=0.1, what="scores committed")
        assert all(w.alive() for w in workers)
    finally:
        for w in workers:
            w.signal(signal.SIGTERM)
        codes = [await asyncio.to_thread(w.wait, 20.0) for w in workers]
    assert codes == [0] * WORKERS

    truth = counts_from_events(events)
    problems = await check_counters(aredis, keys, truth)
    assert problems == [], f"{len(problems)} counters differ from the input, e.g. {problems[:5]}"
    assert await check_committed(aredis, keys, truth) == []
    shares = [applied_by(w) for w in workers]
    # Every entry applied by exactly one worker, and the group gave each worker a share.
    assert sum(shares) == len(events), shares
    assert all(s > 0 for s in shares), shares
    for shard in range(keys.shards):
        assert await aredis.xlen(keys.dead(shard)) == 0
