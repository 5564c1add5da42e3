"""The alert sender's two read paths on one Redis: one multi-stream XREADGROUP vs one loop per stream.

On Redis Cluster the sender must read each alert stream on its own (the streams hash to different
slots); on a single Redis it keeps one XREADGROUP over every stream. This measures whether that
is worth keeping, A/B in the same run on a private redis-server:

- ``multi``: the single-node path (one loop, one XREADGROUP over the 4 alert streams);
- ``per-stream``: the cluster path forced on the single node (``is_cluster`` patched to True in
  ``binormal.worker.sender`` for that run only: one loop and one raw XREADGROUP per stream).

Each run: N alerts (a quarter per shard) are put on the alert streams, a Sender delivers them to
a loopback webhook answering 200 (tests/support/receiver.py), timed from its start to the last
delivery (alerts/s); then the sender idles ``--idle`` seconds with nothing to read, and the
XREADGROUP calls and Redis CPU of that idle time are read (INFO commandstats, /proc/<pid>/stat).

    python benchmarks/sender_read.py [--alerts N] [--repeat R] [--idle S] [--redis-server PATH]

Prints one line per run and the medians with their ratios. Loopback only; stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from worker_throughput import quiet_setup  # noqa: E402

import binormal.worker.sender as sender_module  # noqa: E402
from binormal.common.alerts import add_alert_rule, parse_alert_rule  # noqa: E402
from binormal.common.embedded import RedisServer  # noqa: E402
from binormal.common.keys import Keyspace  # noqa: E402
from binormal.worker.sender import Sender, SenderSettings  # noqa: E402
from tests.support.receiver import Receiver, receiving  # noqa: E402

MODES = ("multi", "per-stream")


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def xreadgroup_calls(client: aioredis.Redis) -> int:
    """XREADGROUP calls the server has run (INFO commandstats)."""
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_xreadgroup", {}).get("calls", 0))


async def one_run(
    client: aioredis.Redis, server: RedisServer, keys: Keyspace, mode: str, n: int, idle: float
) -> dict[str, float]:
    """Deliver ``n`` alerts with the sender in ``mode``, then idle; the numbers of that run."""
    await client.flushall()
    async with receiving(Receiver()) as rx:
        rule = parse_alert_rule({"name": "r", "scope": "*/*/*", "min_zscore": 3, "webhook": rx.url}, by="bench")
        await add_alert_rule(client, keys, rule)
        pipe = client.pipeline(transaction=False)
        for i in range(n):
            body = {"rule": "r", "rule_org": "*", "scope": f"org/src/p{i % 50}", "id": f"u{i}", "zscore": 5.0}
            pipe.xadd(keys.alert_stream(i % keys.shards), {"alert": orjson.dumps(body)})
        await pipe.execute()
        original = sender_module.is_cluster
        if mode == "per-stream":
            sender_module.is_cluster = lambda c: True  # type: ignore[assignment]  # the cluster path on one node
        try:
            settings = SenderSettings(consumer="bench", block_ms=1000, claim_idle_ms=600_000)
            sender = Sender(client, keys, settings)
            t0 = time.perf_counter()
            task = asyncio.create_task(sender.run())
            while sender.counters.delivered < n:
                if task.done():
                    task.result()
                await asyncio.sleep(0.005)
            seconds = time.perf_counter() - t0
            calls0, cpu0 = await xreadgroup_calls(client), cpu_s(server.pid or 0)
            await asyncio.sleep(idle)
            calls1, cpu1 = await xreadgroup_calls(client), cpu_s(server.pid or 0)
            sender.stop()
            await asyncio.wait_for(task, timeout=10)
        finally:
            sender_module.is_cluster = original
        assert len(rx.got) >= n, (len(rx.got), n)
    return {
        "alerts_per_s": n / seconds,
        "idle_reads_per_s": (calls1 - calls0) / idle,
        "idle_redis_cpu_ms_per_s": 1000 * (cpu1 - cpu0) / idle,
    }


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--alerts", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--idle", type=float, default=3.0)
    p.add_argument("--redis-server", default=None)
    args = p.parse_args()
    binary = quiet_setup(args.redis_server)
    keys = Keyspace()
    print(f"alerts={args.alerts} shards={keys.shards} repeat={args.repeat} idle={args.idle}s (A/B alternating)")
    got: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(tmp, binary=binary).start()
        try:
            client = aioredis.Redis.from_url(server.url, protocol=2)
            for r in range(args.repeat):
                for mode in MODES if r % 2 == 0 else MODES[::-1]:
                    res = await one_run(client, server, keys, mode, args.alerts, args.idle)
                    got[mode].append(res)
                    print(
                        f"run {r + 1} {mode:>10}: {res['alerts_per_s']:,.0f} alerts/s; idle: "
                        f"{res['idle_reads_per_s']:.1f} XREADGROUP/s, "
                        f"Redis CPU {res['idle_redis_cpu_ms_per_s']:.2f} ms/s"
                    )
            await client.aclose()
        finally:
            server.stop()
    med = {m: {k: statistics.median(r[k] for r in got[m]) for k in got[m][0]} for m in MODES}
    for key in med["multi"]:
        a, b = med["multi"][key], med["per-stream"][key]
        ratio = b / a if a else float("nan")
        print(f"median {key}: multi {a:,.2f}  per-stream {b:,.2f}  per-stream/multi {ratio:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
