"""``binormal feed`` end to end: a 1,000,000-line NDJSON file over HTTP batches to a local service.

Starts, on loopback only, a private redis-server on a free port and
``binormal run`` against it (worker, web and ingest in one process, the
``make run`` shape), writes the log file, then times::

    binormal feed FILE --url http://127.0.0.1:<port> --json

and, separately, how long until the worker has scored every line (the
consumer group drained and the population counters add up to the file).

    python benchmarks/feed_throughput.py [--lines N] [--batch B] [--transport http|direct] [--service run|ingest]

``--service ingest`` runs ``binormal ingest`` alone (no worker, backpressure
off) to measure the feed path by itself: feeder, HTTP, validation, XADD.

Prints lines/s accepted by the service (the feeder's own rate, retries for
503 backpressure included) and lines/s scored end to end. Everything shares
the machine (feeder, service, worker, Redis), which is the point.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

from benchmarks.http_discrete import event_lines  # noqa: E402
from benchmarks.services import binormal, spawn, wait_service  # noqa: E402
from binormal.common.embedded import RedisServer, find_binary, free_port, server_version  # noqa: E402
from binormal.common.keys import Keyspace, Scope  # noqa: E402
from binormal.common.store import stream_lag  # noqa: E402

PREFIX = "bench"


def write_log(path: Path, lines: int, seed: int = 1) -> None:
    """``lines`` web-log events: 20 scopes, 5,000 individuals, 30 actions with a skewed mix."""
    with open(path, "wb") as f:
        chunk: list[bytes] = []
        for line in event_lines(lines, seed, individuals=5000):
            chunk.append(line)
            if len(chunk) >= 10_000:
                f.write(b"\n".join(chunk) + b"\n")
                chunk.clear()
        if chunk:
            f.write(b"\n".join(chunk) + b"\n")


async def wait_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise TimeoutError(f"nothing listening on {port} after {timeout}s")


async def events_counted(client: aioredis.Redis, keys: Keyspace) -> int:
    """Events counted so far: the sum of every scope's population counters."""
    total = 0
    for shard in range(keys.shards):
        for token in await client.smembers(keys.scopes(shard)):
            scope = Scope.from_token(token.decode() if isinstance(token, bytes) else token)
            total += sum(int(v) for v in await client.hvals(keys.scope_key(scope, "pop")))
    return total


async def scored_when(client: aioredis.Redis, keys: Keyspace, lines: int, timeout: float) -> float:
    """Monotonic time at which every line was counted and the group drained."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum((await stream_lag(client, keys)).values()) == 0 and await events_counted(client, keys) >= lines:
            return time.monotonic()
        await asyncio.sleep(0.2)
    raise TimeoutError(f"only {await events_counted(client, keys)} of {lines} counted after {timeout}s")


async def bench(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    server = RedisServer(tmp / "redis", binary=find_binary("path")).start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "REDIS_URL": server.url, "PORT": str(port), "BINORMAL_PREFIX": PREFIX}
    service = None
    client = aioredis.Redis.from_url(server.url, protocol=2)
    try:
        log = tmp / "log.json"
        t = time.monotonic()
        write_log(log, args.lines)
        print(
            f"wrote {args.lines:,} lines ({log.stat().st_size / 1e6:.0f} MB) in {time.monotonic() - t:.1f}s",
            file=sys.stderr,
        )
        if args.service == "ingest":
            # The feed path alone: no worker, backpressure off (nothing is scored).
            env.update(INGEST_PORT=str(port), BINORMAL_MAX_LAG=str(10 * args.lines))
        service = spawn(["--log-level", "WARNING", args.service], env, tmp / "service.log")
        if args.service == "run":
            await wait_service(base)
        else:
            await wait_listening(port)
        cmd = [*binormal(), "feed", str(log), "--json", "--no-progress", "--batch", str(args.batch)]
        if args.transport == "direct":
            cmd += ["--direct", "--redis-url", server.url, "--prefix", PREFIX]
        else:
            cmd += ["--url", base]
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
        )
        out, err = await proc.communicate()
        fed = time.monotonic()
        if proc.returncode != 0:
            raise RuntimeError(f"feed failed ({proc.returncode}): {err.decode()[-2000:]}")
        summary = orjson.loads(out.splitlines()[-1])
        result = {
            "lines": args.lines,
            "service": args.service,
            "transport": args.transport,
            "batch": args.batch,
            "accepted": summary["accepted"],
            "feed_seconds": round(fed - started, 2),
            "feed_lines_per_s": round(args.lines / (fed - started)),
            "retries (503 backpressure)": summary["retries"],
        }
        if args.service == "run":
            done = await scored_when(client, Keyspace(PREFIX, 4), args.lines, timeout=3600)
            result["scored_seconds"] = round(done - started, 2)
            result["scored_lines_per_s"] = round(args.lines / (done - started))
        return result
    finally:
        await client.aclose()
        if service is not None and service.poll() is None:
            service.send_signal(signal.SIGINT)
            try:
                service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                service.kill()
                service.wait()
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--transport", choices=("http", "direct"), default="http")
    p.add_argument(
        "--service",
        choices=("run", "ingest"),
        default="run",
        help="run: worker+web+ingest (scored end to end); ingest: /events alone (the feed path only)",
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="binormal-feed-bench-") as tmp:
        result = asyncio.run(bench(args, Path(tmp)))
    print(
        f"# {platform.node()} {os.cpu_count()} cpus, python {platform.python_version()}, "
        f"redis {server_version(find_binary('path'))}"
    )
    for k, v in result.items():
        print(f"{k:>22}: {v}")


if __name__ == "__main__":
    main()
