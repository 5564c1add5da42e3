"""Reading and repairing stored state: list scopes, recompute score aggregates.

The worker keeps each scope's aggregates (n, sum, sum of squares of current
scores) by adding every score *change*; float rounding can drift over millions
of updates. :func:`recompute_aggregates` rebuilds them from the rank zset in one
atomic Lua call (``recompute.lua``); ``binormal recompute`` runs it on every scope.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from binormal.common.calibration import NO_ROBUST, Rank, Robust
from binormal.common.connection import Client, execute_raw
from binormal.common.keys import Keyspace, Scope
from binormal.common.result import Aggregates
from binormal.common.rules import list_rules
from binormal.common.scripts import Recompute, Scripts


async def list_scopes(client: Client, keys: Keyspace) -> list[Scope]:
    """Every scope with at least one counted event, shard by shard (sorted within a shard)."""
    out: list[Scope] = []
    for shard in range(keys.shards):
        raw = await client.smembers(keys.scopes(shard))
        tokens = sorted(t.decode() if isinstance(t, bytes) else t for t in raw)
        out.extend(Scope.from_token(t) for t in tokens)
    return out


async def read_aggregates(client: Client, keys: Keyspace, scope: Scope) -> Aggregates:
    """The running aggregates as stored (zeros for an unknown scope)."""
    n, total, total_sq = await client.hmget(keys.scope_key(scope, "agg"), ["n", "sum", "sumsq"])
    return Aggregates(int(n or 0), float(total or 0.0), float(total_sq or 0.0))


async def recompute_aggregates(
    client: Client, keys: Keyspace, scope: Scope, scripts: Scripts | None = None
) -> Aggregates:
    """Rebuild a scope's aggregates from its rank zset; returns what was written."""
    scripts = scripts or Scripts()
    ks, args = Recompute.pack(keys.scope_key(scope, "rank"), keys.scope_key(scope, "agg"))
    return Recompute.decode(await scripts.run(client, Recompute.NAME, ks, args))


async def rebuild_population(
    client: Client,
    keys: Keyspace,
    scope: Scope,
    excluded: frozenset[str],
    scripts: Scripts | None = None,
    weight_cap: int = 0,
) -> tuple[Aggregates, int, int]:
    """Rebuild a scope's aggregates and its population from its individuals, leaving out ``excluded`` ids.

    The population (pop/sq/k, raw sums and the dominance counters) is rebuilt under the weight cap
    ``weight_cap`` (``BINORMAL_WEIGHT_CAP``; 0: raw counts), as apply.lua maintains it.

    The individuals are those of the rank zset and those with an uncommitted mark (applied, score not
    committed yet), read just before the atomic script. Returns the aggregates and the numbers of
    individuals learnt from and left out.
    """
    scripts = scripts or Scripts()
    shard = keys.shard(scope)
    ranked: list[bytes] = await client.zrange(keys.scope_key(scope, "rank", shard), 0, -1)  # type: ignore[assignment]
    pending: list[bytes] = await client.hkeys(keys.uncommitted(shard))  # type: ignore[assignment]
    head = keys.individual(scope, "", shard)
    marked = [k.decode() for k in pending if k.decode().startswith(head)]
    ikeys = dict.fromkeys([keys.individual(scope, m.decode(), shard) for m in ranked] + marked)
    idents = [(k, keys.individual_of(k, shard)[1]) for k in ikeys]
    individuals = [(k, ident, ident in excluded) for k, ident in idents]
    population = (
        keys.scope_key(scope, "pop", shard),
        keys.scope_key(scope, "sq", shard),
        keys.scope_key(scope, "k", shard),
        keys.scope_key(scope, "raw", shard),
        keys.scope_key(scope, "dom", shard),
        keys.scope_key(scope, "na", shard),
    )
    ks, args = Recompute.pack(
        keys.scope_key(scope, "rank", shard),
        keys.scope_key(scope, "agg", shard),
        population,
        individuals,
        weight_cap,
    )
    reply = await scripts.run(client, Recompute.NAME, ks, args)
    return (Recompute.decode(reply), *Recompute.rebuilt(reply))


async def recompute_all(
    client: Client, keys: Keyspace, population: bool = False, weight_cap: int = 0
) -> list[dict[str, Any]]:
    """Recompute every scope; one report per scope (before, after, relative drift).

    The population counts (pop/sq/k/raw, dominance counters) of a scope with an exclude rule are
    rebuilt without the excluded ids (common/rules.py), under ``weight_cap``; with ``population``
    those of every scope are rebuilt.
    """
    scripts = Scripts()
    excluded: dict[Scope, set[str]] = {}
    for rule in await list_rules(client, keys):
        if rule.kind == "exclude":
            excluded.setdefault(rule.scope, set()).add(rule.value)
    reports: list[dict[str, Any]] = []
    for scope in await list_scopes(client, keys):
        before = await read_aggregates(client, keys, scope)
        extra: dict[str, Any] = {}
        if population or scope in excluded:
            after, learnt, left = await rebuild_population(
                client, keys, scope, frozenset(excluded.get(scope, ())), scripts, weight_cap
            )
            extra = {"population_rebuilt": True, "learnt_from": learnt, "excluded": left}
        else:
            after = await recompute_aggregates(client, keys, scope, scripts)
        drift = max(_rel(before.total, after.total), _rel(before.total_sq, after.total_sq))
        reports.append(
            {
                "org": scope.org,
                "source": scope.source,
                "pop": scope.pop,
                "n": after.n,
                "n_before": before.n,
                "sum": after.total,
                "sumsq": after.total_sq,
                "relative_drift": drift,
                **extra,
            }
        )
    return reports


def _rel(a: float, b: float) -> float:
    scale = max(abs(a), abs(b))
    return 0.0 if scale == 0.0 else abs(a - b) / scale


# ---------------------------------------------------------------- read helpers (query API, /metrics, ingest)


@dataclass(frozen=True)
class ScopeView:
    """What the query API needs of one scope: population counts, score aggregates, the dominance flag."""

    scope: Scope
    pop: dict[str, int]
    agg: Aggregates
    dominated: dict[str, Any] | None = None


DOM_FIELDS = ["flag", "top_n", "events"]


def dominated_of(raw: list[bytes | None]) -> dict[str, Any] | None:
    """``{id, share}`` from ``HMGET dom flag top_n events`` (apply.lua keeps the flag), else None."""
    flag, top_n, events = raw
    if flag is None or not events:
        return None
    return {"id": flag.decode("utf-8", "replace"), "share": round(int(top_n or 0) / int(events), 3)}


def _int_hash(raw: dict[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in raw.items()}


async def name_counts(
    client: Client, keys: Keyspace, scope: Scope, raws: list[dict[bytes, bytes]], shard: int | None = None
) -> list[dict[str, int]]:
    """Individuals' counts by action name, from HGETALLs of their hashes (keyed by action number).

    One HMGET of the scope's ``na`` hash names every number at once; numbers are never reassigned
    (apply.lua), so reading it after the individuals is safe. A number without a name (not written by
    apply.lua) is kept as ``#<number>``.
    """
    nums = list(dict.fromkeys(n for raw in raws for n in raw))
    if not nums:
        return [{} for _ in raws]
    names: list[bytes | None] = await client.hmget(keys.scope_key(scope, "na", shard), nums)  # type: ignore[assignment]
    by_num = {n: (a.decode() if a is not None else f"#{n.decode()}") for n, a in zip(nums, names)}
    return [{by_num[n]: int(v) for n, v in raw.items()} for raw in raws]


async def read_scope(client: Client, keys: Keyspace, scope: Scope) -> ScopeView | None:
    """Population counts and aggregates of ``scope``; None when nothing was counted in it."""
    shard = keys.shard(scope)
    pipe = client.pipeline(transaction=False)
    pipe.sismember(keys.scopes(shard), scope.token)
    pipe.hgetall(keys.scope_key(scope, "pop", shard))
    pipe.hmget(keys.scope_key(scope, "agg", shard), ["n", "sum", "sumsq"])
    pipe.hmget(keys.scope_key(scope, "dom", shard), DOM_FIELDS)
    member, pop, (n, total, total_sq), dom = await pipe.execute()
    if not member and not pop:
        return None
    agg = Aggregates(int(n or 0), float(total or 0.0), float(total_sq or 0.0))
    return ScopeView(scope, _int_hash(pop), agg, dominated_of(dom))


async def scope_summaries(
    client: Client, keys: Keyspace, limit: int, orgs: frozenset[str] | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Up to ``limit`` scopes (of ``orgs`` only, unless None) with their individual and action counts, and the total."""
    scopes = await list_scopes(client, keys)
    if orgs is not None:
        scopes = [s for s in scopes if s.org in orgs]
    shown = scopes[:limit]
    pipe = client.pipeline(transaction=False)
    for scope in shown:
        pipe.hget(keys.scope_key(scope, "agg"), "n")
        pipe.hlen(keys.scope_key(scope, "pop"))
        pipe.hexists(keys.capped(keys.shard(scope)), scope.token)
        pipe.hmget(keys.scope_key(scope, "dom"), DOM_FIELDS)
        pipe.hget(keys.expired(keys.shard(scope)), scope.token)
    raw = await pipe.execute() if shown else []
    out = [
        {
            "org": s.org,
            "source": s.source,
            "pop": s.pop,
            "individuals": int(raw[5 * i] or 0),
            "actions": int(raw[5 * i + 1] or 0),
            # events with a new action were refused: the scope has BINORMAL_MAX_ACTIONS actions
            "actions_capped": bool(raw[5 * i + 2]),
            # one individual has more than BINORMAL_DOMINANCE_SHARE of the scope's events
            "dominated": dominated_of(raw[5 * i + 3]),
            # individuals removed by retention (BINORMAL_IDLE_TTL_S, BINORMAL_MAX_INDIVIDUALS; expire.lua)
            "expired": int(raw[5 * i + 4] or 0),
        }
        for i, s in enumerate(shown)
    ]
    return out, len(scopes)


TOP_SCAN = 10_000  # ranks /api/outliers?exclude_learning=1 looks through at most


async def top_individuals(
    client: Client, keys: Keyspace, scope: Scope, limit: int, min_events: int = 0
) -> list[tuple[str, float, dict[str, int]]]:
    """The ``limit`` highest current scores of a scope (ZREVRANGE of the rank zset) with their counts.

    With ``min_events`` > 0 only individuals with ``min_events`` events or more
    (the sum of their counts) are kept, looking through at most ``TOP_SCAN``
    ranks from the top.
    """
    shard = keys.shard(scope)
    rank = keys.scope_key(scope, "rank", shard)
    kept: list[tuple[bytes, float, dict[bytes, bytes]]] = []
    start = 0
    page = limit if min_events <= 0 else max(2 * limit, 100)
    while len(kept) < limit and start < TOP_SCAN:
        rows: list[tuple[bytes, float]] = await client.zrevrange(  # type: ignore[assignment]
            rank, start, min(start + page, TOP_SCAN) - 1, withscores=True
        )
        if rows:
            pipe = client.pipeline(transaction=False)
            for member, _ in rows:
                pipe.hgetall(keys.individual(scope, member.decode(), shard))
            raws: list[dict[bytes, bytes]] = await pipe.execute()
            kept += [
                (m, sc, raw) for (m, sc), raw in zip(rows, raws) if sum(int(v) for v in raw.values()) >= min_events
            ]
        if min_events <= 0 or len(rows) < page:
            break
        start += page
    kept = kept[:limit]
    if not kept:
        return []
    counts = await name_counts(client, keys, scope, [raw for _, _, raw in kept], shard)
    return [(m.decode(), float(score), c) for (m, score, _), c in zip(kept, counts)]


async def ranks_of(client: Client, keys: Keyspace, scope: Scope, scores: list[float]) -> list[Rank]:
    """Where each score stands in the scope's rank zset (``pscore``): ZCOUNT below, ZCOUNT equal, ZCARD."""
    if not scores:
        return []
    rank = keys.scope_key(scope, "rank")
    pipe = client.pipeline(transaction=False)
    pipe.zcard(rank)
    for score in scores:
        pipe.zcount(rank, "-inf", f"({score!r}")
        pipe.zcount(rank, repr(score), repr(score))
    raw = await pipe.execute()
    n = int(raw[0])
    return [Rank(int(raw[1 + 2 * i]), int(raw[2 + 2 * i]), n) for i in range(len(scores))]


async def read_robust(client: Client, keys: Keyspace, scope: Scope) -> Robust:
    """The scope's median and MAD of scores as a worker last sampled them (zeros before the first sample)."""
    median, mad = await client.hmget(keys.robust(scope), ["median", "mad"])
    if median is None or mad is None:
        return NO_ROBUST
    return Robust(float(median), float(mad))


async def read_individual(
    client: Client, keys: Keyspace, scope: Scope, ident: str
) -> tuple[dict[str, int], float | None]:
    """An individual's action counts and current committed score (None if not committed)."""
    shard = keys.shard(scope)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.individual(scope, ident, shard))
    pipe.zscore(keys.scope_key(scope, "rank", shard), ident)
    raw, score = await pipe.execute()
    [counts] = await name_counts(client, keys, scope, [raw], shard)
    return counts, (None if score is None else float(score))


async def read_windows(
    client: Client, keys: Keyspace, scope: Scope, individuals: Sequence[tuple[str, int]]
) -> list[dict[str, int]]:
    """The recent windows (apply.lua, ``BINORMAL_RECENT_WINDOW``) of ``(id, event count)`` pairs, by action name.

    A window's ``n`` is its individual's event count when it was last kept; one that is not the
    count given (events were counted while K was 0, or the individual has none) reads as empty,
    as apply.lua would restart it at the next event.
    """
    if not individuals:
        return []
    shard = keys.shard(scope)
    pipe = client.pipeline(transaction=False)
    for ident, _ in individuals:
        pipe.hgetall(keys.recent_window(scope, ident, shard))
    raws: list[dict[bytes, bytes]] = await pipe.execute()
    kept = [
        {f: v for f, v in raw.items() if f != b"n"} if raw.get(b"n") == str(events).encode() else {}
        for raw, (_, events) in zip(raws, individuals)
    ]
    return await name_counts(client, keys, scope, kept, shard)


# On Redis 6.2 an exact count of undelivered entries means reading them
# (XRANGE); below this bound that is cheap enough for a backpressure check.
EXACT_LAG_LIMIT = 20_000


async def stream_lag(client: Client, keys: Keyspace, limit: int | None = None) -> dict[int, int]:
    """Per shard: entries the consumer group has not acknowledged yet.

    Redis 7 reports ``lag`` (entries not yet delivered) per group; adding
    ``pending`` (delivered, not acknowledged) gives the work outstanding.
    Redis 6.2 has no ``lag``: there we use XLEN, which the worker keeps close
    to the unacknowledged entries by trimming acknowledged history (MINID)
    every ``BINORMAL_TRIM_INTERVAL_S``. Given ``limit`` (the backpressure
    bound, if at most ``EXACT_LAG_LIMIT``) the entries after the group's
    last-delivered id are counted instead (at most ``EXACT_LAG_LIMIT`` per shard), so
    history not yet trimmed does not read as lag.
    A stream or group that does not exist yet also falls back to XLEN (0 for
    no stream): the group is created at id 0, so those entries are still owed.
    """
    pipe = client.pipeline(transaction=False)
    for stream in keys.streams():
        pipe.xinfo_groups(stream)
        pipe.xlen(stream)
    raw = await pipe.execute(raise_on_error=False)
    out: dict[int, int] = {}
    for shard in range(keys.shards):
        groups, length = raw[2 * shard], raw[2 * shard + 1]
        if isinstance(length, Exception):
            raise length
        lag = int(length)
        if not isinstance(groups, Exception):
            for g in groups:
                name = g["name"].decode() if isinstance(g["name"], bytes) else str(g["name"])
                if name != keys.group:
                    continue
                if g.get("lag") is not None:
                    lag = int(g["lag"]) + int(g["pending"])
                elif limit is not None and lag > 0 and limit <= EXACT_LAG_LIMIT:
                    last = g["last-delivered-id"]
                    last = last.decode() if isinstance(last, bytes) else str(last)
                    after = await client.xrange(keys.stream(shard), min="(" + last, max="+", count=EXACT_LAG_LIMIT)
                    lag = len(after or []) + int(g["pending"])
        out[shard] = lag
    return out


async def groups_present(client: Client, keys: Keyspace) -> list[int]:
    """Shards whose stream lacks the consumer group (empty list: all present)."""
    pipe = client.pipeline(transaction=False)
    for stream in keys.streams():
        pipe.xinfo_groups(stream)
    raw = await pipe.execute(raise_on_error=False)
    missing: list[int] = []
    for shard, groups in enumerate(raw):
        names = set()
        if not isinstance(groups, Exception):
            names = {g["name"].decode() if isinstance(g["name"], bytes) else str(g["name"]) for g in groups}
        if keys.group not in names:
            missing.append(shard)
    return missing


async def dead_lengths(client: Client, keys: Keyspace) -> dict[int, int]:
    """XLEN of every shard's dead-letter stream."""
    pipe = client.pipeline(transaction=False)
    for shard in range(keys.shards):
        pipe.xlen(keys.dead(shard))
    return {shard: int(n) for shard, n in enumerate(await pipe.execute())}


async def worker_heartbeats(client: Client, keys: Keyspace) -> dict[str, int]:
    """Consumer name -> last heartbeat (epoch ms) from ``keys.workers()``."""
    raw: dict[bytes, bytes] = await client.hgetall(keys.workers())  # type: ignore[assignment]
    return {k.decode(): int(v) for k, v in raw.items()}


async def redis_now_ms(client: Client) -> int:
    """The Redis server's clock (TIME), in epoch milliseconds: one clock for every host."""
    sec, usec = await client.time()
    return int(sec) * 1000 + int(usec) // 1000


async def heartbeat_ages(client: Client, keys: Keyspace) -> dict[str, float]:
    """Consumer name -> seconds since its last heartbeat, judged by Redis TIME.

    TIME and HGETALL go in one round trip (a lean pipeline: redis-py's
    cluster pipeline refuses TIME), so the age does not include a second
    trip's latency; heartbeats are written with Redis TIME as well
    (worker.py), so no host's own clock is involved. On a cluster TIME is
    answered by the node holding the hash: the same clock that stamped it.
    """
    flat, now = await execute_raw(client, [("HGETALL", keys.workers()), ("TIME",)])
    for reply in (flat, now):
        if isinstance(reply, Exception):
            raise reply
    sec, usec = now
    now_ms = int(sec) * 1000 + int(usec) // 1000
    return {k.decode(): (now_ms - int(v)) / 1000.0 for k, v in zip(flat[0::2], flat[1::2])}
