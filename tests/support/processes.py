"""``binormal`` child processes: spawn and stop them, find their children in /proc, call them over plain HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError

import orjson

from tests.support.workers import binormal_command


def clean_env() -> dict[str, str]:
    """This process's environment without BINORMAL_*, REDIS_URL and PORT (a child starts from defaults)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("BINORMAL_") and k not in ("REDIS_URL", "PORT")}


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``binormal <args>`` with stdout and stderr appended to ``log``."""
    with open(log, "ab") as fh:
        return subprocess.Popen([*binormal_command(), *args], env=env, stdout=fh, stderr=fh)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
    """Send ``sig`` and wait for the exit code; SIGKILL (and raise) after ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise


def kill_with_children(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc`` and the children it has now (ours, by PID): what a failed test leaves behind."""
    kids = children(proc.pid)
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    for kid in kids:
        if alive(kid):
            os.kill(kid, signal.SIGKILL)


def http(method: str, url: str, body: bytes | None = None, ctype: str = "application/json") -> tuple[int, Any]:
    """(status, JSON body); (0, None) when nothing answered."""
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": ctype} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, orjson.loads(r.read())
    except HTTPError as exc:
        return exc.code, orjson.loads(exc.read())
    except (URLError, ConnectionError, OSError):
        return 0, None


def wait_process_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Poll ``{base}/readyz`` until 200; fail at once if ``proc`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}"
        if http("GET", f"{base}/readyz")[0] == 200:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{base} not ready after {timeout}s")


def port_open(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# ---------------------------------------------------------------- /proc


def children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def cmdline(pid: int) -> bytes:
    """The NUL-separated command line of ``pid`` (empty once it is gone)."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def redis_child(pid: int) -> int | None:
    """The live redis-server child of ``pid``, if any."""
    found = [c for c in children(pid) if b"redis-server" in cmdline(c) and alive(c)]
    return found[0] if found else None


def worker_children(pid: int) -> list[int]:
    """Live ``python -P -m binormal ... worker`` children of ``pid``.

    ``-P`` keeps the current directory off the import path: a child without it is not counted.
    """
    found = []
    for child in children(pid):
        cmd = cmdline(child).split(b"\0")
        if cmd[1:4] == [b"-P", b"-m", b"binormal"] and b"worker" in cmd and alive(child):
            found.append(child)
    return found
