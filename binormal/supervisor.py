"""``binormal run``'s embedded Redis, kept alive: restarted with backoff if it dies.

The restarted server has the same port (the services' clients and the workers
simply reconnect), the same data dir and AOF (every write Redis acknowledged
was handed to the kernel before the reply was sent, so a crash of redis-server
alone loses nothing; see docs/operations.md). Meanwhile ``/readyz`` answers
503 naming the embedded Redis and ``/healthz`` stays 200 with
``embedded_redis: restarting``; once ``restart_attempts`` restarts in a row
have failed, ``/healthz`` fails too (503): this process cannot heal itself and
an outer supervisor should replace it. It keeps trying at the longest backoff,
and both probes recover when Redis is back. A Redis that dies again within
``STABLE_S`` of a restart counts as a failed restart: a crash loop backs off
(and ends in ``failed``) instead of restarting as fast as it dies.

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

from binormal.common.embedded import RedisServer, RedisServerError, find_binary
from binormal.common.health import SUPERVISION, Supervision
from binormal.common.runtime import tune_gc
from binormal.common.server import BoundedAppRunner
from binormal.runsettings import EmbeddedRedisSettings

log = structlog.get_logger("binormal.run")

POLL_S = 0.1  # how often the child's exit status is checked (a waitpid, no syscall to Redis)
PING_TIMEOUT_S = 0.5
STABLE_S = 30.0  # a restarted Redis that stays up this long resets the backoff and the failure count


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
    except (TimeoutError, OSError):
        return False


class RedisSupervisor:
    """Watches one :class:`RedisServer` and restarts it when it exits."""

    def __init__(self, server: RedisServer, settings: EmbeddedRedisSettings, status: Supervision) -> None:
        self.server = server
        self.settings = settings
        self.status = status
        self.restarts = 0
        # Failed starts, and runs shorter than STABLE_S, in a row: a Redis that
        # dies again right after each restart (a crash loop) backs off too.
        self.failures = 0
        self.delay = settings.restart_backoff_s
        self.started_at = 0.0  # loop time of the last (re)start

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: notice the server's exit, restart it."""
        loop = asyncio.get_running_loop()
        self.started_at = loop.time()
        while not stop.is_set():
            proc = self.server.proc
            code = proc.poll() if proc is not None else -1
            if code is None:
                if self.failures and loop.time() - self.started_at >= STABLE_S:
                    self.failures, self.delay = 0, self.settings.restart_backoff_s  # it stayed up: healed
                await _wait(stop, POLL_S)
                continue
            ran_s = loop.time() - self.started_at
            self.status.state = "restarting" if self.failures < self.settings.restart_attempts else "failed"
            self.status.detail = f"embedded redis restarting (it exited with {code} after {ran_s:.1f}s)"
            if ran_s < STABLE_S and self.restarts:
                # Died soon after a restart: count it as a failed one and wait before the next.
                self._failed(f"it exited with {code} {ran_s:.1f}s after its restart")
                log.error(
                    "embedded_redis_died",
                    pid=self.server.pid,
                    returncode=code,
                    ran_s=round(ran_s, 1),
                    failures=self.failures,
                    restart_in_s=self.delay,
                )
                await self._backoff(stop)
            else:
                log.error(
                    "embedded_redis_died", pid=self.server.pid, returncode=code, ran_s=round(ran_s, 1), restart_in_s=0
                )
            await self._restart(stop)

    def _failed(self, why: str) -> None:
        self.failures += 1
        if self.failures >= self.settings.restart_attempts:
            self.status.state = "failed"
            self.status.detail = (
                f"embedded redis could not be restarted ({self.failures} failures in a row): {why[:200]}"
            )

    async def _backoff(self, stop: asyncio.Event) -> None:
        await _wait(stop, self.delay)
        self.delay = min(self.delay * 2, self.settings.restart_max_backoff_s)

    async def _restart(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                await self._start_once(stop)
            except (RedisServerError, OSError) as exc:
                self._failed(str(exc))
                log.error(
                    "embedded_redis_restart_failed", failures=self.failures, error=str(exc)[:500], retry_in_s=self.delay
                )
                await self._backoff(stop)
                continue
            if stop.is_set():
                return
            self.restarts += 1
            self.started_at = loop.time()
            # Running again; the failure count and backoff reset only once it stays up STABLE_S.
            self.status.state, self.status.detail = "running", ""
            log.info(
                "embedded_redis_restarted",
                pid=self.server.pid,
                port=self.server.port,
                failures=self.failures,
                restarts=self.restarts,
            )
            return

    async def _start_once(self, stop: asyncio.Event) -> None:
        """Launch the server and wait until it answers (or exits, or the start timeout passes, or ``stop``).

        On ``stop`` it returns at once: the server, answering or not, is stopped
        with the others by ``binormal run`` on its way out.
        """
        proc = self.server.launch()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.start_timeout_s
        while not stop.is_set():
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
    # The bounded server (common/server.py): head/body timeouts, connection cap, JSON protocol errors.
    runner = BoundedAppRunner(app, access_log=None, shutdown_timeout=5.0)
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
