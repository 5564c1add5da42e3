"""Lean pipelines on Redis Cluster: commands grouped by the node serving their key's slot.

:func:`~binormal.common.connection.execute_raw` sends a whole batch in one
write on one connection. On a cluster every command must go to the master
that owns its key's hash slot (CRC16 of the ``{P.s}`` tag mod 16,384), so
:func:`run_grouped` splits the batch per node, keeps each node's commands in
their original order (Redis runs one connection's commands in order, so the
order within a slot holds), writes every group at once and puts the replies
back in the caller's order.

A command answered ``MOVED``/``ASK``/``TRYAGAIN``/``CLUSTERDOWN`` did not run
(a slot moved, is migrating, or the cluster is electing a new master): those
commands are sent again, in their original order, after the slot map is
refreshed (``ASK``: to the node named, behind ``ASKING``). ``NOSCRIPT`` (a
replica promoted after a failover, a node that joined) loads the registered
scripts on that node and runs the command again. Nothing that ran is sent twice.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
import structlog
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MaxConnectionsError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

log = structlog.get_logger("binormal.redis")

MAX_ROUNDS = 8  # sends of one command at most (first try + redirections)
RETRY_DELAY_S = 0.05  # first wait after TRYAGAIN/CLUSTERDOWN, doubled each round
POOL_WAIT_S = 2.0  # how long a group waits for a free connection to its node

# sha -> source of every script the process may EVALSHA (common/scripts.py registers them).
_SCRIPTS: dict[bytes, bytes] = {}
# Clients whose slot map must be re-read before the next batch (after a lost link).
_STALE: weakref.WeakSet[RedisCluster] = weakref.WeakSet()


def register_script(sha: str, source: str | bytes) -> None:
    """Remember a script so a node answering NOSCRIPT can be given it."""
    _SCRIPTS[sha.encode()] = source.encode() if isinstance(source, str) else source


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def command_key(command: Sequence[Any]) -> Any:
    """The key that decides a command's slot, None when any node will do (PUBLISH, no key).

    EVALSHA/EVAL: the first KEY (every script touches one slot); XREADGROUP/XREAD:
    the first stream after STREAMS; otherwise argv[1] (XADD, HSET, SET, HGETALL, ...).
    """
    name = _text(command[0]).upper()
    if name in ("EVALSHA", "EVAL"):
        return command[3] if int(command[2]) > 0 else None
    if name in ("XREADGROUP", "XREAD"):
        for i, word in enumerate(command):
            if _text(word).upper() == "STREAMS":
                return command[i + 1]
        return None
    if name in ("PUBLISH", "PING", "TIME") or len(command) < 2:
        return None
    return command[1]


@dataclass
class Outcome:
    """What a grouped run knows: a reply per command, or why there is none.

    ``replies[i]`` is set when ``done[i]``; a command not done was either
    never sent (``sent[i]`` False: it certainly did not run) or sent on a
    link that failed before its reply came (in doubt). ``error`` is that
    link failure, if any.
    """

    replies: list[Any]
    done: list[bool]
    sent: list[bool]
    error: BaseException | None = None

    @classmethod
    def empty(cls, n: int) -> Outcome:
        """Nothing sent yet for ``n`` commands."""
        return cls([None] * n, [False] * n, [False] * n)


@dataclass
class _Group:
    node: ClusterNode
    items: list[int] = field(default_factory=list)  # command indices, in order
    asking: set[int] = field(default_factory=set)  # of those, which need ASKING first


def mark_stale(client: RedisCluster) -> None:
    """Re-read the slot map before ``client``'s next grouped batch."""
    _STALE.add(client)


async def refresh(client: RedisCluster) -> None:
    """Re-read the slot map (CLUSTER SLOTS); a cluster that cannot answer is a lost link."""
    try:
        await client.nodes_manager.initialize()
    except (RedisClusterException, ResponseError, OSError) as exc:
        raise RedisConnectionError(f"cluster slot map unavailable: {exc}") from exc
    _STALE.discard(client)


def primaries(client: RedisCluster) -> list[ClusterNode]:
    """Every master of the cluster as the client last saw it."""
    return list(client.get_primaries())


async def _acquire(node: ClusterNode) -> Any:
    """A connection to ``node``; waits (bounded) while its pool is exhausted."""
    deadline = time.monotonic() + POOL_WAIT_S
    delay = 0.001
    while True:
        try:
            return node.acquire_connection()
        except MaxConnectionsError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)


async def _send_group(
    node: ClusterNode, packed: list[bytes], asking: list[bool], out: Outcome, items: list[int]
) -> None:
    """One write of a node's commands, replies into ``out`` in place; link errors propagate."""
    conn = await _acquire(node)
    try:
        wire: list[bytes] = []
        for p, ask in zip(packed, asking):
            if ask:
                wire.append(hiredis.pack_command(("ASKING",)))
            wire.append(p)
        if not conn.is_connected:
            await conn.connect()  # refused here: certainly not sent
        for i in items:
            out.sent[i] = True  # from here on a failure leaves them in doubt (bytes may have left)
        await conn.send_packed_command(wire)
        for i, ask in zip(items, asking):
            if ask:
                try:
                    await conn.read_response()
                except ResponseError:
                    pass  # ASKING only fails on a non-cluster node; the command's own reply says more
            try:
                out.replies[i] = await conn.read_response()
            except ResponseError as exc:
                out.replies[i] = exc
            out.done[i] = True
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    finally:
        node.release(conn)


def _node_for(client: RedisCluster, command: Sequence[Any], fallback: ClusterNode | None) -> ClusterNode:
    key = command_key(command)
    if key is None:
        return fallback or client.get_default_node()
    return client.nodes_manager.get_node_from_slot(client.keyslot(key))


async def load_scripts(node: ClusterNode, sources: Sequence[bytes] | None = None) -> list[Any]:
    """SCRIPT LOAD ``sources`` (default: every registered script) on ``node`` in one write; the SHAs."""
    todo = list(_SCRIPTS.values()) if sources is None else list(sources)
    conn = await _acquire(node)
    try:
        await conn.send_packed_command(
            [hiredis.pack_command(tuple[Any, ...]((b"SCRIPT", b"LOAD", src))) for src in todo]
        )
        shas = [await conn.read_response() for _ in todo]
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    finally:
        node.release(conn)
    return shas


async def run_grouped(client: RedisCluster, commands: Sequence[Sequence[Any]]) -> Outcome:
    """Send ``commands`` grouped per node (one write each, all at once); replies in order.

    Redirected commands are re-sent (at most ``MAX_ROUNDS`` sends in all),
    NOSCRIPT ones after loading the scripts on their node. A link failure
    stops the rounds: ``Outcome.error`` says which commands are in doubt.
    """
    n = len(commands)
    out = Outcome.empty(n)
    packed = [hiredis.pack_command(tuple(c)) for c in commands]  # a bad argument raises here, before any I/O
    if client in _STALE:
        try:
            await refresh(client)
        except RedisConnectionError as exc:
            out.error = exc  # nothing sent
            return out
    todo = list(range(n))
    ask_node: dict[int, ClusterNode] = {}
    delay = RETRY_DELAY_S
    for round_no in range(MAX_ROUNDS):
        groups: dict[str, _Group] = {}
        fallback: ClusterNode | None = None
        try:
            for i in todo:
                node = ask_node.get(i) or _node_for(client, commands[i], fallback)
                fallback = fallback or node
                group = groups.setdefault(node.name, _Group(node))
                group.items.append(i)
                if i in ask_node:
                    group.asking.add(i)
        except RedisClusterException as exc:  # a slot no master serves (failover in progress)
            mark_stale(client)
            out.error = RedisConnectionError(str(exc))
            return out
        for i in todo:
            out.done[i] = False
        sends = [
            _send_group(g.node, [packed[i] for i in g.items], [i in g.asking for i in g.items], out, g.items)
            for g in groups.values()
        ]
        results = await asyncio.gather(*sends, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            mark_stale(client)
            cancelled = next((r for r in failed if isinstance(r, asyncio.CancelledError)), None)
            if cancelled is not None:
                raise cancelled
            out.error = failed[0]
            return out
        retry: list[int] = []
        moved = wait = False
        noscript: dict[str, ClusterNode] = {}
        ask_node = {}
        for g in groups.values():
            for i in g.items:
                r = out.replies[i]
                if isinstance(r, MovedError):  # (a subclass of AskError: test it first)
                    moved = True
                elif isinstance(r, AskError):
                    ask_node[i] = client.nodes_manager.get_node(r.host, r.port) or ClusterNode(
                        r.host, r.port, **client.nodes_manager.connection_kwargs
                    )
                elif isinstance(r, (TryAgainError, ClusterDownError)):
                    wait = True
                elif isinstance(r, NoScriptError) and _SCRIPTS:
                    noscript[g.node.name] = g.node
                else:
                    continue
                retry.append(i)
        if not retry or round_no == MAX_ROUNDS - 1:
            break
        log.info("cluster_redirect", commands=len(retry), moved=moved, asking=len(ask_node), noscript=len(noscript))
        if moved or wait:
            if wait:
                await asyncio.sleep(delay)
                delay *= 2
            try:
                await refresh(client)
            except RedisConnectionError as exc:
                out.error = exc
                for i in retry:
                    out.done[i] = False
                return out
        for node in noscript.values():
            await load_scripts(node)
            log.info("scripts_loaded_on_node", node=node.name, scripts=len(_SCRIPTS))
        todo = sorted(retry)
    return out
