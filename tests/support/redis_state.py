"""Write events to their shard; read counters, backlogs and broadcasts back from Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from binormal.common.connection import pubsub_of
from binormal.common.keys import Keyspace, Scope
from binormal.common.schema import Event
from binormal.common.scoring import DEFAULT_CAP
from binormal.common.store import name_counts
from binormal.worker.entries import Entry
from tests.support.events import population_truth, raw_truth
from tests.support.waiting import wait_for


def stream_of(keys: Keyspace, ev: Event) -> str:
    """The stream shard an event belongs to."""
    return keys.stream(keys.shard(ev.scope))


def reply_text(value: bytes | str | Any) -> str:
    """A reply item as text (redis-py gives bytes, or str on a decoding client)."""
    return value.decode() if isinstance(value, bytes) else str(value)


async def xadd_events(
    client: aioredis.Redis, keys: Keyspace, events: Iterable[Event], chunk: int = 1000
) -> list[bytes]:
    """XADD every event to its scope's shard, in order; returns the entry ids."""
    ids: list[bytes] = []
    batch: list[Event] = []

    async def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for ev in batch:
            pipe.xadd(stream_of(keys, ev), cast(Any, ev.to_fields()))
        ids.extend(await pipe.execute())
        batch.clear()

    for ev in events:
        batch.append(ev)
        if len(batch) >= chunk:
            await flush()
    if batch:
        await flush()
    return ids


@contextlib.asynccontextmanager
async def paused_writes(client: aioredis.Redis) -> AsyncIterator[None]:
    """Hold every write on the server (reads still run) until the block ends."""
    await client.execute_command("CLIENT", "PAUSE", 20_000, "WRITE")  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        await client.execute_command("CLIENT", "UNPAUSE")  # type: ignore[no-untyped-call]


async def kill_blocked_xadd(client: aioredis.Redis, timeout: float = 10.0) -> int:
    """Wait for a connection whose XADD is held by the pause (flag ``b``), kill it; returns its client id."""

    async def blocked() -> int | None:
        for c in await client.client_list():
            if c.get("cmd") == "xadd" and "b" in c.get("flags", ""):
                return int(c["id"])
        return None

    cid = await wait_for(blocked, timeout=timeout, what="an XADD held by CLIENT PAUSE")
    await client.execute_command("CLIENT", "KILL", "ID", cid)  # type: ignore[no-untyped-call]
    return int(cid)


class Collector:
    """Subscribes to channels and collects every message as parsed JSON lines."""

    def __init__(self, client: aioredis.Redis, *channels: str) -> None:
        self.pubsub = pubsub_of(client)  # on a cluster: one node's connection (pub/sub is cluster-wide)
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
        await self.pubsub.aclose()  # type: ignore[no-untyped-call]

    async def wait_count(self, channel: str, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until ``channel`` got at least ``n`` results; returns them."""
        await wait_for(lambda: len(self.messages[channel]) >= n, timeout, what=f"{n} messages on {channel}")
        return self.messages[channel]


async def oom_refusals(client: aioredis.Redis) -> int:
    """How many commands Redis refused for ``maxmemory`` (INFO errorstats ``errorstat_OOM``)."""
    stats = await client.info("errorstats")
    got = stats.get("errorstat_OOM")
    return int(got["count"]) if isinstance(got, dict) else 0


async def dump_keys(client: aioredis.Redis, pattern: str) -> dict[bytes, Any]:
    """Content of every hash/zset/set/string key matching ``pattern`` (streams skipped)."""
    out: dict[bytes, Any] = {}
    async for key in client.scan_iter(match=pattern, count=1000):
        kind = reply_text(await client.type(key))
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
    return {reply_text(k): int(v) for k, v in (await client.hgetall(key)).items()}


async def individual_counts(
    client: aioredis.Redis, keys: Keyspace, scope: Scope, ids: Sequence[str]
) -> list[dict[str, int]]:
    """The counts of individuals of ``scope`` by action name (their hashes are keyed by action number)."""
    pipe = client.pipeline(transaction=False)
    for ident in ids:
        pipe.hgetall(keys.individual(scope, ident))
    return await name_counts(client, keys, scope, await pipe.execute())


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
        if reply_text(g["name"]) == group:
            last = reply_text(g["last-delivered-id"])
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


async def check_counters(
    client: aioredis.Redis,
    keys: Keyspace,
    truth: Mapping[Scope, Mapping[str, Mapping[str, int]]],
    weight_cap: int = DEFAULT_CAP,
) -> list[str]:
    """Compare every scope and individual counter hash with the truth; returns mismatches.

    ``weight_cap`` is the worker's BINORMAL_WEIGHT_CAP (default N): the pop hash
    holds each individual's capped contribution, the raw hash the raw sums.
    """
    problems: list[str] = []
    for scope, individuals in truth.items():
        pop, sq, k = population_truth(individuals, weight_cap)
        kinds = [("pop", pop), ("sq", sq), ("k", k)]
        if weight_cap:
            kinds.append(("raw", raw_truth(individuals)))
        for kind, want in kinds:
            got = await hgetall_int(client, keys.scope_key(scope, kind))
            if got != want:
                diff = {a: (got.get(a), want.get(a)) for a in set(got) | set(want) if got.get(a) != want.get(a)}
                problems.append(f"{scope} {kind}: (got, want) {diff}")
        ids = list(individuals)
        for ident, got_i in zip(ids, await individual_counts(client, keys, scope, ids)):
            if got_i != dict(individuals[ident]):
                problems.append(f"{scope} id={ident!r}: got {got_i}, want {dict(individuals[ident])}")
    return problems


async def check_committed(
    client: aioredis.Redis, keys: Keyspace, truth: Mapping[Scope, Mapping[str, Mapping[str, int]]]
) -> list[str]:
    """Every individual has a committed score from its last event (ranked, and no uncommitted
    mark: commit.lua removes it with the score of the last applied entry), and each scope's
    aggregates count every individual; returns mismatches."""
    problems: list[str] = []
    for scope, individuals in truth.items():
        want = set(individuals)
        members = {reply_text(m) for m in await client.zrange(keys.scope_key(scope, "rank"), 0, -1)}
        if members != want:
            problems.append(f"{scope} rank: missing {sorted(want - members)}, extra {sorted(members - want)}")
        marks = await client.hkeys(keys.uncommitted(keys.shard(scope)))
        left = [keys.individual_of(m, keys.shard(scope))[1] for m in marks]
        if left := [ident for ident in left if ident in want]:
            problems.append(f"{scope}: scores of the last event not committed for {sorted(left)}")
        ranked = await client.zcard(keys.scope_key(scope, "rank"))
        n = await client.hget(keys.scope_key(scope, "agg"), "n")
        if ranked != len(want) or n is None or int(n) != len(want):
            problems.append(f"{scope}: {ranked} ranked, aggregates n={n!r}, {len(want)} individuals")
    return problems


async def no_uncommitted(client: aioredis.Redis, keys: Keyspace) -> bool:
    """No applied entry is waiting for its score to be committed (or repaired)."""
    return sum([await client.hlen(keys.uncommitted(s)) for s in range(keys.shards)]) == 0


async def read_entries(client: aioredis.Redis, keys: Keyspace, consumer: str, count: int = 1000) -> list[Entry]:
    """Deliver up to ``count`` new entries of every stream shard to ``consumer`` (never acknowledged)."""
    Reply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]
    reply = cast(Reply, await client.xreadgroup(keys.group, consumer, {s: ">" for s in keys.streams()}, count=count))
    out = []
    for stream, items in reply:
        shard = keys.shard_of_stream(stream.decode())
        out += [Entry(stream, shard, eid, fields) for eid, fields in items]
    return out
