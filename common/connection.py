"""Redis clients: one factory (RESP2 pinned, timeouts on every wait) and startup retry."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
import redis.asyncio as aioredis
import structlog
from redis._parsers.hiredis import NOT_ENOUGH_DATA
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from binormal.common.cluster import run_grouped
from binormal.common.config import ConfigError

log = structlog.get_logger("binormal.redis")

# Errors that mean "Redis is not there right now", as opposed to bad data. On a cluster also
# a slot without a master or a cluster still electing one (during a failover or a resharding),
# and redis-py giving up after too many redirections in a row (ClusterError "TTL exhausted").
TRANSIENT = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    ClusterDownError,
    ClusterError,
    TryAgainError,
    SlotNotCoveredError,
)

# Either client: a single Redis, or redis-py's cluster client (REDIS_URL names one node of a cluster).
Client = aioredis.Redis | RedisCluster

CLUSTER_ENV = "BINORMAL_REDIS_CLUSTER"


class FastConnection(Connection):
    """A connection that encodes commands with hiredis' C packer.

    redis-py's pure-Python ``pack_command`` costs ~25x more per command than
    ``hiredis.pack_command``; with thousands of EVALSHAs per pipeline it was the
    worker's largest single cost. Multi-word command names ("XINFO GROUPS")
    are split as redis-py does.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        """RESP-encode one command."""
        first = args[0]
        if isinstance(first, str) and " " in first:
            args = tuple(first.split()) + args[1:]
        elif isinstance(first, bytes) and b" " in first:
            args = tuple(first.split()) + args[1:]
        return [hiredis.pack_command(args)]

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,
        *,
        disconnect_on_error: bool = True,
        push_request: bool | None = False,
    ) -> Any:
        """Return a reply already buffered by hiredis without arming a timeout.

        A pipeline of N commands arrives in a few socket reads, but redis-py
        enters an asyncio timeout context for each of the N replies. When the
        reply is already complete in the parser's buffer there is nothing to
        wait for, so we hand it over directly (RESP2 only: no push messages);
        otherwise the normal path, with its timeout, reads from the socket.
        """
        reader = getattr(self._parser, "_reader", None)
        if reader is not None and getattr(self._parser, "_connected", False) and not push_request:
            response = reader.gets(False) if disable_decoding else reader.gets()
            if response is not NOT_ENOUGH_DATA:
                if isinstance(response, list) and response and isinstance(response[0], RedisConnectionError):
                    raise response[0]
                if isinstance(response, (RedisConnectionError, ResponseError)):
                    raise response
                return response
        return await super().read_response(
            disable_decoding, timeout, disconnect_on_error=disconnect_on_error, push_request=push_request
        )


def make_client(
    url: str,
    *,
    socket_timeout: float = 5.0,
    max_connections: int = 32,
    pool_timeout: float | None = None,
) -> aioredis.Redis:
    """An asyncio Redis client speaking RESP2 (redis-py 8 defaults to RESP3).

    ``socket_timeout`` must stay above every XREADGROUP BLOCK we issue
    (redis-py#3138), so callers keep their BLOCK a few seconds shorter.
    With ``pool_timeout`` set (HTTP services: many concurrent requests), a
    command waits up to that long for a free pooled connection instead of
    failing at once with "Too many connections". A cluster node's URL
    needs :func:`connect` (or :func:`make_cluster_client`) instead.
    """
    options = _options(socket_timeout, max_connections)
    if url.startswith("redis://"):
        options["connection_class"] = FastConnection
    if pool_timeout is not None:
        pool = aioredis.BlockingConnectionPool.from_url(url, timeout=pool_timeout, **options)
        return aioredis.Redis.from_pool(pool)
    return aioredis.Redis.from_url(url, **options)


def _options(socket_timeout: float, max_connections: int) -> dict[str, Any]:
    return {
        "protocol": 2,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": min(socket_timeout, 5.0),
        "health_check_interval": 15,
        "max_connections": max_connections,
        "decode_responses": False,
    }


def make_cluster_client(url: str, *, socket_timeout: float = 5.0, max_connections: int = 32) -> RedisCluster:
    """redis-py's cluster client (RESP2, same timeouts, ``max_connections`` per node), FastConnection on every node.

    It finds the other nodes when it first connects (``await client.initialize()``).
    """
    options = _options(socket_timeout, max_connections)
    try:
        client = RedisCluster.from_url(url, **options)
    except RedisClusterException as exc:
        raise ConfigError(f"REDIS_URL cannot name a cluster node: {exc}") from None
    if url.startswith("redis://"):
        # The library builds every node from these kwargs (it has no connection_class option).
        client.connection_kwargs["connection_class"] = FastConnection
        for node in client.startup_nodes:
            node.connection_class = FastConnection
    return client


def is_cluster(client: Client) -> bool:
    """Whether ``client`` is the cluster client."""
    return isinstance(client, RedisCluster)


async def cluster_enabled(client: aioredis.Redis) -> bool | None:
    """``INFO cluster``'s ``cluster_enabled`` of the node; None if the server refuses INFO."""
    try:
        info = await client.info("cluster")
    except ResponseError:
        return None
    return bool(int(info.get("cluster_enabled", 0)))


async def connect(
    url: str,
    *,
    cluster: bool | None = None,
    stop: asyncio.Event | None = None,
    socket_timeout: float = 5.0,
    max_connections: int = 32,
    pool_timeout: float | None = None,
) -> Client | None:
    """Wait until the Redis at ``url`` answers, then the right client for it; None if ``stop`` came first.

    Detection happens here, when Redis is first reached: ``INFO cluster``
    says ``cluster_enabled:1`` on a cluster node. ``cluster`` (the setting
    ``BINORMAL_REDIS_CLUSTER``) forces the mode; a forced mode that the
    server contradicts is a :class:`~binormal.common.config.ConfigError`
    (a single-node client on a cluster would see MOVED for most keys). A
    server that refuses INFO is taken at the forced mode's word (else single).
    """
    probe = make_client(url, socket_timeout=socket_timeout, max_connections=2)
    try:
        if not await wait_until_up(probe, stop):
            return None
        found = await cluster_enabled(probe)
    finally:
        await probe.aclose()
    delay = 0.1
    while True:
        try:
            client = await _client_for(url, found, cluster, socket_timeout, max_connections, pool_timeout)
            if isinstance(client, RedisCluster):
                log.info("redis_cluster", masters=len(client.get_primaries()), nodes=len(client.get_nodes()))
            return client
        except (RedisClusterException, *TRANSIENT) as exc:
            log.warning("redis_cluster_not_ready", error=str(exc), retry_in_s=round(delay, 2))
        if stop is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            if stop.is_set():
                return None
        else:
            await asyncio.sleep(delay)
        delay = min(5.0, delay * 2)


async def open_client(
    url: str, *, cluster: bool | None = None, socket_timeout: float = 5.0, max_connections: int = 32
) -> Client:
    """:func:`connect` without waiting, for command-line tools: a Redis that does not answer raises TRANSIENT."""
    probe = make_client(url, socket_timeout=socket_timeout, max_connections=2)
    try:
        found = await cluster_enabled(probe)
    finally:
        await probe.aclose()
    try:
        return await _client_for(url, found, cluster, socket_timeout, max_connections, None)
    except RedisClusterException as exc:
        raise RedisConnectionError(f"redis cluster not ready: {exc}") from None


async def _client_for(
    url: str,
    found: bool | None,
    cluster: bool | None,
    socket_timeout: float,
    max_connections: int,
    pool_timeout: float | None,
) -> Client:
    """The client for a server whose ``INFO cluster`` said ``found``, the setting ``cluster`` checked against it."""
    if found is not None and cluster is not None and found != cluster:
        what = "a cluster node (INFO cluster: cluster_enabled:1)" if found else "not a cluster node (cluster_enabled:0)"
        raise ConfigError(f"{CLUSTER_ENV}={int(cluster)} but the Redis at REDIS_URL is {what}; unset it to detect")
    if not (found if found is not None else bool(cluster)):
        return make_client(
            url, socket_timeout=socket_timeout, max_connections=max_connections, pool_timeout=pool_timeout
        )
    client = make_cluster_client(url, socket_timeout=socket_timeout, max_connections=max_connections)
    try:
        await client.initialize()
    except BaseException:
        await client.aclose()
        raise
    return client


# Connection options a pub/sub connection to one cluster node copies from the cluster client.
_PUBSUB_OPTIONS = (
    "username",
    "password",
    "credential_provider",
    "client_name",
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "protocol",
    "encoding",
    "encoding_errors",
    "decode_responses",
)
_pubsub_turn = itertools.count()


def pubsub_of(client: Client, **kwargs: Any) -> aioredis.client.PubSub:
    """A pub/sub object: the client's own for a single Redis; on a cluster one plain connection to a node.

    Classic pub/sub is cluster-wide (a PUBLISH on any node reaches subscribers
    on every node), so one node will do; each call takes the next node the
    client knows, so a resubscription after that node died tries another.
    Closing the pub/sub closes its connection.
    """
    if not isinstance(client, RedisCluster):
        return client.pubsub(**kwargs)
    nodes = sorted(client.get_nodes(), key=lambda n: n.name)
    node = nodes[next(_pubsub_turn) % len(nodes)]
    given = client.get_connection_kwargs()
    options: dict[str, Any] = {k: given[k] for k in _PUBSUB_OPTIONS if given.get(k) is not None}
    pool = aioredis.ConnectionPool(host=node.host, port=int(node.port), max_connections=1, **options)
    return aioredis.client.PubSub(pool, **kwargs)


async def wait_until_up(
    client: Client,
    stop: asyncio.Event | None = None,
    first_delay: float = 0.1,
    max_delay: float = 5.0,
) -> bool:
    """PING until Redis answers, backing off with jitter; False if ``stop`` was set first.

    The seed's FIXME: its service started faster than Redis and died. Ours waits
    and says so in the log.
    """
    delay = first_delay
    attempt = 0
    while stop is None or not stop.is_set():
        attempt += 1
        try:
            await asyncio.wait_for(client.ping(), timeout=max_delay)
            if attempt > 1:
                log.info("redis_up", attempts=attempt)
            return True
        except TRANSIENT as exc:
            log.warning("redis_unreachable", attempt=attempt, retry_in_s=round(delay, 2), error=str(exc))
        if stop is None:
            await asyncio.sleep(delay)
        else:
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass
        delay = min(max_delay, delay * 2) * random.uniform(0.8, 1.2)
    return False


async def execute_raw(client: Client, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Send ``commands`` in one write and read every reply: a lean pipeline.

    redis-py's Pipeline object costs tens of microseconds per command in
    bookkeeping (command stack, per-reply callbacks); the worker sends two
    scripts per event, so it packs with hiredis and reads raw replies instead.
    Replies are RESP2 as hiredis parses them (HGETALL is a flat list); a
    command's error is returned in its place, as with
    ``execute(raise_on_error=False)``. Connection errors propagate, and the
    connection is then dropped so no stray reply can reach the next user.
    On a cluster the commands are grouped per node (common/cluster.py).
    """
    if not commands:
        return []
    if isinstance(client, RedisCluster):
        got = await run_grouped(client, commands)
        if got.error is not None:
            raise got.error
        return got.replies
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]  # redis-py's asyncio pool is untyped
    try:
        await conn.send_packed_command([hiredis.pack_command(tuple(c)) for c in commands])
        out: list[Any] = []
        for _ in commands:
            try:
                out.append(await conn.read_response())
            except ResponseError as exc:
                out.append(exc)
        return out
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)


# redis-py strips these error codes off the message and raises a class instead.
_ERROR_CODES = (
    (OutOfMemoryError, "OOM"),
    (ReadOnlyError, "READONLY"),
    (BusyLoadingError, "LOADING"),
    (NoPermissionError, "NOPERM"),
)


def refusal_text(exc: ResponseError, limit: int = 200) -> str:
    """Redis' own error line for ``exc`` (code included: ``OOM command not allowed ...``), at most ``limit`` chars."""
    text = str(exc)
    for cls, code in _ERROR_CODES:
        if isinstance(exc, cls):
            text = f"{code} {text}"
            break
    return text[:limit]


def refused_write(exc: ResponseError) -> str:
    """The error answered for a write Redis refused, naming the cause (out of memory, read-only, ...)."""
    if isinstance(exc, OutOfMemoryError):
        return f"redis is out of memory (maxmemory reached) and refused the write: {refusal_text(exc)}"
    return f"redis refused the write: {refusal_text(exc)}"


class InDoubt(Exception):
    """A write was sent but its reply never came: it may or may not have happened."""


@dataclass
class Partial:
    """What :func:`execute_partial` knows: the replies read before a connection failure.

    ``replies[i]`` is command i's reply (its error in place, like
    :func:`execute_raw`). With ``error`` set the link failed: commands from
    ``len(replies)`` on may or may not have run when ``sent`` (their bytes
    were handed to the socket), and certainly did not run when not ``sent``
    (no connection could be had: connect refused, pool timeout).
    """

    replies: list[Any] = field(default_factory=list)
    error: BaseException | None = None
    sent: bool = True


async def execute_partial(client: Client, commands: Sequence[Sequence[Any]]) -> Partial:
    """:func:`execute_raw` that says how far it got instead of raising on a connection failure.

    Redis runs a connection's commands in order and answers each in order, so
    every reply read proves its command ran; a command whose reply never came
    is in doubt once its bytes were sent. On a cluster (groups per node) the
    replies kept are those up to the first command without one; from there on
    all are in doubt unless none of them was sent or answered.
    """
    if not commands:
        return Partial()
    if isinstance(client, RedisCluster):
        got = await run_grouped(client, commands)
        if got.error is None:
            return Partial(got.replies)
        first = got.done.index(False) if False in got.done else len(commands)
        sent = any(got.sent[first:]) or any(got.done[first:])
        return Partial(got.replies[:first], got.error, sent=sent)
    packed = [hiredis.pack_command(tuple(c)) for c in commands]  # a bad argument raises here, before any I/O
    pool = client.connection_pool
    try:
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]  # (untyped in redis-py)
    except TRANSIENT as exc:
        return Partial([], exc, sent=False)
    out: list[Any] = []
    try:
        await conn.send_packed_command(packed)
        for _ in commands:
            try:
                out.append(await conn.read_response())
            except ResponseError as exc:
                out.append(exc)
        return Partial(out)
    except TRANSIENT as exc:
        await conn.disconnect(nowait=True)
        return Partial(out, exc)
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)


def xadd_command(stream: str, fields: dict[str, str]) -> tuple[Any, ...]:
    """``XADD stream * field value ...`` as a command tuple for :func:`execute_raw`."""
    flat: list[str] = []
    for name, value in fields.items():
        flat += (name, value)
    return ("XADD", stream, "*", *flat)
