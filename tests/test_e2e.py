"""End to end over real sockets: Redis, a worker and the HTTP services together.

- the seed's curl example, verbatim but for the port;
- 2,000 events one by one through ``/discrete`` with exact snapshots, every answer
  compared field by field with the in-memory reference engine;
- the worker killed while ``/discrete`` requests wait: documented 504s, and each
  event counted exactly once after a new worker takes over.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from binormal.common.engine import MemoryEngine
from binormal.common.keys import Keyspace, Scope
from binormal.common.redisapp import REDIS
from binormal.common.schema import Event
from binormal.web.app import create_app
from binormal.worker import Worker
from tests.support.backends import both_backends
from tests.support.events import counts_from_events
from tests.support.http import (
    SEED_BODY,
    Served,
    post_json,
    serving,
    wait_ready,
    web_settings,
)
from tests.support.openapi import check_response, load_openapi
from tests.support.redis_state import check_counters, drained
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess, running_worker, worker_settings

DOC = load_openapi()

SEED_CURL = [
    "curl",
    "-X",
    "POST",
    "-H",
    "Content-Type: application/json",
    "-d",
    SEED_BODY,
    "http://127.0.0.1:8080/discrete",
]


async def run_curl(base: str) -> dict[str, Any]:
    """The seed's curl command with only the port changed (aiohttp with the same bytes if curl is missing)."""
    port = base.rsplit(":", 1)[1]
    argv = [a.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for a in SEED_CURL]
    if shutil.which("curl"):
        proc = await asyncio.create_subprocess_exec(*argv, "-s", stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 10.0)
        assert proc.returncode == 0
        return dict(orjson.loads(out))
    async with (
        aiohttp.ClientSession() as s,
        s.post(argv[-1], data=SEED_BODY.encode(), headers={"Content-Type": "application/json"}) as r,
    ):
        return dict(await r.json())


async def test_seed_curl_example(worker: Worker, combined: Served) -> None:
    first = await run_curl(combined.base)
    second = await run_curl(combined.base)
    for got in (first, second):
        assert not check_response(DOC, "/discrete", "post", 200, got)
        assert list(got)[:8] == ["runtime", "score", "count", "zscore", "source", "pop", "id", "action"]
        assert isinstance(got["runtime"], int)
        assert (got["source"], got["pop"], got["id"], got["action"]) == (
            "webserver",
            "auth_getpost",
            "individual1",
            "GET /user/login",
        )
    assert (first["count"], second["count"], second["thisActionCount"]) == (1, 2, 2)
    assert first["score"] == 0 and first["zscore"] == 0


def sequential_events(n: int, seed: int = 3) -> list[Event]:
    rng = random.Random(seed)
    scopes = [Scope("acme", "web", "users"), Scope("acme", "api", "bots"), Scope("zeta", "x", "solo")]
    actions = [f"act{i}" for i in range(9)]
    weights = [1.0 / (i + 1) for i in range(9)]
    out = []
    for i in range(n):
        scope = rng.choices(scopes, [5, 3, 1])[0]
        # the "solo" scope has one action only: p = 1 (the engine's single-action edge)
        action = "only" if scope.pop == "solo" else rng.choices(actions, weights)[0]
        ident = f"id{rng.randrange(40 if scope.pop == 'users' else 8)}"
        out.append(
            Event(scope.org, scope.source, scope.pop, ident, action, ts=1_700_000_000_000 + 17 * i, event_id=f"ev-{i}")
        )
    return out


@both_backends
@pytest.mark.timeout(240)
async def test_2000_events_one_by_one_match_the_reference_engine(redis_url: str, prefix: str) -> None:
    events = sequential_events(2000)
    engine = MemoryEngine()
    app = create_app(web_settings(redis_url, prefix, discrete_timeout_s=10.0))
    mismatches: list[str] = []
    async with (
        running_worker(worker_settings(redis_url, prefix, snapshot_max_age_ms=0)),
        serving(app) as base,
        aiohttp.ClientSession() as session,
    ):
        for i, ev in enumerate(events):
            body = {
                "org": ev.org,
                "source": ev.source,
                "pop": ev.pop,
                "id": ev.id,
                "action": ev.action,
                "ts": ev.ts,
                "event_id": ev.event_id,
            }
            status, got = await post_json(session, f"{base}/discrete", body)
            assert status == 200, (i, got)
            want = engine.process(ev)
            got.pop("runtime")
            if got != want:
                diff = {k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)}
                mismatches.append(f"event {i}: {diff}")
            if i % 250 == 0:
                assert not check_response(DOC, "/discrete", "post", 200, dict(got, runtime=0))
    assert mismatches == [], mismatches[:5]


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_worker_killed_while_requests_wait(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    keys = Keyspace(prefix=prefix, shards=4)
    app = create_app(web_settings(redis_url, prefix, discrete_timeout_s=1.5))
    sent: list[Event] = []

    def body(i: int) -> dict[str, Any]:
        ev = Event("acme", "web", f"pop{i % 2}", f"u{i % 5}", f"a{i % 3}")
        sent.append(ev)
        return {"org": ev.org, "source": ev.source, "pop": ev.pop, "id": ev.id, "action": ev.action}

    w1 = WorkerProcess(redis_url, prefix, "w1", tmp_path / "w1.log").start()
    w2: WorkerProcess | None = None
    try:
        async with serving(app) as base, aiohttp.ClientSession() as session:
            await asyncio.wait_for(app[REDIS].up.wait(), 5.0)
            await wait_ready(session, base, timeout=20.0)
            for i in range(5):  # warm-up: answered normally
                status, got = await post_json(session, f"{base}/discrete", body(i))
                assert status == 200, got

            # Freeze the worker inside XREADGROUP BLOCK: Redis hands it the new entries
            # (pending under w1) but it never applies them. Then kill it.
            w1.signal(signal.SIGSTOP)
            bodies = [body(i) for i in range(5, 25)]
            waiting = [asyncio.create_task(post_json(session, f"{base}/discrete", b)) for b in bodies]
            await asyncio.sleep(0.5)
            w1.kill()
            answers = await asyncio.gather(*waiting)
            for status, got in answers:
                assert status == 504, got
                assert not check_response(DOC, "/discrete", "post", 504, got)
                assert got["queued"] is True and got["event_id"] in got["error"]
            pending = sum([(await aredis.xpending(s, keys.group))["pending"] for s in keys.streams()])
            assert pending > 0  # handed to the dead consumer, not applied

            # A new worker takes over the dead consumer's entries (XAUTOCLAIM) and counts each once.
            w2 = WorkerProcess(
                redis_url, prefix, "w2", tmp_path / "w2.log", extra_env={"BINORMAL_CLAIM_IDLE_MS": "1000"}
            ).start()
            await wait_for(lambda: drained(aredis, keys), timeout=30.0, what="drain after takeover")
            assert await check_counters(aredis, keys, counts_from_events(sent)) == []

            # Retrying a timed-out request with its event id answers its result without counting it again.
            retry_key = answers[0][1]["event_id"]
            status, got = await post_json(session, f"{base}/discrete", bodies[0], {"Idempotency-Key": retry_key})
            assert status == 200 and got["duplicate"] is True, got
            assert got["event_id"] == answers[0][1]["event_id"]
            await asyncio.sleep(0.3)
            assert await check_counters(aredis, keys, counts_from_events(sent)) == []
    finally:
        w1.kill()
        if w2 is not None:
            w2.signal(signal.SIGTERM)
            assert w2.wait() == 0
