"""The worker's per-scope median and MAD (worker/robust.py): refresh points, cache, the stored copy."""

from __future__ import annotations

import statistics

import pytest
import redis.asyncio as aioredis

from binormal.common.calibration import SAMPLE_POINTS, Robust
from binormal.common.keys import Keyspace, Scope
from binormal.common.store import read_robust
from binormal.worker.commands import Commands
from binormal.worker.robust import RobustCache
from tests.support.events import generate
from tests.support.redis_state import Collector, xadd_events
from tests.support.workers import running_worker, worker_settings

pytestmark = pytest.mark.timeout(60)

A, B = Scope("o", "s", "a"), Scope("o", "s", "b")


def test_exact_mode_samples_after_every_score() -> None:
    assert RobustCache(max_age_ms=0).plan([A, A, B]) == [SAMPLE_POINTS] * 3


def test_first_score_of_each_missing_or_aged_scope_samples() -> None:
    cache = RobustCache(max_age_ms=60_000)
    assert cache.plan([A, B, A, B]) == [SAMPLE_POINTS, SAMPLE_POINTS, 0, 0]
    assert cache.get(A) == Robust()  # nothing sampled yet: rzscore 0
    assert cache.update(A, 1, [1.0, 2.0, 9.0]) == Robust(2.0, 1.0)
    assert cache.get(A) == Robust(2.0, 1.0)
    assert cache.plan([A, B, A]) == [0, SAMPLE_POINTS, 0]  # A is fresh, B still missing
    cache.entries[A] = (cache.entries[A][0], cache.entries[A][1] - 61.0)  # A's value is now 61 s old
    assert cache.plan([B, A, A]) == [SAMPLE_POINTS, SAMPLE_POINTS, 0]


def test_new_values_are_written_once_to_the_scope_hash() -> None:
    keys = Keyspace(prefix="t", shards=4)
    cache = RobustCache()
    cache.update(A, keys.shard(A), [1.0, 2.0, 9.0])
    cache.update(A, keys.shard(A), [1.0, 3.0, 4.0])
    pipe = Commands()
    cache.write(pipe, keys)
    assert pipe.commands == [("HSET", keys.robust(A), "median", "3.0", "mad", "1.0")]
    cache.write(pipe, keys)
    assert len(pipe.commands) == 1  # nothing new: nothing written


async def test_the_worker_stores_the_median_and_mad_for_the_query_api(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    """After a batch, each scope's robust hash holds the median and MAD of its scores (staleness 0: exact)."""
    keys = Keyspace(prefix=prefix, shards=4)
    events = generate(600, seed=4)
    channel = keys.broadcast_channel()
    async with Collector(aredis, channel) as col:
        async with running_worker(worker_settings(redis_url, prefix, snapshot_max_age_ms=0)):
            await xadd_events(aredis, keys, events)
            got = await col.wait_count(channel, len(events), timeout=30)
    assert len(got) == len(events)
    for scope in {e.scope for e in events}:
        scores = [s for _, s in await aredis.zrange(keys.scope_key(scope, "rank"), 0, -1, withscores=True)]
        med = statistics.median(scores)
        assert await read_robust(aredis, keys, scope) == Robust(med, statistics.median(abs(v - med) for v in scores))
