"""What ``BINORMAL_FSYNC=always`` (``appendfsync always``) costs against ``everysec``.

A/B in one run, alternating the two policies ``--repeat`` times, each on a fresh
private redis-server with AOF on (its data dir on the disk of ``--dir``):

- the worker: one Worker draining ``--events`` events (worker_throughput.py);
- HTTP: ``binormal run`` against that Redis, ``POST /discrete`` at ``--clients``
  concurrent clients and ``POST /events`` in 1,000-event bodies (http_discrete.py).

    python benchmarks/fsync.py [--repeat 3] [--events 50000] [--clients 16]

Prints one line per run and the medians per policy. Loopback only; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis.asyncio as aioredis  # noqa: E402

from benchmarks.http_discrete import bench  # noqa: E402
from benchmarks.worker_throughput import drain, fill, make_events, quiet_setup  # noqa: E402
from binormal.common.embedded import RedisServer  # noqa: E402
from binormal.common.keys import Keyspace  # noqa: E402

POLICIES = ("everysec", "always")


async def worker_run(url: str, events: list) -> float:
    """events/s of one Worker draining ``events`` (filled untimed)."""
    client = aioredis.Redis.from_url(url, protocol=2)
    await client.flushall()
    await fill(client, Keyspace(), events)
    await client.aclose()
    return (await drain(url, len(events), 500, 1000))["events_per_s"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--events", type=int, default=50_000, help="events the worker drains per run")
    p.add_argument("--clients", type=int, default=16, help="concurrent /discrete clients")
    p.add_argument("--requests", type=int, default=4_000, help="/discrete requests per run")
    p.add_argument("--batches", type=int, default=40, help="/events bodies of 1,000 events per run")
    p.add_argument("--dir", default=None, help="where the AOF goes (default: the system temp dir)")
    p.add_argument("--redis-server", default=None)
    args = p.parse_args()
    binary = quiet_setup(args.redis_server)
    events = make_events(args.events, 10, 10_000, 40)
    http_args = argparse.Namespace(
        mode="run",
        client="aiohttp",
        requests=args.requests,
        seconds=30.0,
        batches=args.batches,
        log_level="WARNING",
        levels=[args.clients],
        env=[],
    )
    got: dict[str, dict[str, list[float]]] = {
        pol: {"worker": [], "rps": [], "p50": [], "p99": [], "events": []} for pol in POLICIES
    }
    for r in range(args.repeat):
        for pol in POLICIES if r % 2 == 0 else POLICIES[::-1]:
            with tempfile.TemporaryDirectory(prefix="binormal-fsync-", dir=args.dir) as tmp:
                server = RedisServer(Path(tmp) / "redis", binary=binary, aof=True, fsync=pol).start()
                try:
                    w = asyncio.run(worker_run(server.url, events))
                    asyncio.run(aioredis.Redis.from_url(server.url).flushall())
                    h = asyncio.run(bench(http_args, server.url, Path(tmp), server.pid))
                finally:
                    server.stop()
            d = h["discrete"][0]
            for key, value in (
                ("worker", w),
                ("rps", d["rps"]),
                ("p50", d["p50_ms"]),
                ("p99", d["p99_ms"]),
                ("events", h["events"]["events_per_s"]),
            ):
                got[pol][key].append(value)
            print(
                f"run {r + 1} {pol:8}: worker {w:,.0f} events/s; /discrete x{args.clients} {d['rps']} req/s "
                f"p50 {d['p50_ms']} ms p99 {d['p99_ms']} ms; /events {h['events']['events_per_s']:,} events/s",
                flush=True,
            )
    med = {pol: {k: statistics.median(v) for k, v in got[pol].items()} for pol in POLICIES}
    for pol in POLICIES:
        m = med[pol]
        print(
            f"median {pol:8}: worker {m['worker']:,.0f} events/s; /discrete {m['rps']:,.0f} req/s "
            f"p50 {m['p50']:.2f} ms p99 {m['p99']:.2f} ms; /events {m['events']:,.0f} events/s"
        )
    a, e = med["always"], med["everysec"]
    print(
        f"always/everysec: worker {a['worker'] / e['worker']:.2f}, /discrete req/s {a['rps'] / e['rps']:.2f}, "
        f"p50 {a['p50'] / e['p50']:.2f}, /events {a['events'] / e['events']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
