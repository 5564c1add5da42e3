"""The scorer worker's life against the private redis-server: crashed consumers taken over,
trimming of the streams, a graceful stop (SIGTERM, the grace period) and the Redis clock.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from binormal.common.keys import Keyspace
from binormal.common.schema import Event
from binormal.common.scripts import Scripts
from binormal.worker.batch import BatchProcessor
from binormal.worker.entries import Entry
from binormal.worker.worker import ensure_groups, trim_acknowledged
from tests.support.events import counts_from_events, generate
from tests.support.redis_state import (
    Collector,
    check_counters,
    drained,
    group_backlog,
    read_entries,
    xadd_events,
)
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess, running_worker, worker_settings


def keys_of(prefix: str) -> Keyspace:
    return Keyspace(prefix=prefix, shards=4)


# ------------------------------------------------------------------ crashed consumers


async def test_autoclaim_takes_over_dead_consumer(redis_url: str, prefix: str, aredis: aioredis.Redis) -> None:
    keys = keys_of(prefix)
    await ensure_groups(aredis, keys.streams(), keys.group)
    events = generate(80, seed=11)
    await xadd_events(aredis, keys, events)
    taken = await read_entries(aredis, keys, "dead")  # delivered, never acknowledged
    assert len(taken) == 80
    over = taken[5]
    for _ in range(2):  # two more deliveries: 3 in all, over the limit of 2 once claimed
        await aredis.xclaim(over.stream, keys.group, "dead", 0, [over.id])
    settings = worker_settings(redis_url, prefix, claim_idle_ms=300, max_deliveries=2)
    async with running_worker(settings) as w:
        await wait_for(lambda: drained(aredis, keys), timeout=15, what="take-over")
        assert w.counters.applied == 79 and w.counters.dead == 1
    dead = await aredis.xrange(keys.dead(over.shard))
    assert len(dead) == 1 and dead[0][1][b"entry_id"] == over.id
    assert re.search(r"delivered \d+ times", dead[0][1][b"reason"].decode())
    by_id = dict(zip(await _ids_in_order(aredis, keys, events), events))
    counted = [by_id[(e.stream, e.id)] for e in taken if e is not over]
    assert len(counted) == 79
    assert await check_counters(aredis, keys, counts_from_events(counted)) == []
    # the "dead" consumer wakes up and applies its batch: nothing more is counted
    late = BatchProcessor(keys, Scripts(), "dead")
    await late.scripts.load_all(aredis)
    assert await late.process(aredis, taken) == []
    assert await check_counters(aredis, keys, counts_from_events(counted)) == []


async def _ids_in_order(client: aioredis.Redis, keys: Keyspace, events: list[Event]) -> list[tuple[bytes, bytes]]:
    """(stream, entry id) of each of ``events`` (written in order by xadd_events).

    Ids are per stream: two shards can hold the same id, so the stream is part of the name.
    """
    per_stream: dict[str, list[bytes]] = {}
    for s in keys.streams():
        per_stream[s] = [eid for eid, _ in await client.xrange(s)]
    pos = {s: 0 for s in per_stream}
    out = []
    for ev in events:
        s = keys.stream(keys.shard(ev.scope))
        out.append((s.encode(), per_stream[s][pos[s]]))
        pos[s] += 1
    return out


async def test_restarted_worker_reads_own_backlog_first(redis_url: str, prefix: str, aredis: aioredis.Redis) -> None:
    keys = keys_of(prefix)
    await ensure_groups(aredis, keys.streams(), keys.group)
    old = generate(30, seed=21)
    new = [Event(e.org, e.source, e.pop, e.id, e.action, ts=e.ts + 10_000) for e in generate(30, seed=22)]
    await xadd_events(aredis, keys, old)
    assert len(await read_entries(aredis, keys, "w-same")) == 30  # then "crashed"
    await xadd_events(aredis, keys, new)
    settings = worker_settings(redis_url, prefix, consumer="w-same", claim_idle_ms=60_000)
    async with Collector(aredis, keys.broadcast_channel()) as col, running_worker(settings):
        got = await col.wait_count(keys.broadcast_channel(), 60, timeout=15)
    # claim_idle is a minute: only reading its own backlog can have picked the old ones up, first
    assert sorted(r["timestamp"] for r in got[:30]) == sorted(e.ts for e in old)
    assert await check_counters(aredis, keys, counts_from_events(old + new)) == []
    assert await drained(aredis, keys)


async def test_dead_consumers_with_nothing_pending_are_forgotten(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    keys = keys_of(prefix)
    await ensure_groups(aredis, keys.streams(), keys.group)
    stream = keys.stream(0)
    await aredis.xadd(stream, {"org": "a", "source": "b", "pop": "c", "id": "d", "action": "e"})
    await aredis.xreadgroup(keys.group, "holder", {stream: ">"}, count=1)  # keeps one entry pending
    await aredis.xgroup_createconsumer(stream, keys.group, "ghost")  # nothing pending
    assert {c["name"] for c in await aredis.xinfo_consumers(stream, keys.group)} == {b"holder", b"ghost"}
    now_ms = int(time.time() * 1000)
    await aredis.hset(keys.workers(), mapping={"ghost": now_ms - 60_000, "holder": now_ms + 60_000})
    await asyncio.sleep(0.6)  # both idle longer than the 0.5 s below
    settings = worker_settings(redis_url, prefix, consumer="live", forget_consumers_s=0.5)
    async with running_worker(settings):

        async def ghost_gone() -> bool:
            # The consumer is deleted first and its heartbeat a round trip later: wait for both.
            names = {c["name"] for c in await aredis.xinfo_consumers(stream, keys.group)}
            return b"ghost" not in names and not await aredis.hexists(keys.workers(), "ghost")

        await wait_for(ghost_gone, timeout=10, what="ghost consumer deleted")
        names = {c["name"] for c in await aredis.xinfo_consumers(stream, keys.group)}
        assert names == {b"holder", b"live"}  # pending entries are never thrown away
        assert set(await aredis.hkeys(keys.workers())) == {b"holder", b"live"}


# ------------------------------------------------------------------ trimming


async def test_trim_keeps_pending_and_undelivered(prefix: str, aredis: aioredis.Redis) -> None:
    stream = f"{prefix}:{{{prefix}.0}}:events"
    ids = [await aredis.xadd(stream, {"n": str(i)}) for i in range(10)]
    await aredis.xgroup_create(stream, "scorers", id="0")
    await aredis.xgroup_create(stream, "lagging", id="0")
    await aredis.xgroup_create(stream, "fresh", id="0")
    assert await trim_acknowledged(aredis, stream) == 0  # nobody read anything
    await aredis.xgroup_destroy(stream, "fresh")
    read = await aredis.xreadgroup("scorers", "c", {stream: ">"}, count=10)
    assert len(read[0][1]) == 10
    await aredis.xack(stream, "scorers", *ids)
    await aredis.xreadgroup("lagging", "c", {stream: ">"}, count=5)  # 0..4 pending, 5..9 unread
    assert await trim_acknowledged(aredis, stream) == 0
    assert await aredis.xlen(stream) == 10
    await aredis.xack(stream, "lagging", *ids[:3])
    assert await trim_acknowledged(aredis, stream) == 3
    assert [e for e, _ in await aredis.xrange(stream)] == ids[3:]
    await aredis.xack(stream, "lagging", *ids[3:5])  # nothing pending: bound is its last-delivered id (4)
    assert await trim_acknowledged(aredis, stream) == 1
    assert [e for e, _ in await aredis.xrange(stream)] == ids[4:]  # 5..9 never delivered to lagging: kept
    b = await group_backlog(aredis, stream, "lagging")
    assert b.pending == 0 and b.undelivered
    # and a pending entry of the main group holds the line too
    await aredis.xadd(stream, {"n": "10"})
    await aredis.xreadgroup("scorers", "c", {stream: ">"}, count=1)
    await aredis.xreadgroup("lagging", "c", {stream: ">"}, count=100)
    await aredis.xack(stream, "lagging", *[e for e, _ in await aredis.xrange(stream)])
    assert await trim_acknowledged(aredis, stream) == 6  # everything before the scorers' pending entry
    assert await aredis.xlen(stream) == 1


async def test_worker_trims_acknowledged_history(redis_url: str, prefix: str, aredis: aioredis.Redis) -> None:
    keys = keys_of(prefix)
    events = generate(200, seed=5)
    await xadd_events(aredis, keys, events)
    settings = worker_settings(redis_url, prefix, trim_interval_s=0.1)
    async with running_worker(settings):
        await wait_for(lambda: drained(aredis, keys), what="drain")

        async def trimmed() -> bool:
            return all([await aredis.xlen(s) <= 1 for s in keys.streams()])

        await wait_for(trimmed, what="trim")
    assert await check_counters(aredis, keys, counts_from_events(events)) == []


# ------------------------------------------------------------------ graceful stop (subprocess)


@pytest.mark.timeout(60)
async def test_sigterm_finishes_batch_and_exits_zero(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    keys = keys_of(prefix)
    events = generate(20_000, seed=31, ids=200)
    await xadd_events(aredis, keys, events, chunk=5000)
    proc = WorkerProcess(redis_url, prefix, "graceful", tmp_path / "worker.log", {"BINORMAL_BATCH": "50"}).start()
    try:
        async with Collector(aredis, keys.broadcast_channel()) as col:
            await col.wait_count(keys.broadcast_channel(), 300, timeout=30)
            proc.signal(signal.SIGTERM)
            rc = await asyncio.to_thread(proc.wait, 20.0)
            assert rc == 0
            await asyncio.sleep(0.2)
            published = len(col.messages[keys.broadcast_channel()])
    finally:
        proc.kill()
    # stopped while draining: work was left, nothing left half-done
    assert not await drained(aredis, keys)
    acked: set[tuple[bytes, bytes]] = set()
    for stream in keys.streams():
        groups = {g["name"]: g for g in await aredis.xinfo_groups(stream)}
        g = groups[keys.group.encode()]
        assert int(g["pending"]) == 0, "the batch in hand was finished"
        last = g["last-delivered-id"].decode()
        acked |= {(stream.encode(), eid) for eid, _ in await aredis.xrange(stream, "-", last)}
    ids = await _ids_in_order(aredis, keys, events)
    applied = [ev for eid, ev in zip(ids, events) if eid in acked]
    assert 300 <= len(applied) < len(events)
    assert await check_counters(aredis, keys, counts_from_events(applied)) == []  # counters == acks
    assert published == len(applied)
    records = [json.loads(line) for line in proc.log_lines() if line.strip()]
    names = [r["event"] for r in records]
    assert "worker_ready" in names and "worker_stopping" in names and names[-1] == "worker_stopped"
    assert records[-1]["applied"] == len(applied) and records[-1]["consumer"] == "graceful"
    assert all("level" in r and "timestamp" in r for r in records)


# ------------------------------------------------------------------ stop and clocks


async def _redis_ms(client: aioredis.Redis) -> int:
    sec, usec = await client.time()
    return int(sec) * 1000 + int(usec) // 1000


def _skew_worker_clock(monkeypatch: pytest.MonkeyPatch, offset_s: float) -> None:
    """The worker module's ``time.time`` runs ``offset_s`` off (another host's clock)."""
    import types

    from binormal.worker import worker as worker_module

    fake = types.SimpleNamespace(time=lambda: time.time() + offset_s, monotonic=time.monotonic)
    monkeypatch.setattr(worker_module, "time", fake)


@pytest.mark.timeout(30)
async def test_a_batch_cancelled_after_the_grace_period_ends_before_the_client_closes(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    """The cancelled batch finishes unwinding (here: one more Redis round trip)
    before the worker says goodbye and closes its client."""
    from binormal.worker.worker import Worker

    keys = keys_of(prefix)
    order: list[str] = []
    started = asyncio.Event()

    class Recording(Worker):
        async def _goodbye(self, client: aioredis.Redis) -> None:
            order.append("goodbye")
            await super()._goodbye(client)

    worker = Recording(worker_settings(redis_url, prefix, grace_s=0.1))

    async def stuck(client: aioredis.Redis, entries: list[Entry], tail: object = None) -> list[dict[str, Any]]:
        started.set()
        try:
            await asyncio.Event().wait()  # never set: only the cancellation ends it
        except asyncio.CancelledError:
            await client.ping()  # unwinding still needs the client
            order.append("batch unwound")
            raise
        return []

    worker.processor.process = stuck  # type: ignore[method-assign]
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.ready.wait(), timeout=10)
    await xadd_events(aredis, keys, generate(1, seed=3))
    await asyncio.wait_for(started.wait(), timeout=10)
    worker.request_stop()
    await asyncio.wait_for(task, timeout=10)
    assert order == ["batch unwound", "goodbye"]


async def test_worker_heartbeat_is_written_with_the_redis_clock(
    redis_url: str, prefix: str, aredis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = keys_of(prefix)
    _skew_worker_clock(monkeypatch, -3600.0)  # the worker's host is an hour behind
    async with running_worker(worker_settings(redis_url, prefix, consumer="skewed")):
        await wait_for(lambda: aredis.hexists(keys.workers(), "skewed"), what="heartbeat")
        beat = int(await aredis.hget(keys.workers(), "skewed"))
        assert abs(await _redis_ms(aredis) - beat) < 5_000


async def test_forgetting_heartbeats_is_judged_by_the_redis_clock(
    redis_url: str, prefix: str, aredis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = keys_of(prefix)
    await ensure_groups(aredis, keys.streams(), keys.group)
    now_ms = await _redis_ms(aredis)
    await aredis.hset(keys.workers(), mapping={"ghost": now_ms - 120_000, "other-host": now_ms})
    _skew_worker_clock(monkeypatch, 3600.0)  # the worker's host is an hour ahead
    async with running_worker(worker_settings(redis_url, prefix, consumer="live", forget_consumers_s=60.0)):
        await wait_for(lambda: aredis.hexists(keys.workers(), "live"), what="own heartbeat")
        await wait_for(_not(aredis.hexists, keys.workers(), "ghost"), what="ghost heartbeat forgotten")
        assert set(await aredis.hkeys(keys.workers())) == {b"other-host", b"live"}


def _not(fn: Any, *args: Any) -> Any:
    async def check() -> bool:
        return not await fn(*args)

    return check
