"""The compose stack for real (``make test-deploy``; selected by ``-m deploy`` only, never by ``make test``).

Starts dockerd when none answers, builds the images without a registry (deploy/build-images.sh:
debootstrap base, Debian's python3 and redis-server, the app from the host's wheelhouse), brings
docker-compose.yml up under a unique project name on free loopback ports with tokens (what a real
deployment does), sends the seed's curl example and ``/events`` batches through the published ports,
SIGKILLs a worker container holding unacknowledged entries, restarts it, and checks every
individual's counters through the API: nothing lost, nothing counted twice. Then ``down -v`` by the
project name; the three images stay, tagged, as the next run's cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from binormal.common.embedded import free_port
from binormal.common.keys import Keyspace, Scope
from tests.support.deploy import COMPOSE_FILES, compose_env, unavailable
from tests.support.docker import Images, Project, docker, hostname_of, request, start_dockerd, stop_dockerd
from tests.support.waiting import wait_until
from tests.support.workers import binormal_command

pytestmark = [pytest.mark.deploy, pytest.mark.slow, pytest.mark.timeout(1200)]

IMAGE_UID = 10001  # deploy/Dockerfile's user: it must be able to read the tokens file
KEYS = Keyspace(prefix="bn", shards=4)  # the compose file's defaults
SEED = {"org": "acme", "source": "webserver", "pop": "auth_getpost", "id": "individual1", "action": "GET /user/login"}
BATCH_SCOPE = Scope("acme", "webserver", "deploy_batch")
IDS = [f"user{i:02d}" for i in range(40)]
ACTIONS = ["GET /", "GET /user/login", "POST /user/login", "GET /user/profile", "GET /logout", "PUT /user/avatar"]
ROUNDS_PER_CHUNK = 12  # one chunk: 40 ids x 6 actions x ~6 events x 12 rounds = 17,760 events, 6 bodies


@dataclass
class Stack:
    project: Project
    web: str
    ingest: str
    producer: str
    viewer: str


def _add_token(path: Path, name: str, role: str) -> str:
    env = dict(os.environ, BINORMAL_TOKENS_FILE=str(path))
    done = subprocess.run(
        [*binormal_command(), "token", "add", name, "--role", role, "--orgs", "acme"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def _ready(url: str) -> bool:
    status, body = request("GET", f"{url}/readyz")
    return status == 200 and bool(body and body["ready"])


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    """A Docker daemon (ours only if none answered, then stopped by PID) and the three images, built."""
    if os.geteuid() != 0:
        unavailable("make test-deploy runs as root (dockerd, debootstrap)")
    started = start_dockerd(tmp_path_factory.mktemp("dockerd") / "dockerd.log")
    try:
        built = Images()
        print(f"\n{built.build()}")
        yield built
    finally:
        if started is not None:
            stop_dockerd(started)


@contextmanager
def _project(file: Path, env: dict[str, str], logs: Path) -> Iterator[Project]:
    """A compose project under a unique name; its logs kept in ``logs``, then down with its volumes."""
    project = Project(file, env)
    try:
        yield project
    finally:
        logs.write_text(project.compose("logs", "--no-color", check=False).stdout)
        print(f"[deploy] logs of {project.name}: {logs}")
        project.down()
        assert project.all_containers() == [], "compose down left containers behind"


@pytest.fixture(scope="module")
def stack(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("deploy")
    tokens = tmp / "tokens"
    producer, viewer = _add_token(tokens, "producer", "producer"), _add_token(tokens, "viewer", "viewer")
    os.chown(tokens, IMAGE_UID, IMAGE_UID)
    web_port, ingest_port = free_port(), free_port()
    env = compose_env(
        BINORMAL_IMAGE=images.app,
        BINORMAL_REDIS_IMAGE=images.redis,
        BINORMAL_WEB_PORT=str(web_port),
        BINORMAL_INGEST_PORT=str(ingest_port),
        BINORMAL_TOKENS_HOST_FILE=str(tokens),
    )
    web, ingest = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{ingest_port}"
    with _project(COMPOSE_FILES["single"], env, tmp / "compose.log") as project:
        start = time.monotonic()
        project.compose("up", "-d", "--no-build")
        wait_until(lambda: _ready(web) and _ready(ingest), 120, "web and ingest /readyz", interval=0.5)
        print(f"[deploy] project {project.name} up and ready in {time.monotonic() - start:.1f} s")
        yield Stack(project, web, ingest, producer, viewer)


def _seed_curl(stack: Stack, token: str | None) -> tuple[int, Any]:
    """The seed's curl example verbatim, plus the producer token and the published port."""
    auth = ["-H", f"Authorization: Bearer {token}"] if token else []
    cmd = ["curl", "-s", "-w", "\n%{http_code}", "-X", "POST", "-H", "Content-Type: application/json", *auth]
    cmd += ["-d", json.dumps(SEED), f"{stack.web}/discrete"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body)


def test_the_seeds_curl_example_through_the_published_port(stack: Stack) -> None:
    status, body = _seed_curl(stack, None)
    assert status == 401 and body["field"] == "Authorization", body  # auth is on: listening on 0.0.0.0
    status, first = _seed_curl(stack, stack.producer)
    assert status == 200, first
    assert {k: first[k] for k in ("org", "source", "pop", "id", "action")} == SEED
    assert first["count"] == 1 and first["thisActionCount"] == 1 and first["score"] == 0.0
    status, second = _seed_curl(stack, stack.producer)
    assert status == 200 and second["count"] == 2, second
    status, scopes = request("GET", f"{stack.web}/api/scopes", stack.viewer)
    assert status == 200
    assert {"org": "acme", "source": "webserver", "pop": "auth_getpost", "individuals": 1} in [
        {k: s[k] for k in ("org", "source", "pop", "individuals")} for s in scopes["scopes"]
    ]


def _count(i: int, a: int) -> int:
    """Events of individual ``i`` doing action ``a`` in one round (1 to 11: every pair occurs)."""
    return (i * 7 + a * 3) % 11 + 1


def _post_chunk(stack: Stack) -> int:
    """ROUNDS_PER_CHUNK rounds as NDJSON bodies to /events; returns the events accepted."""
    scope = {"org": BATCH_SCOPE.org, "source": BATCH_SCOPE.source, "pop": BATCH_SCOPE.pop}
    accepted = 0
    for _ in range(ROUNDS_PER_CHUNK // 2):
        lines = [
            json.dumps({**scope, "id": ident, "action": action})
            for _ in range(2)
            for i, ident in enumerate(IDS)
            for a, action in enumerate(ACTIONS)
            for _ in range(_count(i, a))
        ]
        body = ("\n".join(lines) + "\n").encode()
        status, reply = request("POST", f"{stack.ingest}/events", stack.producer, body, "application/x-ndjson")
        assert status == 202 and reply["rejected"] == 0, reply
        accepted += reply["accepted"]
    return accepted


def _pending(stack: Stack, consumer_prefix: str) -> int:
    """Entries delivered to, and not acknowledged by, the consumers named ``consumer_prefix*``."""
    stream = KEYS.stream(KEYS.shard(BATCH_SCOPE))
    consumers = stack.project.redis("XINFO", "CONSUMERS", stream, KEYS.group)
    return sum(int(c["pending"]) for c in consumers if str(c["name"]).startswith(consumer_prefix))


def _settled(stack: Stack) -> bool:
    """Every shard's group has been handed the stream's newest entry and has nothing pending.

    (Compared by id: XINFO's ``lag`` turns null once acknowledged history is trimmed.)
    """
    for stream in KEYS.streams():
        last = stack.project.redis("XINFO", "STREAM", stream)["last-generated-id"]
        for group in stack.project.redis("XINFO", "GROUPS", stream):
            if int(group["pending"]) or group["last-delivered-id"] != last:
                return False
    return True


def test_events_survive_a_killed_worker_container_counted_exactly_once(stack: Stack) -> None:
    workers = stack.project.containers("worker")
    prefixes = {container: hostname_of(container) + "-" for container in workers}
    sent, killed_pending, victim = 0, 0, workers[0]
    for _attempt in range(5):  # catch a worker with entries in hand; each try adds a chunk
        # A backlog first (the workers frozen while it is posted), so they are busy when one is killed.
        docker("pause", *workers)
        try:
            sent += _post_chunk(stack)
        finally:
            docker("unpause", *workers)
        # Whichever worker is first seen holding entries is the victim (either may win the reads).
        holders: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not holders:
            holders = [c for c in workers if _pending(stack, prefixes[c])]
        victim = holders[0] if holders else workers[0]
        # Frozen first (cgroup freezer): it can neither acknowledge nor read from here on, so the
        # count read now is what it dies holding. SIGKILL to a paused container lands as it thaws.
        docker("pause", victim)
        killed_pending = _pending(stack, prefixes[victim])
        docker("kill", victim)
        if killed_pending:
            assert _pending(stack, prefixes[victim]) == killed_pending  # delivered, never acknowledged
            break
        docker("start", victim)
    assert killed_pending > 0, "never caught a worker holding unacknowledged entries"
    me = prefixes[victim]
    print(f"[deploy] killed {victim} (try {_attempt + 1}) holding {killed_pending} unacknowledged entries")
    sent += _post_chunk(stack)  # accepted while a worker is down
    docker("start", victim)
    wait_until(lambda: _settled(stack), 120, "every entry acknowledged", interval=0.5)
    assert _pending(stack, me) == 0
    for shard in range(KEYS.shards):
        assert stack.project.redis("XLEN", KEYS.dead(shard)) == 0, "an entry was dead-lettered"

    rounds = sent // sum(_count(i, a) for i in range(len(IDS)) for a in range(len(ACTIONS)))
    assert sent == rounds * sum(_count(i, a) for i in range(len(IDS)) for a in range(len(ACTIONS)))
    params = f"org={BATCH_SCOPE.org}&source={BATCH_SCOPE.source}&pop={BATCH_SCOPE.pop}"
    total = 0
    for i, ident in enumerate(IDS):
        status, body = request("GET", f"{stack.web}/api/individual?{params}&id={ident}", stack.viewer)
        assert status == 200, body
        got = {row["action"]: row["count"] for row in body["actions"] if row["count"]}
        assert got == {action: rounds * _count(i, a) for a, action in enumerate(ACTIONS)}, ident
        assert body["count"] == rounds * sum(_count(i, a) for a in range(len(ACTIONS))), ident
        total += body["count"]
    assert total == sent
    status, scopes = request("GET", f"{stack.web}/api/scopes", stack.viewer)
    ours = [s for s in scopes["scopes"] if s["pop"] == BATCH_SCOPE.pop]
    assert [(s["individuals"], s["actions"]) for s in ours] == [(len(IDS), len(ACTIONS))]
    print(f"[deploy] {sent} events in {rounds} rounds: every counter exact after the kill")


def test_the_cluster_compose_file_forms_a_three_master_cluster(images: Images, tmp_path: Path) -> None:
    """docker-compose.cluster.yml's Redis part for real (the app on it needs the cluster client: Deliver 1)."""
    env = compose_env(BINORMAL_REDIS_IMAGE=images.redis, BINORMAL_IMAGE=images.app)
    with _project(COMPOSE_FILES["cluster"], env, tmp_path / "compose.log") as project:
        project.compose("up", "-d", "--no-build", "cluster-init")  # and the three nodes it depends on
        (init,) = project.containers("cluster-init")
        wait_until(lambda: docker("inspect", "-f", "{{.State.Status}}", init).stdout.strip() == "exited", 120, "init")
        assert docker("inspect", "-f", "{{.State.ExitCode}}", init).stdout.strip() == "0"
        for node in ("redis-1", "redis-2", "redis-3"):
            info = project.redis("CLUSTER", "INFO", service=node, text=True)
            assert "cluster_state:ok" in info and "cluster_known_nodes:3" in info, info
            assert "cluster_size:3" in info, info  # three masters serving slots
        shards = project.redis("CLUSTER", "SHARDS", service="redis-1")
        endpoints = sorted(node["endpoint"] for shard in shards for node in shard["nodes"])
        assert endpoints == ["redis-1", "redis-2", "redis-3"], shards  # hostnames, not container IPs
        # Running cluster-init again (a restart of the project) leaves the formed cluster alone.
        project.compose("up", "--no-build", "--no-deps", "--force-recreate", "cluster-init")
        (init,) = project.containers("cluster-init")
        assert docker("inspect", "-f", "{{.State.ExitCode}}", init).stdout.strip() == "0"
        assert "cluster_state:ok" in project.redis("CLUSTER", "INFO", service="redis-1", text=True)
