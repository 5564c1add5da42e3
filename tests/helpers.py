"""Shared test helpers: generate events, run a real worker (in-process or as ``binormal worker``),
write events to the right shard, collect broadcasts and wait for a drain.

Everything talks to the private redis-server of ``conftest.py``; nothing here
mocks Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import orjson
import redis.asyncio as aioredis

from binormal.common.keys import Keyspace, Scope
from binormal.common.schema import Event
from binormal.worker import Worker, WorkerSettings

# ---------------------------------------------------------------- events

TS0 = 1_700_000_000_000

TRICKY_SCOPES = [
    Scope("acme", "webserver", "auth_getpost"),
    Scope("acme", "webserver", "admins"),
    Scope("a:b{c}", "src }{ :", "pop with spaces\nand a newline"),
    Scope("ünïcødé 組織", "source/🚀", "p%2F:x%00"),
    Scope("é" * 128, "s" * 256, "{bn.0}:events"),  # at the byte limits; looks like a key
]
ACTIONS = ["GET /login", "POST /login", "GET /", "POST /x:{y}", "ação", "a\nb", "🚀 launch", "DELETE /admin"]
WEIGHTS = [40, 20, 15, 8, 6, 5, 4, 2]


def generate(n: int, seed: int, scopes: list[Scope] = TRICKY_SCOPES, ids: int = 40) -> list[Event]:
    """``n`` events over ``scopes`` with a skewed action mix and a few odd individuals."""
    rng = random.Random(seed)
    idents = [f"user:{i}" for i in range(ids - 3)] + ["{id}", "id with space\n", "x" * 1024]
    out: list[Event] = []
    for i in range(n):
        scope = rng.choice(scopes)
        ident = rng.choice(idents)
        if ident.startswith("user:1") and rng.random() < 0.5:
            action = rng.choice(ACTIONS[-3:])  # outliers
        else:
            action = rng.choices(ACTIONS, WEIGHTS)[0]
        eid = f"e{seed}-{i}" if i % 2 == 0 else None
        out.append(Event(scope.org, scope.source, scope.pop, ident, action, ts=TS0 + i, event_id=eid))
    return out


# ---------------------------------------------------------------- in-process


def worker_settings(redis_url: str, prefix: str, **overrides: Any) -> WorkerSettings:
    """Settings for a test worker: fast polling, no surprise trimming or claiming."""
    base = WorkerSettings(
        redis_url=redis_url,
        prefix=prefix,
        shards=4,
        consumer="w1",
        batch=500,
        block_ms=50,
        claim_idle_ms=60_000,
        trim_interval_s=0.0,
        heartbeat_s=0.5,
    )
    return replace(base, **overrides)


@contextlib.asynccontextmanager
async def running_worker(settings: WorkerSettings, ready_timeout: float = 10.0) -> AsyncIterator[Worker]:
    """Run ``Worker(settings).run()`` as a task; stop it gracefully on exit.

    The task's exception (if it died) is raised on exit so a crash fails the test.
    """
    worker = Worker(settings)
    task = asyncio.create_task(worker.run())
    ready = asyncio.create_task(worker.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:
        ready.cancel()
        if task in done:
            task.result()  # raises what killed it
        task.cancel()
        raise TimeoutError("worker did not become ready")
    try:
        yield worker
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, timeout=15.0)


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Await ``predicate()`` (sync or async) until truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


# ---------------------------------------------------------------- writing


def stream_of(keys: Keyspace, ev: Event) -> str:
    """The stream shard an event belongs to."""
    return keys.stream(keys.shard(ev.scope))


async def xadd_events(
    client: aioredis.Redis, keys: Keyspace, events: Iterable[Event], chunk: int = 1000
) -> list[bytes]:
    """XADD every event to its scope's shard, in order; returns the entry ids."""
    ids: list[bytes] = []
    batch: list[Event] = []

    async def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for ev in batch:
            pipe.xadd(stream_of(keys, ev), ev.to_fields())
        ids.extend(await pipe.execute())
        batch.clear()

    for ev in events:
        batch.append(ev)
        if len(batch) >= chunk:
            await flush()
    if batch:
        await flush()
    return ids


# ---------------------------------------------------------------- reading state


class Collector:
    """Subscribes to channels and collects every message as parsed JSON lines."""

    def __init__(self, client: aioredis.Redis, *channels: str) -> None:
        self.pubsub = client.pubsub()
        self.channels = channels
        self.messages: dict[str, list[dict[str, Any]]] = {c: [] for c in channels}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        await self.pubsub.subscribe(*self.channels)
        # wait for the subscribe confirmations so nothing published after this is missed
        confirmed = 0
        while confirmed < len(self.channels):
            msg = await self.pubsub.get_message(timeout=5.0)
            if msg is None:
                raise TimeoutError("no subscribe confirmation")
            if msg["type"] == "subscribe":
                confirmed += 1
        self._task = asyncio.create_task(self._pump())
        return self

    async def _pump(self) -> None:
        while True:
            msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is None or msg["type"] != "message":
                continue
            channel = msg["channel"].decode()
            for line in msg["data"].split(b"\n"):
                if line:
                    self.messages[channel].append(orjson.loads(line))

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.pubsub.aclose()

    async def wait_count(self, channel: str, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until ``channel`` got at least ``n`` results; returns them."""
        await wait_for(lambda: len(self.messages[channel]) >= n, timeout, what=f"{n} messages on {channel}")
        return self.messages[channel]


async def dump_keys(client: aioredis.Redis, pattern: str) -> dict[bytes, Any]:
    """Content of every hash/zset/set/string key matching ``pattern`` (streams skipped)."""
    out: dict[bytes, Any] = {}
    async for key in client.scan_iter(match=pattern, count=1000):
        kind = (await client.type(key)).decode()
        if kind == "hash":
            out[key] = await client.hgetall(key)
        elif kind == "zset":
            out[key] = await client.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            out[key] = await client.smembers(key)
        elif kind == "string":
            out[key] = await client.get(key)
    return out


async def hgetall_int(client: aioredis.Redis, key: str) -> dict[str, int]:
    """A counter hash as {str: int}."""
    return {k.decode(): int(v) for k, v in (await client.hgetall(key)).items()}


@dataclass
class Backlog:
    """What a group still has to do on one stream."""

    pending: int
    undelivered: bool


async def group_backlog(client: aioredis.Redis, stream: str, group: str) -> Backlog:
    """Pending count and whether entries after the last-delivered id exist.

    Works on Redis 6.2 too (no ``lag`` field there): an exclusive XRANGE after
    the group's last-delivered id finds undelivered entries.
    """
    for g in await client.xinfo_groups(stream):
        name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
        if name == group:
            last = g["last-delivered-id"]
            last = last.decode() if isinstance(last, bytes) else str(last)
            after = await client.xrange(stream, min=f"({last}", max="+", count=1)
            return Backlog(int(g["pending"]), bool(after))
    raise KeyError(group)


async def drained(client: aioredis.Redis, keys: Keyspace) -> bool:
    """True when the group has nothing pending and nothing undelivered on any shard."""
    for stream in keys.streams():
        if not await client.exists(stream):
            continue
        b = await group_backlog(client, stream, keys.group)
        if b.pending or b.undelivered:
            return False
    return True


def counts_from_events(events: Iterable[Event]) -> dict[Scope, dict[str, dict[str, int]]]:
    """Ground truth: scope -> individual -> action -> count."""
    truth: dict[Scope, dict[str, dict[str, int]]] = {}
    for ev in events:
        ind = truth.setdefault(ev.scope, {}).setdefault(ev.id, {})
        ind[ev.action] = ind.get(ev.action, 0) + 1
    return truth


def population_truth(
    individuals: Mapping[str, Mapping[str, int]],
) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """(C_a, S2_a, K_a) of one scope from its individuals' counts."""
    pop: dict[str, int] = {}
    sq: dict[str, int] = {}
    k: dict[str, int] = {}
    for counts in individuals.values():
        for a, x in counts.items():
            pop[a] = pop.get(a, 0) + x
            sq[a] = sq.get(a, 0) + x * x
            k[a] = k.get(a, 0) + 1
    return pop, sq, k


async def check_counters(
    client: aioredis.Redis, keys: Keyspace, truth: Mapping[Scope, Mapping[str, Mapping[str, int]]]
) -> list[str]:
    """Compare every scope and individual counter hash with the truth; returns mismatches."""
    problems: list[str] = []
    for scope, individuals in truth.items():
        pop, sq, k = population_truth(individuals)
        for kind, want in (("pop", pop), ("sq", sq), ("k", k)):
            got = await hgetall_int(client, keys.scope_key(scope, kind))
            if got != want:
                diff = {a: (got.get(a), want.get(a)) for a in set(got) | set(want) if got.get(a) != want.get(a)}
                problems.append(f"{scope} {kind}: (got, want) {diff}")
        ids = list(individuals)
        pipe = client.pipeline(transaction=False)
        for ident in ids:
            pipe.hgetall(keys.individual(scope, ident))
        for ident, raw in zip(ids, await pipe.execute()):
            got_i = {a.decode(): int(c) for a, c in raw.items()}
            if got_i != dict(individuals[ident]):
                problems.append(f"{scope} id={ident!r}: got {got_i}, want {dict(individuals[ident])}")
    return problems


async def check_committed(
    client: aioredis.Redis, keys: Keyspace, truth: Mapping[Scope, Mapping[str, Mapping[str, int]]]
) -> list[str]:
    """Every individual has a committed score from its last event (``ver`` = its event
    count), and each scope's aggregates count every individual; returns mismatches."""
    problems: list[str] = []
    for scope, individuals in truth.items():
        want = {ident: sum(counts.values()) for ident, counts in individuals.items()}
        got = await hgetall_int(client, keys.scope_key(scope, "ver"))
        if got != want:
            diff = {i: (got.get(i), want.get(i)) for i in set(got) | set(want) if got.get(i) != want.get(i)}
            problems.append(f"{scope} ver: (got, want) {diff}")
        ranked = await client.zcard(keys.scope_key(scope, "rank"))
        n = await client.hget(keys.scope_key(scope, "agg"), "n")
        if ranked != len(want) or n is None or int(n) != len(want):
            problems.append(f"{scope}: {ranked} ranked, aggregates n={n!r}, {len(want)} individuals")
    return problems


async def no_uncommitted(client: aioredis.Redis, keys: Keyspace) -> bool:
    """No applied entry is waiting for its score to be committed (or repaired)."""
    return sum([await client.hlen(keys.uncommitted(s)) for s in range(keys.shards)]) == 0


# ---------------------------------------------------------------- subprocess


def binormal_command() -> list[str]:
    """The ``binormal`` console script of this venv (or ``python -P -m binormal``)."""
    script = Path(sys.executable).with_name("binormal")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-P", "-m", "binormal"]


@dataclass
class WorkerProcess:
    """``binormal worker`` as a child process, its stderr (JSON logs) in a file."""

    redis_url: str
    prefix: str
    consumer: str
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    _log: TextIO | None = None

    def start(self) -> WorkerProcess:
        """Spawn it (REDIS_URL and BINORMAL_* from the fields)."""
        env = dict(os.environ)
        env.update(
            REDIS_URL=self.redis_url,
            BINORMAL_PREFIX=self.prefix,
            BINORMAL_CONSUMER=self.consumer,
            BINORMAL_BLOCK_MS="100",
            BINORMAL_TRIM_INTERVAL_S="0",
        )
        env.update(self.extra_env)
        self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [*binormal_command(), "worker"], env=env, stdout=subprocess.DEVNULL, stderr=self._log
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        """Still running?"""
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to this child (by PID) if it still runs."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        """Wait for exit (SIGKILL after ``timeout``); returns the exit code."""
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        return rc

    def kill(self) -> int:
        """SIGKILL and reap."""
        self.signal(signal.SIGKILL)
        return self.wait()

    def log_lines(self) -> list[str]:
        """Every stderr line written so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
