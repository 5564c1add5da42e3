"""The Redis client of an aiohttp application: :func:`setup_redis`, ``app[REDIS]``.

One client per application (a cleanup context), connected in the background
with :func:`~binormal.common.connection.wait_until_up`, so a service started
before Redis serves ``/healthz`` at once, reports not-ready on ``/readyz`` and
answers other requests ``503`` JSON ``redis unavailable`` instead of hanging.
:func:`setup_redis` is idempotent, so ``binormal run`` can set up the web tier
and the ingest service on one application with one client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog
from aiohttp import web

from binormal.common import metrics
from binormal.common.connection import make_client, wait_until_up
from binormal.common.http import unavailable
from binormal.common.keys import Keyspace

log = structlog.get_logger("binormal.http")

REDIS_POOL_SIZE = 64  # connections per HTTP process (requests wait for one, see make_client)
REDIS_POOL_WAIT_S = 2.0


class RedisHandle:
    """The application's Redis client and whether it has been reached yet."""

    def __init__(self, client: aioredis.Redis, keys: Keyspace) -> None:
        self.client = client
        self.keys = keys
        self.up = asyncio.Event()

    def require(self) -> aioredis.Redis:
        """The client, or ``503 redis unavailable`` while Redis was never reached."""
        if not self.up.is_set():
            raise unavailable()
        return self.client


@dataclass(frozen=True)
class RedisConfig:
    """What :func:`setup_redis` was asked for (checked when called twice)."""

    url: str
    keys: Keyspace


REDIS = web.AppKey("binormal_redis", RedisHandle)
_REDIS_CONFIG = web.AppKey("binormal_redis_config", RedisConfig)


def setup_redis(app: web.Application, url: str, keys: Keyspace) -> None:
    """Give ``app`` a Redis client (``app[REDIS]``) for its lifetime; idempotent."""
    config = RedisConfig(url, keys)
    existing = app.get(_REDIS_CONFIG)
    if existing is not None:
        if existing != config:
            raise ValueError(f"services on one app must share Redis settings: {existing} != {config}")
        return
    app[_REDIS_CONFIG] = config
    app.cleanup_ctx.append(_redis_ctx)


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[_REDIS_CONFIG]
    client = make_client(config.url, max_connections=REDIS_POOL_SIZE, pool_timeout=REDIS_POOL_WAIT_S)
    handle = RedisHandle(client, config.keys)
    app[REDIS] = handle
    stop = asyncio.Event()

    async def connect() -> None:
        log.info("waiting_for_redis", url=_safe_url(config.url))
        if await wait_until_up(client, stop):
            handle.up.set()
            metrics.REDIS_UP.set(1)
            log.info("redis_ready", url=_safe_url(config.url))

    task = asyncio.create_task(connect(), name="redis-connect")
    try:
        yield
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()


def _safe_url(url: str) -> str:
    """The URL without a password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
