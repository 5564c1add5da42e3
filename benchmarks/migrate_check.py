"""binormal migrate on real layout-1 data: the previous release's worker writes it, this one migrates it.

Starts a private redis-server; phase 1 runs in a child process importing ``--old-tree`` (an
export of the release before key layout 2, e.g. ``git archive d9f0c8e``) and counts N events
with its worker; phase 2 (this checkout) checks that a worker refuses the data, runs
``common.migrate.migrate`` (timed), compares every individual's counts with the events, then
lets a worker of this release count 5,000 more events and checks again.

    python benchmarks/migrate_check.py --old-tree /tmp/bn-base [--events N] [--individuals I]

Loopback only; stops the server by itself.
"""
# mypy: ignore-errors
# ruff: noqa: E402

import argparse
import asyncio
import importlib
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def load(tree: str) -> None:
    """Import binormal from ``tree`` (before anything else imports it), quiet logs."""
    sys.path.insert(0, tree)
    importlib.import_module("binormal")
    sys.path.insert(1, str(Path(__file__).resolve().parent))
    import structlog

    logging.disable(logging.CRITICAL)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))


if "--phase" in sys.argv:
    load(sys.argv[sys.argv.index("--tree") + 1])
    import redis.asyncio as aioredis
    from worker_throughput import make_events

    from binormal.common.keys import Keyspace
    from binormal.worker import Worker, WorkerSettings
    from binormal.worker.worker import ensure_groups


def truth(events):
    t = {}
    for e in events:
        m = t.setdefault((e.scope, e.id), {})
        m[e.action] = m.get(e.action, 0) + 1
    return t


async def feed_and_drain(client, keys, events, url):
    await ensure_groups(client, keys.streams(), keys.group)
    for i in range(0, len(events), 5000):
        pipe = client.pipeline(transaction=False)
        for e in events[i : i + 5000]:
            pipe.xadd(keys.stream(keys.shard(e.scope)), e.to_fields())
        await pipe.execute()
    w = Worker(WorkerSettings(redis_url=url, consumer="mig", trim_interval_s=0))
    task = asyncio.create_task(w.run())
    while w.counters.applied < len(events):
        await asyncio.sleep(0.1)
        if task.done():
            task.result()
    while sum([await client.hlen(keys.uncommitted(s)) for s in range(keys.shards)]):
        await asyncio.sleep(0.1)
    w.request_stop()
    await task


async def phase_main(phase: str, url: str, events: int, individuals: int) -> None:
    EV = make_events(events, 10, individuals, 40)
    NEW = make_events(5_000, 10, individuals, 40, seed=99)
    client = aioredis.Redis.from_url(url, protocol=2)
    keys = Keyspace()
    if phase == "1":
        t0 = time.perf_counter()
        await feed_and_drain(client, keys, EV, url)
        print(
            "phase 1: layout-1 data written in", round(time.perf_counter() - t0, 1), "s;", await client.dbsize(), "keys"
        )
        return
    from binormal.common.migrate import LayoutError, check_layout, migrate
    from binormal.common.store import name_counts, read_aggregates, recompute_aggregates

    try:
        await check_layout(client, keys)
        print("NOT REFUSED")
        return
    except LayoutError as exc:
        print("refused:", str(exc)[:90])
    scopes = sorted({e.scope for e in EV})
    pops = {s: await client.hgetall(keys.scope_key(s, "pop")) for s in scopes}
    ranks = {s: await client.zrange(keys.scope_key(s, "rank"), 0, -1, withscores=True) for s in scopes}
    t0 = time.perf_counter()
    report = await migrate(client, keys)
    print("migrate:", report, round(time.perf_counter() - t0, 2), "s")
    await check_layout(client, keys)
    bad = 0
    for s in scopes:
        assert await client.hgetall(keys.scope_key(s, "pop")) == pops[s]
        assert await client.zrange(keys.scope_key(s, "rank"), 0, -1, withscores=True) == ranks[s]
        assert not await client.exists(keys.scope_key(s, "ver"))
    t = truth(EV)
    items = list(t.items())
    for i in range(0, len(items), 2000):
        chunk = items[i : i + 2000]
        by_scope = {}
        for (scope, ident), want in chunk:
            by_scope.setdefault(scope, []).append((ident, want))
        for scope, rows in by_scope.items():
            pipe = client.pipeline(transaction=False)
            for ident, _ in rows:
                pipe.hgetall(keys.individual(scope, ident))
            got = await name_counts(client, keys, scope, await pipe.execute())
            bad += sum(1 for (_, want), g in zip(rows, got) if g != want)
    print("individuals checked:", len(items), "mismatches:", bad)
    print("layout-1 keys left:", len([k async for k in client.scan_iter(match="bn:*:i:*", count=5000)]))
    await feed_and_drain(client, keys, NEW, url)
    t2 = truth(EV + NEW)
    items = list(t2.items())
    for i in range(0, len(items), 2000):
        by_scope = {}
        for (scope, ident), want in items[i : i + 2000]:
            by_scope.setdefault(scope, []).append((ident, want))
        for scope, rows in by_scope.items():
            pipe = client.pipeline(transaction=False)
            for ident, _ in rows:
                pipe.hgetall(keys.individual(scope, ident))
            got = await name_counts(client, keys, scope, await pipe.execute())
            bad += sum(1 for (_, want), g in zip(rows, got) if g != want)
    drift = []
    for s in scopes:
        a, b = await read_aggregates(client, keys, s), await recompute_aggregates(client, keys, s)
        drift.append((a.n == b.n, abs(a.total - b.total) / max(abs(b.total), 1e-12)))
    print(
        "after 5,000 more events by a new worker: mismatches:",
        bad,
        "aggregates n equal & rel drift:",
        max(d[1] for d in drift),
        all(d[0] for d in drift),
    )
    print("individuals ranked:", sum([await client.zcard(keys.scope_key(s, "rank")) for s in scopes]), "of", len(t2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old-tree", required=False)
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--individuals", type=int, default=100_000)
    p.add_argument("--phase")
    p.add_argument("--tree")
    p.add_argument("--url")
    args = p.parse_args()
    if args.phase:
        asyncio.run(phase_main(args.phase, args.url, args.events, args.individuals))
        return
    here = str(Path(__file__).resolve().parents[1])
    sys.path.insert(0, here)
    from binormal.common.embedded import RedisServer, find_binary

    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(tmp, binary=find_binary("path")).start()
        try:
            for phase, tree in (("1", args.old_tree), ("2", here)):
                cmd = [sys.executable, __file__, "--phase", phase, "--tree", tree, "--url", server.url]
                cmd += ["--events", str(args.events), "--individuals", str(args.individuals)]
                subprocess.run(cmd, check=True, timeout=3600)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
