"""BatchProcessor details the worker tests do not reach directly: validation
reasons, NOSCRIPT recovery, entries deleted while pending, the order of commits
and the repair of scores whose commit never happened.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from binormal.common.keys import Keyspace, Scope
from binormal.common.schema import Event
from binormal.common.scoring import Snapshot
from binormal.common.scripts import Scripts
from binormal.worker.batch import BatchProcessor
from binormal.worker.entries import Entry
from binormal.worker.worker import ensure_groups
from tests.support.events import counts_from_events
from tests.support.redis_state import Collector, check_counters, drained, hgetall_int, individual_counts, xadd_events
from tests.support.waiting import wait_for
from tests.support.workers import running_worker, worker_settings

SCOPE = Scope("acme", "webserver", "auth_getpost")


def _fields(**over: str) -> dict[bytes, bytes]:
    base = {"org": SCOPE.org, "source": SCOPE.source, "pop": SCOPE.pop, "id": "u1", "action": "GET /"}
    base.update(over)
    return {k.encode(): v.encode() for k, v in base.items()}


def test_validate_sets_reason_or_event() -> None:
    keys = Keyspace("bn", 4)
    home = keys.shard(SCOPE)
    proc = BatchProcessor(keys, Scripts(), "c")
    stream = keys.stream(home).encode()
    ok = Entry(stream, home, b"1-0", _fields())
    missing = Entry(stream, home, b"1-1", {k: v for k, v in _fields().items() if k != b"pop"})
    empty = Entry(stream, home, b"1-2", {})
    wrong = Entry(keys.stream((home + 1) % 4).encode(), (home + 1) % 4, b"1-3", _fields())
    proc.validate([ok, missing, empty, wrong])
    assert ok.reason is None and ok.event == Event(SCOPE.org, SCOPE.source, SCOPE.pop, "u1", "GET /")
    assert missing.event is None and missing.reason == "invalid: pop: is missing"
    assert empty.reason is not None and "no fields" in empty.reason
    assert wrong.reason == f"wrong shard: written to shard {(home + 1) % 4}, its scope belongs to shard {home}"


async def test_noscript_reloads_and_counts_once(prefix: str, aredis: aioredis.Redis) -> None:
    keys = Keyspace(prefix, 4)
    await ensure_groups(aredis, keys.streams(), keys.group)
    events = [Event(SCOPE.org, SCOPE.source, SCOPE.pop, f"u{i % 3}", f"a{i % 4}") for i in range(20)]
    await xadd_events(aredis, keys, events)
    reply = await aredis.xreadgroup(keys.group, "c", {s: ">" for s in keys.streams()}, count=100)
    entries = [Entry(s, keys.shard_of_stream(s.decode()), eid, f) for s, items in reply for eid, f in items]
    proc = BatchProcessor(keys, Scripts(), "c", snapshot_max_age_ms=0)
    await aredis.script_flush()  # a restarted Redis has no scripts: EVALSHA answers NOSCRIPT
    results = await proc.process(aredis, entries)
    assert len(results) == 20 and proc.counters.applied == 20
    assert await check_counters(aredis, keys, counts_from_events(events)) == []
    assert [r["count"] for r in results if r["id"] == "u0"] == list(range(1, 8))


async def test_entry_deleted_while_pending_is_not_counted(redis_url: str, prefix: str, aredis: aioredis.Redis) -> None:
    """XDEL of a pending entry: re-reading the backlog returns it with no fields;
    it goes to the dead letters, nothing is counted, and the group drains."""
    keys = Keyspace(prefix, 4)
    await ensure_groups(aredis, keys.streams(), keys.group)
    events = [Event(SCOPE.org, SCOPE.source, SCOPE.pop, u, "GET /") for u in ("u1", "u2")]
    ids = await xadd_events(aredis, keys, events)
    stream = keys.stream(keys.shard(SCOPE))
    await aredis.xreadgroup(keys.group, "gone", {stream: ">"}, count=10)  # both pending under "gone"
    await aredis.xdel(stream, ids[0])
    async with running_worker(worker_settings(redis_url, prefix, consumer="gone", claim_idle_ms=200)):
        await wait_for(lambda: drained(aredis, keys), what="drain")  # own backlog, from id 0
    assert await check_counters(aredis, keys, counts_from_events(events[1:])) == []
    [(_, d)] = await aredis.xrange(keys.dead(keys.shard(SCOPE)))
    assert d[b"entry_id"] == ids[0] and b"no fields" in d[b"reason"]


async def test_commit_keeps_the_newest_state_of_an_individual(prefix: str, aredis: aioredis.Redis) -> None:
    """commit.lua orders one individual's scores by its event count: an older
    score arriving late (another lane or worker) leaves zset and aggregates alone.

    The count of the committed score is kept in the uncommitted mark while one is
    there ('<entry id> <L>', as apply.lua writes it), else it is the individual's
    event count (the sum of its counts): no per-individual record of it is kept."""
    keys = Keyspace(prefix, 4)
    scripts = Scripts()
    await scripts.load_all(aredis)
    rank, agg = keys.scope_key(SCOPE, "rank"), keys.scope_key(SCOPE, "agg")
    marks = keys.uncommitted(keys.shard(SCOPE))

    async def applied(member: str, count: int) -> None:
        """What apply.lua leaves for the event that brings ``member`` to ``count`` events."""
        ikey = keys.individual(SCOPE, member)
        await aredis.hincrby(ikey, "1", 1)
        mark = await aredis.hget(marks, ikey)
        last = mark.split(b" ")[1].decode() if mark else str(count - 1)
        await aredis.hset(marks, ikey, f"{count}-0 {last}")

    async def commit(member: str, score: float, count: int) -> list[object]:
        entry_id, ikey = f"{count}-0", keys.individual(SCOPE, member)
        reply = await aredis.evalsha(
            scripts.sha("commit"), 4, marks, rank, agg, ikey, member, repr(score), count, entry_id, 0
        )
        return list(reply)

    for count in (1, 2, 3):
        await applied("u1", count)
    await applied("u2", 1)
    # {n, sum, sumsq, committed, then (issue 11) below, ties, card, no sample}
    assert await commit("u1", 5.0, 3) == [1, b"5", b"25", 1, 0, 1, 1, []]
    assert not await aredis.hexists(marks, keys.individual(SCOPE, "u1"))  # its last applied entry is committed
    assert await commit("u2", 1.0, 1) == [2, b"6", b"26", 1, 0, 1, 2, []]
    # u1's score at its 2nd event arrives after the one at its 3rd: skipped (2.0 is above u2's 1.0);
    # without a mark the committed count is u1's event count, 3
    assert await commit("u1", 2.0, 2) == [2, b"6", b"26", 0, 1, 0, 2, []]
    assert await aredis.zscore(rank, "u1") == 5.0
    # the next state replaces it, and the aggregates move by the change 5 -> 1.5
    await applied("u1", 4)
    assert await commit("u1", 1.5, 4) == [2, b"2.5", b"3.25", 1, 1, 1, 2, []]
    assert await aredis.zscore(rank, "u1") == 1.5
    # two applies in flight: the mark goes with the commit of its own entry, not an earlier
    # one, and the earlier one's commit moves the mark's committed count
    await applied("u1", 5)
    await applied("u1", 6)
    assert await aredis.hget(marks, keys.individual(SCOPE, "u1")) == b"6-0 4"
    assert (await commit("u1", 1.0, 5))[3] == 1
    assert await aredis.hget(marks, keys.individual(SCOPE, "u1")) == b"6-0 5"
    assert (await commit("u1", 9.0, 4))[3] == 0  # older than the committed 5: skipped
    assert await aredis.zscore(rank, "u1") == 1.0
    assert (await commit("u1", 1.25, 6))[3] == 1
    assert await aredis.hexists(marks, keys.individual(SCOPE, "u1")) == 0
    assert await aredis.zscore(rank, "u1") == 1.25


async def test_late_commit_of_an_older_batch_is_skipped(prefix: str, aredis: aioredis.Redis) -> None:
    """Batch A applies u1's 1st event, batch B applies and commits its 2nd, then A
    commits: u1's rank score stays B's (the newer state), and A's is counted as stale."""
    keys = Keyspace(prefix, 4)
    await ensure_groups(aredis, keys.streams(), keys.group)
    events = [Event(SCOPE.org, SCOPE.source, SCOPE.pop, "u1", a) for a in ("GET /", "DELETE /admin")]
    events += [Event(SCOPE.org, SCOPE.source, SCOPE.pop, "u2", "GET /")] * 5  # a population to score against
    await xadd_events(aredis, keys, events[2:])
    stream = keys.stream(keys.shard(SCOPE))
    home = keys.shard(SCOPE)
    proc = BatchProcessor(keys, Scripts(), "c")
    await proc.scripts.load_all(aredis)

    async def read_one() -> list[Entry]:
        [(s, [(eid, f)])] = await aredis.xreadgroup(keys.group, "c", {stream: ">"}, count=1)
        return [Entry(s, home, eid, f)]

    background = []
    for _ in range(5):
        background += await read_one()
    await proc.process(aredis, background)
    await xadd_events(aredis, keys, events[:2])
    a, b = await read_one(), await read_one()
    proc.validate(a)
    applied_a = await proc._apply(aredis, a, [])  # A: counted, not yet committed
    [result_b] = await proc.process(aredis, b)  # B: counted and committed
    ready_a = await proc._refresh_snapshots(aredis, applied_a)
    [(_, result_a)] = await proc._score_and_commit(aredis, ready_a)  # A's commit arrives late
    assert (result_a["count"], result_b["count"]) == (1, 2)
    assert result_a["score"] != result_b["score"]
    assert proc.counters.stale_scores == 1
    rank = keys.scope_key(SCOPE, "rank")
    assert round(await aredis.zscore(rank, "u1"), 3) == result_b["score"]
    assert not await aredis.hexists(keys.uncommitted(home), keys.individual(SCOPE, "u1"))
    assert (await aredis.hmget(keys.scope_key(SCOPE, "agg"), "n"))[0] == b"2"


async def test_worker_repairs_a_score_whose_commit_never_happened(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    """A worker that dies between apply and commit leaves the counts right but no
    score; the uncommitted mark it left lets a live worker commit one."""
    keys = Keyspace(prefix, 4)
    await ensure_groups(aredis, keys.streams(), keys.group)
    population = [Event(SCOPE.org, SCOPE.source, SCOPE.pop, f"p{i}", "GET /") for i in range(8)]
    mine = [Event(SCOPE.org, SCOPE.source, SCOPE.pop, "u1", a) for a in ("GET /", "DELETE /admin", "DELETE /admin")]
    await xadd_events(aredis, keys, population + mine)
    home = keys.shard(SCOPE)
    reply = await aredis.xreadgroup(keys.group, "dead", {keys.stream(home): ">"}, count=100)
    entries = [Entry(s, home, eid, f) for s, items in reply for eid, f in items]
    dying = BatchProcessor(keys, Scripts(), "dead")
    await dying.scripts.load_all(aredis)
    await dying.process(aredis, entries[:8])
    dying.validate(entries[8:])
    await dying._apply(aredis, entries[8:], [])  # counted and acked; then the process "dies"
    rank, marks = keys.scope_key(SCOPE, "rank"), keys.uncommitted(home)
    ikey = keys.individual(SCOPE, "u1")
    assert await aredis.zscore(rank, "u1") is None
    assert await aredis.hget(marks, ikey) == entries[-1].id + b" 0"  # no score committed yet: L = 0
    settings = worker_settings(redis_url, prefix, claim_idle_ms=200)
    async with running_worker(settings) as w:

        async def repaired() -> bool:
            # The mark goes in the commit's round trip; the counter moves once its reply is read.
            return await _absent(aredis, marks, ikey) and w.counters.repaired > 0

        await wait_for(repaired, timeout=10, what="repair")
        assert w.counters.repaired == 1
    pop = {k.decode(): int(v) for k, v in (await aredis.hgetall(keys.scope_key(SCOPE, "pop"))).items()}
    expected = Snapshot(pop).score({"GET /": 1, "DELETE /admin": 2})
    assert expected > 1.0 and abs(await aredis.zscore(rank, "u1") - expected) < 1e-9
    assert (await aredis.hmget(keys.scope_key(SCOPE, "agg"), "n"))[0] == b"9"


async def _absent(client: aioredis.Redis, key: str, field: str) -> bool:
    return not await client.hexists(key, field)


async def test_repair_of_a_scope_with_broken_state_does_not_stop_the_worker(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    keys = Keyspace(prefix, 4)
    await ensure_groups(aredis, keys.streams(), keys.group)
    broken = Scope("acme", "web", "broken")
    shard = keys.shard(broken)
    await aredis.set(keys.scope_key(broken, "pop"), "not a hash")  # WRONGTYPE for HGETALL
    await aredis.hset(keys.uncommitted(shard), keys.individual(broken, "u9"), "1-0")
    settings = worker_settings(redis_url, prefix, claim_idle_ms=200)
    async with running_worker(settings) as w:
        await asyncio.sleep(1.6)  # three claim rounds: the mark is seen twice, its repair fails
        await xadd_events(aredis, keys, [Event(SCOPE.org, SCOPE.source, SCOPE.pop, "u1", "GET /")])
        await wait_for(lambda: drained(aredis, keys), what="drain")
        assert w.counters.applied == 1 and w.counters.repaired == 0
    assert await aredis.hget(keys.uncommitted(shard), keys.individual(broken, "u9")) == b"1-0"


async def test_event_of_a_scope_with_broken_state_is_dead_lettered_not_fatal(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    """Someone else's string under a scope's population key: that scope's events go
    to the dead letters at once, with nothing written and the reason naming the
    key; the worker keeps scoring every other scope."""
    keys = Keyspace(prefix, 4)
    await ensure_groups(aredis, keys.streams(), keys.group)
    broken = Scope("acme", "web", "broken")
    shard = keys.shard(broken)
    await aredis.set(keys.scope_key(broken, "pop"), "not a hash")
    good = Event(SCOPE.org, SCOPE.source, SCOPE.pop, "u1", "GET /")
    # Snapshots may be 1 s old (the default): the broken scope's population is
    # pre-read with the apply, which is the read that must not raise.
    settings = worker_settings(redis_url, prefix, snapshot_max_age_ms=1000)
    async with running_worker(settings) as w:
        await xadd_events(aredis, keys, [Event(broken.org, broken.source, broken.pop, "u9", "GET /"), good])
        await wait_for(lambda: drained(aredis, keys), timeout=20, what="the broken entry to be dead-lettered")
        await xadd_events(aredis, keys, [good])
        await wait_for(lambda: drained(aredis, keys), what="drain")
        assert w.counters.applied == 2 and w.counters.dead == 1
    [(_, fields)] = await aredis.xrange(keys.dead(shard))
    reason = fields[b"reason"].decode()
    assert reason == f"bad state: key {keys.scope_key(broken, 'pop')} holds a string, not a hash", reason
    assert fields[b"f.pop"] == b"broken" and fields[b"f.id"] == b"u9"
    assert not await aredis.exists(keys.individual(broken, "u9"))
    assert await aredis.get(keys.scope_key(broken, "pop")) == b"not a hash"
    assert await check_counters(aredis, keys, counts_from_events([good, good])) == []


# Every key the two scripts write, and the type it must have. A key holding
# another type must stop the entry before anything is written: Redis keeps a
# script's earlier writes when a later command fails.
APPLY_KEYS: dict[str, Callable[[Keyspace, int], str]] = {
    "pop": lambda k, shard: k.scope_key(SCOPE, "pop"),
    "sq": lambda k, shard: k.scope_key(SCOPE, "sq"),
    "k": lambda k, shard: k.scope_key(SCOPE, "k"),
    "individual": lambda k, shard: k.individual(SCOPE, "u1"),
    "action numbers": lambda k, shard: k.scope_key(SCOPE, "an"),
    "action names": lambda k, shard: k.scope_key(SCOPE, "na"),
    "idempotency marker": lambda k, shard: k.seen(SCOPE, "ev-1"),
    "scopes set": lambda k, shard: k.scopes(shard),
    "uncommitted hash": lambda k, shard: k.uncommitted(shard),
}
COMMIT_KEYS: dict[str, Callable[[Keyspace, int], str]] = {
    "rank": lambda k, shard: k.scope_key(SCOPE, "rank"),
    "agg": lambda k, shard: k.scope_key(SCOPE, "agg"),
}  # commit.lua's third key, the individual's hash, is apply.lua's too (APPLY_KEYS)


async def _process_one(
    aredis: aioredis.Redis, keys: Keyspace, recent_window: int = 0
) -> tuple[BatchProcessor, list[dict[str, object]]]:
    """XADD one event with an event_id, read it as consumer c, process it (with a recent window K)."""
    await ensure_groups(aredis, keys.streams(), keys.group)
    await xadd_events(aredis, keys, [Event(SCOPE.org, SCOPE.source, SCOPE.pop, "u1", "GET /", event_id="ev-1")])
    reply = await aredis.xreadgroup(keys.group, "c", {s: ">" for s in keys.streams()}, count=10)
    entries = [Entry(s, keys.shard_of_stream(s.decode()), eid, f) for s, items in reply for eid, f in items]
    proc = BatchProcessor(keys, Scripts(), "c", snapshot_max_age_ms=0, recent_window=recent_window)
    return proc, await proc.process(aredis, entries)


async def _dump(aredis: aioredis.Redis, prefix: str) -> dict[bytes, object]:
    """Every key under the prefix except the streams, with its value."""
    out: dict[bytes, object] = {}
    async for key in aredis.scan_iter(match=f"{prefix}*", count=1000):
        t = await aredis.type(key)
        if t == b"hash":
            out[key] = await aredis.hgetall(key)
        elif t == b"set":
            out[key] = await aredis.smembers(key)
        elif t == b"zset":
            out[key] = await aredis.zrange(key, 0, -1, withscores=True)
        elif t == b"string":
            out[key] = await aredis.get(key)
    return out


@pytest.mark.parametrize("which", list(APPLY_KEYS))
async def test_apply_writes_nothing_when_a_key_holds_another_type(
    prefix: str, aredis: aioredis.Redis, which: str
) -> None:
    keys = Keyspace(prefix, 4)
    shard = keys.shard(SCOPE)
    foreign = APPLY_KEYS[which](keys, shard)
    await aredis.rpush(foreign, "someone else's list")
    before = await _dump(aredis, prefix)
    proc, results = await _process_one(aredis, keys)
    assert results == [] and proc.counters.applied == 0 and proc.counters.dead == 1
    assert await _dump(aredis, prefix) == before  # nothing counted, marked or committed
    [(_, fields)] = await aredis.xrange(keys.dead(shard))
    assert fields[b"reason"].decode() == f"bad state: key {foreign} holds a list, not a " + (
        "string" if which == "idempotency marker" else "set" if which == "scopes set" else "hash"
    )
    assert (await aredis.xpending(keys.stream(shard), keys.group))["pending"] == 0


@pytest.mark.parametrize("which", ["list", "hash"])
async def test_the_recent_window_keys_are_type_checked_with_k_above_0_and_never_touched_at_0(
    prefix: str, aredis: aioredis.Redis, which: str
) -> None:
    keys = Keyspace(prefix, 4)
    shard = keys.shard(SCOPE)
    foreign = keys.recent_list(SCOPE, "u1") if which == "list" else keys.recent_window(SCOPE, "u1")
    await aredis.set(foreign, "someone else's string")
    before = await _dump(aredis, prefix)
    proc, results = await _process_one(aredis, keys, recent_window=10)
    assert results == [] and proc.counters.applied == 0 and proc.counters.dead == 1
    assert await _dump(aredis, prefix) == before  # nothing counted, marked or committed
    [(_, fields)] = await aredis.xrange(keys.dead(shard))
    assert fields[b"reason"].decode() == f"bad state: key {foreign} holds a string, not a {which}"
    # K = 0: the same keys are not looked at, the event is counted and its result has no recent
    keys = Keyspace(prefix + "b", 4)
    await aredis.set(foreign.replace(prefix, prefix + "b"), "someone else's string")
    proc, results = await _process_one(aredis, keys)
    assert proc.counters.applied == 1 and len(results) == 1 and "recent" not in results[0]


@pytest.mark.parametrize("which", list(COMMIT_KEYS))
async def test_commit_skips_a_scope_whose_key_holds_another_type(
    prefix: str, aredis: aioredis.Redis, which: str
) -> None:
    keys = Keyspace(prefix, 4)
    shard = keys.shard(SCOPE)
    await aredis.rpush(COMMIT_KEYS[which](keys, shard), "someone else's list")
    proc, results = await _process_one(aredis, keys)
    # Counted and acknowledged, but neither rank nor aggregates moved,
    # and the uncommitted mark stays for a repair once the key is fixed.
    assert results == [] and proc.counters.applied == 1
    assert (
        await check_counters(
            aredis, keys, counts_from_events([Event(SCOPE.org, SCOPE.source, SCOPE.pop, "u1", "GET /")])
        )
        == []
    )
    for name, key in COMMIT_KEYS.items():
        if name != which:
            assert not await aredis.exists(key(keys, shard)), name
    assert await aredis.hget(keys.uncommitted(shard), keys.individual(SCOPE, "u1")) is not None


async def test_dead_letter_key_of_another_type_leaves_the_entry_pending(prefix: str, aredis: aioredis.Redis) -> None:
    keys = Keyspace(prefix, 4)
    shard = keys.shard(SCOPE)
    await ensure_groups(aredis, keys.streams(), keys.group)
    await aredis.rpush(keys.dead(shard), "someone else's list")
    await aredis.xadd(keys.stream(shard), {"org": "acme"})  # invalid: to the dead letters
    reply = await aredis.xreadgroup(keys.group, "c", {keys.stream(shard): ">"}, count=10)
    entries = [Entry(s, shard, eid, f) for s, items in reply for eid, f in items]
    proc = BatchProcessor(keys, Scripts(), "c")
    assert await proc.process(aredis, entries) == [] and proc.counters.dead == 0
    # Not acknowledged: it stays pending until the key is fixed, then the claim
    # path retries it; an XACK before the failing XADD would have lost it.
    assert (await aredis.xpending(keys.stream(shard), keys.group))["pending"] == 1


# ---------------------------------------------------------------- the distinct-action cap (BINORMAL_MAX_ACTIONS)


async def _process(aredis: aioredis.Redis, keys: Keyspace, proc: BatchProcessor, fields: list[dict[str, str]]) -> None:
    """XADD these entries to SCOPE's shard, read them as consumer c, process them in one batch."""
    shard = keys.shard(SCOPE)
    for f in fields:
        await aredis.xadd(keys.stream(shard), {"org": SCOPE.org, "source": SCOPE.source, "pop": SCOPE.pop, **f})
    reply = await aredis.xreadgroup(keys.group, "c", {keys.stream(shard): ">"}, count=100)
    entries = [Entry(s, shard, eid, f) for s, items in reply for eid, f in items]
    await proc.process(aredis, entries)


async def test_a_new_action_past_the_cap_is_dead_lettered_and_the_scope_flagged(
    prefix: str, aredis: aioredis.Redis
) -> None:
    keys = Keyspace(prefix, 4)
    shard = keys.shard(SCOPE)
    await ensure_groups(aredis, keys.streams(), keys.group)
    proc = BatchProcessor(keys, Scripts(), "c", max_actions=3)
    reply_to = f"{prefix}:reply:test"
    async with Collector(aredis, reply_to) as col:
        await _process(aredis, keys, proc, [{"id": "u1", "action": a} for a in ("a1", "a2", "a3")])
        await _process(
            aredis,
            keys,
            proc,
            [
                {"id": "u2", "action": "a4", "reply_to": reply_to, "rid": "r1", "event_id": "e4"},  # new, past the cap
                {"id": "u2", "action": "a1"},  # known: counted
                {"id": "u3", "action": "a5"},  # new, past the cap
            ],
        )
        [note] = await col.wait_count(reply_to, 1)
    reason = "action cap: scope already has 3 distinct actions (BINORMAL_MAX_ACTIONS)"
    assert note == {"rejected": True, "error": reason, "field": "action", "event_id": "e4", "rid": "r1"}
    assert proc.counters.applied == 4 and proc.counters.capped == 2 and proc.counters.dead == 2
    assert await hgetall_int(aredis, keys.scope_key(SCOPE, "pop")) == {"a1": 2, "a2": 1, "a3": 1}
    assert not await aredis.exists(keys.individual(SCOPE, "u3"))
    assert not await aredis.exists(keys.seen(SCOPE, "e4"))  # not marked: it may come back once the cap is raised
    dead = await aredis.xrange(keys.dead(shard))
    assert [(f[b"reason"].decode(), f[b"f.action"]) for _, f in dead] == [(reason, b"a4"), (reason, b"a5")]
    assert await aredis.hgetall(keys.capped(shard)) == {SCOPE.token.encode(): b"2"}
    assert (await aredis.xpending(keys.stream(shard), keys.group))["pending"] == 0


async def test_capped_key_of_another_type_is_bad_state_not_a_half_write(prefix: str, aredis: aioredis.Redis) -> None:
    keys = Keyspace(prefix, 4)
    shard = keys.shard(SCOPE)
    await ensure_groups(aredis, keys.streams(), keys.group)
    await aredis.rpush(keys.capped(shard), "someone else's list")
    proc = BatchProcessor(keys, Scripts(), "c", max_actions=1)
    await _process(aredis, keys, proc, [{"id": "u1", "action": "a1"}, {"id": "u1", "action": "a2"}])
    [(_, fields)] = await aredis.xrange(keys.dead(shard))
    assert fields[b"reason"].decode() == f"bad state: key {keys.capped(shard)} holds a list, not a hash"
    assert await hgetall_int(aredis, keys.scope_key(SCOPE, "pop")) == {"a1": 1}


async def _read_all(aredis: aioredis.Redis, keys: Keyspace, consumer: str) -> list[Entry]:
    reply = await aredis.xreadgroup(keys.group, consumer, {s: ">" for s in keys.streams()}, count=1000)
    return [Entry(s, keys.shard_of_stream(s.decode()), eid, f) for s, items in reply for eid, f in items]


async def test_a_new_action_is_added_to_the_snapshot_without_rereading_the_scope(
    prefix: str, aredis: aioredis.Redis
) -> None:
    """With a staleness above 0, an entry whose own action is new to its scope's
    snapshot gets it added with the count the apply returned: no HGETALL of the
    whole population (O(actions)), and the score is the fresh snapshot's."""
    keys = Keyspace(prefix, 4)
    await ensure_groups(aredis, keys.streams(), keys.group)
    proc = BatchProcessor(keys, Scripts(), "c", snapshot_max_age_ms=60_000)
    await proc.scripts.load_all(aredis)
    first = [Event(*SCOPE, f"u{i % 7}", f"a{i % 300}") for i in range(600)]
    await xadd_events(aredis, keys, first)
    await proc.process(aredis, await _read_all(aredis, keys, "c"))
    refreshes = proc.counters.snapshot_refreshes
    assert refreshes >= 1
    pop_before = proc.snapshots[SCOPE][0].counts.copy()
    # u1 does a new action twice; u2 a known one.
    second = [Event(*SCOPE, "u1", "new"), Event(*SCOPE, "u2", "a1"), Event(*SCOPE, "u1", "new")]
    await xadd_events(aredis, keys, second)
    results = await proc.process(aredis, await _read_all(aredis, keys, "c"))
    assert proc.counters.snapshot_refreshes == refreshes  # nothing re-read
    snap = proc.snapshots[SCOPE][0]
    assert snap.counts == {**pop_before, "new": 1}  # the count as of the first apply that brought it
    fresh = Snapshot({**pop_before, "new": 1})
    by_id = {r["id"]: r for r in results}
    [u1] = await individual_counts(aredis, keys, SCOPE, ["u1"])
    assert by_id["u1"]["score"] == round(fresh.score(u1), 3)
    # Another worker's new action (this snapshot cannot know its count): the scope is re-read.
    other = BatchProcessor(keys, proc.scripts, "c2", snapshot_max_age_ms=60_000)
    await xadd_events(aredis, keys, [Event(*SCOPE, "u3", "elsewhere")])
    await other.process(aredis, await _read_all(aredis, keys, "c2"))
    await xadd_events(aredis, keys, [Event(*SCOPE, "u3", "a2")])
    await proc.process(aredis, await _read_all(aredis, keys, "c"))
    assert proc.counters.snapshot_refreshes == refreshes + 1
    assert "elsewhere" in proc.snapshots[SCOPE][0].counts


async def test_an_over_delivered_entry_is_dead_lettered_and_never_applied(prefix: str, aredis: aioredis.Redis) -> None:
    """An entry the worker marked over-delivered (a reason, valid fields) goes to the
    dead letters only: it is not also passed to apply.lua in the same batch."""
    keys = Keyspace(prefix, 4)
    await ensure_groups(aredis, keys.streams(), keys.group)
    await xadd_events(aredis, keys, [Event(*SCOPE, "u1", "GET /"), Event(*SCOPE, "u2", "GET /")])
    over, ok = await _read_all(aredis, keys, "c")
    over.reason = "delivered 9 times without being applied"
    proc = BatchProcessor(keys, Scripts(), "c", snapshot_max_age_ms=0)
    await proc.scripts.load_all(aredis)
    results = await proc.process(aredis, [over, ok])
    assert [r["id"] for r in results] == ["u2"]
    assert proc.counters.dead == 1 and proc.counters.applied == 1 and proc.counters.already == 0
    assert proc.counters.lua_calls == 3  # one dead letter, one apply (of ok alone), one commit
    assert await hgetall_int(aredis, keys.individual(SCOPE, "u1")) == {}
