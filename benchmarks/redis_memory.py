"""How much Redis memory Binormal's state takes, by kind of key.

Fills a private redis-server's stream shards with N events shaped like
``POST /discrete`` traffic (each with an event id, a request id and a reply
channel, so the worker leaves an idempotency marker and a stored reply copy
per event), drains them with one Worker, trims the acknowledged history, and
sums ``MEMORY USAGE`` over every key by kind. Prints bytes per stream entry
(while it waits to be scored), per individual, per scope, per idempotency
marker and per stored reply, and what /discrete traffic keeps alive at a given
request rate with the default TTLs.

    python benchmarks/redis_memory.py [--events N] [--individuals I] [--rate R] [--redis-server PATH]

Loopback only; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import uuid
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis.asyncio as aioredis  # noqa: E402
from worker_throughput import make_events, quiet_setup  # noqa: E402

from binormal.common.embedded import RedisServer  # noqa: E402
from binormal.common.keys import Keyspace  # noqa: E402
from binormal.web.settings import WebSettings  # noqa: E402
from binormal.worker import Worker, WorkerSettings  # noqa: E402
from binormal.worker.settings import WorkerSettings as _Defaults  # noqa: E402
from binormal.worker.worker import ensure_groups, trim_acknowledged  # noqa: E402


def kind_of(key: str) -> str:
    """The kind of a Binormal key: events, individual, pop, seen, reply, ..."""
    parts = key.split(":")
    if ":seen:" in key:
        return "seen"
    if ":reply:" in key:
        return "reply"
    if ":sc:" in key:
        return "individual" if len(parts) >= 2 and parts[-2] == "i" else parts[-1]
    return parts[-1]


async def usage_by_kind(client: aioredis.Redis, prefix: str) -> dict[str, tuple[int, int]]:
    """(keys, bytes) per kind, from MEMORY USAGE ... SAMPLES 0 (exact for hashes and zsets)."""
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    batch: list[str] = []

    async def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for k in batch:
            pipe.execute_command("MEMORY", "USAGE", k, "SAMPLES", "0")
        for k, used in zip(batch, await pipe.execute()):
            t = totals[kind_of(k)]
            t[0] += 1
            t[1] += int(used or 0)
        batch.clear()

    async for key in client.scan_iter(match=f"{prefix}:*", count=2000):
        batch.append(key.decode())
        if len(batch) >= 2000:
            await flush()
    await flush()
    return {k: (v[0], v[1]) for k, v in totals.items()}


async def used_memory(client: aioredis.Redis) -> int:
    return int((await client.info("memory"))["used_memory"])


async def run(args: argparse.Namespace, url: str) -> None:
    client = aioredis.Redis.from_url(url, protocol=2)
    keys = Keyspace()
    web = WebSettings()
    events = make_events(args.events, args.scopes, args.individuals, args.actions)
    await ensure_groups(client, keys.streams(), keys.group)
    base = await used_memory(client)
    for i in range(0, len(events), 2000):
        pipe = client.pipeline(transaction=False)
        for e in events[i : i + 2000]:
            fields = e.to_fields()
            # What the web tier adds to a /discrete event that brought no id (web/app.py).
            fields.update(
                event_id=uuid.uuid4().hex,
                rid=uuid.uuid4().hex[:16],
                reply_to="bn:reply:bench",
                id_ttl=str(web.generated_id_ttl_s),
            )
            pipe.xadd(keys.stream(keys.shard(e.scope)), fields)
        await pipe.execute()
    queued = await used_memory(client) - base
    stream_bytes = (await usage_by_kind(client, keys.prefix)).get("events", (0, 0))[1]

    worker = Worker(WorkerSettings(redis_url=url, consumer="bench", trim_interval_s=0))
    task = asyncio.create_task(worker.run())
    while worker.counters.applied < len(events):
        await asyncio.sleep(0.05)
        if task.done():
            task.result()
    worker.request_stop()
    await task
    for stream in keys.streams():
        await trim_acknowledged(client, stream)
    marker_ttl = max(
        [await client.ttl(k) async for k in client.scan_iter(match=f"{keys.prefix}:*:seen:*", count=100)][:100]
    )
    by_kind = await usage_by_kind(client, keys.prefix)
    total = await used_memory(client) - base
    await client.aclose()

    n = len(events)
    print(f"events={n} scopes={args.scopes} individuals={args.individuals} actions={args.actions}")
    print(
        f"queued stream entries: {stream_bytes / n:,.0f} B per entry by MEMORY USAGE "
        f"({queued / n:,.0f} B per entry by used_memory)"
    )
    print(f"after scoring and trimming: used_memory +{total / 2**20:,.1f} MiB")
    print(f"{'kind':<12} {'keys':>8} {'bytes':>14} {'per key':>9}")
    for kind, (count, used) in sorted(by_kind.items(), key=lambda kv: -kv[1][1]):
        print(f"{kind:<12} {count:>8,} {used:>14,} {used / count:>9,.0f}")
    individuals = by_kind.get("individual", (0, 0))
    per_ind = individuals[1] / max(individuals[0], 1)
    # An individual also holds one member in its scope's rank zset and ver hash.
    per_ind_total = per_ind + sum(by_kind.get(k, (0, 0))[1] for k in ("rank", "ver")) / max(individuals[0], 1)
    print(f"per individual (its hash + rank and ver entries): {per_ind_total:,.0f} B")
    scopes = by_kind.get("pop", (0, 0))[0]
    per_scope = sum(by_kind.get(k, (0, 0))[1] for k in ("pop", "sq", "k", "agg")) / max(scopes, 1)
    print(f"per scope (pop, sq, k, agg hashes at {args.actions} actions): {per_scope:,.0f} B")
    seen = by_kind.get("seen", (0, 0))
    reply = by_kind.get("reply", (0, 0))
    per_seen = seen[1] / max(seen[0], 1)
    per_reply = reply[1] / max(reply[0], 1)
    d = _Defaults()
    print(f"per /discrete request: marker {per_seen:,.0f} B, reply copy {per_reply:,.0f} B for {d.reply_ttl_s} s")
    print(
        f"marker lifetime: {web.generated_id_ttl_s} s for an id the web tier made up (longest TTL seen "
        f"{marker_ttl} s), {d.seen_ttl_s} s for one the caller chose"
    )
    replies = args.rate * per_reply * d.reply_ttl_s
    for what, ttl in (("made-up ids", web.generated_id_ttl_s), ("caller-chosen ids", d.seen_ttl_s)):
        markers = args.rate * per_seen * ttl
        print(
            f"at {args.rate:,} /discrete requests/s with {what}: {(markers + replies) / 2**20:,.0f} MiB alive "
            f"(markers {markers / 2**20:,.0f} MiB, reply copies {replies / 2**20:,.0f} MiB)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--scopes", type=int, default=10)
    p.add_argument("--individuals", type=int, default=10_000)
    p.add_argument("--actions", type=int, default=40)
    p.add_argument("--rate", type=int, default=1_000, help="/discrete requests/s for the steady-state line")
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
