"""The scorer worker against the private redis-server: groups, equivalence with the
in-memory engine, bad input, exactly-once, request-reply, lanes, and the docs/stream.md
examples (take-over, trimming, stopping and clocks: tests/test_worker_lifecycle.py).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from binormal.common.engine import MemoryEngine
from binormal.common.keys import Keyspace, Scope
from binormal.common.schema import Event
from binormal.common.scripts import Scripts
from binormal.common.store import read_aggregates, read_individual, read_windows, recompute_aggregates
from binormal.worker import WorkerSettings
from binormal.worker.batch import BatchProcessor
from binormal.worker.entries import Entry
from binormal.worker.worker import ensure_groups
from tests.support.events import ACTIONS, TRICKY_SCOPES, WEIGHTS, counts_from_events, generate, with_heavy
from tests.support.redis_state import (
    Collector,
    check_counters,
    drained,
    dump_keys,
    hgetall_int,
    read_entries,
    xadd_events,
)
from tests.support.waiting import wait_for
from tests.support.workers import running_worker, worker_settings

ROOT = Path(__file__).resolve().parent.parent


def keys_of(prefix: str) -> Keyspace:
    return Keyspace(prefix=prefix, shards=4)


# ------------------------------------------------------------------ groups


async def test_group_created_at_zero_reads_entries_written_before(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    keys = keys_of(prefix)
    events = generate(40, seed=1)
    await xadd_events(aredis, keys, events)  # no group exists yet
    async with Collector(aredis, keys.broadcast_channel()) as col, running_worker(worker_settings(redis_url, prefix)):
        got = await col.wait_count(keys.broadcast_channel(), 40)
        # MKSTREAM: shards nobody wrote to exist too, each with the group
        for stream in keys.streams():
            groups = await aredis.xinfo_groups(stream)
            assert [g["name"] for g in groups] == [keys.group.encode()]
    assert len(got) == 40
    assert await check_counters(aredis, keys, counts_from_events(events)) == []


async def test_ensure_groups_tolerates_busygroup_only(prefix: str, aredis: aioredis.Redis) -> None:
    keys = keys_of(prefix)
    await ensure_groups(aredis, keys.streams(), keys.group)
    await ensure_groups(aredis, keys.streams(), keys.group)  # BUSYGROUP: fine
    assert await aredis.exists(*keys.streams()) == keys.shards
    bad = f"{prefix}:not-a-stream"
    await aredis.set(bad, "a string")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await ensure_groups(aredis, [bad], keys.group)


# ------------------------------------------------------------------ equivalence


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("weight_cap", "window"), [(100, 0), (0, 0), (100, 50)], ids=["guard-on", "guard-off", "guard-on-recent-50"]
)
async def test_equivalence_with_memory_engine(
    redis_url: str, prefix: str, aredis: aioredis.Redis, weight_cap: int, window: int
) -> None:
    """Snapshot staleness 0, one worker: every result equals MemoryEngine's, field by field.

    A scope lives in one shard and a shard is read in stream order, so each
    scope's events are processed in write order; scopes are independent, so the
    engine fed the write order gives the same per-scope results. With the
    dominance guard on (W = N, the default) and off (0), and one heavy
    individual (400 events) among light ones (~26 each), so W is passed by far. With the
    recent window K = 50 (BINORMAL_RECENT_WINDOW) ``recent`` is compared too: the light ones'
    windows grow (k = n // 2), the heavy one's slides at k = K; with K = 0 no result has it.
    """
    keys = keys_of(prefix)
    events = with_heavy(generate(5200, seed=7), TRICKY_SCOPES[1], "heavy", 400, seed=7)
    assert len({keys.shard(s) for s in TRICKY_SCOPES}) >= 2
    engine = MemoryEngine(cap=100, weight_cap=weight_cap, recent_window=window)
    expected: dict[Scope, list[dict[str, Any]]] = {}
    for ev in events:
        expected.setdefault(ev.scope, []).append(engine.process(ev))

    env = {
        "REDIS_URL": redis_url,
        "BINORMAL_PREFIX": prefix,
        "BINORMAL_SHARDS": "4",
        "BINORMAL_CONSUMER": "only",
        "BINORMAL_SNAPSHOT_MAX_AGE_MS": "0",
        "BINORMAL_BLOCK_MS": "50",
        "BINORMAL_WEIGHT_CAP": str(weight_cap),
        "BINORMAL_RECENT_WINDOW": str(window),
    }
    settings = WorkerSettings.from_env(env)
    assert settings.snapshot_max_age_ms == 0 and settings.weight_cap == weight_cap
    assert settings.recent_window == window
    channel = keys.broadcast_channel()
    async with Collector(aredis, channel) as col:
        await xadd_events(aredis, keys, events[:2600])  # before the worker (and its group) exist
        async with running_worker(settings) as w:
            await xadd_events(aredis, keys, events[2600:])  # while it runs
            got = await col.wait_count(channel, len(events), timeout=45)
            await wait_for(lambda: drained(aredis, keys), what="drain")
            assert w.counters.applied == len(events)
    assert len(got) == len(events)
    per_scope: dict[Scope, list[dict[str, Any]]] = {}
    for r in got:
        per_scope.setdefault(Scope(r["org"], r["source"], r["pop"]), []).append(r)
    assert set(per_scope) == set(expected)
    compared = 0
    for scope, want in expected.items():
        have = per_scope[scope]
        assert len(have) == len(want), scope
        for i, (h, e) in enumerate(zip(have, want)):
            assert h == e, f"{scope} event #{i}: redis {h} != memory {e}"
            compared += 1
    assert compared == len(events)
    # The calibrated fields (issue 11) were among those compared, with both values of each flag.
    calibrated = {"pscore", "rzscore", "bits_per_event", "learning", "novel", "new_action"}
    assert all(calibrated <= set(r) for r in got)
    for flag in ("learning", "novel", "new_action"):
        assert {r[flag] for r in got} == {True, False}, flag
    assert len({r["rzscore"] for r in got}) > 100 and len({r["pscore"] for r in got}) > 100
    assert all(("recent" in r) == (window > 0) for r in got)
    if window:
        assert len({r["recent"] for r in got}) > 100 and {r["recent"] for r in got if r["count"] == 1} == {0.0}
        # the window's keys are exactly the engine's, and only with K > 0
        heavy_state = engine.scopes[TRICKY_SCOPES[1]]
        kept, counts = heavy_state.windows["heavy"]
        assert len(kept) == window and sum(counts.values()) == window
        assert await aredis.llen(keys.recent_list(TRICKY_SCOPES[1], "heavy")) == window
        n = sum(heavy_state.individuals["heavy"].values())
        assert await read_windows(aredis, keys, TRICKY_SCOPES[1], [("heavy", n), ("heavy", n - 1)]) == [counts, {}]
    else:
        assert await aredis.keys(f"{prefix}:*:rl:*") == [] and await aredis.keys(f"{prefix}:*:rw:*") == []
    # The stored aggregates are bit-for-bit the engine's.
    for scope, st in engine.scopes.items():
        assert await read_aggregates(aredis, keys, scope) == st.agg
        assert await hgetall_int(aredis, keys.scope_key(scope, "pop")) == st.pop
    assert await check_counters(aredis, keys, counts_from_events(events), weight_cap) == []
    heavy = engine.scopes[TRICKY_SCOPES[1]]
    capped = heavy.pop != {a: sum(c.get(a, 0) for c in heavy.individuals.values()) for a in heavy.pop}
    assert capped == (weight_cap > 0)  # the guard really changed the population (or really did not)


# ------------------------------------------------------------------ bad input


async def test_bad_entries_go_to_dead_letters(redis_url: str, prefix: str, aredis: aioredis.Redis) -> None:
    keys = keys_of(prefix)
    scope = TRICKY_SCOPES[0]
    home = keys.shard(scope)
    stream = keys.stream(home)
    valid = {"org": scope.org, "source": scope.source, "pop": scope.pop, "id": "alice", "action": "GET /"}
    other = Scope("wrong", "shard", "scope")
    other_fields = {"org": other.org, "source": other.source, "pop": other.pop, "id": "bob", "action": "GET /"}
    wrong_stream = keys.stream((keys.shard(other) + 1) % keys.shards)

    def without(name: str) -> dict[str, Any]:
        return {k: v for k, v in valid.items() if k != name}

    bad: list[tuple[str, dict[Any, Any], list[str]]] = [
        (stream, without("org"), ["org", "missing"]),
        (stream, without("action"), ["action", "missing"]),
        (stream, dict(valid, id=""), ["id", "empty"]),
        (stream, dict(valid, event_id=""), ["event_id", "empty"]),
        (stream, dict(valid, org="o" * 257), ["org", "257 bytes", "256"]),
        (stream, dict(valid, id="i" * 1025), ["id", "1025 bytes", "1024"]),
        (stream, dict(valid, action="é" * 513), ["action", "1026 bytes", "1024"]),
        (stream, dict(valid, action=b"GET \xff\xfe"), ["action", "UTF-8"]),
        (stream, {**valid, b"\xc3(": b"x"}, ["not valid UTF-8"]),
        (stream, dict(valid, acton="GET /"), ["acton", "unknown field"]),
        (stream, dict(valid, ts="yesterday"), ["ts", "integer"]),
        (stream, dict(valid, ts="-5"), ["ts", "negative"]),
        (stream, dict(valid, v="2"), ["v", "version"]),
        (wrong_stream, other_fields, ["wrong shard"]),
    ]
    settings = worker_settings(redis_url, prefix)
    async with Collector(aredis, keys.broadcast_channel()) as col, running_worker(settings) as w:
        await aredis.xadd(stream, valid)
        await col.wait_count(keys.broadcast_channel(), 1)
        before = await dump_keys(aredis, f"{prefix}:*")
        assert any(b":sc:" in k for k in before)
        # entry ids are per stream: the stream is part of the name
        expected: dict[tuple[bytes, bytes], tuple[str, dict[Any, Any], list[str]]] = {}
        for target, fields, words in bad:
            expected[(target.encode(), await aredis.xadd(target, fields))] = (target, fields, words)
        await aredis.xadd(stream, dict(valid, id="carol"))  # after the bad ones, same stream
        got = await col.wait_count(keys.broadcast_channel(), 2)
        assert got[1]["id"] == "carol"
        await wait_for(lambda: drained(aredis, keys), what="drain")
        assert w.counters.dead == len(bad)

        dead: list[tuple[int, dict[bytes, bytes]]] = []
        for s in range(keys.shards):
            dead += [(s, d) for _, d in await aredis.xrange(keys.dead(s))]
        assert len(dead) == len(bad)
        for dead_shard, d in dead:
            target, fields, words = expected.pop((d[b"stream"], d[b"entry_id"]))
            reason = d[b"reason"].decode()
            for word in words:
                assert word in reason, (reason, word)
            assert d[b"stream"] == target.encode()
            assert d[b"consumer"] == b"w1"
            raw = {_b(k): _b(v) for k, v in fields.items()}
            assert {k[2:]: v for k, v in d.items() if k.startswith(b"f.")} == raw
            # it lands in the dead-letter stream of the shard it was written to
            assert dead_shard == keys.shard_of_stream(target)
        assert expected == {}

        # Counters untouched: only carol's event changed anything since `before`.
        after = await dump_keys(aredis, f"{prefix}:*")
        changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
        assert all(b":sc:" in k or k.endswith(b":workers") for k in changed), changed
        assert await check_counters(aredis, keys, counts_from_events([_ev(valid), _ev(dict(valid, id="carol"))])) == []
        assert await aredis.smembers(keys.scopes(home)) == {scope.token.encode()}
        assert not [k async for k in aredis.scan_iter(match=f"{prefix}:*wrong*")]
        # and it keeps going
        await aredis.xadd(stream, dict(valid, id="dave"))
        await col.wait_count(keys.broadcast_channel(), 3)


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _ev(fields: dict[str, str]) -> Event:
    return Event(fields["org"], fields["source"], fields["pop"], fields["id"], fields["action"])


# ------------------------------------------------------------------ exactly once


async def test_same_entry_applied_twice_counts_once(prefix: str, aredis: aioredis.Redis) -> None:
    keys = keys_of(prefix)
    scripts = Scripts()
    await scripts.load_all(aredis)
    await ensure_groups(aredis, keys.streams(), keys.group)
    events = generate(60, seed=3)
    await xadd_events(aredis, keys, events)
    entries = await read_entries(aredis, keys, "c1")
    assert len(entries) == 60
    copies = [Entry(e.stream, e.shard, e.id, dict(e.fields)) for e in entries]
    first = BatchProcessor(keys, scripts, "c1", snapshot_max_age_ms=0)
    assert len(await first.process(aredis, entries)) == 60
    truth = counts_from_events(events)
    assert await check_counters(aredis, keys, truth) == []
    snapshot = await dump_keys(aredis, f"{prefix}:*")
    # the same deliveries again, through the same and through another consumer
    assert await first.process(aredis, copies) == []
    other = BatchProcessor(keys, scripts, "c2", snapshot_max_age_ms=1000)
    assert await other.process(aredis, [Entry(e.stream, e.shard, e.id, dict(e.fields)) for e in entries]) == []
    assert first.counters.applied == 60 and first.counters.already == 60 and other.counters.already == 60
    assert await dump_keys(aredis, f"{prefix}:*") == snapshot
    assert await check_counters(aredis, keys, truth) == []


async def test_duplicate_event_id_counted_once(redis_url: str, prefix: str, aredis: aioredis.Redis) -> None:
    keys = keys_of(prefix)
    scope = TRICKY_SCOPES[2]
    shard = keys.shard(scope)
    reply_to = f"{prefix}:reply:test"
    base = {"org": scope.org, "source": scope.source, "pop": scope.pop, "id": "alice", "action": "GET /"}
    # written before the worker starts, so all three are in one batch
    await aredis.xadd(keys.stream(shard), dict(base, event_id="evt:1", reply_to=reply_to, rid="r1"))
    await aredis.xadd(keys.stream(shard), dict(base, event_id="evt:1", reply_to=reply_to, rid="r2"))
    await aredis.xadd(keys.stream(shard), dict(base, event_id="evt:2"))
    settings = worker_settings(redis_url, prefix)
    async with Collector(aredis, reply_to, keys.broadcast_channel()) as col, running_worker(settings) as w:
        replies = await col.wait_count(reply_to, 2)
        await col.wait_count(keys.broadcast_channel(), 2)
        await wait_for(lambda: drained(aredis, keys), what="drain")
        assert w.counters.duplicates == 1
    # The duplicate's note comes after the first result (and its stored copy),
    # so its waiter can read the stored copy as soon as the note arrives.
    first, dup = replies
    assert first["rid"] == "r1" and first["event_id"] == "evt:1" and first["count"] == 1
    assert dup == {"duplicate": True, "same_event": True, "event_id": "evt:1", "rid": "r2"}
    assert [r["count"] for r in col.messages[keys.broadcast_channel()]] == [1, 2]
    assert await hgetall_int(aredis, keys.scope_key(scope, "pop")) == {"GET /": 2}
    # the waiter of the duplicate can read the first result
    stored = json.loads(await aredis.get(keys.reply(scope, "evt:1")))
    assert stored == {k: v for k, v in first.items() if k != "rid"}
    assert 0 < await aredis.ttl(keys.seen(scope, "evt:1")) <= 3_600


async def test_id_ttl_shortens_the_marker_never_lengthens_it(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    keys = keys_of(prefix)
    scope = TRICKY_SCOPES[0]
    shard = keys.shard(scope)
    base = {"org": scope.org, "source": scope.source, "pop": scope.pop, "id": "carol", "action": "GET /"}
    await aredis.xadd(keys.stream(shard), dict(base, event_id="short", id_ttl="30"))
    await aredis.xadd(keys.stream(shard), dict(base, event_id="long", id_ttl="99999"))
    await aredis.xadd(keys.stream(shard), dict(base, event_id="plain"))
    async with running_worker(worker_settings(redis_url, prefix, seen_ttl_s=600)) as w:
        await wait_for(lambda: drained(aredis, keys), what="drain")
        assert w.counters.applied == 3
    assert 0 < await aredis.ttl(keys.seen(scope, "short")) <= 30
    assert 30 < await aredis.ttl(keys.seen(scope, "long")) <= 600  # capped by BINORMAL_IDEMPOTENCY_TTL_S
    assert 30 < await aredis.ttl(keys.seen(scope, "plain")) <= 600


async def test_request_reply_and_stored_copy(redis_url: str, prefix: str, aredis: aioredis.Redis) -> None:
    keys = keys_of(prefix)
    scope = TRICKY_SCOPES[3]
    shard = keys.shard(scope)
    reply_to = f"{prefix}:reply:{{inst}} 1"
    base = {"org": scope.org, "source": scope.source, "pop": scope.pop, "id": "bob", "action": "ação"}
    async with Collector(aredis, reply_to) as col, running_worker(worker_settings(redis_url, prefix)):
        await aredis.xadd(keys.stream(shard), dict(base, reply_to=reply_to, rid="rid:{1}"))
        await aredis.xadd(keys.stream(shard), dict(base, reply_to=reply_to, rid="rid-2", event_id="ev/2"))
        await aredis.xadd(keys.stream(shard), dict(base, reply_to=reply_to))  # no rid, no event_id
        got = await col.wait_count(reply_to, 3)
    by_count = {r["count"]: r for r in got}
    assert by_count[1]["rid"] == "rid:{1}" and by_count[1]["event_id"] == "rid:{1}"
    assert by_count[2]["rid"] == "rid-2" and by_count[2]["event_id"] == "ev/2"
    assert "rid" not in by_count[3] and by_count[3]["event_id"] is None
    for n, key in ((1, keys.reply(scope, "rid:{1}")), (2, keys.reply(scope, "ev/2"))):
        stored = json.loads(await aredis.get(key))
        assert stored == {k: v for k, v in by_count[n].items() if k != "rid"}
        assert 0 < await aredis.ttl(key) <= 60
    assert not await aredis.exists(keys.reply(scope, "rid-2"))
    replies = [k async for k in aredis.scan_iter(match=f"{prefix}:*:reply:*")]
    assert len(replies) == 2


# ------------------------------------------------------------------ lanes


async def test_two_lanes_leave_each_individual_at_its_newest_score(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    """Two batches in flight share individuals; whatever order their commits take,
    each individual's rank score is the one computed at its last event."""
    keys = keys_of(prefix)
    scopes = TRICKY_SCOPES[:2]
    rng = random.Random(61)
    # Each individual's events come in a burst, one entry per batch: its last
    # two events are in the two lanes at once, and either may commit first.
    events = [
        Event(scope.org, scope.source, scope.pop, f"u{i}", rng.choices(ACTIONS, WEIGHTS)[0])
        for i in range(150)
        for scope in [scopes[i % 2]]
        for _ in range(3)
    ]
    await xadd_events(aredis, keys, events)
    settings = worker_settings(redis_url, prefix, batch=1, inflight=2, snapshot_max_age_ms=5)
    async with Collector(aredis, keys.broadcast_channel()) as col, running_worker(settings) as w:
        got = await col.wait_count(keys.broadcast_channel(), len(events))
        stale = w.counters.stale_scores
    print(f"stale scores skipped: {stale}")
    last: dict[tuple[Scope, str], dict[str, Any]] = {}
    for r in got:
        key = (Scope(r["org"], r["source"], r["pop"]), r["id"])
        if key not in last or r["count"] > last[key]["count"]:
            last[key] = r
    assert len(last) == len({(e.scope, e.id) for e in events})
    for (scope, ident), r in last.items():
        committed = await aredis.zscore(keys.scope_key(scope, "rank"), ident)
        assert committed is not None and abs(committed - r["score"]) <= 0.0005, (scope, ident, committed, r)
        # no mark left: the committed score is the one of its last applied event (commit.lua)
        assert not await aredis.hexists(keys.uncommitted(keys.shard(scope)), keys.individual(scope, ident))
        assert sum((await read_individual(aredis, keys, scope, ident))[0].values()) == r["count"]
    for scope in scopes:
        running = await read_aggregates(aredis, keys, scope)
        fresh = await recompute_aggregates(aredis, keys, scope)
        assert running.n == fresh.n and math.isclose(running.total, fresh.total, rel_tol=1e-9)


# ------------------------------------------------------------------ docs/stream.md examples


def doc_examples() -> dict[str, str]:
    """The python blocks of docs/stream.md marked ``<!-- example: NAME -->``."""
    text = (ROOT / "docs" / "stream.md").read_text(encoding="utf-8")
    return dict(re.findall(r"<!-- example: (\w+) -->\s*```python\n(.*?)```", text, flags=re.S))


async def test_stream_doc_examples(
    redis_url: str, prefix: str, aredis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    examples = doc_examples()
    assert set(examples) == {"broadcast", "reply"}
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("BINORMAL_PREFIX", prefix)
    monkeypatch.setenv("BINORMAL_SHARDS", "4")
    keys = keys_of(prefix)
    ns: dict[str, Any] = {"__name__": "stream_doc_example"}
    async with running_worker(worker_settings(redis_url, prefix)):
        await asyncio.to_thread(exec, compile(examples["broadcast"], "docs/stream.md#broadcast", "exec"), ns)
        result = ns["result"]
        assert result is not None, "the example got no result"
        assert result["count"] == 1 and result["id"] == "individual1" and result["action"] == "GET /user/login"
        assert result["timestamp"] == int(ns["event"]["ts"])
        await asyncio.to_thread(exec, compile(examples["reply"], "docs/stream.md#reply", "exec"), ns)
        reply, stored = ns["reply"], ns["stored"]
        assert reply is not None and reply["rid"] == "req-1" and reply["count"] == 2
        assert json.loads(stored) == {k: v for k, v in reply.items() if k != "rid"}
        ns["r"].close()
    # the doc's shard and key formulas are the code's
    for scope in TRICKY_SCOPES + [Scope("acme", "webserver", "auth_getpost")]:
        shard = ns["shard_of"](scope.org, scope.source, scope.pop)
        assert shard == keys.shard(scope)
        assert ns["stream_key"](shard) == keys.stream(shard)
    truth = {Scope("acme", "webserver", "auth_getpost"): {"individual1": {"GET /user/login": 2}}}
    assert await check_counters(aredis, keys, truth) == []


def test_doc_names_every_field_and_limit() -> None:
    from binormal.common.schema import LIMITS

    text = (ROOT / "docs" / "stream.md").read_text(encoding="utf-8")
    for name, limit in LIMITS.items():
        assert re.search(rf"\| `{name}` \| (yes|no) \| {limit} \|", text), name
