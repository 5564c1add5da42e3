"""``binormal run``'s embedded Redis, kept alive: restarted with backoff if it dies.

The restarted server has the same port (the services' clients and the workers
simply reconnect), the same data dir and AOF (every write Redis acknowledged
was handed to the kernel before the reply was sent, so a crash of redis-server
alone loses nothing; see docs/operations.md). Meanwhile ``/readyz`` answers
503 naming the embedded Redis and ``/healthz`` stays 200 with
``embedded_redis: restarting``; once ``restart_attempts`` restarts in a row
have failed, ``/healthz`` fails too (503): this process cannot heal itself and
an outer supervisor should replace it. It keeps trying at the longest backoff,
and both probes recover when Redis is back.

The server is launched from the event loop, which runs in the main thread:
PR_SET_PDEATHSIG fires when the *forking thread* exits (common/embedded.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from binormal.runsettings import EmbeddedRedisSettings
from common.embedded import RedisServer, RedisServerError, find_binary
from common.health import SUPERVISION, Supervision
from common.runtime import tune_gc

log = structlog.get_logger("binormal.run")

POLL_S = 0.1  # how often the child's exit status is checked (a waitpid, no syscall to Redis)
PING_TIMEOUT_S = 0.5


def embedded_server(settings: EmbeddedRedisSettings) -> RedisServer:
    """The embedded server (not started), with its files under ``<data dir>/redis``."""
    return RedisServer(
        settings.data_dir.resolve() / "redis",
        binary=find_binary("embedded"),
        port=settings.port or None,
        aof=True,
        maxmemory=settings.maxmemory,
        fsync=settings.fsync,
    )


async def answers(port: int) -> bool:
    """True when something on 127.0.0.1:``port`` answers PING with PONG."""
    try:
        async with asyncio.timeout(PING_TIMEOUT_S):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"PING\r\n")
                return (await reader.readline()).startswith(b"+PONG")
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, asyncio.TimeoutError):
        return False


class RedisSupervisor:
    """Watches one :class:`RedisServer` and restarts it when it exits."""

    def __init__(self, server: RedisServer, settings: EmbeddedRedisSettings, status: Supervision) -> None:
        self.server = server
        self.settings = settings
        self.status = status
        self.restarts = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: notice the server's exit, restart it."""
        while not stop.is_set():
            proc = self.server.proc
            code = proc.poll() if proc is not None else -1
            if code is None:
                await _wait(stop, POLL_S)
                continue
            log.error("embedded_redis_died", pid=self.server.pid, returncode=code, port=self.server.port)
            self.status.state = "restarting"
            self.status.detail = f"embedded redis restarting (it exited with {code})"
            await self._restart(stop)

    async def _restart(self, stop: asyncio.Event) -> None:
        s = self.settings
        delay = s.restart_backoff_s
        failures = 0
        while not stop.is_set():
            try:
                await self._start_once()
            except (RedisServerError, OSError) as exc:
                failures += 1
                log.error("embedded_redis_restart_failed", attempt=failures, error=str(exc)[:500], retry_in_s=delay)
                if failures >= s.restart_attempts:
                    self.status.state = "failed"
                    self.status.detail = (
                        f"embedded redis could not be restarted ({failures} attempts in a row failed): {str(exc)[:200]}"
                    )
                await _wait(stop, delay)
                delay = min(delay * 2, s.restart_max_backoff_s)
                continue
            self.restarts += 1
            self.status.state, self.status.detail = "running", ""
            log.info("embedded_redis_restarted", pid=self.server.pid, port=self.server.port,
                     attempts=failures + 1, restarts=self.restarts)
            return

    async def _start_once(self) -> None:
        """Launch the server and wait until it answers (or exits, or the start timeout passes)."""
        proc = self.server.launch()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.start_timeout_s
        while True:
            if proc.poll() is not None:
                raise self.server.exit_error()
            # While it loads the AOF it answers -LOADING: keep waiting.
            if await answers(self.server.port):
                return
            if loop.time() > deadline:
                self.server.stop()
                raise RedisServerError(f"redis-server did not answer within {self.settings.start_timeout_s}s")
            await asyncio.sleep(0.02)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def supervise(app: web.Application, server: RedisServer, settings: EmbeddedRedisSettings) -> None:
    """Keep ``server`` alive for ``app``'s lifetime and report on ``app[SUPERVISION]``.

    Appended before the workers' context, so it is torn down after them: Redis
    is watched (and healed) while the workers finish their last batches.
    """
    status = app[SUPERVISION] = Supervision()
    supervisor = RedisSupervisor(server, settings, status)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(supervisor.run(stop), name="redis-supervisor")
        try:
            yield
        finally:
            stop.set()
            await task

    app.cleanup_ctx.append(ctx)


def serve_until_stopped(app: web.Application, host: str, port: int) -> None:
    """Serve ``app`` on ``host:port`` until the first SIGINT/SIGTERM, then stop gracefully.

    Unlike ``web.run_app`` (which raises ``GracefulExit`` on *every* signal,
    so a second SIGTERM during the shutdown cancels its cleanup with a
    traceback), the first signal sets an event and later ones find it set:
    the workers still get their grace period and the exit code stays 0. The
    handlers are in place before the app starts (workers, Redis clients), so a
    signal during that start-up simply ends it.
    """
    log.info("listening", service="binormal", url=f"http://{host}:{port}")
    tune_gc()  # everything is imported and the app built: freeze it
    asyncio.run(_serve(app, host, port))


async def _serve(app: web.Application, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # In-flight requests get up to 5 s once the socket is closed, then the cleanup contexts run.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    try:
        await runner.setup()
        if not stop.is_set():
            await web.TCPSite(runner, host, port).start()
            await stop.wait()
        log.info("stopping", service="binormal")
    finally:
        await runner.cleanup()
        # From here on the loop's handlers are gone (default action again): ignore
        # further signals, the process is on its way out anyway.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
