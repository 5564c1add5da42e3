"""What retention costs: the last-seen index on the hot path, its memory, and the sweep.

On a private redis-server, for each of ``--repeats`` rounds (retention off and on
alternating, so both see the same machine): fill the stream shards with N events
(``make_events``: a skewed mix over S scopes and I individuals), drain them with
one Worker and time the drain (events/s). With retention on it then reads the
last-seen zsets' ``MEMORY USAGE`` (bytes per individual) and times a sweep that
removes every individual (cutoff = now: all idle): individuals removed per
second and milliseconds per ``expire.lua`` call of 100. Prints medians and the
on/off ratio measured in the same run.

    python benchmarks/retention.py [--events N] [--individuals I] [--scopes S] [--repeats R]

Loopback only; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis.asyncio as aioredis  # noqa: E402
from worker_throughput import fill, make_events, quiet_setup  # noqa: E402

from binormal.common.embedded import RedisServer  # noqa: E402
from binormal.common.keys import Keyspace  # noqa: E402
from binormal.common.scripts import Scripts  # noqa: E402
from binormal.common.store import list_scopes, redis_now_ms  # noqa: E402
from binormal.worker import Worker, WorkerSettings  # noqa: E402
from binormal.worker.retention import SWEEP_BATCH, Sweeper  # noqa: E402


async def evalsha_usec(client: aioredis.Redis) -> int:
    """Microseconds Redis has spent in EVALSHA so far (INFO commandstats)."""
    return int((await client.info("commandstats")).get("cmdstat_evalsha", {}).get("usec", 0))


async def drain(url: str, n: int, retention: bool) -> float:
    """Seconds one worker takes to apply and score ``n`` queued events."""
    settings = WorkerSettings(
        redis_url=url,
        consumer="bench",
        trim_interval_s=0,
        idle_ttl_s=86_400 if retention else 0,
        sweep_interval_s=3_600.0,  # no sweep while timing the hot path
    )
    worker = Worker(settings)
    start = time.perf_counter()
    task = asyncio.create_task(worker.run())
    while worker.counters.applied + worker.counters.already < n:
        await asyncio.sleep(0.005)
        if task.done():
            task.result()
    took = time.perf_counter() - start
    worker.request_stop()
    await task
    return took


async def last_seen_bytes(client: aioredis.Redis, keys: Keyspace) -> tuple[int, int]:
    """(members, bytes) of every scope's last-seen zset, by MEMORY USAGE ... SAMPLES 0."""
    members = used = 0
    for scope in await list_scopes(client, keys):
        key = keys.scope_key(scope, "last")
        members += int(await client.zcard(key))
        used += int(await client.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0") or 0)
    return members, used


async def sweep_all(client: aioredis.Redis, keys: Keyspace) -> tuple[int, float, float]:
    """(removed, seconds, Redis microseconds per expire.lua call) of sweeps removing everyone (cutoff: now)."""
    sweeper = Sweeper(keys, Scripts(), idle_ttl_s=1, weight_cap=100)
    cutoff = await redis_now_ms(client) + 1
    await Scripts().load_all(client)
    before = await client.info("commandstats")
    start = time.perf_counter()
    removed = 0
    for shard in range(keys.shards):
        scopes = [s for s in await list_scopes(client, keys) if keys.shard(s) == shard]
        while scopes:
            got = await sweeper.sweep_scopes(client, shard, scopes, cutoff)
            removed += got
            if not got:
                break
    took = time.perf_counter() - start
    after = await client.info("commandstats")
    stats = [d.get("cmdstat_evalsha", {}) for d in (before, after)]
    calls = int(stats[1].get("calls", 0)) - int(stats[0].get("calls", 0))
    usec = int(stats[1].get("usec", 0)) - int(stats[0].get("usec", 0))
    return removed, took, usec / max(calls, 1)


async def run(args: argparse.Namespace, url: str) -> None:
    client = aioredis.Redis.from_url(url, protocol=2)
    keys = Keyspace()
    events = make_events(args.events, args.scopes, args.individuals, args.actions)
    rates: dict[bool, list[float]] = {False: [], True: []}
    lua_us: dict[bool, list[float]] = {False: [], True: []}
    per_member: list[float] = []
    sweep_rates: list[float] = []
    call_ms: list[float] = []
    for r in range(args.repeats):
        for retention in (False, True) if r % 2 == 0 else (True, False):
            await client.flushall()
            await fill(client, keys, events)
            await client.config_resetstat()
            took = await drain(url, len(events), retention)
            rates[retention].append(len(events) / took)
            # Redis's own time in the scripts (apply + commit): less disturbed by a busy Python process.
            lua_us[retention].append(await evalsha_usec(client) / len(events))
            if retention:
                members, used = await last_seen_bytes(client, keys)
                per_member.append(used / max(members, 1))
                removed, secs, usec = await sweep_all(client, keys)
                assert removed == members, (removed, members)
                sweep_rates.append(removed / secs)
                call_ms.append(usec / 1000)
    await client.aclose()
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    print(
        f"events={len(events)} scopes={args.scopes} individuals={args.individuals} actions={args.actions} "
        f"repeats={args.repeats} (medians)"
    )
    print(f"drain, retention off: {off:,.0f} events/s  ({', '.join(f'{x:,.0f}' for x in rates[False])})")
    print(f"drain, retention on:  {on:,.0f} events/s  ({', '.join(f'{x:,.0f}' for x in rates[True])})")
    print(f"on/off: {on / off:.3f}")
    lon, loff = statistics.median(lua_us[True]), statistics.median(lua_us[False])
    print(
        f"Redis time in apply.lua + commit.lua per event: off {loff:.2f} us, on {lon:.2f} us, on/off {lon / loff:.3f}"
        f"  (off {', '.join(f'{x:.2f}' for x in lua_us[False])}; on {', '.join(f'{x:.2f}' for x in lua_us[True])})"
    )
    print(f"last-seen zset: {statistics.median(per_member):,.1f} B per individual (MEMORY USAGE)")
    print(
        f"sweep removing everyone: {statistics.median(sweep_rates):,.0f} individuals/s, "
        f"{statistics.median(call_ms):.2f} ms of Redis time per expire.lua call ({SWEEP_BATCH} individuals)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--scopes", type=int, default=10)
    p.add_argument("--individuals", type=int, default=10_000)
    p.add_argument("--actions", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--redis-server", default=None)
    args = p.parse_args()
    binary = quiet_setup(args.redis_server)
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(tmp, binary=binary).start()
        try:
            asyncio.run(run(args, server.url))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
