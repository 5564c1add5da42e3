"""How fast one scorer worker drains and scores a stream.

Fills the stream shards of a private redis-server with N events (default
200,000; 10 scopes, 10,000 individuals, 40 actions, a skewed Zipf-like action
mix), then times one Worker draining them: events/s, Redis round trips and Lua
calls per event. For comparison it also times the original's way of doing the
same work: 17 sequential round trips per event (a sample of the events).

    python benchmarks/worker_throughput.py [--events N] [--repeat R] [--redis-server PATH]
    python benchmarks/worker_throughput.py --cluster [--shards S] [--plain-connection]

Prints one line per run and the medians. Loopback only; stops by itself.
``--cluster``: the same on a private 3-master Redis Cluster (no 17-round-trip
comparison there); ``--plain-connection``: the cluster nodes use redis-py's
own Connection instead of our FastConnection (the A/B of that choice).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
import structlog  # noqa: E402

from binormal.common import connection  # noqa: E402
from binormal.common.embedded import RedisServer, find_binary, server_version  # noqa: E402
from binormal.common.keys import Keyspace  # noqa: E402
from binormal.common.localcluster import LocalCluster, command, info_fields  # noqa: E402
from binormal.common.runtime import tune_gc  # noqa: E402
from binormal.common.schema import Event  # noqa: E402
from binormal.worker import Worker, WorkerSettings  # noqa: E402
from binormal.worker.worker import ensure_groups  # noqa: E402


def quiet_setup(redis_server: str | None) -> str:
    """Silence the services' logs, pick the redis-server binary, print the machine line; returns the binary."""
    logging.disable(logging.CRITICAL)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    binary = redis_server or find_binary("path")
    print(
        f"machine: {platform.machine()} {platform.system()} python {platform.python_version()}; "
        f"redis-server {server_version(binary)}"
    )
    return binary


def make_events(n: int, scopes: int, individuals: int, actions: int, seed: int = 7) -> list[Event]:
    """Deterministic events with a skewed action mix (weight 1/rank^1.1)."""
    rnd = random.Random(seed)
    acts = [f"GET /api/v1/resource/{i}" for i in range(actions)]
    weights = [1.0 / (r + 1) ** 1.1 for r in range(actions)]
    scope_names = [(f"org{s % 3}", f"src{s}", f"pop{s}") for s in range(scopes)]
    per_scope = max(1, individuals // scopes)
    out = []
    picks = rnd.choices(range(actions), weights=weights, k=n)
    for i in range(n):
        s = rnd.randrange(scopes)
        org, source, pop = scope_names[s]
        out.append(Event(org, source, pop, f"user{s}-{rnd.randrange(per_scope)}", acts[picks[i]]))
    return out


async def fill(client: aioredis.Redis, keys: Keyspace, events: list[Event]) -> None:
    """XADD every event to its shard, 2,000 per pipeline (not timed)."""
    await ensure_groups(client, keys.streams(), keys.group)
    for i in range(0, len(events), 2000):
        pipe = client.pipeline(transaction=False)
        for e in events[i : i + 2000]:
            pipe.xadd(keys.stream(keys.shard(e.scope)), e.to_fields())
        await pipe.execute()


def redis_cpu_s(ports: list[int]) -> float:
    """User + system CPU seconds of the redis-servers on ``ports`` (INFO cpu), summed."""
    total = 0.0
    for port in ports:
        cpu = info_fields(command(port, "INFO", "cpu"))
        total += float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    return total


async def drain(
    url: str,
    n: int,
    batch: int,
    max_age_ms: int,
    max_actions: int | None = None,
    weight_cap: int | None = None,
    shards: int = 4,
    ports: list[int] | None = None,
    setup: Callable[[Worker], None] | None = None,
    recent_window: int = 0,
) -> dict[str, float]:
    """Time one Worker until it has applied ``n`` entries (``max_actions``: BINORMAL_MAX_ACTIONS, default its own;
    ``weight_cap``: BINORMAL_WEIGHT_CAP, default N; ``setup``: called with the worker before it runs)."""
    settings = WorkerSettings(
        redis_url=url, consumer="bench", batch=batch, snapshot_max_age_ms=max_age_ms, trim_interval_s=0, shards=shards
    )
    if max_actions is not None:
        settings = replace(settings, max_actions=max_actions)
    if weight_cap is not None:
        settings = replace(settings, weight_cap=weight_cap)
    if recent_window:
        settings = replace(settings, recent_window=recent_window)
    worker = Worker(settings)
    if setup is not None:
        setup(worker)
    task = asyncio.create_task(worker.run())
    await worker.ready.wait()
    redis_ports = ports or [int(url.rsplit(":", 1)[1].split("/")[0])]
    cpu0 = redis_cpu_s(redis_ports)
    p0 = time.process_time()
    t0 = time.perf_counter()
    while worker.counters.applied < n:
        await asyncio.sleep(0.01)
        if task.done():
            task.result()
    elapsed = time.perf_counter() - t0
    py_cpu = time.process_time() - p0
    redis_cpu = redis_cpu_s(redis_ports) - cpu0
    worker.request_stop()
    await task
    c = worker.counters
    return {
        "events_per_s": n / elapsed,
        "seconds": elapsed,
        "round_trips_per_event": c.round_trips / n,
        "lua_calls_per_event": c.lua_calls / n,
        "worker_cpu_us": py_cpu / n * 1e6,
        "redis_cpu_us": redis_cpu / n * 1e6,
    }


def naive(url: str, keys: Keyspace, events: list[Event]) -> float:
    """The original's shape: 17 sequential round trips per event, no pipelining.

    A synchronous client (the cheapest way to wait for each answer in Python),
    doing the same Redis work: count, read both hashes, read and write the
    aggregates and the rank, publish.
    """
    client = redis.Redis.from_url(url, protocol=2)
    t0 = time.perf_counter()
    for e in events:
        sc = e.scope
        pop, ind = keys.scope_key(sc, "pop"), keys.individual(sc, e.id)
        agg, rank = keys.scope_key(sc, "agg"), keys.scope_key(sc, "rank")
        client.hincrby(ind, e.action, 1)  # 1
        client.hincrby(pop, e.action, 1)  # 2
        client.hincrby(agg, "total", 1)  # 3
        client.hgetall(ind)  # 4
        client.hgetall(pop)  # 5
        client.hget(agg, "total")  # 6
        client.zscore(rank, e.id)  # 7
        client.hget(agg, "n")  # 8
        client.hget(agg, "sum")  # 9
        client.hget(agg, "sumsq")  # 10
        client.zadd(rank, {e.id: 1.0})  # 11
        client.hincrbyfloat(agg, "sum", 1.0)  # 12
        client.hincrbyfloat(agg, "sumsq", 1.0)  # 13
        client.hincrby(keys.scope_key(sc, "sq"), e.action, 1)  # 14
        client.hincrby(keys.scope_key(sc, "k"), e.action, 1)  # 15
        client.hget(keys.scope_key(sc, "k"), e.action)  # 16
        client.publish(keys.broadcast_channel(), b"{}")  # 17
    client.close()
    return len(events) / (time.perf_counter() - t0)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--scopes", type=int, default=10)
    p.add_argument("--individuals", type=int, default=10_000)
    p.add_argument("--actions", type=int, default=40)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--max-age-ms", type=int, default=1000, help="snapshot staleness")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--naive-events", type=int, default=5_000)
    p.add_argument("--redis-server", default=None)
    p.add_argument("--weight-cap", type=int, default=None, help="BINORMAL_WEIGHT_CAP (default N; 0 = guard off)")
    p.add_argument(
        "--recent-window",
        type=int,
        nargs="+",
        default=[0],
        metavar="K",
        help="BINORMAL_RECENT_WINDOW values, each drained in every repeat (alternately; default 0)",
    )
    p.add_argument("--cluster", action="store_true", help="a private 3-master Redis Cluster instead of one server")
    p.add_argument("--shards", type=int, default=4, help="BINORMAL_SHARDS")
    p.add_argument("--plain-connection", action="store_true", help="cluster nodes without FastConnection")
    args = p.parse_args()
    if args.cluster:
        await cluster_main(args)
        return

    binary = quiet_setup(args.redis_server)
    print(
        f"events={args.events} scopes={args.scopes} individuals={args.individuals} actions={args.actions} "
        f"batch={args.batch} snapshot_max_age_ms={args.max_age_ms} weight_cap={args.weight_cap}"
    )
    events = make_events(args.events, args.scopes, args.individuals, args.actions)
    keys = Keyspace()
    tune_gc()  # as `binormal worker` does before it starts
    naive_runs = []
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(tmp, binary=binary).start()
        try:
            client = aioredis.Redis.from_url(server.url, protocol=2)
            by_window: dict[int, list[dict[str, float]]] = {}

            async def drained(window: int) -> dict[str, float]:
                """A fresh fill of the events drained by one worker with recent window ``window``."""
                await client.flushall()
                await fill(client, keys, events)
                got = await drain(
                    server.url,
                    len(events),
                    args.batch,
                    args.max_age_ms,
                    weight_cap=args.weight_cap,
                    recent_window=window,
                )
                by_window.setdefault(window, []).append(got)
                return got

            for r in range(args.repeat):
                for window in args.recent_window[1:]:  # the others first, the first below as before
                    got = await drained(window)
                    print(
                        f"run {r + 1}, K = {window}: worker {got['events_per_s']:,.0f} events/s, CPU/event worker "
                        f"{got['worker_cpu_us']:.0f} us + redis {got['redis_cpu_us']:.0f} us"
                    )
                res = await drained(args.recent_window[0])
                await client.flushall()
                naive_rate = naive(server.url, keys, events[: args.naive_events])
                naive_runs.append(naive_rate)
                print(
                    f"run {r + 1}: worker {res['events_per_s']:,.0f} events/s ({res['seconds']:.1f} s), "
                    f"{res['round_trips_per_event']:.4f} round trips/event, "
                    f"{res['lua_calls_per_event']:.2f} Lua calls/event, "
                    f"CPU/event worker {res['worker_cpu_us']:.0f} us + redis {res['redis_cpu_us']:.0f} us; "
                    f"17-round-trip way {naive_rate:,.0f} events/s"
                )
            await client.aclose()
        finally:
            server.stop()
    for window, got_runs in sorted(by_window.items()):
        print(
            f"median, K = {window}: {statistics.median(r['events_per_s'] for r in got_runs):,.0f} events/s, "
            f"CPU/event worker {statistics.median(r['worker_cpu_us'] for r in got_runs):.1f} us "
            f"+ redis {statistics.median(r['redis_cpu_us'] for r in got_runs):.1f} us"
        )
    med = statistics.median(r["events_per_s"] for r in by_window[args.recent_window[0]])
    med_naive = statistics.median(naive_runs)
    print(
        f"median: worker {med:,.0f} events/s; 17-round-trip way {med_naive:,.0f} events/s; ratio {med / med_naive:.1f}x"
    )


async def cluster_main(args: argparse.Namespace) -> None:
    """The drain on a private 3-master cluster (``--cluster``)."""
    binary = quiet_setup(args.redis_server)
    if args.plain_connection:
        make = connection.make_cluster_client

        def plain(url: str, **kw: float) -> aioredis.RedisCluster:
            client = make(url, **kw)  # type: ignore[arg-type]
            client.connection_kwargs["connection_class"] = aioredis.Connection
            for node in client.startup_nodes:
                node.connection_class = aioredis.Connection
            return client

        connection.make_cluster_client = plain  # type: ignore[assignment]
    print(
        f"cluster of 3 masters; events={args.events} shards={args.shards} batch={args.batch} "
        f"snapshot_max_age_ms={args.max_age_ms} connection={'plain' if args.plain_connection else 'fast'}"
    )
    events = make_events(args.events, args.scopes, args.individuals, args.actions)
    keys = Keyspace(shards=args.shards)
    tune_gc()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(tmp, masters=3, binary=binary).start()
        try:
            client = aioredis.RedisCluster.from_url(cluster.url, protocol=2)
            for r in range(args.repeat):
                await client.flushall()  # every master (redis-py sends FLUSHALL to all primaries)
                await fill(client, keys, events)  # type: ignore[arg-type]
                res = await drain(
                    cluster.url, len(events), args.batch, args.max_age_ms, shards=args.shards, ports=cluster.ports
                )
                runs.append(res)
                print(
                    f"run {r + 1}: worker {res['events_per_s']:,.0f} events/s ({res['seconds']:.1f} s), "
                    f"{res['round_trips_per_event']:.4f} round trips/event, "
                    f"CPU/event worker {res['worker_cpu_us']:.0f} us + redis {res['redis_cpu_us']:.0f} us"
                )
            await client.aclose()
        finally:
            cluster.stop()
    print(f"median: worker {statistics.median(r['events_per_s'] for r in runs):,.0f} events/s")


if __name__ == "__main__":
    asyncio.run(main())
