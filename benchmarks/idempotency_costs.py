"""Cost of issue 9's idempotency slice, A/B in one run (``python benchmarks/idempotency_costs.py``).

1. Generated ids: the old ``RequestIds`` (a 64-bit process prefix + a counter,
   reproduced here) against the new one (128 random bits from ``os.urandom``,
   drawn 256 ids at a time), ``os.urandom(16).hex()`` per id and ``uuid4().hex``.
2. ``POST /events`` with and without the distinct-action pre-check
   (``ingest/actioncap.py``): the real ingest app on a loopback port against a
   private redis-server, 1,000-line NDJSON bodies over a few normal scopes,
   rounds alternating A and B; medians of the per-request wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import tempfile
import time
import timeit
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
import orjson  # noqa: E402
from aiohttp import web  # noqa: E402

from binormal.common.embedded import RedisServer  # noqa: E402
from binormal.common.redisapp import REDIS  # noqa: E402
from binormal.ingest.app import INGEST, create_app  # noqa: E402
from binormal.ingest.settings import IngestSettings  # noqa: E402
from binormal.web.app import RequestIds  # noqa: E402


class OldRequestIds:
    """main's ids before issue 9: a random 64-bit prefix plus a counter (predictable)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._next = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}{next(self._next):016x}"


def bench_ids(number: int = 200_000, repeat: int = 7) -> None:
    old, new = OldRequestIds(), RequestIds()
    cases = {
        "old: prefix + counter": old.new,
        "new: os.urandom block of 256": new.new,
        "os.urandom(16).hex() per id": lambda: os.urandom(16).hex(),
        "uuid.uuid4().hex": lambda: uuid.uuid4().hex,
    }
    base = None
    print(f"generated ids ({number:,} per run, best and median of {repeat} runs, ns per id)")
    for name, fn in cases.items():
        runs = [t / number * 1e9 for t in timeit.repeat(fn, number=number, repeat=repeat)]
        best, med = min(runs), statistics.median(runs)
        base = base or med
        print(f"  {name:32s} best {best:6.0f}  median {med:6.0f}  ratio to old {med / base:5.2f}")


def body(lines: int, scopes: int, seq: int) -> bytes:
    out = []
    for i in range(lines):
        out.append(
            orjson.dumps(
                {
                    "org": "acme",
                    "source": "web",
                    "pop": f"p{i % scopes}",
                    "id": f"u{i % 97}",
                    "action": f"GET /{i % 20}",
                    "event_id": f"b{seq}-{i}",
                }
            )
        )
    return b"\n".join(out) + b"\n"


async def bench_events(rounds: int, lines: int, scopes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(tmp).start()
        try:
            settings = IngestSettings(redis_url=server.url, prefix="bench", shards=4, lag_check_s=1.0, max_lag=10**9)
            app = create_app(settings)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            base = f"http://127.0.0.1:{runner.addresses[0][1]}"
            await asyncio.wait_for(app[REDIS].up.wait(), 10)
            st = app[INGEST]
            real_check = st.cap.check

            async def no_check(client: Any, events: Any, batch: Any) -> Any:
                return events

            times: dict[str, list[float]] = {"A: no pre-check": [], "B: pre-check": []}
            async with aiohttp.ClientSession() as session:
                seq = 0
                for r in range(rounds + 2):  # two warm-up rounds
                    for name, check in (("A: no pre-check", no_check), ("B: pre-check", real_check)):
                        st.cap.check = check  # type: ignore[method-assign]
                        seq += 1
                        data = body(lines, scopes, seq)
                        started = time.perf_counter()
                        async with session.post(
                            f"{base}/events", data=data, headers={"Content-Type": "application/x-ndjson"}
                        ) as resp:
                            assert resp.status == 202, await resp.text()
                        if r >= 2:
                            times[name].append(time.perf_counter() - started)
                    if r % 20 == 0:
                        # keep Redis small: the streams are not read by anyone here
                        await app[REDIS].client.flushall()
            await runner.cleanup()
        finally:
            server.stop()
    a, b = (statistics.median(v) * 1000 for v in times.values())
    print(f"POST /events, {lines}-line bodies over {scopes} scopes, {rounds} rounds A/B interleaved (median ms)")
    print(f"  A: no pre-check  {a:7.2f} ms  ({lines / a:,.0f} lines/ms)")
    print(f"  B: pre-check     {b:7.2f} ms  ({lines / b:,.0f} lines/ms)")
    print(f"  B/A ratio        {b / a:7.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--scopes", type=int, default=3)
    args = parser.parse_args()
    bench_ids()
    asyncio.run(bench_events(args.rounds, args.lines, args.scopes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
