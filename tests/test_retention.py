"""Retention (BINORMAL_IDLE_TTL_S, BINORMAL_MAX_INDIVIDUALS): expire.lua and the worker's sweep.

A real worker applies the events with retention on (apply.lua stamps its
last-seen zset); the sweep is the worker's own (worker/retention.py). The oracle
is the in-memory engine fed only the individuals that remain: after expiry the
scope's pop/sq/k/raw and its dominance event count must equal the engine's
exactly, with the weight cap on and off, and the rank zset, committed event counts and score
aggregates must hold the remaining individuals only.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis

from binormal.common.config import ConfigError
from binormal.common.engine import MemoryEngine
from binormal.common.keys import Keyspace, Scope
from binormal.common.rules import add_rule, parse_rule
from binormal.common.schema import Event
from binormal.common.scripts import Expire, ExpireScope, Scripts
from binormal.common.store import redis_now_ms, scope_summaries
from binormal.worker import WorkerSettings
from binormal.worker.retention import Sweeper
from tests.support.backends import both_backends
from tests.support.http import Served
from tests.support.openapi import check_response, load_openapi
from tests.support.redis_state import drained, hgetall_int, individual_counts, no_uncommitted, xadd_events
from tests.support.waiting import wait_for
from tests.support.workers import running_worker, worker_settings

DOC = load_openapi()
SCOPE = Scope("acme", "web", "login")
OTHER = Scope("acme", "web", "other")
ACTIONS = ["GET /", "GET /a", "POST /login", "GET /b", "DELETE /x"]


def events_of(ids: Iterable[str], seed: int, heavy: Iterable[str] = (), scope: Scope = SCOPE) -> list[Event]:
    """A skewed mix per individual: 3-12 events each, 150-260 for the ``heavy`` ones (past W = 100)."""
    rng = random.Random(seed)
    heavy = set(heavy)
    out: list[Event] = []
    for ident in ids:
        n = rng.randint(150, 260) if ident in heavy else rng.randint(3, 12)
        for _ in range(n):
            action = rng.choices(ACTIONS, weights=[50, 20, 15, 10, 5])[0]
            out.append(Event(scope.org, scope.source, scope.pop, ident, action))
    rng.shuffle(out)
    return out


async def count_all(client: aioredis.Redis, keys: Keyspace, events: list[Event]) -> None:
    """XADD to the stream shards and wait until the worker applied and committed everything."""
    await xadd_events(client, keys, events)
    await wait_for(lambda: drained(client, keys), timeout=60.0, what="the worker to drain")
    await wait_for(lambda: no_uncommitted(client, keys), timeout=10.0, what="every score committed")


async def state(client: aioredis.Redis, keys: Keyspace, scope: Scope) -> dict[str, Any]:
    """Every per-scope structure retention touches."""
    out: dict[str, Any] = {kind: await hgetall_int(client, keys.scope_key(scope, kind)) for kind in ("pop", "sq", "k")}
    out["raw"] = await hgetall_int(client, keys.scope_key(scope, "raw"))
    dom = await client.hgetall(keys.scope_key(scope, "dom"))
    out["dom"] = {k.decode(): v.decode() for k, v in dom.items()}
    rank = await client.zrange(keys.scope_key(scope, "rank"), 0, -1, withscores=True)
    out["rank"] = {m.decode(): s for m, s in rank}
    # the event count of each committed score (key layout 2 keeps no ver hash: with no
    # uncommitted mark left, as feed() waits for, it is the sum of the individual's counts)
    ranked = list(out["rank"])
    out["ver"] = {i: sum(c.values()) for i, c in zip(ranked, await individual_counts(client, keys, scope, ranked))}
    agg = await client.hgetall(keys.scope_key(scope, "agg"))
    out["agg"] = {k.decode(): float(v) for k, v in agg.items()}
    last = await client.zrange(keys.scope_key(scope, "last"), 0, -1, withscores=True)
    out["last"] = {m.decode(): int(s) for m, s in last}
    return out


async def clock_past(client: aioredis.Redis, ms: int) -> None:
    """Wait until Redis's clock is past ``ms`` (stamps taken later are larger)."""
    await wait_for(lambda: _after(client, ms), timeout=5.0, what="Redis TIME to move on")


async def _after(client: aioredis.Redis, ms: int) -> bool:
    return await redis_now_ms(client) > ms


def oracle(events: list[Event], keep: set[str], weight_cap: int, excluded: Iterable[str] = ()) -> MemoryEngine:
    """The in-memory engine fed only the events of the individuals in ``keep``."""
    engine = MemoryEngine(weight_cap=weight_cap, excluded=[(SCOPE, i) for i in excluded])
    engine.run(e for e in events if e.id in keep)
    return engine


@pytest.mark.timeout(180)
@pytest.mark.parametrize("weight_cap", [100, 0], ids=["cap-N", "cap-off"])
async def test_after_expiry_the_scope_equals_one_built_from_the_remaining_individuals(
    redis_url: str, prefix: str, aredis: aioredis.Redis, weight_cap: int
) -> None:
    old_ids = [f"old{i}" for i in range(25)]
    kept_ids = [f"kept{i}" for i in range(25)]
    old = events_of(old_ids, seed=1, heavy=["old0", "old1", "old2"])
    # an action only the old individuals did: it must vanish from the scope with them
    old += [Event(SCOPE.org, SCOPE.source, SCOPE.pop, f"old{i}", "only-old") for i in (3, 4, 4)]
    # the heaviest of all is old0: the dominance top goes with it
    old += [Event(SCOPE.org, SCOPE.source, SCOPE.pop, "old0", "GET /") for _ in range(300)]
    kept = events_of(kept_ids, seed=2, heavy=["kept0", "kept1"])
    settings = worker_settings(redis_url, prefix, idle_ttl_s=3600, weight_cap=weight_cap)
    keys = settings.keys
    # old5 is excluded from learning: it never moved the population, so removing it must not either
    await add_rule(aredis, keys, parse_rule({"kind": "exclude", **SCOPE._asdict(), "id": "old5"}, by="test"))
    async with running_worker(settings) as worker:
        await count_all(aredis, keys, old)
        cutoff = max((await state(aredis, keys, SCOPE))["last"].values())
        await clock_past(aredis, cutoff)
        await count_all(aredis, keys, kept)
        before = await state(aredis, keys, SCOPE)
        assert set(before["last"]) == set(old_ids) | set(kept_ids)
        assert before["dom"]["top"] == "old0"
        # the worker's own sweeper, with the cutoff between the two groups' stamps
        removed = await worker.sweeper.sweep_scopes(aredis, keys.shard(SCOPE), [SCOPE], cutoff)
        assert removed == len(old_ids)
        after = await state(aredis, keys, SCOPE)

    want = oracle(old + kept, set(kept_ids), weight_cap).scopes[SCOPE]
    assert after["pop"] == want.pop and "only-old" not in after["pop"]
    assert (after["sq"], after["k"]) == (want.sq, want.k)
    assert after["raw"] == want.raw  # empty with the cap off (the raw hash is only kept under a cap)
    assert int(after["dom"]["events"]) == want.events
    assert "top" not in after["dom"] and after["dom"]["top_n"] == "0"  # old0 was the top: cleared
    # scores: the remaining individuals' committed scores, untouched; the aggregates describe exactly them
    assert after["rank"] == {i: before["rank"][i] for i in kept_ids}
    assert after["ver"] == {i: before["ver"][i] for i in kept_ids}
    assert set(after["last"]) == set(kept_ids)
    assert after["agg"]["n"] == len(kept_ids)
    assert after["agg"]["sum"] == pytest.approx(sum(after["rank"].values()), rel=1e-12)
    assert after["agg"]["sumsq"] == pytest.approx(sum(v * v for v in after["rank"].values()), rel=1e-12)
    for ident in old_ids:
        assert not await aredis.exists(keys.individual(SCOPE, ident))
    for ident in kept_ids:
        want_counts = want.individuals[ident]
        assert (await individual_counts(aredis, keys, SCOPE, [ident]))[0] == want_counts
    summaries, _ = await scope_summaries(aredis, keys, 10)
    assert [(s["pop"], s["expired"]) for s in summaries] == [(SCOPE.pop, len(old_ids))]


@both_backends
async def test_the_worker_expires_idle_individuals_and_one_coming_back_starts_from_zero(
    redis_url: str, prefix: str, aredis: aioredis.Redis, combined: Served
) -> None:
    """The worker's housekeeping sweeps on its own; /api/scopes counts the expired; a returner is new.

    With a recent window (BINORMAL_RECENT_WINDOW) each individual's recent list and window go too.
    """
    # 3 s: long enough that the returner is read back before it could go idle again
    settings = worker_settings(redis_url, prefix, idle_ttl_s=3, sweep_interval_s=0.05, recent_window=5)
    keys = settings.keys
    assert keys == combined.keys
    events = events_of([f"u{i}" for i in range(12)], seed=3) + events_of(["v0", "v1"], seed=4, scope=OTHER)
    async with running_worker(settings) as worker:
        await count_all(aredis, keys, events)
        assert (await state(aredis, keys, SCOPE))["pop"]
        assert await aredis.exists(keys.recent_list(SCOPE, "u0"), keys.recent_window(SCOPE, "u0")) == 2

        async def all_gone() -> bool:
            return not await aredis.exists(
                *(keys.scope_key(s, kind) for s in (SCOPE, OTHER) for kind in ("pop", "sq", "k", "rank", "last"))
            )

        await wait_for(all_gone, timeout=20.0, what="every individual to expire")
        assert await aredis.keys(f"{prefix}:*:rl:*") == [] and await aredis.keys(f"{prefix}:*:rw:*") == []
        # its count grows when the sweep round ends, a moment after the last removal
        await wait_for(lambda: worker.sweeper.removed >= 14, what="the sweep round to end")
        assert worker.sweeper.removed == 14
        async with combined.session.get(f"{combined.base}/api/scopes") as r:
            body = await r.json()
        assert not check_response(DOC, "/api/scopes", "get", 200, body)
        got = {s["pop"]: (s["individuals"], s["expired"]) for s in body["scopes"]}
        assert got == {SCOPE.pop: (0, 12), OTHER.pop: (0, 2)}
        agg = await aredis.hgetall(keys.scope_key(SCOPE, "agg"))
        assert agg == {b"n": b"0", b"sum": b"0", b"sumsq": b"0"}  # exact zeros, no float residue
        assert (await aredis.hgetall(keys.scope_key(SCOPE, "dom")))[b"events"] == b"0"

        # u0 comes back: counted from zero, committed (its old ver is gone), a population of one
        await count_all(aredis, keys, [Event(SCOPE.org, SCOPE.source, SCOPE.pop, "u0", "GET /b")])
        back = await state(aredis, keys, SCOPE)
        [counts] = await individual_counts(aredis, keys, SCOPE, ["u0"])
    assert counts == {"GET /b": 1}
    # its window starts afresh too: one event, k = 0 (only its n is kept), the list holds the event
    assert await aredis.hgetall(keys.recent_window(SCOPE, "u0")) == {b"n": b"1"}
    assert await aredis.llen(keys.recent_list(SCOPE, "u0")) == 1
    assert back["ver"] == {"u0": 1} and set(back["rank"]) == {"u0"} and back["agg"]["n"] == 1
    assert (back["pop"], back["sq"], back["k"]) == ({"GET /b": 1}, {"GET /b": 1}, {"GET /b": 1})


async def test_two_workers_sweeping_at_once_remove_each_individual_once(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    settings = worker_settings(redis_url, prefix, idle_ttl_s=3600)
    keys = settings.keys
    ids = [f"u{i}" for i in range(700)]
    events = events_of(ids, seed=5, heavy=["u1", "u2"])
    async with running_worker(settings):
        await count_all(aredis, keys, events)
        cutoff = max((await state(aredis, keys, SCOPE))["last"].values())
    shard = keys.shard(SCOPE)
    last = keys.scope_key(SCOPE, "last", shard)
    # The race made certain: both read the same candidates, then both send them; the second finds them gone.
    sweepers = [Sweeper(keys, Scripts(), idle_ttl_s=3600, weight_cap=100, batch=25) for _ in range(2)]
    members = [m.decode() for m in await aredis.zrange(last, 0, 24)]
    packed = [s._pack(SCOPE, shard, members, cutoff) for s in sweepers]
    first, second = [Expire.decode(r) for r in await sweepers[0]._run(aredis, [(SCOPE, 25, *p) for p in packed])]
    assert (first.removed, second.removed) == (25, 0)
    sweepers[0].removed = 25
    # Then two sweepers (two workers' worth), each with its own client, loop over the scope at the same
    # time until it is empty: small batches, so their reads and calls interleave many times.
    clients = [aioredis.Redis.from_url(redis_url, protocol=2) for _ in range(2)]

    async def until_empty(sweeper: Sweeper, client: aioredis.Redis) -> None:
        while await client.zcard(last):
            await sweeper.sweep_scopes(client, shard, [SCOPE], cutoff)

    try:
        await asyncio.gather(*(until_empty(s, c) for s, c in zip(sweepers, clients)))
    finally:
        for c in clients:
            await c.aclose()
    assert sweepers[0].removed + sweepers[1].removed == len(ids)
    assert int(await aredis.hget(keys.expired(shard), SCOPE.token) or 0) == len(ids)
    after = await state(aredis, keys, SCOPE)
    assert (after["pop"], after["sq"], after["k"], after["raw"], after["rank"], after["ver"]) == ({},) * 6
    assert after["agg"] == {"n": 0.0, "sum": 0.0, "sumsq": 0.0}
    assert after["dom"]["events"] == "0"


async def test_the_cap_evicts_the_least_recently_seen(redis_url: str, prefix: str, aredis: aioredis.Redis) -> None:
    # A sweep interval longer than the test: the only sweep is the one called here, by the worker's sweeper.
    settings = worker_settings(redis_url, prefix, max_individuals=5, sweep_interval_s=3600.0)
    keys = settings.keys
    order = [f"u{i}" for i in range(10)] + ["u0", "u1", "u2"]  # u0-u2 seen again last
    all_events: list[Event] = []
    async with running_worker(settings) as worker:
        for n, ident in enumerate(order):
            ev = Event(SCOPE.org, SCOPE.source, SCOPE.pop, ident, ACTIONS[n % len(ACTIONS)])
            all_events.append(ev)
            await count_all(aredis, keys, [ev])
            stamp = (await state(aredis, keys, SCOPE))["last"][ident]
            await clock_past(aredis, stamp)  # the next one is seen strictly later
        removed = await worker.sweeper.sweep(aredis)
        after = await state(aredis, keys, SCOPE)
    keep = {"u8", "u9", "u0", "u1", "u2"}
    assert removed == 5
    assert set(after["last"]) == set(after["rank"]) == set(after["ver"]) == keep
    want = oracle(all_events, keep, 100).scopes[SCOPE]
    assert (after["pop"], after["sq"], after["k"], after["raw"]) == (want.pop, want.sq, want.k, want.raw)
    assert int(after["dom"]["events"]) == want.events


async def test_an_individual_with_a_score_in_flight_is_left_for_a_later_sweep(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    """An uncommitted mark (applied, score not committed yet) holds the removal: no score can come back."""
    settings = worker_settings(redis_url, prefix, idle_ttl_s=3600)
    keys = settings.keys
    async with running_worker(settings):
        await count_all(aredis, keys, events_of(["a", "b"], seed=6))
    shard = keys.shard(SCOPE)
    ikey = keys.individual(SCOPE, "a", shard)
    await aredis.hset(keys.uncommitted(shard), ikey, "1-0")
    scripts = Scripts()
    head = (keys.uncommitted(shard), keys.expired(shard))
    scope_keys = ExpireScope.of(keys.scope_prefix(SCOPE, shard))
    now = await redis_now_ms(aredis)
    cands = [(ikey, "a", False), (keys.individual(SCOPE, "b", shard), "b", False)]
    ks, args = Expire.pack(head, scope_keys, SCOPE.token, now, 0, 100, cands)
    assert Expire.decode(await scripts.run(aredis, Expire.NAME, ks, args)) == (1, 1, 1)
    assert await aredis.exists(ikey)
    await aredis.hdel(keys.uncommitted(shard), ikey)
    assert Expire.decode(await scripts.run(aredis, Expire.NAME, ks, args)) == (1, 0, 0)
    assert Expire.decode(await scripts.run(aredis, Expire.NAME, ks, args)) == (0, 0, 0)  # a second sweep: nothing


async def test_a_key_of_another_type_stops_the_call_before_any_write(aredis: aioredis.Redis) -> None:
    keys = Keyspace("tbad")
    shard = keys.shard(SCOPE)
    kp = keys.scope_prefix(SCOPE, shard)
    await aredis.zadd(kp + "last", {"a": 1})
    await aredis.hset(kp + "pop", "GET /", 3)
    await aredis.set(kp + "agg", "someone else's")
    ks, args = Expire.pack(
        (keys.uncommitted(shard), keys.expired(shard)),
        ExpireScope.of(kp),
        SCOPE.token,
        10,
        0,
        0,
        [(keys.individual(SCOPE, "a", shard), "a", False)],
    )
    with pytest.raises(Exception, match="holds a string, not a hash"):
        await Scripts().run(aredis, Expire.NAME, ks, args)
    assert await aredis.zscore(kp + "last", "a") == 1.0 and await aredis.hget(kp + "pop", "GET /") == b"3"


async def test_without_retention_nothing_is_stamped(redis_url: str, prefix: str, aredis: aioredis.Redis) -> None:
    settings = worker_settings(redis_url, prefix)
    assert not settings.retention
    async with running_worker(settings):
        await count_all(aredis, settings.keys, events_of(["a"], seed=7))
    assert not await aredis.exists(settings.keys.scope_key(SCOPE, "last"))


def test_retention_settings_and_their_bounds() -> None:
    base = {"REDIS_URL": "redis://127.0.0.1:1/0"}
    off = WorkerSettings.from_env(base)
    assert (off.idle_ttl_s, off.max_individuals, off.sweep_interval_s, off.retention) == (0, 0, 10.0, False)
    on = WorkerSettings.from_env({**base, "BINORMAL_IDLE_TTL_S": "86400", "BINORMAL_SWEEP_INTERVAL_S": "2.5"})
    assert (on.idle_ttl_s, on.sweep_interval_s, on.retention) == (86400, 2.5, True)
    assert replace(off, max_individuals=10).retention
    for name, raw, message in [
        ("BINORMAL_IDLE_TTL_S", "-1", "BINORMAL_IDLE_TTL_S must be >= 0"),
        ("BINORMAL_IDLE_TTL_S", "1.5", "BINORMAL_IDLE_TTL_S must be an integer"),
        ("BINORMAL_MAX_INDIVIDUALS", "-3", "BINORMAL_MAX_INDIVIDUALS must be >= 0"),
        ("BINORMAL_SWEEP_INTERVAL_S", "0", "BINORMAL_SWEEP_INTERVAL_S must be >= 0.01"),
    ]:
        with pytest.raises(ConfigError, match=message):
            WorkerSettings.from_env({**base, name: raw})


async def test_a_broken_scopes_set_stops_neither_the_worker_nor_the_other_shards(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    settings = worker_settings(redis_url, prefix, idle_ttl_s=1, sweep_interval_s=0.05)
    keys = settings.keys
    bad = 0  # swept before SCOPE's shard
    assert keys.shard(SCOPE) > bad
    await aredis.set(keys.scopes(bad), "someone else's")
    async with running_worker(settings) as worker:
        await count_all(aredis, keys, events_of(["a", "b"], seed=8))
        await wait_for(lambda: worker.sweeper.removed == 2, timeout=15.0, what="the good shard's individuals to expire")
    assert int(await aredis.hget(keys.expired(keys.shard(SCOPE)), SCOPE.token) or 0) == 2


@both_backends
async def test_two_running_workers_expire_each_individual_once(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    """The same through two real workers' housekeeping: their removals add up to the individuals, once each."""
    ids = [f"u{i}" for i in range(300)]
    one = worker_settings(redis_url, prefix, idle_ttl_s=1, sweep_interval_s=0.02)
    keys = one.keys
    shard = keys.shard(SCOPE)
    async with running_worker(one) as w1, running_worker(replace(one, consumer="w2")) as w2:
        await count_all(aredis, keys, events_of(ids, seed=9, heavy=["u7"]))

        async def expired() -> bool:
            return int(await aredis.hget(keys.expired(shard), SCOPE.token) or 0) >= len(ids)

        await wait_for(expired, timeout=20.0, what="every individual to expire")
        # a sweeper adds to its count when its round ends: wait for both rounds in flight
        await wait_for(lambda: w1.sweeper.removed + w2.sweeper.removed >= len(ids), what="both rounds to end")
    assert w1.sweeper.removed + w2.sweeper.removed == len(ids)
    assert int(await aredis.hget(keys.expired(shard), SCOPE.token) or 0) == len(ids)
    after = await state(aredis, keys, SCOPE)
    assert (after["pop"], after["sq"], after["k"], after["raw"], after["rank"], after["last"]) == ({},) * 6
    assert after["agg"] == {"n": 0.0, "sum": 0.0, "sumsq": 0.0} and after["dom"]["events"] == "0"
