"""The cost of rejecting repeated JSON keys on ``POST /events``: A/B in one run, medians.

Starts a private redis-server on a free loopback port and the ingest service
in this process (no worker, backpressure off), then posts NDJSON batches of
``--lines`` events, alternating A (the previous ``parse_ndjson``: ``orjson.loads``
per line, which keeps the last of repeated keys) and B (today's, through
``common.schema.parse_json_lines``, which rejects them) batch by batch, and reports
the median events/s and CPU microseconds per event of each (CPU time of this
process, client included: on a shared machine it varies far less than the wall
clock). The streams are deleted between batches so Redis memory stays flat.
Also times the parse alone.
The garbage collector is tuned as the services tune it (``tune_gc``).

    python benchmarks/events_dupcheck.py [--lines N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
import orjson  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from aiohttp import web  # noqa: E402

import binormal.ingest.app as ingest_app  # noqa: E402
from binormal.common.embedded import RedisServer, find_binary  # noqa: E402
from binormal.common.redisapp import REDIS  # noqa: E402
from binormal.common.runtime import tune_gc  # noqa: E402
from binormal.common.server import BoundedAppRunner  # noqa: E402
from binormal.ingest.settings import IngestSettings  # noqa: E402

PREFIX = "benchdup"


def body(lines: int, seed: int = 1) -> bytes:
    """NDJSON events shaped like the feeder's (every line with event_id and ts)."""
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        out.append(
            orjson.dumps(
                {
                    "org": "acme",
                    "source": "webserver",
                    "pop": f"pop{rng.randrange(10)}",
                    "id": f"user{rng.randrange(10_000)}",
                    "action": f"GET /page/{rng.randrange(40)}",
                    "ts": 1_700_000_000_000 + i,
                    "event_id": f"feed-{seed}-{i}",
                }
            )
        )
    return b"\n".join(out) + b"\n"


NEW = ingest_app.parse_ndjson


def old_parse_ndjson(body: bytes) -> ingest_app.Batch:
    """parse_ndjson as it was before repeated keys were checked (commit cbffd2f)."""
    batch = ingest_app.Batch()
    for number, raw in enumerate(body.split(b"\n"), 1):
        line = raw.strip()
        if not line:
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            err = ingest_app.body_not_json(line)
            batch.reject(number, str(err.body["error"]).replace("body", "line", 1), "body")
            continue
        batch.add(number, obj)
    return batch


def parse_only(data: bytes, rounds: int) -> tuple[float, float]:
    """Median seconds of the old (A) and new (B) parse_ndjson."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(rounds):
        for parse, times in ((old_parse_ndjson, a), (NEW, b)):
            t0 = time.perf_counter()
            parse(data)
            times.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)


async def http_ab(
    url: str, data: bytes, lines: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """events/s (wall) and CPU us/event of this process (client and service; Redis apart) per batch."""
    settings = IngestSettings(redis_url=url, prefix=PREFIX, max_lag=10**9, lag_check_s=60.0)
    app = web.Application(client_max_size=settings.max_body_bytes)
    ingest_app.setup(app, settings)
    runner = BoundedAppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    await asyncio.wait_for(app[REDIS].up.wait(), 10.0)
    client = aioredis.Redis.from_url(url)
    rates: dict[str, list[float]] = {"A": [], "B": []}
    cpu: dict[str, list[float]] = {"A": [], "B": []}
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(rounds * 2 + 2):
                which = "A" if i % 2 == 0 else "B"
                ingest_app.parse_ndjson = old_parse_ndjson if which == "A" else NEW  # type: ignore[assignment]
                t0, c0 = time.perf_counter(), time.process_time()
                async with session.post(
                    f"http://127.0.0.1:{port}/events", data=data, headers={"Content-Type": "application/x-ndjson"}
                ) as r:
                    got = await r.json()
                elapsed, cpu_s = time.perf_counter() - t0, time.process_time() - c0
                assert r.status == 202 and got["accepted"] == lines, got
                if i >= 2:  # the first pair warms up
                    rates[which].append(lines / elapsed)
                    cpu[which].append(cpu_s / lines * 1e6)
                await client.delete(*settings.keys.streams())
    finally:
        ingest_app.parse_ndjson = NEW  # type: ignore[assignment]
        await client.aclose()
        await runner.cleanup()
    return rates, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    data = body(args.lines)
    tune_gc()  # as every service does before serving (common/runtime.py)
    pa, pb = parse_only(data, args.rounds)
    print(
        f"parse only, {args.lines} lines ({len(data)} bytes): A {pa * 1e6 / args.lines:.2f} us/line, "
        f"B {pb * 1e6 / args.lines:.2f} us/line ({(pb / pa - 1) * 100:+.1f} %)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(tmp, binary=find_binary("path")).start()
        try:
            rates, cpu = asyncio.run(http_ab(server.url, data, args.lines, args.rounds))
        finally:
            server.stop()
    ma, mb = statistics.median(rates["A"]), statistics.median(rates["B"])
    ca, cb = statistics.median(cpu["A"]), statistics.median(cpu["B"])
    print(
        f"POST /events, {args.rounds} batches each, medians: A (old parse) {ma:,.0f} events/s, "
        f"B (repeats checked) {mb:,.0f} events/s ({(mb / ma - 1) * 100:+.1f} %)"
    )
    print(
        f"CPU of this process per event (robust on a shared machine): A {ca:.2f} us, B {cb:.2f} us "
        f"({(cb / ca - 1) * 100:+.1f} %)"
    )
    for k in "AB":
        print(
            f"{k}:", ", ".join(f"{x:,.0f}" for x in rates[k]), "events/s;", ", ".join(f"{x:.2f}" for x in cpu[k]), "us"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
