"""binormal/feed/transport.py: the feeder resends exactly the lines ``/events`` did not take.

A private redis-server with a small ``maxmemory`` (noeviction) refuses writes
part-way through a batch; ``/events`` answers 503 naming the unwritten lines;
once memory is raised the feeder resends those lines only (same event ids),
so every line is in the stream exactly once and counted once.
"""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis

from binormal.common.embedded import RedisServer, find_binary
from binormal.common.schema import Event
from tests.support.feed import counted, event_line, finish, service, start_feed, write_lines
from tests.support.redis_state import kill_blocked_xadd, oom_refusals, paused_writes
from tests.support.waiting import wait_for
from tests.support.workers import running_worker, worker_settings


async def test_feeder_resends_only_the_lines_redis_refused(tmp_path: Path, prefix: str) -> None:
    n = 2000
    truth = [Event("acme", "web", f"pop{i % 3}", f"user{i % 50:02d}-" + "x" * 900, f"GET /{i % 7}") for i in range(n)]
    log = write_lines(tmp_path / "log.json", [event_line(e) for e in truth])
    server = RedisServer(tmp_path / "redis", binary=find_binary("path")).start()
    client = aioredis.Redis.from_url(server.url, protocol=2)
    try:
        used = int((await client.info("memory"))["used_memory"])
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set("maxmemory", used + 600_000)  # room for a few hundred ~1 KiB entries
        async with service(server.url, prefix, pipeline_batch=100, retry_after_s=1) as url:
            proc = await start_feed(str(log), "--url", url, "--json", "--batch", "1000")
            await wait_for(lambda: oom_refusals(client), timeout=60, what="redis refusing writes (OOM)")
            await client.config_set("maxmemory", 0)
            run = await finish(proc, timeout=120)
        assert run.rc == 0, run.err
        s = run.summary
        assert s["read"] == n and s["accepted"] == n and s["rejected"] == 0 and s["retries"] >= 1, s
        # Each line was written once: only the refused lines were sent again.
        keys = worker_settings(server.url, prefix).keys
        ids = [f[b"event_id"] for stream in keys.streams() for _, f in await client.xrange(stream)]
        assert len(ids) == n and len(set(ids)) == n
        assert "redis is out of memory (maxmemory reached) and refused the write: OOM" in run.err
        assert "resending those" in run.err
        async with running_worker(worker_settings(server.url, prefix)):
            assert await counted(client, prefix, truth) == []
    finally:
        await client.aclose()
        server.stop()


async def test_feeder_resends_lines_in_doubt_with_their_event_ids(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    """The link dies with a chunk sent and unanswered: those lines are resent, and counted once."""
    n = 600
    truth = [Event("acme", "web", f"pop{i % 3}", f"user{i % 40}", f"GET /{i % 7}") for i in range(n)]
    log = write_lines(tmp_path / "log.json", [event_line(e) for e in truth])
    async with running_worker(worker_settings(redis_url, prefix)):
        async with service(redis_url, prefix, pipeline_batch=100, retry_after_s=1) as url:
            async with paused_writes(aredis):
                proc = await start_feed(str(log), "--url", url, "--json", "--batch", "600")
                await kill_blocked_xadd(aredis, timeout=30)
            run = await finish(proc, timeout=120)
        assert run.rc == 0, run.err
        assert run.summary["accepted"] == n and run.summary["retries"] >= 1, run.summary
        assert "100 lines in doubt, 500 not written" in run.err, run.err
        assert await counted(aredis, prefix, truth) == []
