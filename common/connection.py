"""Redis clients: one factory (RESP2 pinned, timeouts on every wait) and startup retry."""

from __future__ import annotations

import asyncio
import random

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = structlog.get_logger("binormal.redis")

# Errors that mean "Redis is not there right now", as opposed to bad data.
TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, asyncio.TimeoutError)


def make_client(url: str, *, socket_timeout: float = 5.0, max_connections: int = 32) -> aioredis.Redis:
    """An asyncio Redis client speaking RESP2 (redis-py 8 defaults to RESP3).

    ``socket_timeout`` must stay above every XREADGROUP BLOCK we issue
    (redis-py#3138), so callers keep their BLOCK a few seconds shorter.
    """
    return aioredis.Redis.from_url(
        url,
        protocol=2,
        socket_timeout=socket_timeout,
        socket_connect_timeout=min(socket_timeout, 5.0),
        health_check_interval=15,
        max_connections=max_connections,
        decode_responses=False,
    )


async def wait_until_up(
    client: aioredis.Redis,
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
            except asyncio.TimeoutError:
                pass
        delay = min(max_delay, delay * 2) * random.uniform(0.8, 1.2)
    return False
