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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import structlog
from aiohttp import web

from binormal.common import metrics
from binormal.common.config import ConfigError
from binormal.common.connection import Client, connect
from binormal.common.http import unavailable
from binormal.common.keys import Keyspace

log = structlog.get_logger("binormal.http")

REDIS_POOL_SIZE = 64  # connections per HTTP process (requests wait for one, see make_client)
REDIS_POOL_WAIT_S = 2.0


class RedisHandle:
    """The application's Redis client and whether it has been reached yet.

    The client exists once Redis was first reached: only then is it known
    whether ``REDIS_URL`` names a single Redis or a cluster node.
    """

    def __init__(self, keys: Keyspace, client: Client | None = None) -> None:
        self._client = client
        self.keys = keys
        self.up = asyncio.Event()
        self.error: str | None = None  # why it will never connect (a contradicted BINORMAL_REDIS_CLUSTER)
        self._on_connect: list[Callable[[Client], None]] = []
        if client is not None:
            self.up.set()

    @property
    def client(self) -> Client:
        """The client, or ``503 redis unavailable`` while Redis was never reached."""
        if self._client is None:
            raise unavailable()
        return self._client

    def on_connect(self, callback: Callable[[Client], None]) -> None:
        """Call ``callback(client)`` once connected (at once if already)."""
        if self._client is not None:
            callback(self._client)
        else:
            self._on_connect.append(callback)

    def connected(self, client: Client) -> None:
        """Redis was reached: hand out ``client``, then mark the handle up."""
        self._client = client
        for callback in self._on_connect:
            callback(client)
        self._on_connect.clear()
        self.up.set()

    def require(self) -> Client:
        """The client, or ``503 redis unavailable`` while Redis was never reached."""
        if not self.up.is_set():
            raise unavailable()
        return self.client


@dataclass(frozen=True)
class RedisConfig:
    """What :func:`setup_redis` was asked for (checked when called twice)."""

    url: str
    keys: Keyspace
    cluster: bool | None = None


REDIS = web.AppKey("binormal_redis", RedisHandle)
_REDIS_CONFIG = web.AppKey("binormal_redis_config", RedisConfig)


def setup_redis(app: web.Application, url: str, keys: Keyspace, cluster: bool | None = None) -> None:
    """Give ``app`` a Redis client (``app[REDIS]``) for its lifetime; idempotent.

    ``cluster``: BINORMAL_REDIS_CLUSTER (None: detected when Redis is first reached).
    """
    config = RedisConfig(url, keys, cluster)
    existing = app.get(_REDIS_CONFIG)
    if existing is not None:
        if existing != config:
            raise ValueError(f"services on one app must share Redis settings: {existing} != {config}")
        return
    app[_REDIS_CONFIG] = config
    app.cleanup_ctx.append(_redis_ctx)


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[_REDIS_CONFIG]
    handle = RedisHandle(config.keys)
    app[REDIS] = handle
    stop = asyncio.Event()

    async def reach() -> None:
        log.info("waiting_for_redis", url=_safe_url(config.url))
        try:
            client = await connect(
                config.url,
                cluster=config.cluster,
                stop=stop,
                max_connections=REDIS_POOL_SIZE,
                pool_timeout=REDIS_POOL_WAIT_S,
            )
        except ConfigError as exc:
            # Permanent: /readyz says so, every request answers 503 (the process stays up to say it).
            handle.error = str(exc)
            log.error("redis_mode_mismatch", error=str(exc))
            return
        if client is not None:
            handle.connected(client)
            metrics.REDIS_UP.set(1)
            log.info("redis_ready", url=_safe_url(config.url), cluster=type(client).__name__ == "RedisCluster")

    task = asyncio.create_task(reach(), name="redis-connect")
    try:
        yield
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if handle.up.is_set():
            await handle.client.aclose()


def _safe_url(url: str) -> str:
    """The URL without a password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
