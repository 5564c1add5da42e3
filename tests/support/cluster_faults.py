"""Faults on a private Redis Cluster (ours: a LocalCluster): move a slot, kill a master.

Slot migration follows the cluster specification's resharding steps by hand:

1. the destination: ``CLUSTER SETSLOT <slot> IMPORTING <source-id>``;
2. the source: ``CLUSTER SETSLOT <slot> MIGRATING <destination-id>``;
3. ``CLUSTER GETKEYSINSLOT`` + ``MIGRATE host port "" 0 timeout KEYS ...`` in batches
   until the source holds none of the slot's keys. Meanwhile the source answers a
   command on a key it no longer has with ``-ASK`` (the client repeats it on the
   destination after ``ASKING``), and a multi-key command (a Lua script) whose keys
   are split between the two nodes with ``-TRYAGAIN`` (the client retries);
4. ``CLUSTER SETSLOT <slot> NODE <destination-id>`` on the destination, the source and
   every other master; from then on the source answers ``-MOVED``.

MIGRATE moves a key atomically (DUMP + RESTORE + DEL while both nodes block), so
every key exists on exactly one node at every moment; no ``REPLACE``: finding the
key on the destination already would be a bug, and MIGRATE then fails (BUSYKEY).
A stream key moves whole, with its consumer groups and their pending entries.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from redis.crc import key_slot

from binormal.common.localcluster import LocalCluster, command, info_fields


def node_client(port: int) -> redis.Redis:
    """A plain (non-cluster) client on one node: admin commands for that node only."""
    return redis.Redis(host="127.0.0.1", port=port, protocol=2, socket_timeout=30)


def slot_of(key: str | bytes) -> int:
    """The hash slot of ``key`` (CRC16 of its hash tag, mod 16384)."""
    return int(key_slot(key.encode() if isinstance(key, str) else key))


def node_id(port: int) -> str:
    """The node's cluster id (CLUSTER MYID)."""
    with node_client(port) as c:
        return str(c.execute_command("CLUSTER", "MYID").decode())


def masters(cluster: LocalCluster) -> list[int]:
    """Ports of the live nodes that are masters now."""
    return [p for p in cluster.live_ports() if cluster.role(p) == "master"]


def slot_owner(cluster: LocalCluster, slot: int, ask: int | None = None) -> int:
    """Port of the master serving ``slot``, as node ``ask`` (default: any live master) sees it."""
    port = ask if ask is not None else masters(cluster)[0]
    with node_client(port) as c:
        for start, end, primary, *_ in c.execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return int(primary[1])
    raise LookupError(f"slot {slot} is not served")


def keys_in_slot(port: int, slot: int) -> int:
    """How many keys of ``slot`` node ``port`` holds."""
    with node_client(port) as c:
        return int(c.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot))


@dataclass
class Migration:
    """What :func:`migrate_slot` did."""

    slot: int
    source: int
    destination: int
    keys: int
    batches: int
    seconds: float


def migrate_slot(
    cluster: LocalCluster,
    slot: int,
    destination: int,
    batch: int = 50,
    timeout_ms: int = 20_000,
    between: Callable[[int], None] | None = None,
) -> Migration:
    """Move ``slot`` to the master at ``destination`` (steps in the module docstring).

    ``between(moved_so_far)`` runs after each MIGRATE batch: a test's way to let
    load run while the slot is half moved.
    """
    source = slot_owner(cluster, slot)
    if source == destination:
        raise ValueError(f"slot {slot} is already on {destination}")
    src_id, dst_id = node_id(source), node_id(destination)
    t0 = time.monotonic()
    moved = batches = 0
    with node_client(source) as src, node_client(destination) as dst:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while True:
            keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            src.execute_command("MIGRATE", "127.0.0.1", destination, "", 0, timeout_ms, "KEYS", *keys)
            moved += len(keys)
            batches += 1
            if between is not None:
                between(moved)
        # Destination first: once it owns the slot, a MOVED from the source leads somewhere that answers.
        dst.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    for port in masters(cluster):
        if port not in (source, destination):
            with node_client(port) as other:
                other.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    wait_slot_owner(cluster, slot, destination)
    return Migration(slot, source, destination, moved, batches, time.monotonic() - t0)


def wait_slot_owner(cluster: LocalCluster, slot: int, port: int, timeout: float = 20.0) -> None:
    """Until every live node says ``slot`` is served by ``port``."""
    deadline = time.monotonic() + timeout
    while True:
        views = {slot_owner(cluster, slot, ask=p) for p in cluster.live_ports()}
        if views == {port}:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"slot {slot}: nodes see owners {views}, want {port}")
        time.sleep(0.05)


def replica_of(cluster: LocalCluster, master: int) -> int:
    """Port of a live replica of the master at ``master`` (INFO replication of the master)."""
    info = info_fields(command(master, "INFO", "replication"))
    for key, value in info.items():
        if key.startswith("slave") and key[5:].isdigit():
            fields = dict(part.split("=", 1) for part in value.split(","))
            port = int(fields["port"])
            if port in cluster.live_ports():
                return port
    raise LookupError(f"master {master} has no live replica")


def wait_replicas_synced(cluster: LocalCluster, timeout: float = 30.0) -> None:
    """Until every live replica's link to its master is up (initial sync done).

    ``cluster_state:ok`` says nothing about replicas: right after ``--cluster create``
    a replica may still be loading its master's first snapshot, and a promoted
    replica that never synced would bring an empty data set.
    """
    deadline = time.monotonic() + timeout
    for port in cluster.live_ports():
        while cluster.role(port) == "slave":
            info = info_fields(command(port, "INFO", "replication"))
            if info.get("master_link_status") == "up" and info.get("master_sync_in_progress") == "0":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica {port} not in sync: {info}")
            time.sleep(0.05)


def replication_lag(master: int, replica: int) -> int:
    """Bytes of the master's replication stream the replica has not acknowledged yet."""
    info = info_fields(command(master, "INFO", "replication"))
    for key, value in info.items():
        if key.startswith("slave") and key[5:].isdigit():
            fields = dict(part.split("=", 1) for part in value.split(","))
            if int(fields["port"]) == replica:
                return int(info["master_repl_offset"]) - int(fields["offset"])
    raise LookupError(f"{replica} is not a replica of {master}")


@dataclass
class Failover:
    """What :func:`kill_master` saw."""

    killed: int
    promoted: int
    seconds: float  # from the SIGKILL until the cluster is ok again
    lag_bytes: int  # replication stream not acknowledged by the replica just before the kill


def kill_master(
    cluster: LocalCluster,
    master: int,
    timeout: float = 30.0,
    after_kill: Callable[[], None] | None = None,
    replica: int | None = None,
) -> Failover:
    """SIGKILL the master at ``master`` (our child, by PID) and wait until its replica took over.

    The replica starts an election after ``cluster-node-timeout`` without the master
    (2 s in a LocalCluster); the other masters vote; the winner takes the slots and the
    cluster is ``ok`` again. ``after_kill`` runs right after the SIGKILL (e.g. to
    SIGCONT a replica the test had stopped to make it lag); ``replica``: the one expected
    to take over (default: the master's connected replica).
    """
    replica = replica if replica is not None else replica_of(cluster, master)
    node = cluster.node(master)
    assert node.proc is not None and node.proc.poll() is None, f"node {master} is not running"
    try:
        lag = replication_lag(master, replica)  # the replica acknowledges once a second: an upper bound
    except LookupError:
        lag = -1  # a stopped replica may have dropped out of the master's list
    t0 = time.monotonic()
    os.kill(node.proc.pid, signal.SIGKILL)
    node.proc.wait(10)
    if after_kill is not None:
        after_kill()
    deadline = t0 + timeout
    while cluster.role(replica) != "master":
        if time.monotonic() > deadline:
            raise TimeoutError(f"replica {replica} of {master} not promoted within {timeout}s")
        time.sleep(0.05)
    cluster.wait_ok(max(1.0, deadline - time.monotonic()))
    return Failover(master, replica, time.monotonic() - t0, lag)
