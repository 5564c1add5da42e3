"""Per-event scoring cost against the number of distinct actions in a scope.

One scope is seeded (not timed) with S events spread over A distinct actions;
then one Worker (default snapshot staleness, 1,000 ms) drains and scores N more
events of that scope, timed. A big scope (default 24,000 actions) and a small
one (default 20) are measured alternately in one run, ``--repeat`` times each,
with the same number of seed and timed events, individuals and action skew.

    python benchmarks/scope_actions.py [--events 5000] [--big 24000] [--small 20] [--repeat 3]

Prints one line per run, the medians and the ratio big/small (target <= 1.5).
Loopback only (a private redis-server); stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis.asyncio as aioredis  # noqa: E402

from benchmarks.worker_throughput import drain, fill, quiet_setup  # noqa: E402
from binormal.common.embedded import RedisServer  # noqa: E402
from binormal.common.keys import Keyspace  # noqa: E402
from binormal.common.runtime import tune_gc  # noqa: E402
from binormal.common.schema import Event  # noqa: E402

SCOPE = ("acme", "webserver", "wide")


def scope_events(
    actions: int, seed_events: int, events: int, individuals: int, new_share: float = 0.0, seed: int = 11
) -> tuple[list[Event], list[Event]]:
    """(seed events, timed events) of one scope with ``actions`` distinct actions.

    The seed covers every action at least once, with a skewed mix on top; the
    timed events follow the same skew, except a share ``new_share`` of them
    that each bring an action never seen before (a snapshot lacking it).
    """
    rnd = random.Random(seed)
    acts = [f"GET /api/v1/resource/{i}" for i in range(actions)]
    weights = [1.0 / (r + 1) ** 1.1 for r in range(actions)]
    picks = [i % actions for i in range(min(actions, seed_events))]
    picks += rnd.choices(range(actions), weights=weights, k=max(0, seed_events - len(picks)))
    seeded = [Event(*SCOPE, f"seed{i % 2000}", acts[a]) for i, a in enumerate(picks)]
    timed = [
        Event(*SCOPE, f"user{rnd.randrange(individuals)}", acts[a] if rnd.random() >= new_share else f"POST /new/{i}")
        for i, a in enumerate(rnd.choices(range(actions), weights=weights, k=events))
    ]
    return seeded, timed


async def one(
    url: str, keys: Keyspace, seeded: list[Event], timed: list[Event], batch: int, max_age_ms: int
) -> dict[str, float]:
    """Seed (drained by a first worker, untimed), then time a fresh worker on the timed events."""
    client = aioredis.Redis.from_url(url, protocol=2)
    await client.flushall()
    await fill(client, keys, seeded)
    # The big scope is over the default distinct-action cap (BINORMAL_MAX_ACTIONS, 10,000): raise it.
    cap = 1_000_000
    await drain(url, len(seeded), batch, max_age_ms, cap)
    await fill(client, keys, timed)
    await client.aclose()
    return await drain(url, len(timed), batch, max_age_ms, cap)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=5_000, help="timed events")
    p.add_argument("--seed-events", type=int, default=30_000, help="events seeding the scope (untimed)")
    p.add_argument("--big", type=int, default=24_000, help="distinct actions of the big scope")
    p.add_argument("--small", type=int, default=20, help="distinct actions of the small scope")
    p.add_argument("--individuals", type=int, default=500)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--max-age-ms", type=int, default=1000, help="snapshot staleness (the default)")
    p.add_argument("--new-share", type=float, default=0.0, help="share of timed events with a never-seen action")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--redis-server", default=None)
    args = p.parse_args()

    binary = quiet_setup(args.redis_server)
    print(
        f"timed events={args.events} seed events={args.seed_events} individuals={args.individuals} "
        f"batch={args.batch} snapshot_max_age_ms={args.max_age_ms}; actions big={args.big} small={args.small}; "
        f"new-action share {args.new_share}"
    )
    keys = Keyspace()
    cases = {
        name: scope_events(n, args.seed_events, args.events, args.individuals, args.new_share)
        for name, n in (("big", args.big), ("small", args.small))
    }
    tune_gc()
    seconds: dict[str, list[float]] = {"big": [], "small": []}
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(tmp, binary=binary).start()
        try:
            for r in range(args.repeat):
                for name in ("big", "small") if r % 2 == 0 else ("small", "big"):
                    res = await one(server.url, keys, *cases[name], args.batch, args.max_age_ms)
                    seconds[name].append(res["seconds"])
                    print(
                        f"run {r + 1} {name:5}: {res['seconds']:.2f} s ({res['events_per_s']:,.0f} events/s), "
                        f"CPU/event worker {res['worker_cpu_us']:.0f} us + redis {res['redis_cpu_us']:.0f} us"
                    )
        finally:
            server.stop()
    big, small = statistics.median(seconds["big"]), statistics.median(seconds["small"])
    print(f"median: big {big:.2f} s, small {small:.2f} s for {args.events} events; ratio {big / small:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
