"""The cost of common/server.py's bounded protocol: A/B in one run, medians.

Serves one trivial route twice in this process, with aiohttp's own runner (A)
and with :class:`common.server.BoundedAppRunner` (B: head timer, connection
cap, JSON protocol errors), and alternates blocks of 500 keep-alive requests
between them; reports the CPU of this process (client and server) per request.

    python benchmarks/http_bounds.py [--blocks N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from binormal.common.runtime import tune_gc  # noqa: E402
from binormal.common.server import BoundedAppRunner, HttpLimits, setup_limits  # noqa: E402

REQUESTS = 500


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"alive"}', content_type="application/json")


async def serve(runner_cls: type[web.AppRunner]) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    setup_limits(app, HttpLimits())
    runner = runner_cls(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


async def main(blocks: int) -> dict[str, list[float]]:
    (ra, pa), (rb, pb) = await serve(web.AppRunner), await serve(BoundedAppRunner)
    cpu: dict[str, list[float]] = {"A": [], "B": []}
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(2 * blocks + 2):
                which = "AB"[i % 2]
                url = f"http://127.0.0.1:{pa if which == 'A' else pb}/healthz"
                c0 = time.process_time()
                for _ in range(REQUESTS):
                    async with session.get(url) as r:
                        await r.read()
                if i >= 2:  # the first pair warms up
                    cpu[which].append((time.process_time() - c0) / REQUESTS * 1e6)
    finally:
        await ra.cleanup()
        await rb.cleanup()
    return cpu


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=10)
    args = parser.parse_args()
    tune_gc()
    cpu = asyncio.run(main(args.blocks))
    a, b = statistics.median(cpu["A"]), statistics.median(cpu["B"])
    print(
        f"CPU per request (client + server), medians of {args.blocks} blocks of {REQUESTS}: "
        f"A aiohttp {a:.1f} us, B bounded {b:.1f} us ({(b / a - 1) * 100:+.1f} %)"
    )
