"""``binormal run`` as a supervisor (binormal/supervisor.py): it heals its embedded Redis,
tells the truth on ``/healthz`` and ``/readyz`` meanwhile, takes every child down
with it, and leaves on SIGTERM at any moment with exit code 0.

Real processes only: ``binormal run`` is a child of the test, its redis-server and
workers are found in /proc and killed by PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.openapi import check_response, load_openapi
from tests.support.processes import (
    alive,
    children,
    http,
    kill_with_children,
    redis_child,
    spawn,
    worker_children,
)
from tests.support.waiting import wait_until
from tests.support.workers import binormal_command

SCOPE = {"org": "acme", "source": "webserver", "pop": "heal"}


@pytest.fixture
def spawned(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], subprocess.Popen[bytes]]]:
    """Start ``binormal run`` (stderr to run.log); whatever is left is killed by PID at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn_run(env: dict[str, str]) -> subprocess.Popen[bytes]:
        procs.append(spawn(["run"], env, tmp_path / "run.log"))
        return procs[-1]

    yield spawn_run
    for proc in procs:
        kill_with_children(proc)


def log_text(tmp_path: Path) -> str:
    path = tmp_path / "run.log"
    return path.read_text(errors="replace") if path.exists() else ""


def ready(base: str) -> bool:
    return http("GET", f"{base}/readyz")[0] == 200


def post_event(base: str, i: int) -> int:
    line = orjson.dumps({**SCOPE, "id": f"u{i}", "action": f"GET /{i % 7}", "event_id": f"heal-{i}"})
    return http("POST", f"{base}/events", line + b"\n", "application/x-ndjson")[0]


def individual_count(base: str, i: int) -> int:
    status, got = http("GET", f"{base}/api/individual?org=acme&source=webserver&pop=heal&id=u{i}")
    return int(got["count"]) if status == 200 else 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_run_restarts_its_embedded_redis_and_loses_nothing_acknowledged(
    tmp_path: Path, run_env: dict[str, str], spawned: Callable[[dict[str, str]], subprocess.Popen[bytes]]
) -> None:
    base = f"http://127.0.0.1:{run_env['PORT']}"
    # appendfsync always: under everysec a disk still busy with the last fsync makes Redis
    # postpone its AOF write (up to 2 s, docs/operations.md) while it already answers, so a
    # SIGKILL then loses acknowledged writes; that is the documented window, not this test's.
    proc = spawned(dict(run_env, BINORMAL_FSYNC="always"))
    wait_until(lambda: ready(base), 60, "readyz 200")
    acked: list[int] = []
    for i in range(30):
        if post_event(base, i) == 202:
            acked.append(i)
    assert len(acked) == 30
    first = redis_child(proc.pid)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    # While Redis is down, readyz says why; writes are refused (503), never lost silently.
    outage: dict[str, Any] = {}

    def saw_outage() -> bool:
        status, body = http("GET", f"{base}/readyz")
        if status == 503:
            outage["readyz"] = body
            outage["healthz"] = http("GET", f"{base}/healthz")
            return True
        return False

    wait_until(saw_outage, 30, "readyz 503 after the kill")
    # Liveness stays 200 while it heals itself (it is not stuck: restarting or already back).
    status, health = outage["healthz"]
    assert status == 200 and health["embedded_redis"] in ("restarting", "running"), outage
    i = 30
    # Keep writing through the outage until it has healed; only 202s count as acknowledged.
    deadline = time.monotonic() + 60
    while not ready(base):
        assert time.monotonic() < deadline, f"never ready again:\n{log_text(tmp_path)[-3000:]}"
        if post_event(base, i) == 202:
            acked.append(i)
        i += 1
        time.sleep(0.05)
    for j in range(i, i + 20):
        assert post_event(base, j) == 202
        acked.append(j)
    second = redis_child(proc.pid)
    assert second is not None and second != first
    status, health = http("GET", f"{base}/healthz")
    assert status == 200 and health["status"] == "alive", health
    # Every acknowledged event is counted exactly once after the restart.
    wait_until(lambda: all(individual_count(base, a) == 1 for a in acked), 60, "every acked event counted")
    log = log_text(tmp_path)
    assert '"embedded_redis_died"' in log and '"embedded_redis_restarted"' in log
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0, log_text(tmp_path)[-3000:]
    assert not alive(second)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_health_tells_the_truth_while_redis_cannot_come_back(
    tmp_path: Path, run_env: dict[str, str], spawned: Callable[[dict[str, str]], subprocess.Popen[bytes]]
) -> None:
    """readyz names the embedded Redis while it is down; healthz fails once the supervisor gives up."""
    from binormal.common.embedded import find_binary

    flag = tmp_path / "refuse"
    wrapper = tmp_path / "redis-server"
    # A redis-server that refuses to start while the flag file exists (the test's fault switch).
    wrapper.write_text(f'#!/bin/sh\n[ -e "{flag}" ] && exit 1\nexec "{find_binary("embedded")}" "$@"\n')
    wrapper.chmod(0o755)
    env = dict(run_env, REDIS_SERVER=str(wrapper), BINORMAL_REDIS_RESTART_ATTEMPTS="3")
    base = f"http://127.0.0.1:{env['PORT']}"
    proc = spawned(env)
    wait_until(lambda: ready(base), 60, "readyz 200")
    first = redis_child(proc.pid)
    assert first is not None
    flag.touch()
    os.kill(first, signal.SIGKILL)

    def restarting() -> Any:
        status, body = http("GET", f"{base}/readyz")
        return body if status == 503 and any("embedded redis" in r for r in body["reasons"]) else None

    body = wait_until(restarting, 30, "readyz naming the embedded redis")
    assert not body["ready"]
    status, body = http("GET", f"{base}/healthz")
    assert (status, body.get("embedded_redis")) in ((200, "restarting"), (503, "failed")), (status, body)

    def given_up() -> Any:
        status, body = http("GET", f"{base}/healthz")
        return body if status == 503 else None

    body = wait_until(given_up, 60, "healthz 503 once the supervisor gave up")
    assert body["status"] == "failing" and "embedded redis" in body["reason"], body
    spec = load_openapi()
    assert check_response(spec, "/healthz", "get", 503, body) == []
    status, ready_body = http("GET", f"{base}/readyz")
    assert status == 503 and check_response(spec, "/readyz", "get", 503, ready_body) == []
    assert proc.poll() is None
    # Once the cause is gone the supervisor (still trying, slowly) heals: both probes 200 again.
    flag.unlink()
    wait_until(lambda: ready(base) and http("GET", f"{base}/healthz")[0] == 200, 90, "healed")
    status, body = http("GET", f"{base}/healthz")
    assert body["embedded_redis"] == "running" and check_response(spec, "/healthz", "get", 200, body) == []
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_crash_loop_backs_off_and_fails_liveness(
    tmp_path: Path, run_env: dict[str, str], spawned: Callable[[dict[str, str]], subprocess.Popen[bytes]]
) -> None:
    """A Redis that dies again soon after each restart: the waits double, /healthz ends up 503."""
    from binormal.common.embedded import find_binary

    flag = tmp_path / "crash"
    wrapper = tmp_path / "redis-server"
    # While the flag exists, the server it starts is SIGKILLed 0.5 s after its start.
    wrapper.write_text(
        "#!/bin/sh\n"
        f'"{find_binary("embedded")}" "$@" &\n'
        "pid=$!\n"
        "trap 'kill -9 $pid 2>/dev/null' TERM INT\n"
        f'if [ -e "{flag}" ]; then sleep 0.5; kill -9 $pid; fi\n'
        "wait $pid\n"
    )
    wrapper.chmod(0o755)
    env = dict(run_env, REDIS_SERVER=str(wrapper), BINORMAL_REDIS_RESTART_ATTEMPTS="3")
    base = f"http://127.0.0.1:{env['PORT']}"
    proc = spawned(env)
    wait_until(lambda: ready(base), 60, "readyz 200")
    flag.touch()
    shell = wait_until(lambda: redis_child(proc.pid), 10, "the wrapper")
    real = wait_until(lambda: [c for c in children(shell) if alive(c)], 10, "its redis-server")
    os.kill(real[0], signal.SIGKILL)

    def waits() -> list[float]:
        out = []
        for line in log_text(tmp_path).splitlines():
            if '"embedded_redis_died"' in line:
                out.append(float(orjson.loads(line)["restart_in_s"]))
        return out

    def failing() -> bool:
        status, body = http("GET", f"{base}/healthz")
        return status == 503 and body["status"] == "failing"

    wait_until(failing, 60, "healthz 503 in the crash loop")
    got = wait_until(lambda: len(w := waits()) >= 4 and w, 60, "four deaths")
    # The first death restarts at once; each early death after a restart waits twice as long.
    assert got[:4] == [0, 0.2, 0.4, 0.8], got
    flag.unlink()
    wait_until(lambda: ready(base) and http("GET", f"{base}/healthz")[0] == 200, 60, "healed")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_while_a_restarted_redis_is_slow_to_answer_stops_at_once(
    tmp_path: Path, run_env: dict[str, str], spawned: Callable[[dict[str, str]], subprocess.Popen[bytes]]
) -> None:
    """A restart waiting for a Redis that does not answer yet (a big AOF loading) does not hold up the exit."""
    from binormal.common.embedded import find_binary

    flag = tmp_path / "slow"
    wrapper = tmp_path / "redis-server"
    wrapper.write_text(f'#!/bin/sh\n[ -e "{flag}" ] && sleep 100\nexec "{find_binary("embedded")}" "$@"\n')
    wrapper.chmod(0o755)
    env = dict(run_env, REDIS_SERVER=str(wrapper))
    base = f"http://127.0.0.1:{env['PORT']}"
    proc = spawned(env)
    wait_until(lambda: ready(base), 60, "readyz 200")
    flag.touch()
    os.kill(wait_until(lambda: redis_child(proc.pid), 10, "redis child"), signal.SIGKILL)
    wait_until(lambda: '"embedded_redis_died"' in log_text(tmp_path), 30, "the death noticed")
    kids = children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, log_text(tmp_path)[-3000:]  # not the 60 s start timeout, nor the 100 s sleep
    assert "Traceback" not in log_text(tmp_path)
    wait_until(lambda: not any(alive(k) for k in kids), 30, "children gone")


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("restarted", [False, True])
def test_sigkill_of_run_takes_every_child_down(
    tmp_path: Path,
    run_env: dict[str, str],
    spawned: Callable[[dict[str, str]], subprocess.Popen[bytes]],
    restarted: bool,
) -> None:
    workers = 2
    env = dict(run_env, BINORMAL_WORKERS=str(workers))
    base = f"http://127.0.0.1:{env['PORT']}"
    proc = spawned(env)
    wait_until(lambda: ready(base), 60, "readyz 200")
    if restarted:
        # A redis-server that the supervisor started again dies with the parent too.
        first = redis_child(proc.pid)
        assert first is not None
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: (r := redis_child(proc.pid)) and r != first and ready(base), 60, "redis restarted")
    kids = wait_until(lambda: len(worker_children(proc.pid)) == workers and worker_children(proc.pid), 30, "workers")
    kids = [*kids, redis_child(proc.pid)]
    proc.kill()
    proc.wait(10)
    wait_until(lambda: not any(alive(k) for k in kids), 30, f"children {kids} gone after the parent's SIGKILL")


def _sigterm_at(point: str, tmp_path: Path, proc: subprocess.Popen[bytes]) -> None:
    if point.startswith("delay:"):
        time.sleep(float(point.split(":")[1]))  # any moment must do: this is a sweep, not a wait
    else:
        wait_until(lambda: point in log_text(tmp_path) or proc.poll() is not None, 60, point)
    proc.send_signal(signal.SIGTERM)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "point",
    [
        "handler",
        "delay:0.3",
        "delay:0.6",
        '"embedded_redis_started"',
        '"worker_started"',
        '"listening"',
        '"redis_ready"',
        '"worker_ready"',
        '"embedded_redis_restarted"',
        "twice:0.05",
        "twice:0.3",
    ],
)
def test_sigterm_during_start_up_exits_0_without_a_traceback(
    tmp_path: Path,
    run_env: dict[str, str],
    spawned: Callable[[dict[str, str]], subprocess.Popen[bytes]],
    point: str,
) -> None:
    proc = spawned(run_env)
    if point == '"embedded_redis_restarted"':
        # SIGTERM while the supervisor restarts its Redis (sent when the restart is logged).
        base = f"http://127.0.0.1:{run_env['PORT']}"
        wait_until(lambda: ready(base), 60, "readyz 200")
        os.kill(wait_until(lambda: redis_child(proc.pid), 10, "redis child"), signal.SIGKILL)
    if point == "handler":
        # As soon as the process catches SIGTERM (SigCgt bit 15 in /proc/PID/status).
        def catches() -> bool:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                return proc.poll() is not None
            cgt = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
            return bool(cgt & (1 << (signal.SIGTERM - 1)))

        wait_until(catches, 30, "SIGTERM handler")
        proc.send_signal(signal.SIGTERM)
    elif point.startswith("twice:"):
        # A second SIGTERM while the first one's shutdown is under way.
        _sigterm_at('"worker_ready"', tmp_path, proc)
        time.sleep(float(point.split(":")[1]))  # any moment of the shutdown must do
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    else:
        _sigterm_at(point, tmp_path, proc)
    kids = children(proc.pid)
    rc = proc.wait(60)
    log = log_text(tmp_path)
    assert rc == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    wait_until(lambda: not any(alive(k) for k in kids), 30, "children gone")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "var,value", [("BINORMAL_FSYNC", "never"), ("BINORMAL_REDIS_MAXMEMORY", "lots"), ("BINORMAL_WORKERS", "0")]
)
def test_a_bad_setting_is_one_line_naming_it_and_exit_2(
    tmp_path: Path, run_env: dict[str, str], var: str, value: str
) -> None:
    done = subprocess.run(
        [*binormal_command(), "run"], env=dict(run_env, **{var: value}), capture_output=True, timeout=50
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert var.encode() in done.stderr and b"Traceback" not in done.stderr, done.stderr[-2000:]
    assert not any((tmp_path / "var" / "redis").glob("*.aof*"))  # bad embedded settings: Redis never started


@pytest.mark.timeout(60)
def test_an_embedded_redis_that_cannot_start_is_one_line_and_exit_1(tmp_path: Path, run_env: dict[str, str]) -> None:
    import socket

    with socket.socket() as taken:  # its port is in use
        taken.bind(("127.0.0.1", int(run_env["BINORMAL_REDIS_PORT"])))
        taken.listen()
        done = subprocess.run([*binormal_command(), "run"], env=run_env, capture_output=True, timeout=50)
    assert done.returncode == 1, done.stderr[-2000:]
    assert b"embedded redis-server did not start" in done.stderr and b"Traceback" not in done.stderr


@pytest.mark.timeout(60)
def test_the_console_script_catches_sigterm_before_any_heavy_import() -> None:
    """``binormal.cli`` imports nothing heavy at module level, so its SIGTERM handler is in place within
    a few ms of the interpreter starting (before, asyncio and structlog took ~90 ms to import first and a
    SIGTERM in that window killed the process by the signal, exit code 143)."""
    code = (
        "import sys, binormal.cli; print([m for m in ('asyncio', 'structlog', 'aiohttp', 'redis') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
