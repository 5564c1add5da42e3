"""Redis Cluster support on the private 3-master cluster: detection, grouped pipelines, scripts, pub/sub.

The end-to-end scenarios run on the cluster too (``@both_backends`` in
test_e2e, test_faults, test_ingest, test_live, test_deadletters, test_rules);
this module covers the client layer itself.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from binormal.common.cluster import command_key
from binormal.common.config import ConfigError
from binormal.common.connection import TRANSIENT, Client, connect, execute_partial, execute_raw, open_client, pubsub_of
from binormal.common.embedded import RedisServer
from binormal.common.keys import Keyspace, Scope
from binormal.common.keys import recent_in as keys_recent
from binormal.common.localcluster import LocalCluster, command
from binormal.common.scripts import (
    Alert,
    AlertCheck,
    AlertFire,
    Apply,
    ApplyItem,
    Commit,
    Deadletter,
    Expire,
    ExpireScope,
    Recompute,
    Replay,
    Score,
    Scripts,
)
from binormal.web.app import create_app
from binormal.web.replies import ReplyWaiter
from binormal.worker.worker import ensure_groups
from tests.support.cluster_faults import node_id
from tests.support.http import serving, web_settings
from tests.support.waiting import wait_for
from tests.support.workers import binormal_command

SHARDS = 12  # enough shards that every master serves some


@pytest.fixture
async def cluster(cluster_url: str) -> AsyncIterator[RedisCluster]:
    """Binormal's own cluster client (as the services make it) on the flushed private cluster."""
    client = await connect(cluster_url)
    assert isinstance(client, RedisCluster)
    yield client
    await client.aclose()


def scope_in(keys: Keyspace, shard: int) -> Scope:
    """A scope that hashes to ``shard``."""
    for i in range(10_000):
        scope = Scope("acme", "web", f"p{i}")
        if keys.shard(scope) == shard:
            return scope
    raise AssertionError(f"no scope for shard {shard}")


# ---------------------------------------------------------------- detection


async def test_detection_picks_the_cluster_client_and_the_single_client(cluster_url: str, redis_url: str) -> None:
    on_cluster = await connect(cluster_url)
    on_node = await connect(redis_url)
    try:
        assert isinstance(on_cluster, RedisCluster) and len(on_cluster.get_primaries()) == 3
        assert isinstance(on_node, aioredis.Redis)
        forced = await open_client(cluster_url, cluster=True)
        assert isinstance(forced, RedisCluster)
        await forced.aclose()
    finally:
        await on_cluster.aclose()
        await on_node.aclose()


async def test_a_forced_mode_the_server_contradicts_is_a_clear_error(cluster_url: str, redis_url: str) -> None:
    # =0 on a cluster: a single-node client would get MOVED for two thirds of the keys, so refuse.
    with pytest.raises(ConfigError, match=r"BINORMAL_REDIS_CLUSTER=0 but the Redis at REDIS_URL is a cluster node"):
        await connect(cluster_url, cluster=False)
    with pytest.raises(ConfigError, match=r"BINORMAL_REDIS_CLUSTER=1 but the Redis at REDIS_URL is not a cluster"):
        await open_client(redis_url, cluster=True)


async def test_binormal_worker_with_a_contradicted_mode_exits_naming_the_variable(redis_url: str) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "BINORMAL_REDIS_CLUSTER": "1", "BINORMAL_PREFIX": "tdet"}
    done = await asyncio.to_thread(
        subprocess.run, [*binormal_command(), "worker"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode != 0
    assert b"BINORMAL_REDIS_CLUSTER=1 but the Redis at REDIS_URL is not a cluster node" in done.stderr


async def test_the_web_tier_with_a_contradicted_mode_answers_503_and_says_why(redis_url: str, prefix: str) -> None:
    app = create_app(web_settings(redis_url, prefix, redis_cluster=True))
    async with serving(app, wait_redis=False) as base, aiohttp.ClientSession() as http:

        async def refused() -> bool:
            async with http.get(base + "/readyz") as r:
                body = await r.json()
            return r.status == 503 and any("BINORMAL_REDIS_CLUSTER=1 but" in x for x in body["reasons"])

        await wait_for(refused, timeout=10, what="/readyz naming the mismatch")
        async with http.get(base + "/api/scopes") as r:
            assert r.status == 503


# ---------------------------------------------------------------- grouped pipelines


def test_the_key_that_routes_each_command() -> None:
    assert command_key(("EVALSHA", "sha", 2, "k1", "k2", "arg")) == "k1"
    assert command_key(("EVALSHA", "sha", 0, "arg")) is None
    assert command_key(("XREADGROUP", "GROUP", "g", "c", "COUNT", 5, "BLOCK", 9, "STREAMS", "s", ">")) == "s"
    assert command_key((b"PUBLISH", b"chan", b"x")) is None
    assert command_key(("HSET", "h", "f", "v")) == "h"
    assert command_key(("TIME",)) is None


async def test_execute_raw_groups_per_node_and_keeps_the_callers_order(cluster: RedisCluster) -> None:
    keys = [f"k:{{t{i}}}" for i in range(60)]
    nodes = {cluster.get_node_from_key(k).name for k in keys}
    assert len(nodes) == 3
    commands: list[tuple[object, ...]] = []
    for i, k in enumerate(keys):
        commands += [("SET", k, str(i)), ("INCR", k), ("GET", k)]
    commands.append(("PUBLISH", "nobody-listens", "x"))
    replies = await execute_raw(cluster, commands)
    want: list[object] = []
    for i in range(len(keys)):
        want += [b"OK", i + 1, str(i + 1).encode()]
    assert replies == [*want, 0]
    got = await execute_partial(cluster, [("XADD", f"s:{{t{i}}}", "*", "f", "v") for i in range(9)])
    assert got.error is None and len(got.replies) == 9


async def test_moved_and_ask_are_followed_and_nothing_runs_twice(cluster: RedisCluster, cluster_url: str) -> None:
    key = "moving:{slot-a}"
    slot = cluster.keyslot(key)
    source = cluster.get_node_from_key(key)
    target = next(n for n in cluster.get_primaries() if n.name != source.name)
    src_id, dst_id = node_id(int(source.port)), node_id(int(target.port))
    # ASK: the slot is migrating and the key is not on the source yet, so the source sends us on.
    assert command(int(target.port), "CLUSTER", "SETSLOT", str(slot), "IMPORTING", src_id).startswith(b"+OK")
    assert command(int(source.port), "CLUSTER", "SETSLOT", str(slot), "MIGRATING", dst_id).startswith(b"+OK")
    try:
        assert await execute_raw(cluster, [("INCR", key), ("INCR", key)]) == [1, 2]
    finally:
        for port in (int(p.port) for p in cluster.get_primaries()):
            command(port, "CLUSTER", "SETSLOT", str(slot), "NODE", dst_id)
    # MOVED: the client's map still says source; the slot is the target's now.
    assert cluster.get_node_from_key(key).name == source.name
    assert await execute_raw(cluster, [("INCR", key), ("GET", key)]) == [3, b"3"]
    assert cluster.get_node_from_key(key).name == target.name
    fresh = await connect(cluster_url)
    try:
        assert await fresh.get(key) == b"3"  # counted exactly three times, on the new owner
    finally:
        await fresh.aclose()


@pytest.mark.timeout(60)
async def test_a_dead_master_leaves_its_commands_in_doubt_and_the_others_answered(tmp_path: object) -> None:
    local = LocalCluster(str(tmp_path), masters=3).start()
    client: Client | None = None
    try:
        client = await connect(local.url)
        assert isinstance(client, RedisCluster)
        streams = [f"s:{{t{i}}}" for i in range(30)]
        dead = client.get_node_from_key(streams[0])
        local.node(int(dead.port)).kill()
        commands = [("XADD", s, "*", "f", "v") for s in streams]
        got = await execute_partial(client, commands)
        assert got.error is not None and got.replies == [] and got.sent  # the first one is on the dead node
        with pytest.raises(TRANSIENT):
            await execute_raw(client, commands)
        # The other masters' streams were written (once per call), the dead one's not.
        for s in streams:
            node = client.get_node_from_key(s)
            if node.name != dead.name:
                assert command(int(node.port), "XLEN", s).strip() == b":2", s
    finally:
        if client is not None:
            await client.aclose()
        local.stop()


async def test_noscript_on_one_master_loads_the_scripts_there_and_reruns(cluster: RedisCluster) -> None:
    scripts = Scripts()
    await scripts.load_all(cluster)
    keys = Keyspace("tns", SHARDS)
    victim = cluster.get_node_from_key(keys.dead(0))
    await cluster.execute_command("SCRIPT", "FLUSH", target_nodes=victim)
    commands = []
    for shard in range(SHARDS):
        k, a = Replay.pack(keys.dead(shard), keys.stream(shard), "1-1")
        commands.append(("EVALSHA", scripts.sha(Replay.NAME), len(k), *k, *a))
    replies = await execute_raw(cluster, commands)
    assert all(not isinstance(r, Exception) for r in replies), replies
    assert {Replay.decode(r).ok for r in replies} == {False}  # no such dead letter: nothing replayed


# ---------------------------------------------------------------- scripts


def one_slot(cluster: RedisCluster, keys: list[object]) -> bool:
    return len({cluster.keyslot(k) for k in keys}) == 1  # type: ignore[arg-type]


async def test_every_script_twin_runs_on_the_cluster_with_keys_of_one_slot(cluster: RedisCluster) -> None:
    scripts = Scripts()
    await scripts.load_all(cluster)
    keys = Keyspace("tsc", SHARDS)
    await ensure_groups(cluster, keys.streams(), keys.group)
    masters = set()
    for shard in range(SHARDS):
        stream = keys.stream(shard)
        masters.add(cluster.get_node_from_key(stream).name)
        scope = scope_in(keys, shard)
        kp = keys.scope_prefix(scope, shard)
        ikey = keys.individual(scope, "u1", shard)
        entries = [await cluster.xadd(stream, {"org": "acme"}) for _ in range(2)]
        await execute_raw(cluster, [("XREADGROUP", "GROUP", keys.group, "c1", "COUNT", 10, "STREAMS", stream, ">")])
        head = (stream.encode(), keys.scopes(shard), keys.uncommitted(shard), keys.capped(shard))
        item = ApplyItem(
            *(kp + x for x in ("pop", "sq", "k")),
            ikey,
            keys.seen(scope, "e1", shard),
            kp + "raw",
            kp + "dom",
            kp + "last",
            kp + "an",
            kp + "na",
            *keys_recent(kp, "u1"),
            entries[0],
            "GET /",
            scope.token,
            60,
            entries[0] + b" fp",
            "u1",
        )
        calls = {
            Apply.NAME: Apply.pack(head, keys.group, True, 100, [item], retention=True, recent_window=50),
            Commit.NAME: Commit.pack(keys.uncommitted(shard), [Score(kp, "u1", 0.5, 1, entries[0], ikey, 0)]),
            Deadletter.NAME: Deadletter.pack(
                stream.encode(), keys.dead(shard), keys.group, entries[1], "test", "c1", 100, {b"org": b"acme"}
            ),
            Recompute.NAME: Recompute.pack(
                kp + "rank",
                kp + "agg",
                tuple(kp + x for x in ("pop", "sq", "k", "raw", "dom", "na")),
                [(ikey, "u1", False)],
            ),
        }
        fired = keys.alert_fired(scope, "u1", shard)
        calls[Alert.NAME] = Alert.pack(
            keys.alert_stream(shard), 100, 1000, [AlertCheck(fired, entries[0], 1, (AlertFire("r", 0, b"{}"),))]
        )
        for name, (k, a) in calls.items():
            assert one_slot(cluster, k), (name, k)
            assert await scripts.run(cluster, name, k, a) is not None
        assert await cluster.hkeys(fired) == [b"r"] and await cluster.xlen(keys.alert_stream(shard)) == 1
        assert await cluster.hgetall(kp + "pop") == {b"GET /": b"1"}
        assert await cluster.exists(*keys_recent(kp, "u1")) == 2  # K = 50: its recent list and window
        assert await cluster.zscore(kp + "rank", "u1") is not None
        dead = await cluster.xrange(keys.dead(shard))
        assert len(dead) == 1
        k, a = Replay.pack(keys.dead(shard), stream, dead[0][0].decode())
        assert one_slot(cluster, k)
        assert Replay.decode(await scripts.run(cluster, Replay.NAME, k, a)).ok
        # Last: idle expiry (cutoff far in the future) removes u1 and what it added.
        k, a = Expire.pack(
            (keys.uncommitted(shard), keys.expired(shard)),
            ExpireScope.of(kp),
            scope.token,
            2**62,
            0,
            0,
            [(ikey, "u1", False)],
            recent_window=50,
        )
        assert one_slot(cluster, k)
        assert Expire.decode(await scripts.run(cluster, Expire.NAME, k, a)).removed == 1
        assert not await cluster.exists(ikey, *keys_recent(kp, "u1"))  # its recent window went with it
    assert len(masters) == 3


def test_every_key_of_a_scope_shares_its_shards_slot() -> None:
    keys = Keyspace("bn", 64)
    for shard in range(keys.shards):
        scope = scope_in(keys, shard)
        slot_keys = [
            keys.stream(shard),
            keys.dead(shard),
            keys.scopes(shard),
            keys.uncommitted(shard),
            keys.capped(shard),
            keys.rules(shard),
            keys.marks(shard),
            keys.individual(scope, "x:{y}", shard),
            keys.recent_list(scope, "x:{y}", shard),
            keys.recent_window(scope, "x:{y}", shard),
            keys.seen(scope, "e", shard),
            keys.reply(scope, "r", shard),
            keys.robust(scope, shard),
            keys.alert_stream(shard),
            keys.alert_fired(scope, "x:{y}", shard),
            keys.alert_state(scope, "r{1}", "x:{y}", shard),
            *(keys.scope_key(scope, kind, shard) for kind in ("pop", "sq", "k", "raw", "dom", "rank", "agg", "ver")),
        ]
        assert len({key_slot(k.encode()) for k in slot_keys}) == 1, shard


# ---------------------------------------------------------------- pub/sub


async def test_a_publish_on_any_node_reaches_a_subscriber_on_another(cluster: RedisCluster) -> None:
    pubsub = pubsub_of(cluster, ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe("tps:chan")
        await pubsub.get_message(timeout=1.0)
        for node in cluster.get_nodes():
            await cluster.execute_command("PUBLISH", "tps:chan", node.name, target_nodes=node)
        got = []
        while len(got) < 3:
            msg = await pubsub.get_message(timeout=5.0)
            assert msg is not None, got
            got.append(msg["data"])
        assert sorted(got) == sorted(n.name.encode() for n in cluster.get_nodes())
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_reply_listener_resubscribes_after_its_node_dies(tmp_path: object) -> None:
    """With a replica per master, kill the node the listener is on: it resubscribes on another one."""
    local = LocalCluster(str(tmp_path), masters=3, replicas=1).start()
    client: Client | None = None
    try:
        client = await connect(local.url)
        assert isinstance(client, RedisCluster)
        waiter = ReplyWaiter(client, "tps:reply", ping_interval_s=0.2, poll_s=0.05)
        task = asyncio.create_task(waiter.run())
        await asyncio.wait_for(waiter.subscribed.wait(), 10)
        fut = waiter.register("r1", timeout_s=60)
        port = await _subscriber_port(client, "tps:reply")
        node: RedisServer = local.node(port)
        node.kill()
        await wait_for(lambda: waiter.resubscriptions >= 1 and waiter.subscribed.is_set(), timeout=30)
        live = [p for p in local.live_ports() if p != port]
        await wait_for(lambda: _subscriber_port(client, "tps:reply", live), timeout=10)  # type: ignore[arg-type]
        command(live[0], "PUBLISH", "tps:reply", '{"rid": "r1", "score": 1}')
        assert await asyncio.wait_for(fut, 10) == {"score": 1}
        waiter.stop()
        await asyncio.wait_for(task, 10)
    finally:
        if client is not None:
            await client.aclose()
        local.stop()


async def _subscriber_port(client: RedisCluster, channel: str, ports: list[int] | None = None) -> int | None:
    """Port of the node holding a subscriber of ``channel`` (PUBSUB NUMSUB is per node)."""
    for port in ports or [int(n.port) for n in client.get_nodes()]:
        try:
            reply = command(port, "PUBSUB", "NUMSUB", channel)
        except OSError:
            continue
        if reply.rstrip().endswith(b":1"):
            return port
    return None
