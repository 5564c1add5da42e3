"""Scoring throughput of one worker with 10 alert rules vs none (issue 13: within 5 %).

Fills a private redis-server with N events (default 100,000; the worker_throughput.py mix: 10
scopes, 10,000 individuals, 40 actions), then times one Worker draining them, A/B in the same
run: no alert rule, then 10 rules that all match every scope (``*/*/*``, thresholds zscore 3..12:
the worst case, 10 fire decisions per result in ``alert.lua``), each on a fresh copy of the data.
``--spread``: each rule matches one of the 10 scopes instead (one decision per result).

    python benchmarks/alerts_overhead.py [--events N] [--repeat R] [--spread] [--redis-server PATH]

Prints one line per run and the medians with their ratio. Loopback only; stops by itself.
The alert path's own cost, less blurred by the machine's load than events/s: the worker's CPU
inside ``BatchProcessor._alert`` per event, and Redis's CPU for the run's ``alert.lua`` calls,
replayed after the run (same calls, in order; the states they find are the run's own by then,
so it fires less than the run did: the cost of the common case, a check that crosses nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis.asyncio as aioredis  # noqa: E402
from worker_throughput import drain, fill, make_events, quiet_setup, redis_cpu_s  # noqa: E402

from binormal.common.alertcheck import ALERT_LAYOUT  # noqa: E402
from binormal.common.alerts import add_alert_rule, parse_alert_rule  # noqa: E402
from binormal.common.connection import execute_raw  # noqa: E402
from binormal.common.embedded import RedisServer  # noqa: E402
from binormal.common.keys import Keyspace  # noqa: E402
from binormal.common.runtime import tune_gc  # noqa: E402
from binormal.worker import Worker  # noqa: E402


async def add_rules(client: aioredis.Redis, keys: Keyspace, n: int, spread: bool) -> None:
    """``n`` rules matching every scope (else one scope each), zscore thresholds 3, 4, ... (webhook never called)."""
    for i in range(n):
        scope = f"org{i % 3}/src{i}/pop{i}" if spread else "*/*/*"
        rule = parse_alert_rule(
            {"name": f"r{i}", "scope": scope, "min_zscore": 3 + i, "webhook": "http://127.0.0.1:9/h"}, by="bench"
        )
        await add_alert_rule(client, keys, rule)


def timed_alerts(spent: list[float], calls: list[tuple[Any, ...]]) -> Callable[[Worker], None]:
    """A drain setup: adds the CPU time in the worker's ``_alert`` to ``spent[0]``, keeps its calls in ``calls``."""

    def setup(worker: Worker) -> None:
        proc = worker.processor
        inner = proc._alert

        def alert(pipe: Any, results: Any) -> None:
            n = len(pipe.commands)
            t0 = time.process_time()
            inner(pipe, results)
            spent[0] += time.process_time() - t0
            calls.extend(pipe.commands[n:])

        proc._alert = alert  # type: ignore[method-assign]

    return setup


async def replay_cpu_s(url: str, port: int, calls: list[tuple[Any, ...]]) -> float:
    """Redis CPU seconds to run ``calls`` again (50 per round trip)."""
    client = aioredis.Redis.from_url(url, protocol=2)
    try:
        cpu0 = redis_cpu_s([port])
        for i in range(0, len(calls), 50):
            await execute_raw(client, calls[i : i + 50])
        return redis_cpu_s([port]) - cpu0
    finally:
        await client.aclose()


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--rules", type=int, default=10)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--spread", action="store_true", help="each rule matches one scope (org{i%%3}/src{i}/pop{i})")
    p.add_argument("--redis-server", default=None)
    args = p.parse_args()
    binary = quiet_setup(args.redis_server)
    how = "one scope each" if args.spread else "all match every scope"
    print(f"events={args.events} scopes=10 individuals=10000 actions=40 batch=500 rules={args.rules} ({how})")
    events = make_events(args.events, 10, 10_000, 40)
    keys = Keyspace()
    tune_gc()
    rates: dict[str, list[float]] = {"none": [], "rules": []}
    costs: dict[str, list[tuple[float, float]]] = {"none": [], "rules": []}
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(tmp, binary=binary).start()
        try:
            client = aioredis.Redis.from_url(server.url, protocol=2)
            for r in range(args.repeat):
                # Alternate the order (none first in odd runs, rules first in even ones): the
                # second run of a pair must not always be the one on a settled machine.
                for mode in ("none", "rules") if r % 2 == 0 else ("rules", "none"):
                    await client.flushall()
                    await fill(client, keys, events)
                    # Fresh data holds no old alert state: mark it so (the worker then skips the
                    # move's SCAN in both modes), and walk the keys once in both, so both start alike.
                    await client.set(keys.alert_layout(), ALERT_LAYOUT)
                    async for _ in client.scan_iter(count=1000):
                        pass
                    if mode == "rules":
                        await add_rules(client, keys, args.rules, args.spread)
                    spent, calls = [0.0], []
                    res = await drain(server.url, len(events), 500, 1000, setup=timed_alerts(spent, calls))
                    fired = sum([await client.xlen(s) for s in keys.alert_streams()])
                    lua = await replay_cpu_s(server.url, server.port, calls) / len(events) * 1e6
                    rates[mode].append(res["events_per_s"])
                    costs[mode].append((spent[0] / len(events) * 1e6, lua))
                    print(
                        f"run {r + 1} {mode:>5}: {res['events_per_s']:,.0f} events/s ({res['seconds']:.1f} s), "
                        f"{res['round_trips_per_event']:.4f} round trips/event, "
                        f"{res['lua_calls_per_event']:.3f} Lua calls/event, CPU/event worker "
                        f"{res['worker_cpu_us']:.0f} us + redis {res['redis_cpu_us']:.0f} us; alerts fired {fired}; "
                        f"per event: _alert {costs[mode][-1][0]:.2f} us CPU, alert.lua {lua:.2f} us Redis CPU"
                    )
            await client.aclose()
        finally:
            server.stop()
    none, rules = statistics.median(rates["none"]), statistics.median(rates["rules"])
    print(f"median: none {none:,.0f} events/s, {args.rules} rules {rules:,.0f} events/s; ratio {rules / none:.3f}")
    ratios = [b / a for a, b in zip(rates["none"], rates["rules"])]
    py = statistics.median(c[0] for c in costs["rules"])
    lua = statistics.median(c[1] for c in costs["rules"])
    print(
        f"median of the runs' ratios {statistics.median(ratios):.3f} (each: {', '.join(f'{x:.3f}' for x in ratios)}); "
        f"alert path per event (medians): worker _alert {py:.2f} us CPU, alert.lua {lua:.2f} us Redis CPU (replayed)"
    )


if __name__ == "__main__":
    asyncio.run(main())
