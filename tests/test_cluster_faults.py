"""Faults on a real Redis Cluster: a slot moves under load, a master dies.

First the mechanics (tests/support/cluster_faults.py) on raw keys with redis-py's
cluster client, then the service itself (ingest + web in-process, two ``binormal
worker`` processes): the busy shard's slot moves while /events is fed, and the busy
shard's master is SIGKILLed with a replica per master. Each test has a private
cluster of its own (slots move, nodes die: the session cluster is left alone).
docs/operations.md ("Faults on a cluster, tested") reports what they found.
"""

from __future__ import annotations

import asyncio
import functools
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from binormal.common.embedded import RedisServerError, find_binary
from binormal.common.keys import Keyspace, Scope
from binormal.common.localcluster import LocalCluster
from binormal.common.schema import Event
from binormal.common.scripts import Commit, Committed, Expire, ExpireScope, Scripts
from tests.support.cluster_faults import (
    keys_in_slot,
    kill_master,
    masters,
    migrate_slot,
    node_client,
    node_id,
    replica_of,
    slot_of,
    slot_owner,
    wait_replicas_synced,
)
from tests.support.deploy import unavailable
from tests.support.events import counts_from_events, ndjson
from tests.support.http import combined_app, ingest_settings, post_raw, served, web_settings
from tests.support.redis_state import (
    check_committed,
    check_counters,
    drained,
    group_backlog,
    individual_counts,
    no_uncommitted,
)
from tests.support.waiting import wait_for, wait_until
from tests.support.workers import WorkerProcess

# Same slot for all: the hash tag.
HOT = "{hot}"
INCR_BOTH = "redis.call('INCR', KEYS[1]); return redis.call('HINCRBY', KEYS[2], ARGV[1], 1)"


def private_cluster(path: Path, replicas: int = 0, aof: bool = False) -> LocalCluster:
    """A private 3-master cluster for one test (skipped when no redis-server is installed)."""
    try:
        return LocalCluster(path, masters=3, replicas=replicas, binary=find_binary("path"), aof=aof).start()
    except RedisServerError as exc:
        unavailable(str(exc))  # a skip, or a failure with CI=true
        raise


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """3 masters, no replicas, stopped by PID."""
    cluster = private_cluster(tmp_path / "cluster")
    yield cluster
    cluster.stop()


class Load(threading.Thread):
    """Writes to one slot until stopped and remembers what Redis acknowledged.

    Each op: INCR of a random counter key, a two-key Lua script (INCR + HINCRBY, one
    slot: it gets TRYAGAIN while its keys are split between two nodes), an XADD.
    An op whose reply was an error is retried (after a short pause) until acknowledged;
    ``unsure`` counts the failed attempts, which may or may not have been applied.
    """

    def __init__(self, url: str, counters: int = 200) -> None:
        super().__init__(daemon=True)
        self.client = RedisCluster.from_url(url, protocol=2)
        self.counters = counters
        self.acked: dict[str, int] = {}
        self.scripted = 0
        self.xadds = 0
        self.errors: list[str] = []
        self.unsure = 0
        self.stop_flag = threading.Event()
        self.rng = random.Random(12)
        self.script = self.client.register_script(INCR_BOTH)

    def retry(self, op: object) -> object:
        while True:
            try:
                return op()  # type: ignore[operator]
            except RedisError as exc:
                self.unsure += 1
                self.errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.02)

    def run(self) -> None:
        while not self.stop_flag.is_set():
            key = f"{HOT}:c{self.rng.randrange(self.counters)}"
            self.retry(lambda: self.client.incr(key))
            self.acked[key] = self.acked.get(key, 0) + 1
            self.retry(lambda: self.script(keys=[f"{HOT}:script", f"{HOT}:h"], args=["f"]))
            self.scripted += 1
            self.retry(lambda: self.client.xadd(f"{HOT}:s", {"n": str(self.xadds)}))
            self.xadds += 1

    def finish(self) -> None:
        self.stop_flag.set()
        self.join(30)
        assert not self.is_alive()


def test_migrate_slot_under_load_loses_nothing(own_cluster: LocalCluster) -> None:
    slot = slot_of(HOT)
    client = RedisCluster.from_url(own_cluster.url, protocol=2)
    try:
        # A stream with a consumer group and entries pending under a consumer: they move with the key.
        client.xadd(f"{HOT}:s", {"n": "first"})
        client.xgroup_create(f"{HOT}:s", "g", id="0")
        assert len(client.xreadgroup("g", "c1", {f"{HOT}:s": ">"}, count=10)[0][1]) == 1
        for i in range(300):  # plenty of keys: the move takes many batches
            client.set(f"{HOT}:pad{i}", "x" * 100)
        load = Load(own_cluster.url)
        load.start()
        source = slot_owner(own_cluster, slot)
        destination = next(p for p in masters(own_cluster) if p != source)
        wait_until(lambda: load.xadds >= 50, timeout=30, what="writes before the move")
        done = migrate_slot(own_cluster, slot, destination, batch=10, between=lambda _: time.sleep(0.01))
        after = load.xadds
        wait_until(lambda: load.xadds >= after + 50, timeout=30, what="writes after the move")
        load.finish()
        print(f"moved {done}; {load.unsure} retried errors, e.g. {load.errors[:3]}")
        assert done.keys >= 302 and done.batches >= 30
        assert keys_in_slot(source, slot) == 0
        assert keys_in_slot(destination, slot) >= done.keys
        assert slot_owner(own_cluster, slot) == destination
        # Every acknowledged write is there exactly once (no retry was applied twice:
        # TRYAGAIN/ASK/MOVED mean "not executed").
        for key, n in load.acked.items():
            assert int(client.get(key)) == n, key
        assert int(client.get(f"{HOT}:script")) == load.scripted
        assert int(client.hget(f"{HOT}:h", "f")) == load.scripted
        assert client.xlen(f"{HOT}:s") == load.xadds + 1
        assert client.xpending(f"{HOT}:s", "g")["pending"] == 1
        assert load.xadds > 0 and load.scripted > 0
    finally:
        client.close()


def test_script_touching_a_key_it_emptied_aborts_half_way_on_a_migrating_slot(own_cluster: LocalCluster) -> None:
    """Redis (7.0) behaviour behind commit.lua's half-done commits during a slot move: on the
    migrating source, a script that empties one of its keys and touches it again is stopped
    at that call ("non local key"), and what it wrote before stays written."""
    script = "redis.call('INCR', KEYS[2]); redis.call('HDEL', KEYS[1], 'f'); return redis.call('HGET', KEYS[1], 'f')"
    slot = slot_of(HOT)
    source = slot_owner(own_cluster, slot)
    destination = next(p for p in masters(own_cluster) if p != source)
    with node_client(source) as src, node_client(destination) as dst:
        src.hset(f"{HOT}:h", "f", "1")
        assert src.eval(script, 2, f"{HOT}:h", f"{HOT}:n") is None  # a stable slot: fine
        src.hset(f"{HOT}:h", "f", "1")
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(source))
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(destination))
        with pytest.raises(ResponseError, match="non local key"):
            src.eval(script, 2, f"{HOT}:h", f"{HOT}:n")
        assert src.get(f"{HOT}:n") == b"2"  # the INCR before the abort stayed
        for node in (src, dst):
            node.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kill_master_replica_takes_over(tmp_path: Path) -> None:
    cluster = private_cluster(tmp_path / "cluster", replicas=1, aof=True)
    try:
        wait_replicas_synced(cluster)
        client = RedisCluster.from_url(cluster.url, protocol=2)
        slot = slot_of(HOT)
        victim = slot_owner(cluster, slot)
        load = Load(cluster.url)
        load.start()
        wait_until(lambda: sum(load.acked.values()) >= 100, timeout=30, what="writes before the kill")
        acked_before = sum(load.acked.values())
        failover = kill_master(cluster, victim)
        acked_at_promotion = sum(load.acked.values())
        wait_until(
            lambda: sum(load.acked.values()) >= acked_at_promotion + 50, timeout=30, what="writes after the failover"
        )
        load.finish()
        print(f"{failover}; acked before kill {acked_before}, at promotion {acked_at_promotion}, {load.unsure} errors")
        assert slot_owner(cluster, slot) == failover.promoted
        assert sum(load.acked.values()) > acked_at_promotion, "no write succeeded after the failover"
        got = {key: int(client.get(key) or 0) for key in load.acked}
        lost = sum(n - got[key] for key, n in load.acked.items() if got[key] < n)
        extra = sum(got[key] - n for key, n in load.acked.items() if got[key] > n)
        print(f"lost {lost} acknowledged increments, {extra} applied but not acknowledged")
        # Asynchronous replication: what the old master acknowledged but had not yet sent
        # to its replica is gone; a failed attempt may have been applied. Nothing else.
        assert extra <= load.unsure
        assert lost <= acked_at_promotion
        client.close()
    finally:
        cluster.stop()


# ------------------------------------------------------------ the service on a cluster


def event_json(ev: Event) -> dict[str, Any]:
    """The JSON object POST /events takes for ``ev``."""
    obj: dict[str, Any] = {"org": ev.org, "source": ev.source, "pop": ev.pop, "id": ev.id, "action": ev.action}
    if ev.event_id is not None:
        obj["event_id"] = ev.event_id
    return obj


class Producer:
    """POSTs batches to /events until stopped, as a careful client does.

    Every event has an ``event_id``; a batch answered with anything but ``202``
    (e.g. ``503`` while a master is gone) is sent again, same ids, until ``202``:
    the worker counts an event id once, so a resend of a line that was written
    after all is not counted twice. ``accepted_at[i]`` is when event ``i``'s 202 came.
    """

    def __init__(self, session: aiohttp.ClientSession, base: str, make: Callable[[int], Event], size: int) -> None:
        self.session, self.base, self.make, self.size = session, base, make, size
        self.events: list[Event] = []
        self.accepted_at: list[float] = []
        self.resends = 0
        self.statuses: dict[int, int] = {}
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            batch = [self.make(len(self.events) + k) for k in range(self.size)]
            body = ndjson(event_json(ev) for ev in batch)
            while True:
                try:
                    status, _, _ = await post_raw(self.session, f"{self.base}/events", body, "application/x-ndjson")
                except (aiohttp.ClientError, TimeoutError):
                    status = 0
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status == 202:
                    break
                self.resends += 1
                await asyncio.sleep(0.05)
            now = time.monotonic()
            self.events.extend(batch)
            self.accepted_at.extend([now] * len(batch))
            await asyncio.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    """GET ``url``; (status, decoded JSON body)."""
    async with session.get(url) as r:
        return r.status, await r.json(content_type=None)


def cluster_workers(url: str, prefix: str, tmp_path: Path, n: int = 2) -> list[WorkerProcess]:
    """``n`` ``binormal worker`` processes on the cluster (quick take-over of a dead consumer's entries)."""
    env = {
        "BINORMAL_SHARDS": "4",
        "BINORMAL_REDIS_CLUSTER": "1",
        "BINORMAL_BATCH": "100",
        "BINORMAL_CLAIM_IDLE_MS": "1500",
        "BINORMAL_SNAPSHOT_MAX_AGE_MS": "200",
        "BINORMAL_MAX_DELIVERIES": "1000",
    }
    return [WorkerProcess(url, prefix, f"w{i}", tmp_path / f"w{i}.log", dict(env)).start() for i in range(n)]


async def stop_workers(workers: list[WorkerProcess]) -> list[int]:
    """SIGTERM each and wait for its exit code."""
    for w in workers:
        w.signal(signal.SIGTERM)
    return [await asyncio.to_thread(w.wait, 20.0) for w in workers]


async def settled(client: Any, keys: Keyspace) -> bool:
    """Every shard drained and every score committed."""
    return bool(await drained(client, keys)) and bool(await no_uncommitted(client, keys))


async def wait_settled(client: Any, keys: Keyspace, workers: list[WorkerProcess], what: str) -> None:
    """:func:`settled` within 90 s, else fail showing each shard's backlog and the workers' last log lines."""
    try:
        await wait_for(lambda: settled(client, keys), timeout=90, interval=0.2, what=what)
    except TimeoutError:
        shards = []
        for s, stream in enumerate(keys.streams()):
            b = await group_backlog(client, stream, keys.group)
            shards.append(
                f"shard {s}: pending {b.pending}, undelivered {b.undelivered}, "
                f"uncommitted {await client.hlen(keys.uncommitted(s))}"
            )
        logs = [f"{w.consumer} alive={w.alive()}: " + " | ".join(w.log_lines()[-6:]) for w in workers]
        raise AssertionError(f"{what}: not settled; {shards}; {logs}") from None


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_slot_of_a_busy_shard_moves_during_load(tmp_path: Path) -> None:
    """The slot holding the busy shard's stream, consumer group and scope keys moves to another
    master while /events is fed and two workers drain it: nothing lost, nothing counted twice."""
    pytest.importorskip("binormal.common.cluster", reason="the services do not speak Redis Cluster yet")
    cluster = private_cluster(tmp_path / "cluster")
    prefix = "mv"
    keys = Keyspace(prefix=prefix, shards=4)
    busy = Scope("acme", "web", "busy")
    shard = keys.shard(busy)
    slot = slot_of(keys.stream(shard))
    rng = random.Random(5)

    def make(i: int) -> Event:
        scope = busy if rng.random() < 0.8 else Scope("acme", "web", f"other{rng.randrange(6)}")
        return Event(
            scope.org, scope.source, scope.pop, f"u{rng.randrange(60)}", f"a{rng.randrange(8)}", event_id=f"e{i}"
        )

    client = AsyncRedisCluster.from_url(cluster.url, protocol=2)
    workers = cluster_workers(cluster.url, prefix, tmp_path)
    ws = web_settings(cluster.url, prefix)
    try:
        async with served(combined_app(ws, ingest_settings(cluster.url, prefix)), ws.keys) as svc:
            producer = Producer(svc.session, svc.base, make, size=50)
            feeding = asyncio.create_task(producer.run())
            await wait_for(lambda: len(producer.events) >= 2_000, timeout=60, what="load before the move")
            source = slot_owner(cluster, slot)
            # The workers are applying: the slot holds the scope's hashes and seen markers, not only the stream.
            await wait_for(lambda: keys_in_slot(source, slot) > 200, timeout=60, what="keys in the busy slot")
            destination = next(p for p in masters(cluster) if p != source)
            move = await asyncio.to_thread(
                migrate_slot, cluster, slot, destination, 20, 20_000, lambda _: time.sleep(0.02)
            )
            during = len(producer.events)
            await wait_for(lambda: len(producer.events) >= during + 1_000, timeout=60, what="load after the move")
            producer.stop()
            await feeding
            print(f"{move}; {len(producer.events)} events accepted, statuses {producer.statuses}")
            assert move.keys > 100, move  # stream, group, scope hashes, individuals, seen markers
            assert slot_owner(cluster, slot) == destination
            await wait_settled(client, keys, workers, "drain after the move")
            status, scopes = await get_json(svc.session, f"{svc.base}/api/scopes")
            assert status == 200, scopes
        assert all(w.alive() for w in workers)
        truth = counts_from_events(producer.events)
        problems = await check_counters(client, keys, truth)
        assert problems == [], f"{len(problems)} counters differ from what was accepted, e.g. {problems[:5]}"
        assert await check_committed(client, keys, truth) == []
        for s in range(keys.shards):
            assert await client.xlen(keys.dead(s)) == 0
    finally:
        codes = await stop_workers(workers)
        await client.aclose()
        cluster.stop()
    assert codes == [0, 0]


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("lagging", [False, True], ids=["in-sync-replica", "lagging-replica"])
async def test_service_resumes_after_a_master_dies(tmp_path: Path, lagging: bool) -> None:
    """SIGKILL the master of the busy shard (a replica per master, AOF everysec): the replica
    takes over, the service resumes, every event accepted after the failover is counted once;
    what was accepted before may be lost only in the replication window, and never doubled.

    ``lagging``: the replica is SIGSTOPped and its link cut for the last ~500 events before
    the kill (SIGCONTinued right after it), a replication window made visible: the events
    the old master acknowledged meanwhile are the ones lost, and only they."""
    pytest.importorskip("binormal.common.cluster", reason="the services do not speak Redis Cluster yet")
    cluster = private_cluster(tmp_path / "cluster", replicas=1, aof=True)
    wait_replicas_synced(cluster)
    prefix = "fo"
    keys = Keyspace(prefix=prefix, shards=4)
    busy = Scope("acme", "web", "busy")
    slot = slot_of(keys.stream(keys.shard(busy)))

    def make(i: int) -> Event:
        # One individual per event: after the failover each is either counted once or lost, visibly.
        return Event(busy.org, busy.source, busy.pop, f"u{i}", f"a{i % 7}", event_id=f"e{i}")

    client = AsyncRedisCluster.from_url(cluster.url, protocol=2)
    workers = cluster_workers(cluster.url, prefix, tmp_path)
    ws = web_settings(cluster.url, prefix)
    try:
        async with served(combined_app(ws, ingest_settings(cluster.url, prefix)), ws.keys) as svc:
            producer = Producer(svc.session, svc.base, make, size=20)
            feeding = asyncio.create_task(producer.run())
            await wait_for(lambda: len(producer.events) >= 1_000, timeout=60, what="load before the kill")
            victim = slot_owner(cluster, slot)
            replica = cluster.node(replica_of(cluster, victim))
            assert replica.proc is not None
            resume: Callable[[], None] | None = None
            stopped_at = time.monotonic()
            if lagging:
                # Stop the replica and cut its link: what the master writes from now on
                # stays in its own memory (a replica that lags, as behind a slow network).
                replica.proc.send_signal(signal.SIGSTOP)  # our child, by PID
                with node_client(victim) as master:
                    master.execute_command("CLIENT", "KILL", "TYPE", "replica")
                    wait_until(lambda: int(master.info("replication")["connected_slaves"]) == 0, 10, "replica link cut")
                stopped_at = time.monotonic()
                n = len(producer.events)
                await wait_for(lambda: len(producer.events) >= n + 500, timeout=60, what="load while it lags")
                resume = functools.partial(replica.proc.send_signal, signal.SIGCONT)
            killed_at = time.monotonic()
            try:
                failover = await asyncio.to_thread(kill_master, cluster, victim, 30.0, resume, replica.port)
            finally:
                if lagging and replica.proc.poll() is None:
                    replica.proc.send_signal(signal.SIGCONT)
            promoted_at = time.monotonic()
            before = len(producer.events)
            await wait_for(lambda: len(producer.events) >= before + 1_000, timeout=90, what="load after the failover")
            producer.stop()
            await feeding
            await wait_settled(client, keys, workers, "drain after the failover")
            for path in ("/healthz", "/api/scopes"):
                status, body = await get_json(svc.session, f"{svc.base}{path}")
                assert status == 200, (path, body)
        assert all(w.alive() for w in workers), "a worker died of the failover"
        ids = [ev.id for ev in producer.events]  # every event is in the busy scope
        counted = {i: sum(c.values()) for i, c in zip(ids, await individual_counts(client, keys, busy, ids))}
        lost = [i for i, ev in enumerate(producer.events) if counted[ev.id] == 0]
        doubled = [ev.id for ev in producer.events if counted[ev.id] > 1]
        window = [round(killed_at - producer.accepted_at[i], 3) for i in lost]
        print(
            f"{failover}; {len(producer.events)} accepted ({producer.resends} resends, statuses {producer.statuses}); "
            f"lost {len(lost)} accepted before the kill, accepted 0..{max(window, default=0)} s before it"
        )
        assert doubled == []
        # Only what the old master had acknowledged before it died can be gone ...
        assert all(producer.accepted_at[i] <= promoted_at for i in lost)
        if lagging:
            # ... here: only what it acknowledged while its replica was stopped, and that is gone.
            assert lost and all(producer.accepted_at[i] >= stopped_at for i in lost)
        # ... every event accepted after the failover is counted exactly once.
        after = [ev for ev, t in zip(producer.events, producer.accepted_at) if t > promoted_at]
        assert len(after) >= 1_000 and all(counted[ev.id] == 1 for ev in after)
        # Scope counters equal the totals of exactly the individuals that survived: no half-applied event.
        survived = [ev for ev in producer.events if counted[ev.id] == 1]
        assert await check_counters(client, keys, counts_from_events(survived)) == []
    finally:
        codes = await stop_workers(workers)
        await client.aclose()
        cluster.stop()
    assert codes == [0, 0]


def test_commit_on_a_migrating_slot_writes_all_or_nothing(own_cluster: LocalCluster) -> None:
    """commit.lua on the source of a slot being moved: the first score's mark empties the shard's
    uncommitted hash; the next score must not touch that key again (Redis 7 stops a script at a
    key it emptied in a migrating slot, keeping what it wrote), so both ranks and n move together."""
    keys = Keyspace("cf", 4)
    scope = Scope("o", "s", "p")
    shard = keys.shard(scope)
    kp = keys.scope_prefix(scope)
    marks = keys.uncommitted(shard)
    a, b = keys.individual(scope, "a"), keys.individual(scope, "b")
    slot = slot_of(marks)
    source = slot_owner(own_cluster, slot)
    destination = next(p for p in masters(own_cluster) if p != source)
    scripts = Scripts()
    with node_client(source) as src, node_client(destination) as dst:
        src.hset(a, "0", "1")
        src.hset(b, "0", "1")
        src.hset(marks, a, "1-0 0")  # only a's entry is uncommitted: its commit empties the hash
        src.hset(kp + "agg", "n", "0")
        src.zadd(kp + "rank", {"seed": 0.0})
        src.script_load(scripts.by_name[Commit.NAME].source)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(source))
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(destination))
        try:
            ks, args = Commit.pack(marks, [(kp, "a", 1.5, 1, "1-0", a, 0), (kp, "b", 2.5, 1, "2-0", b, 0)])
            got = Commit.decode(src.evalsha(scripts.sha(Commit.NAME), len(ks), *ks, *args))
            assert [r.newest for r in got if isinstance(r, Committed)] == [True, True]
            assert src.zscore(kp + "rank", "a") == 1.5 and src.zscore(kp + "rank", "b") == 2.5
            assert src.hget(kp + "agg", "n") == b"2"
        finally:
            for node in (src, dst):
                node.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        assert not src.exists(marks)  # (asked after the move is called off: a missing key would be ASKed)


def test_expire_on_a_migrating_slot_writes_all_or_nothing(own_cluster: LocalCluster) -> None:
    """expire.lua on the source of a slot being moved: removing the first individual empties the
    rank zset, and the second's removal must not touch it again (Redis would stop the script
    there, keeping the first's writes: its population subtracted, its member still in last-seen)."""
    keys = Keyspace("ce", 4)
    scope = Scope("o", "s", "p")
    shard = keys.shard(scope)
    kp = keys.scope_prefix(scope)
    a, b = keys.individual(scope, "a"), keys.individual(scope, "b")
    slot = slot_of(kp)
    source = slot_owner(own_cluster, slot)
    destination = next(p for p in masters(own_cluster) if p != source)
    scripts = Scripts()
    with node_client(source) as src, node_client(destination) as dst:
        src.hset(a, "0", "1")
        src.hset(b, "1", "1")
        src.hset(kp + "na", mapping={"0": "x", "1": "y"})
        for kind in ("pop", "sq", "k", "raw"):
            src.hset(kp + kind, mapping={"x": 1, "y": 1})
        src.hset(kp + "dom", "events", 2)
        src.zadd(kp + "rank", {"a": 1.0})  # b's score is not there: a's removal empties the zset
        src.hset(kp + "agg", mapping={"n": 1, "sum": 1, "sumsq": 1})
        src.zadd(kp + "last", {"a": 1, "b": 2})
        src.hset(keys.uncommitted(shard), "other", "1-0 0")
        src.hset(keys.expired(shard), "other", 0)
        src.script_load(scripts.by_name[Expire.NAME].source)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(source))
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(destination))
        try:
            ks, args = Expire.pack(
                (keys.uncommitted(shard), keys.expired(shard)),
                ExpireScope.of(kp),
                scope.token,
                10,
                0,
                0,
                [(a, "a", False), (b, "b", False)],
            )
            got = Expire.decode(src.evalsha(scripts.sha(Expire.NAME), len(ks), *ks, *args))
            assert (got.removed, got.left) == (2, 0)
        finally:
            for node in (src, dst):
                node.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        assert not any(src.exists(kp + kind) for kind in ("pop", "sq", "k", "raw", "rank", "last"))
        assert not src.exists(a) and not src.exists(b)
        assert src.hget(kp + "agg", "n") == b"0" and src.hget(kp + "dom", "events") == b"0"
