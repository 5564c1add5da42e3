"""How much Redis memory Binormal's state takes, by kind of key, and per individual by part.

Fills a private redis-server's stream shards with N events shaped like
``POST /discrete`` traffic (each with an event id, a request id and a reply
channel, so the worker leaves an idempotency marker and a stored reply copy
per event), drains them with one Worker, trims the acknowledged history, and
sums ``MEMORY USAGE`` over every key by kind. Prints bytes per stream entry
(while it waits to be scored), per individual split by part (its counts hash,
its rank member, its ``ver`` entry in key layout 1), per scope, per
idempotency marker and per stored reply, the encodings (``OBJECT ENCODING``),
and what /discrete traffic keeps alive at a given request rate with the
default TTLs.

``--distinct D`` gives every individual exactly D distinct actions (the
skewed mix, drawn without replacement); 0 keeps the plain skewed mix.
``--tree PATH`` measures another checkout's code (e.g. an export of main) with
this same script, for an A/B in one run. ``--recent-window K [K ...]`` runs the
whole measurement once per K (``BINORMAL_RECENT_WINDOW``, a fresh redis-server
each), ``--repeat R`` that R times, alternating the Ks, and ends with the median
bytes per individual of each K (its recent list and window hash counted as its parts).

    python benchmarks/redis_memory.py [--events N] [--individuals I] [--distinct D] [--rate R]
        [--recent-window K [K ...]] [--repeat R] [--redis-server PATH] [--tree PATH]

Loopback only; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import random
import statistics
import sys
import tempfile
import uuid
from collections import defaultdict
from pathlib import Path

# --tree PATH: import binormal from another checkout (read before argparse: imports come first).
_TREE = (
    sys.argv[sys.argv.index("--tree") + 1] if "--tree" in sys.argv[:-1] else str(Path(__file__).resolve().parents[1])
)
sys.path.insert(0, _TREE)
# Imported now, from _TREE: worker_throughput (below) puts this checkout first on sys.path.
importlib.import_module("binormal")

import redis.asyncio as aioredis  # noqa: E402
from worker_throughput import make_events, quiet_setup  # noqa: E402

from binormal.common.embedded import RedisServer  # noqa: E402
from binormal.common.keys import Keyspace  # noqa: E402
from binormal.common.schema import Event  # noqa: E402
from binormal.web.settings import WebSettings  # noqa: E402
from binormal.worker import Worker, WorkerSettings  # noqa: E402
from binormal.worker.settings import WorkerSettings as _Defaults  # noqa: E402
from binormal.worker.worker import ensure_groups, trim_acknowledged  # noqa: E402


def kind_of(key: str) -> str:
    """The kind of a Binormal key: events, individual, pop, seen, reply, ... (key layouts 1 and 2)."""
    parts = key.split(":")
    if ":seen:" in key:
        return "seen"
    if ":reply:" in key:
        return "reply"
    if ":sc:" in key:
        if len(parts) >= 2 and parts[-2] in ("rl", "rw"):
            return "recent list" if parts[-2] == "rl" else "window hash"
        return "individual" if len(parts) >= 2 and parts[-2] in ("i", "c") else parts[-1]
    return parts[-1]


def distinct_events(n: int, scopes: int, individuals: int, actions: int, distinct: int, seed: int = 7) -> list[Event]:
    """Events where every individual does exactly ``distinct`` actions (skewed mix, without replacement)."""
    rnd = random.Random(seed)
    acts = [f"GET /api/v1/resource/{i}" for i in range(actions)]
    weights = [1.0 / (r + 1) ** 1.1 for r in range(actions)]
    per = max(distinct, n // individuals)
    out: list[Event] = []
    for i in range(individuals):
        s = i % scopes
        mine: list[str] = []
        while len(mine) < distinct:
            a = rnd.choices(acts, weights=weights)[0]
            if a not in mine:
                mine.append(a)
        picks = mine + [rnd.choice(mine) for _ in range(per - distinct)]
        out += [Event(f"org{s % 3}", f"src{s}", f"pop{s}", f"user{s}-{i // scopes}", a) for a in picks]
    rnd.shuffle(out)
    return out


async def encodings(client: aioredis.Redis, prefix: str) -> dict[str, set[str]]:
    """OBJECT ENCODING of every counted kind's keys (a sample of 200 individuals)."""
    out: dict[str, set[str]] = defaultdict(set)
    seen_individuals = 0
    async for key in client.scan_iter(match=f"{prefix}:*", count=2000):
        kind = kind_of(key.decode())
        if kind in ("seen", "reply", "events"):
            continue
        if kind == "individual":
            seen_individuals += 1
            if seen_individuals > 200:
                continue
        out[kind].add((await client.object("encoding", key)).decode())
    return out


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


async def run(args: argparse.Namespace, url: str, window: int = 0) -> dict[str, float]:
    """One measurement with the recent window ``window``; prints it, returns the per-individual parts (B)."""
    client = aioredis.Redis.from_url(url, protocol=2)
    keys = Keyspace()
    web = WebSettings()
    if args.distinct:
        events = distinct_events(args.events, args.scopes, args.individuals, args.actions, args.distinct)
    else:
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

    # Reply copies are kept an hour here so a slow drain still finds them to measure (the lines
    # below count them for the default BINORMAL_REPLY_TTL_S).
    extra = {"recent_window": window} if window else {}  # an older --tree has no such setting
    worker = Worker(WorkerSettings(redis_url=url, consumer="bench", trim_interval_s=0, reply_ttl_s=3600, **extra))
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
    enc = await encodings(client, keys.prefix)
    rank_members = sum([await client.zcard(k) async for k in client.scan_iter(match=f"{keys.prefix}:*:rank")])
    counted: dict[tuple[str, str, str, str], set[str]] = defaultdict(set)
    for e in events:
        counted[(*e.scope, e.id)].add(e.action)
    mean_distinct = sum(len(v) for v in counted.values()) / max(len(counted), 1)
    await client.aclose()

    n = len(events)
    print(
        f"tree={_TREE} recent_window={window} events={n} scopes={args.scopes} individuals={len(counted)} "
        f"actions={args.actions} "
        f"distinct actions per individual: {mean_distinct:.2f} (mean)"
    )
    print(
        f"queued stream entries: {stream_bytes / n:,.0f} B per entry by MEMORY USAGE "
        f"({queued / n:,.0f} B per entry by used_memory)"
    )
    print(f"after scoring and trimming: used_memory +{total / 2**20:,.1f} MiB")
    print(f"{'kind':<12} {'keys':>8} {'bytes':>14} {'per key':>9}")
    for kind, (count, used) in sorted(by_kind.items(), key=lambda kv: -kv[1][1]):
        print(f"{kind:<12} {count:>8,} {used:>14,} {used / count:>9,.0f}")
    print("encodings: " + ", ".join(f"{k} {'/'.join(sorted(v))}" for k, v in sorted(enc.items())))
    individuals = by_kind.get("individual", (0, 0))
    count = max(individuals[0], 1)
    # An individual holds its counts hash and one member of its scope's rank zset (and, in
    # key layout 1, one field of its scope's ver hash). Per-scope keys are divided by the
    # individuals of the scope only to show their share: they do not grow with individuals.
    parts = {
        "counts hash": individuals[1] / count,
        "rank member": by_kind.get("rank", (0, 0))[1] / max(rank_members, 1),
        "ver entry": by_kind.get("ver", (0, 0))[1] / max(rank_members, 1),
        "recent list": by_kind.get("recent list", (0, 0))[1] / count,
        "window hash": by_kind.get("window hash", (0, 0))[1] / count,
    }
    per_ind_total = sum(parts.values())
    split = ", ".join(f"{name} {b:,.0f} B" for name, b in parts.items())
    print(f"per individual: {per_ind_total:,.0f} B ({split}; {mean_distinct:.2f} distinct actions)")
    scopes = by_kind.get("pop", (0, 0))[0]
    scope_kinds = ("pop", "sq", "k", "raw", "dom", "agg", "robust", "an", "na")
    per_scope = sum(by_kind.get(k, (0, 0))[1] for k in scope_kinds) / max(scopes, 1)
    numbers = sum(by_kind.get(k, (0, 0))[1] for k in ("an", "na")) / max(scopes, 1)
    print(
        f"per scope ({', '.join(scope_kinds)} at {args.actions} actions): {per_scope:,.0f} B "
        f"(of which the action numbers an + na {numbers:,.0f} B)"
    )
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
    return {**parts, "total": per_ind_total}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--scopes", type=int, default=10)
    p.add_argument("--individuals", type=int, default=10_000)
    p.add_argument("--actions", type=int, default=40)
    p.add_argument("--distinct", type=int, default=0, help="distinct actions of every individual (0: skewed mix)")
    p.add_argument("--tree", default=None, help="checkout whose binormal package to measure (default: this one)")
    p.add_argument("--rate", type=int, default=1_000, help="/discrete requests/s for the steady-state line")
    p.add_argument("--recent-window", type=int, nargs="+", default=[0], help="BINORMAL_RECENT_WINDOW values")
    p.add_argument("--repeat", type=int, default=1, help="runs per recent window (alternating)")
    p.add_argument("--redis-server", default=None)
    args = p.parse_args()
    binary = quiet_setup(args.redis_server)
    runs: dict[int, list[dict[str, float]]] = defaultdict(list)
    for _ in range(args.repeat):
        for window in args.recent_window:
            with tempfile.TemporaryDirectory() as tmp:
                server = RedisServer(tmp, binary=binary).start()
                try:
                    runs[window].append(asyncio.run(run(args, server.url, window)))
                finally:
                    server.stop()
            print()
    if len(runs) > 1 or args.repeat > 1:
        print(f"median bytes per individual over {args.repeat} run(s):")
        names = list(next(iter(runs.values()))[0])
        print(f"{'K':>4} " + " ".join(f"{name:>12}" for name in names))
        for window, got in runs.items():
            print(f"{window:>4} " + " ".join(f"{statistics.median(r[name] for r in got):>12,.1f}" for name in names))


if __name__ == "__main__":
    main()
