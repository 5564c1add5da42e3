"""Authentication's cost on the HTTP path alone: ``POST /events`` and ``POST /discrete``, auth off vs on.

One process, no worker: web + ingest on one aiohttp app on a loopback port against a private
redis-server (flushed before every run), driven by an aiohttp client in the same process.
``/events``: ``--batches`` NDJSON bodies of 1,000 events from 4 clients. ``/discrete``: the
requests are answered 504 by the timeout (no worker), so it is measured with a 1 ms timeout and
the write path only. Off and on alternate ``--rounds`` times; CPU seconds of this process per
event/request and events/s, medians and on/off ratios. With auth on the token is a producer
limited to the events' four orgs, so the per-event org check runs.

    python benchmarks/auth_overhead.py [--rounds 7] [--batches 100]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
import redis  # noqa: E402

from benchmarks.http_discrete import bodies  # noqa: E402
from binormal.common import log  # noqa: E402
from binormal.common.auth import hash_token  # noqa: E402
from binormal.common.embedded import RedisServer, find_binary  # noqa: E402
from tests.support.http import combined_app, ingest_settings, serving, web_settings  # noqa: E402

TOKEN = "bench-producer-token-not-secret"


async def one_run(url: str, tokens: str, batches: int, requests: int) -> dict[str, float]:
    ws = web_settings(url, "bn", discrete_timeout_s=0.001, tokens_file=tokens)
    ins = replace(ingest_settings(url, "bn", tokens_file=tokens), max_lag=10**9)
    headers = {"Authorization": f"Bearer {TOKEN}"} if tokens else {}
    payload = bodies(50_000, seed=2)
    ndjson = [b"\n".join(payload[(i * 1000 + j) % len(payload)] for j in range(1000)) for i in range(batches)]
    async with serving(combined_app(ws, ins)) as base, aiohttp.ClientSession(headers=headers) as http:

        async def events_client(it: Any) -> None:
            for body in it:
                async with http.post(
                    base + "/events", data=body, headers={"Content-Type": "application/x-ndjson"}
                ) as r:
                    assert r.status == 202, await r.text()

        async def discrete_client(it: Any) -> None:
            for i in it:
                async with http.post(
                    base + "/discrete", data=payload[i % len(payload)], headers={"Content-Type": "application/json"}
                ) as r:
                    assert r.status == 504, await r.text()

        it = iter(ndjson)
        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(events_client(it) for _ in range(4)))
        c1, t1 = time.process_time(), time.perf_counter()
        rit = iter(range(requests))
        await asyncio.gather(*(discrete_client(rit) for _ in range(16)))
        c2, t2 = time.process_time(), time.perf_counter()
    n = batches * 1000
    return {
        "events/s": n / (t1 - t0),
        "events CPU us/event": 1e6 * (c1 - c0) / n,
        "discrete req/s": requests / (t2 - t1),
        "discrete CPU us/req": 1e6 * (c2 - c1) / requests,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--requests", type=int, default=5000)
    args = ap.parse_args()
    log.configure("WARNING")
    with tempfile.TemporaryDirectory(prefix="binormal-auth-") as tmp:
        tokens = Path(tmp) / "tokens"
        tokens.write_text(f"bench producer org0,org1,org2,org3 sha256:{hash_token(TOKEN).hex()}\n")
        tokens.chmod(0o600)
        server = RedisServer(Path(tmp) / "redis", binary=find_binary("path")).start()
        runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        try:
            for i in range(args.rounds):
                for auth in (False, True) if i % 2 == 0 else (True, False):
                    with redis.Redis.from_url(server.url) as r:
                        r.flushall()
                    got = asyncio.run(one_run(server.url, str(tokens) if auth else "", args.batches, args.requests))
                    runs[auth].append(got)
                    print(
                        f"round {i + 1} auth {'on ' if auth else 'off'}: "
                        + ", ".join(f"{k} {v:.1f}" for k, v in got.items()),
                        flush=True,
                    )
        finally:
            server.stop()
    print(f"medians of {args.rounds} rounds: off | on | on/off")
    for key in runs[False][0]:
        off = statistics.median(r[key] for r in runs[False])
        on = statistics.median(r[key] for r in runs[True])
        print(f"{key}: {off:.1f} | {on:.1f} | {on / off:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
