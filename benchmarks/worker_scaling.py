"""How the drain scales with 1, 2 and 4 ``binormal worker`` processes.

Fills the stream shards of a private redis-server (or, with ``--cluster``, of a
private 3-master Redis Cluster) with the same N events as
benchmarks/worker_throughput.py, then, for each worker count, starts that many
``binormal worker`` processes, lets them drain the streams and times it:
events/s, and CPU per event of the workers and of the redis-server(s), read from
``/proc/<pid>/stat`` (utime + stime) before and after the drain. After every
drain the counters (every scope's pop/sq/k/raw hash and every individual's
hash) are compared with the totals counted from the input, and their digest
with the one-worker run's: the counters must be identical whatever the number
of workers.

The workers share the shards through the consumer group only: each one reads
every shard with XREADGROUP ``>`` and Redis hands every entry to exactly one
consumer (no lock of ours). The share of entries each worker applied (from its
``worker_stopped`` log line) is printed.

How the drain is timed: the groups are created at the streams' end (``$``)
after the fill, the workers start and report ready, then ``XGROUP SETID ... 0``
on every shard releases the backlog at once (t0); the drain ends when every
shard has nothing pending and nothing undelivered and no score is left
uncommitted (polled every 20 ms). Process start-up is not in the time.

    python benchmarks/worker_scaling.py [--events N] [--workers 1,2,4] [--repeat R] [--cluster]

Loopback only; every server and worker is ours and stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from redis.asyncio.cluster import RedisCluster  # noqa: E402
from worker_throughput import make_events, quiet_setup  # noqa: E402

from binormal.common.embedded import RedisServer  # noqa: E402
from binormal.common.keys import Keyspace, Scope  # noqa: E402
from binormal.common.localcluster import LocalCluster  # noqa: E402
from tests.support.events import counts_from_events  # noqa: E402
from tests.support.processes import clean_env  # noqa: E402
from tests.support.redis_state import check_counters, individual_counts, xadd_events  # noqa: E402
from tests.support.workers import binormal_command  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
Truth = Mapping[Scope, Mapping[str, Mapping[str, int]]]


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` from /proc/<pid>/stat, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass
class Target:
    """Where the benchmark runs: one redis-server or a LocalCluster."""

    url: str
    redis_pids: list[int]
    cluster: bool

    def client(self) -> Any:
        """An asyncio client (the cluster client on a cluster), RESP2 like the services."""
        if self.cluster:
            return RedisCluster.from_url(self.url, protocol=2)
        return aioredis.Redis.from_url(self.url, protocol=2)


async def flush_target(target: Target, client: Any) -> None:
    """FLUSHALL on our server, or on every master of our cluster."""
    if target.cluster:
        await client.flushall(target_nodes=RedisCluster.PRIMARIES)
    else:
        await client.flushall()


async def backlog_left(client: Any, keys: Keyspace) -> int:
    """Entries pending or undelivered over every shard, plus uncommitted scores."""
    left = 0
    for shard, stream in enumerate(keys.streams()):
        for g in await client.xinfo_groups(stream):
            left += int(g["pending"])
            last = g["last-delivered-id"]
            last = last.decode() if isinstance(last, bytes) else str(last)
            left += len(await client.xrange(stream, min=f"({last}", max="+", count=1))
        left += int(await client.hlen(keys.uncommitted(shard)))
    return left


def hash_bytes(fields: Mapping[bytes, bytes]) -> bytes:
    """A hash's fields as one byte string, sorted (field and value length-prefixed)."""
    return b"".join(b"%d:%s%d:%s" % (len(k), k, len(v), v) for k, v in sorted(fields.items())) + b"|"


async def counter_digest(client: Any, keys: Keyspace, truth: Truth) -> str:
    """sha256 of every scope counter hash and every individual's counts by action name (sorted):
    equal digests, equal counters. (Individuals' hashes are keyed by the scope's action numbers,
    given in the order actions first arrive, which differs between runs: they are read by name.)"""
    h = hashlib.sha256()
    for scope in sorted(truth, key=lambda s: (s.org, s.source, s.pop)):
        for kind in ("pop", "sq", "k", "raw"):
            h.update(hash_bytes(await client.hgetall(keys.scope_key(scope, kind))))
        ids = sorted(truth[scope])
        for counts in await individual_counts(client, keys, scope, ids):
            h.update(hash_bytes({a.encode(): str(c).encode() for a, c in counts.items()}))
    return h.hexdigest()


def start_workers(n: int, target: Target, keys: Keyspace, args: argparse.Namespace, logdir: Path) -> list[Any]:
    """``n`` ``binormal worker`` children (their JSON logs in ``logdir``)."""
    procs = []
    for i in range(n):
        env = dict(
            clean_env(),
            REDIS_URL=target.url,
            BINORMAL_PREFIX=keys.prefix,
            BINORMAL_SHARDS=str(keys.shards),
            BINORMAL_CONSUMER=f"w{i}",
            BINORMAL_BATCH=str(args.batch),
            BINORMAL_BLOCK_MS="100",
            BINORMAL_SNAPSHOT_MAX_AGE_MS=str(args.max_age_ms),
            BINORMAL_TRIM_INTERVAL_S="0",
            BINORMAL_LOG_LEVEL="INFO",
        )
        if target.cluster:
            env["BINORMAL_REDIS_CLUSTER"] = "1"
        with open(logdir / f"w{i}.log", "wb") as log:
            procs.append(subprocess.Popen([*binormal_command(), "worker"], env=env, stdout=log, stderr=log))
    return procs


def log_events(path: Path, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``path`` whose event is ``event``."""
    out = []
    for line in path.read_bytes().splitlines():
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict) and obj.get("event") == event:
            out.append(obj)
    return out


async def wait_logged(procs: list[Any], logdir: Path, event: str, timeout: float) -> None:
    """Until every worker logged ``event`` (fail if one exits first)."""
    deadline = time.monotonic() + timeout
    for i, proc in enumerate(procs):
        while not log_events(logdir / f"w{i}.log", event):
            if proc.poll() is not None and event != "worker_stopped":
                raise RuntimeError(f"worker w{i} exited with {proc.returncode}: {(logdir / f'w{i}.log').read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker w{i} did not log {event} in {timeout}s")
            await asyncio.sleep(0.05)


async def one_run(
    n: int, target: Target, keys: Keyspace, events: list[Any], truth: Truth, args: argparse.Namespace
) -> dict[str, Any]:
    """Fill, start ``n`` workers, release the backlog, time the drain, check the counters."""
    client = target.client()
    await flush_target(target, client)
    await xadd_events(client, keys, events, chunk=2000)
    for stream in keys.streams():
        # At the end: nothing is delivered until SETID 0 below, when every worker is up.
        await client.xgroup_create(stream, keys.group, id="$", mkstream=True)
    with tempfile.TemporaryDirectory() as logs:
        logdir = Path(logs)
        procs = start_workers(n, target, keys, args, logdir)
        try:
            await wait_logged(procs, logdir, "worker_ready", 60)
            pids = [p.pid for p in procs]
            w0 = sum(cpu_seconds(p) for p in pids)
            r0 = sum(cpu_seconds(p) for p in target.redis_pids)
            t0 = time.perf_counter()
            for stream in keys.streams():
                await client.xgroup_setid(stream, keys.group, id="0")
            while await backlog_left(client, keys):
                await asyncio.sleep(0.02)
            elapsed = time.perf_counter() - t0
            worker_cpu = sum(cpu_seconds(p) for p in pids) - w0
            redis_cpu = sum(cpu_seconds(p) for p in target.redis_pids) - r0
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                p.wait(30)
        applied = [
            sum(int(e.get("applied", 0)) for e in log_events(logdir / f"w{i}.log", "worker_stopped")) for i in range(n)
        ]
    problems = await check_counters(client, keys, truth)
    digest = await counter_digest(client, keys, truth)
    await client.aclose()
    return {
        "workers": n,
        "events_per_s": len(events) / elapsed,
        "seconds": elapsed,
        "worker_cpu_us": worker_cpu / len(events) * 1e6,
        "redis_cpu_us": redis_cpu / len(events) * 1e6,
        "applied": applied,
        "problems": problems,
        "digest": digest,
    }


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--scopes", type=int, default=10)
    p.add_argument("--individuals", type=int, default=10_000)
    p.add_argument("--actions", type=int, default=40)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--max-age-ms", type=int, default=1000, help="snapshot staleness")
    p.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--cluster", action="store_true", help="a private 3-master Redis Cluster instead of one node")
    p.add_argument("--redis-server", default=None)
    args = p.parse_args()

    binary = quiet_setup(args.redis_server)
    counts = [int(x) for x in args.workers.split(",")]
    print(
        f"cpus={os.cpu_count()} events={args.events} scopes={args.scopes} individuals={args.individuals} "
        f"actions={args.actions} shards={args.shards} batch={args.batch} snapshot_max_age_ms={args.max_age_ms} "
        f"target={'3-master cluster' if args.cluster else 'one redis-server'}"
    )
    events = make_events(args.events, args.scopes, args.individuals, args.actions)
    truth = counts_from_events(events)
    keys = Keyspace(prefix="bench", shards=args.shards)
    results: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    digests: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        server: RedisServer | LocalCluster
        if args.cluster:
            server = LocalCluster(tmp, masters=3, binary=binary).start()
            pids = [node.proc.pid for node in server.nodes if node.proc is not None]
        else:
            server = RedisServer(tmp, binary=binary).start()
            assert server.proc is not None
            pids = [server.proc.pid]
        target = Target(server.url, pids, args.cluster)
        try:
            for r in range(args.repeat):
                for n in counts:  # interleaved: a slow moment of the machine hits every count alike
                    res = await one_run(n, target, keys, events, truth, args)
                    results[n].append(res)
                    digests.add(res["digest"])
                    print(
                        f"run {r + 1} workers={n}: {res['events_per_s']:,.0f} events/s ({res['seconds']:.2f} s), "
                        f"CPU/event workers {res['worker_cpu_us']:.0f} us + redis {res['redis_cpu_us']:.0f} us; "
                        f"applied per worker {res['applied']}; counters "
                        f"{'= input totals' if not res['problems'] else 'DIFFER: ' + str(res['problems'][:3])}; "
                        f"digest {res['digest'][:12]}",
                        flush=True,
                    )
        finally:
            server.stop()
    base = statistics.median(r["events_per_s"] for r in results[counts[0]])
    for n in counts:
        med = statistics.median(r["events_per_s"] for r in results[n])
        wcpu = statistics.median(r["worker_cpu_us"] for r in results[n])
        rcpu = statistics.median(r["redis_cpu_us"] for r in results[n])
        print(
            f"median workers={n}: {med:,.0f} events/s ({med / base:.2f}x of {counts[0]}), "
            f"CPU/event workers {wcpu:.0f} us + redis {rcpu:.0f} us"
        )
    bad = sum(1 for rs in results.values() for r in rs if r["problems"])
    print(f"counters: {bad} runs differ from the input totals; {len(digests)} distinct digest(s) over all runs")


if __name__ == "__main__":
    asyncio.run(main())
