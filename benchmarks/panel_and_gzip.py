"""Issue 13's two pieces, measured: gzip body decoding (ours vs aiohttp's) and the alert push latency.

A: ``POST`` of a gzip NDJSON body (default 1 MiB decoded, ~10,000 lines) to a route that only reads it
with ``common.http.read_body``, served by aiohttp's plain ``AppRunner`` (aiohttp decodes it: the old
path) and by ``BoundedAppRunner`` (``common/bodycoding.py`` decodes it: the new path), alternated
request by request in one run; medians and their ratio.

B: an alert XADDed to a shard's alert stream (as alert.lua does) until it arrives on a ``stats=1``
websocket of the web tier (``web/alertfeed.py`` polls every 0.25 s): median and p95 over N alerts,
spread over the shards, with one web process and a private redis-server.

    python benchmarks/panel_and_gzip.py [--requests N] [--alerts N] [--kib K]

Loopback only; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
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

from binormal.common.embedded import RedisServer, find_binary, free_port  # noqa: E402
from binormal.common.http import json_response, read_body  # noqa: E402
from binormal.common.keys import Scope  # noqa: E402
from binormal.common.server import BoundedAppRunner  # noqa: E402
from binormal.web.app import create_app  # noqa: E402
from binormal.web.live import HUB_KEY  # noqa: E402
from binormal.web.settings import WebSettings  # noqa: E402

LIMIT = 64 << 20


async def _read(request: web.Request) -> web.Response:
    body = await read_body(request, LIMIT)
    return json_response({"bytes": len(body)})


async def serve(runner: web.AppRunner) -> str:
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return f"http://127.0.0.1:{port}/read"


def body_of(kib: int) -> tuple[bytes, int]:
    lines = []
    size = 0
    i = 0
    while size < kib * 1024:
        line = orjson.dumps({"org": "acme", "source": "web", "pop": "users", "id": f"u{i % 5000}", "action": "GET /x"})
        lines.append(line + b"\n")
        size += len(line) + 1
        i += 1
    raw = b"".join(lines)
    return gzip.compress(raw), len(raw)


async def bench_gzip(requests: int, kib: int) -> None:
    body, decoded = body_of(kib)
    print(f"A: gzip NDJSON body {len(body)} bytes on the wire, {decoded} decoded; {requests} requests per side")
    runners: dict[str, web.AppRunner] = {}
    urls: dict[str, str] = {}
    for name, cls in (("aiohttp", web.AppRunner), ("ours", BoundedAppRunner)):
        app = web.Application(client_max_size=LIMIT)
        app.router.add_post("/read", _read)
        runners[name] = cls(app, access_log=None)
        urls[name] = await serve(runners[name])
    times: dict[str, list[float]] = {n: [] for n in urls}
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/x-ndjson"}
    async with aiohttp.ClientSession() as http:
        for k in range(requests + 5):
            for name in ("aiohttp", "ours") if k % 2 else ("ours", "aiohttp"):
                t0 = time.perf_counter()
                async with http.post(urls[name], data=body, headers=headers) as r:
                    got = await r.json()
                assert r.status == 200 and got["bytes"] == decoded, (name, r.status, got)
                if k >= 5:  # warm-up
                    times[name].append((time.perf_counter() - t0) * 1000)
    for runner in runners.values():
        await runner.cleanup()
    med = {n: statistics.median(v) for n, v in times.items()}
    for n, v in times.items():
        print(f"   {n:8s} median {med[n]:.2f} ms  p90 {statistics.quantiles(v, n=10)[-1]:.2f} ms")
    print(f"   ratio ours/aiohttp (medians) {med['ours'] / med['aiohttp']:.3f}")


async def bench_alerts(n: int) -> None:
    binary = find_binary()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), binary=binary)
        server.start()
        try:
            url = f"redis://127.0.0.1:{server.port}/0"
            settings = WebSettings(redis_url=url, prefix="bench")
            keys = settings.keys
            app = create_app(settings)
            runner = BoundedAppRunner(app, access_log=None)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            client = aioredis.Redis.from_url(url, protocol=2)
            lat: list[float] = []
            try:
                while not app[HUB_KEY].alert_feed_up:
                    await asyncio.sleep(0.05)
                async with aiohttp.ClientSession() as http:
                    async with http.ws_connect(f"http://127.0.0.1:{port}/websocket?stats=1") as ws:
                        await ws.receive(timeout=5)  # hello
                        for i in range(n):
                            scope = Scope("acme", "web", f"p{i}")
                            alert = {"rule": "r", "scope": "/".join(scope), "id": f"u{i}", "zscore": 5.0}
                            t0 = time.perf_counter()
                            await client.xadd(keys.alert_stream(keys.shard(scope)), {"alert": orjson.dumps(alert)})
                            while True:
                                msg = await ws.receive(timeout=5)
                                if any(b'"type":"alert"' in ln for ln in msg.data.encode().split(b"\n")):
                                    break
                            lat.append((time.perf_counter() - t0) * 1000)
                            await asyncio.sleep(0.05 * (i % 7))  # land at different points of the poll
            finally:
                await client.aclose()
                await runner.cleanup()
        finally:
            server.stop()
    q = statistics.quantiles(lat, n=20)
    print(f"B: {n} alerts, XADD -> websocket: median {statistics.median(lat):.0f} ms, p95 {q[-1]:.0f} ms, ", end="")
    print(f"max {max(lat):.0f} ms (poll interval 250 ms)")


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--kib", type=int, default=1024)
    p.add_argument("--alerts", type=int, default=40)
    args = p.parse_args()
    await bench_gzip(args.requests, args.kib)
    await bench_alerts(args.alerts)


if __name__ == "__main__":
    asyncio.run(main())
