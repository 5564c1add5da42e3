"""Run a real worker: in-process (``Worker(settings).run()``) or as a ``binormal worker`` child."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from binormal.worker import Worker, WorkerSettings


def worker_settings(redis_url: str, prefix: str, **overrides: Any) -> WorkerSettings:
    """Settings for a test worker: fast polling, no surprise trimming or claiming."""
    base = WorkerSettings(
        redis_url=redis_url,
        prefix=prefix,
        shards=4,
        consumer="w1",
        batch=500,
        block_ms=50,
        claim_idle_ms=60_000,
        trim_interval_s=0.0,
        heartbeat_s=0.5,
    )
    return replace(base, **overrides)


@contextlib.asynccontextmanager
async def running_worker(settings: WorkerSettings, ready_timeout: float = 10.0) -> AsyncIterator[Worker]:
    """Run ``Worker(settings).run()`` as a task; stop it gracefully on exit.

    The task's exception (if it died) is raised on exit so a crash fails the test.
    """
    worker = Worker(settings)
    task = asyncio.create_task(worker.run())
    ready = asyncio.create_task(worker.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:
        ready.cancel()
        if task in done:
            task.result()  # raises what killed it
        task.cancel()
        raise TimeoutError("worker did not become ready")
    try:
        yield worker
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, timeout=15.0)


def binormal_command() -> list[str]:
    """The ``binormal`` console script of this venv (or ``python -P -m binormal``)."""
    script = Path(sys.executable).with_name("binormal")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-P", "-m", "binormal"]


@dataclass
class WorkerProcess:
    """``binormal worker`` as a child process, its stderr (JSON logs) in a file."""

    redis_url: str
    prefix: str
    consumer: str
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    _log: TextIO | None = None

    def start(self) -> WorkerProcess:
        """Spawn it (REDIS_URL and BINORMAL_* from the fields)."""
        env = dict(os.environ)
        env.update(
            REDIS_URL=self.redis_url,
            BINORMAL_PREFIX=self.prefix,
            BINORMAL_CONSUMER=self.consumer,
            BINORMAL_BLOCK_MS="100",
            BINORMAL_TRIM_INTERVAL_S="0",
        )
        env.update(self.extra_env)
        self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [*binormal_command(), "worker"], env=env, stdout=subprocess.DEVNULL, stderr=self._log
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        """Still running?"""
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to this child (by PID) if it still runs."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        """Wait for exit (SIGKILL after ``timeout``); returns the exit code."""
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        return rc

    def kill(self) -> int:
        """SIGKILL and reap."""
        self.signal(signal.SIGKILL)
        return self.wait()

    def log_lines(self) -> list[str]:
        """Every stderr line written so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
