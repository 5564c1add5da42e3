"""The distinct-action cap over HTTP: /events rejects per line, /discrete answers 422, /api/scopes flags the scope.

The worker enforces ``BINORMAL_MAX_ACTIONS`` (tests/test_batch.py); ingest
pre-checks it per line (ingest/actioncap.py). Real sockets, the private Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from binormal.common.keys import Scope
from tests.support.events import ndjson
from tests.support.http import Served, combined_app, ingest_settings, post_json, post_raw, served, web_settings
from tests.support.openapi import check_response, load_openapi
from tests.support.redis_state import drained, hgetall_int
from tests.support.waiting import wait_for
from tests.support.workers import running_worker, worker_settings

DOC = load_openapi()
NDJSON = "application/x-ndjson"
SCOPE = Scope("acme", "web", "login")


def line(action: str, ident: str = "u1", **extra: Any) -> dict[str, Any]:
    return {"org": SCOPE.org, "source": SCOPE.source, "pop": SCOPE.pop, "id": ident, "action": action, **extra}


class Svc(Served):
    async def events(self, objs: list[dict[str, Any]]) -> tuple[int, Any]:
        status, got, _ = await post_raw(self.session, f"{self.base}/events", ndjson(objs), NDJSON)
        return status, got


@pytest.fixture
async def svc(redis_url: str, prefix: str) -> AsyncIterator[Svc]:
    ws = web_settings(redis_url, prefix, discrete_timeout_s=3.0)
    app = combined_app(ws, ingest_settings(redis_url, prefix, max_actions=3))
    async with served(app, ws.keys, Svc) as running:
        yield running


def reason(n: int) -> str:
    return f"action: action cap: scope already has {n} distinct actions (BINORMAL_MAX_ACTIONS)"


async def test_one_body_cannot_push_a_scope_past_the_default_cap(combined: Served) -> None:
    """The issue's reproduction: one /events body with 24,000 distinct actions for one scope."""
    body = ndjson([line(f"GET /page/{i}") for i in range(24_000)])
    status, got, _ = await post_raw(combined.session, f"{combined.base}/events", body, NDJSON)
    assert status == 202, got
    assert (got["accepted"], got["rejected"]) == (10_000, 14_000)
    assert got["errors"][0] == {
        "line": 10_001,
        "error": "action cap: scope already has 0 distinct actions (BINORMAL_MAX_ACTIONS)",
        "field": "action",
    }


async def test_events_rejects_new_actions_past_the_cap_per_line(
    svc: Svc, redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    # A fresh scope: the first three new actions fit, the others do not.
    status, got = await svc.events([line(a) for a in ("a1", "a2", "a1", "a3", "a4", "a5", "a4")])
    assert status == 202, got
    assert (got["accepted"], got["rejected"]) == (4, 3)
    assert [(e["line"], e["field"]) for e in got["errors"]] == [(5, "action"), (6, "action"), (7, "action")]
    async with running_worker(worker_settings(redis_url, prefix, max_actions=3)):
        await wait_for(lambda: drained(aredis, svc.keys), what="drain")
        # Now the scope holds 3 actions: known ones pass, new ones are refused, before anything is written.
        status, got = await svc.events([line("a2", "u2"), line("zz", "u2"), line("a3", "u3"), {"org": "x"}])
        assert status == 202, got
        assert (got["accepted"], got["rejected"]) == (2, 2)
        assert [e["line"] for e in got["errors"]] == [2, 4]  # in line order
        assert f"{got['errors'][0]['field']}: {got['errors'][0]['error']}" == reason(3)
        problems = check_response(DOC, "/events", "post", status, got)
        assert not problems, problems
        await wait_for(lambda: drained(aredis, svc.keys), what="drain")
    assert await hgetall_int(aredis, svc.keys.scope_key(SCOPE, "pop")) == {"a1": 2, "a2": 2, "a3": 2}
    async with svc.session.get(f"{svc.base}/api/scopes") as r:
        scopes = await r.json()
    assert r.status == 200
    assert not check_response(DOC, "/api/scopes", "get", 200, scopes)
    [row] = scopes["scopes"]
    assert (row["actions"], row["actions_capped"]) == (3, True)


async def test_discrete_with_a_new_action_past_the_cap_is_422(
    svc: Svc, redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    async with running_worker(worker_settings(redis_url, prefix, max_actions=2)):
        answers = [await post_json(svc.session, f"{svc.base}/discrete", line(a)) for a in ("a1", "a2", "a3")]
        s4, known = await post_json(svc.session, f"{svc.base}/discrete", line("a1", "u9"))
        async with svc.session.get(f"{svc.base}/api/scopes") as r:
            scopes = await r.json()
    assert [s for s, _ in answers] == [200, 200, 422], answers
    refused = answers[2][1]
    assert refused["field"] == "action" and refused["error"] == (
        "action cap: scope already has 2 distinct actions (BINORMAL_MAX_ACTIONS)"
    )
    assert not check_response(DOC, "/discrete", "post", 422, refused)
    assert s4 == 200 and known["count"] == 1
    assert await hgetall_int(aredis, svc.keys.scope_key(SCOPE, "pop")) == {"a1": 2, "a2": 1}
    assert scopes["scopes"][0]["actions_capped"] is True
    dead = await aredis.xrange(svc.keys.dead(svc.keys.shard(SCOPE)))
    assert [f[b"f.action"] for _, f in dead] == [b"a3"]


async def test_scopes_under_the_cap_are_not_flagged(
    svc: Svc, redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    async with running_worker(worker_settings(redis_url, prefix)):
        status, _ = await svc.events([line("a1"), line("a2")])
        assert status == 202
        await wait_for(lambda: drained(aredis, svc.keys), what="drain")
    async with svc.session.get(f"{svc.base}/api/scopes") as r:
        [row] = (await r.json())["scopes"]
    assert row["actions_capped"] is False
