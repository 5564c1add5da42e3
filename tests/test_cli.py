"""The ``binormal`` command line: one registry of commands, ``--version``, ``--log-level`` and ``--log-format``.

Real processes only: a service's logs are read from a pseudo-terminal (console lines) or a pipe (JSON lines).
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from binormal.common.embedded import free_port
from tests.support.backends import both_backends
from tests.support.workers import binormal_command


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*binormal_command(), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env=env or dict(os.environ),
    )


def test_log_level_accepts_any_case(tmp_path: Path) -> None:
    """``--log-level debug`` once crashed with ``ValueError: Unknown level: 'debug'``."""
    log = tmp_path / "one.ndjson"
    log.write_bytes(orjson.dumps({"org": "o", "source": "s", "pop": "p", "id": "a", "actions": ["x"], "ts": 1}) + b"\n")
    for level in ("debug", "Warning", "INFO"):
        done = _cli("--log-level", level, "score", str(log))
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr


def test_an_unknown_log_level_is_argparse_s_error() -> None:
    done = _cli("--log-level", "chatty", "score", "-")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "--log-level" in done.stderr and "chatty" in done.stderr
    done = _cli("--log-format", "xml", "score", "-")
    assert done.returncode == 2 and "--log-format" in done.stderr


def test_version() -> None:
    from importlib.metadata import version

    done = _cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"binormal {version('binormal')}"


def test_every_command_is_registered() -> None:
    from binormal.cli import COMMANDS, build_parser

    parser = build_parser()
    for name in ("run", "worker", "web", "ingest", "score", "recompute", "dead", "feed", "token"):
        assert name in COMMANDS
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([name, "--help"])
        assert exc.value.code == 0


def test_command_modules_import_nothing_heavy_until_they_run() -> None:
    """Every module of the registry is light at module level (heavy imports are inside ``run``)."""
    import sys

    code = (
        "import sys, importlib, binormal.cli as c; [importlib.import_module(m) for m in c.COMMANDS.values()]; "
        "print([m for m in ('asyncio', 'structlog', 'aiohttp', 'redis') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_url_to_open_names_this_machine_for_a_wildcard_address() -> None:
    from binormal.common.log import browser_url

    assert browser_url("0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert browser_url("::", 8080) == "http://[::1]:8080"
    assert browser_url("::1", 81) == "http://[::1]:81"
    assert browser_url("10.0.0.5", 8080) == "http://10.0.0.5:8080"


def _service_env(redis_url: str, prefix: str, **extra: str) -> tuple[dict[str, str], int]:
    port = free_port()
    env = dict(os.environ, REDIS_URL=redis_url, BINORMAL_PREFIX=prefix, INGEST_PORT=str(port), **extra)
    env.pop("BINORMAL_LOG_FORMAT", None)
    env.pop("BINORMAL_LOG_LEVEL", None)
    return env, port


def _read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    """Bytes read from ``fd`` until ``needle`` appears (or fail after ``timeout``)."""
    out = b""
    deadline = time.monotonic() + timeout
    while needle not in out:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {needle!r}; got {out!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    return out


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def test_on_a_terminal_a_service_logs_coloured_console_lines_and_first_its_url(redis_url: str, prefix: str) -> None:
    env, port = _service_env(redis_url, prefix)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [*binormal_command(), "ingest"], stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    try:
        out = _read_until(leader, b"redis_ready", 30.0)
    finally:
        _stop(proc)
        os.close(leader)
    text = out.decode("utf-8", "replace")
    lines = [line for line in text.splitlines() if line.strip()]
    url = f"http://127.0.0.1:{port}"
    assert url in lines[0], lines  # the URL to open comes first
    assert "\x1b[" in text  # colours
    for line in lines:
        assert not line.lstrip().startswith("{"), line  # no JSON on a terminal
    assert any("redis_ready" in line for line in lines)


@pytest.mark.parametrize("forced", [False, True])
def test_without_a_terminal_a_service_logs_json_lines(redis_url: str, prefix: str, forced: bool) -> None:
    env, port = _service_env(redis_url, prefix)
    args = ["--log-format", "json", "ingest"] if forced else ["ingest"]
    leader, follower = pty.openpty()
    # forced: even on a terminal --log-format json writes JSON; else stderr is a pipe.
    stderr = follower if forced else subprocess.PIPE
    proc = subprocess.Popen(
        [*binormal_command(), *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env
    )
    os.close(follower)
    fd = leader if forced else proc.stderr.fileno()  # type: ignore[union-attr]
    try:
        out = _read_until(fd, b"redis_ready", 30.0)
    finally:
        _stop(proc)
        os.close(leader)
        if proc.stderr is not None:
            proc.stderr.close()
    lines = [orjson.loads(line) for line in out.splitlines() if line.strip()]
    events = [line["event"] for line in lines]
    assert "listening" in events and "redis_ready" in events
    listening = next(line for line in lines if line["event"] == "listening")
    assert listening["url"] == f"http://127.0.0.1:{port}"
    assert all("level" in line and "timestamp" in line for line in lines)


def test_log_settings_from_the_environment(tmp_path: Path) -> None:
    """``BINORMAL_LOG_LEVEL`` / ``BINORMAL_LOG_FORMAT`` are the defaults of the flags, checked the same way."""
    env = dict(os.environ, BINORMAL_LOG_FORMAT="JSON", BINORMAL_LOG_LEVEL="debug")
    empty = tmp_path / "empty.ndjson"
    empty.write_bytes(b"")
    done = _cli("score", str(empty), env=env)
    assert done.returncode == 0, done.stderr
    done = _cli("score", str(empty), env=dict(os.environ, BINORMAL_LOG_LEVEL="chatty"))
    assert done.returncode == 2 and "--log-level" in done.stderr and "chatty" in done.stderr
    assert "Traceback" not in done.stderr
    done = _cli("score", str(empty), env=dict(os.environ, BINORMAL_LOG_FORMAT="xml"))
    assert done.returncode == 2 and "--log-format" in done.stderr


@both_backends
def test_binormal_run_on_a_terminal_prints_its_url_first_and_its_workers_log_console_lines(
    redis_url: str, prefix: str
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINORMAL_")}
    env.update(REDIS_URL=redis_url, BINORMAL_PREFIX=prefix, HOST="127.0.0.1", PORT=str(port), BINORMAL_BLOCK_MS="100")
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [*binormal_command(), "run"], stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    try:
        out = _read_until(leader, b"worker_ready", 60.0)  # logged by the worker child, on the same terminal
    finally:
        _stop(proc)
        os.close(leader)
    lines = [line for line in out.decode("utf-8", "replace").splitlines() if line.strip()]
    assert f"http://127.0.0.1:{port}" in lines[0], lines
    assert all(not line.lstrip().startswith("{") for line in lines), lines
    assert "\x1b[" in lines[-1]  # the worker's line is coloured too


def test_offline_commands_start_without_the_service_stack() -> None:
    """``binormal score`` and ``evaluate`` register only their own parser and configure no logging:
    no aiohttp, redis or structlog import (the other commands' parsers and structlog cost ~0.5 s)."""
    import sys

    code = (
        "import sys; from binormal.cli import main; rc = main(['score', '-', '--json']); "
        "print(rc, [m for m in HEAVY if m in sys.modules])"
    )
    # statistics, gzip and the result/calibration/config modules are not needed for plain NDJSON
    # either (~10-20 ms of a start-up that is ~10 % of scoring a 200,000-event file)
    heavy = ("asyncio", "structlog", "aiohttp", "redis", "statistics", "gzip", "binormal.common.result")
    heavy += ("binormal.common.calibration", "binormal.common.config")
    code = f"HEAVY = {heavy!r}; " + code
    done = subprocess.run([sys.executable, "-P", "-c", code], input="", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0 []"


@pytest.mark.parametrize(
    ("command", "quick"),
    [(["score", "EVENTS", "--json"], True), (["evaluate", "EVENTS", "LABELS"], True), (["token", "--help"], False)],
)
def test_offline_commands_end_without_the_interpreter_teardown(tmp_path: Path, command: list[str], quick: bool) -> None:
    """As the process's entry point, ``score`` and ``evaluate`` flush their output and leave with
    ``os._exit`` (no teardown, no collection of the engine's cycles: ~15 ms); other commands, and
    :func:`binormal.cli.main` called in a process that goes on, return normally."""
    import sys

    events = tmp_path / "events.ndjson"
    rows = [{"org": "o", "source": "s", "pop": "p", "id": f"u{i % 1000}", "action": f"a{i % 7}"} for i in range(3000)]
    events.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\nu1,1\nu2,0\nu3,0\n")
    argv = [{"EVENTS": str(events), "LABELS": str(labels)}.get(word, word) for word in command]
    code = (
        "import atexit, sys; atexit.register(lambda: sys.stderr.write('TEARDOWN\\n')); "
        f"sys.argv = ['binormal', *{argv!r}]; from binormal.cli import entry; entry()"
    )
    done = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (b"TEARDOWN" in done.stderr) is not quick, done.stderr
    if command[0] == "score":  # every row reached the pipe (more than its buffer) before the process ended
        assert len(done.stdout.splitlines()) == 1000
        assert all(orjson.loads(line)["org"] == "o" for line in done.stdout.splitlines())
