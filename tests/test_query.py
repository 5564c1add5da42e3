"""web/query.py: the query API against state a real worker wrote, checked against docs/openapi.yaml."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from binormal.common.engine import MemoryEngine
from binormal.common.redisapp import REDIS
from binormal.common.schema import Event
from binormal.common.scoring import normalise, score_direct
from binormal.web.app import create_app
from tests.support.events import QUERY_SCOPES as SCOPES
from tests.support.events import query_events
from tests.support.http import Served, served, serving, web_settings
from tests.support.openapi import check_response, load_openapi
from tests.support.redis_state import drained, xadd_events
from tests.support.waiting import wait_for
from tests.support.workers import running_worker, worker_settings

DOC = load_openapi()


class Api(Served):
    async def get(self, path: str, **params: Any) -> tuple[int, Any]:
        async with self.session.get(f"{self.base}{path}", params=params) as r:
            body = await r.json()
            problems = check_response(DOC, path, "get", r.status, body)
            assert not problems, problems
            return r.status, body


@pytest.fixture
async def populated(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> AsyncIterator[tuple[Api, MemoryEngine, list[Event]]]:
    """3 scopes scored by a real worker (exact snapshots) and the same events through the reference engine."""
    settings = web_settings(redis_url, prefix)
    events = query_events(1500)
    engine = MemoryEngine()
    for e in events:
        engine.process(e)
    async with running_worker(worker_settings(redis_url, prefix, snapshot_max_age_ms=0)):
        await xadd_events(aredis, settings.keys, events)
        await wait_for(lambda: drained(aredis, settings.keys), timeout=60, what="drain")
    app = create_app(settings)
    async with served(app, settings.keys, Api) as running:
        yield running, engine, events


async def test_scopes_lists_every_scope(populated: tuple[Api, MemoryEngine, list[Event]]) -> None:
    api, engine, _ = populated
    status, body = await api.get("/api/scopes")
    assert status == 200
    got = {(s["org"], s["source"], s["pop"]): s for s in body["scopes"]}
    assert set(got) == {(s.org, s.source, s.pop) for s in SCOPES}
    for scope in SCOPES:
        st = engine.scopes[scope]
        assert got[(scope.org, scope.source, scope.pop)]["individuals"] == len(st.individuals)
        assert got[(scope.org, scope.source, scope.pop)]["actions"] == len(st.pop)
    assert body["total"] == 3 and body["truncated"] is False
    status, body = await api.get("/api/scopes", limit=2)
    assert len(body["scopes"]) == 2 and body["truncated"] is True


async def test_outliers_are_the_top_scores_with_reasons(populated: tuple[Api, MemoryEngine, list[Event]]) -> None:
    api, engine, _ = populated
    scope = SCOPES[0]
    status, body = await api.get("/api/outliers", org=scope.org, source=scope.source, pop=scope.pop, limit=5)
    assert status == 200
    want = sorted((engine.current(scope, i) for i in engine.scopes[scope].individuals), key=lambda r: -r["score"])[:5]
    assert [o["score"] for o in body["outliers"]] == [w["score"] for w in want]
    assert [o["zscore"] for o in body["outliers"]] == sorted((o["zscore"] for o in body["outliers"]), reverse=True)
    top = body["outliers"][0]
    assert top["id"] in ("user3", "user4")
    assert {o["id"] for o in body["outliers"][:2]} == {"user3", "user4"}
    by_id = {o["id"]: o for o in body["outliers"]}
    assert by_id["user3"]["reasons"][0]["action"] == "DELETE /admin"
    assert by_id["user3"]["reasons"][0]["kind"] == "over"
    for o in body["outliers"]:
        cur = engine.current(scope, o["id"])
        assert (o["count"], o["score"], o["zscore"]) == (cur["count"], cur["score"], cur["zscore"])
        assert 1 <= len(o["reasons"]) <= 3
    st = engine.scopes[scope]
    mean = st.agg.total / st.agg.n
    assert body["individuals"] == st.agg.n and body["mean"] == round(mean, 3)


async def test_individual_profile_counts_expected_and_bits(populated: tuple[Api, MemoryEngine, list[Event]]) -> None:
    api, engine, _ = populated
    scope = SCOPES[0]
    st = engine.scopes[scope]
    counts = st.individuals["user3"]
    status, body = await api.get("/api/individual", org=scope.org, source=scope.source, pop=scope.pop, id="user3")
    assert status == 200
    cur = engine.current(scope, "user3")
    assert (body["count"], body["score"], body["zscore"]) == (cur["count"], cur["score"], cur["zscore"])
    n_norm, norm = normalise(counts)
    assert body["normalised_count"] == n_norm
    total = sum(st.pop.values())
    rows = {r["action"]: r for r in body["actions"]}
    assert set(rows) == set(st.pop) and body["actions_total"] == len(st.pop)
    for action, c in st.pop.items():
        r = rows[action]
        assert r["count"] == counts.get(action, 0)
        assert r["observed"] == norm.get(action, 0)
        assert r["expected"] == round(n_norm * c / total, 3)
    # Bits per action add up to the score against the current population (rounding aside).
    bits = sum(r["bits"] for r in body["actions"])
    assert math.isclose(bits, score_direct(counts, st.pop), abs_tol=0.0005 * len(rows))
    assert body["actions"][0]["action"] == "DELETE /admin" and body["actions"][0]["kind"] == "over"
    assert [r["bits"] for r in body["actions"]] == sorted((r["bits"] for r in body["actions"]), reverse=True)
    status, body = await api.get(
        "/api/individual", org=scope.org, source=scope.source, pop=scope.pop, id="user3", limit=2
    )
    assert len(body["actions"]) == 2 and body["truncated"] is True


async def test_keys_with_special_characters_round_trip(populated: tuple[Api, MemoryEngine, list[Event]]) -> None:
    api, engine, _ = populated
    scope = SCOPES[2]  # "Beta Co" / "api:v2" / "{bots}"
    status, body = await api.get("/api/outliers", org=scope.org, source=scope.source, pop=scope.pop)
    assert status == 200 and (body["org"], body["source"], body["pop"]) == ("Beta Co", "api:v2", "{bots}")
    assert len(body["outliers"]) == 10


@pytest.mark.parametrize(
    ("path", "params", "status", "field"),
    [
        ("/api/outliers", {"source": "web", "pop": "users"}, 400, "org"),
        ("/api/outliers", {"org": "acme", "pop": "users"}, 400, "source"),
        ("/api/outliers", {"org": "acme", "source": "web", "pop": ""}, 400, "pop"),
        ("/api/outliers", {"org": "acme", "source": "web", "pop": "users", "limit": "0"}, 400, "limit"),
        ("/api/outliers", {"org": "acme", "source": "web", "pop": "users", "limit": "x"}, 400, "limit"),
        ("/api/outliers", {"org": "acme", "source": "web", "pop": "users", "limit": "501"}, 400, "limit"),
        ("/api/outliers", {"org": "acme", "source": "web", "pop": "nobody"}, 404, "pop"),
        ("/api/outliers", {"org": "o" * 300, "source": "web", "pop": "users"}, 400, "org"),
        ("/api/individual", {"org": "acme", "source": "web", "pop": "users"}, 400, "id"),
        ("/api/individual", {"org": "acme", "source": "web", "pop": "users", "id": "ghost"}, 404, "id"),
        ("/api/individual", {"org": "acme", "source": "web", "pop": "nobody", "id": "user1"}, 404, "pop"),
        ("/api/scopes", {"limit": "-1"}, 400, "limit"),
    ],
)
async def test_bad_or_unknown_parameters(
    populated: tuple[Api, MemoryEngine, list[Event]], path: str, params: dict[str, str], status: int, field: str
) -> None:
    api, _, _ = populated
    got_status, body = await api.get(path, **params)
    assert got_status == status, body
    assert body["field"] == field


async def test_empty_database(redis_url: str, prefix: str) -> None:
    app = create_app(web_settings(redis_url, prefix))
    async with serving(app) as base, aiohttp.ClientSession() as session:
        await asyncio.wait_for(app[REDIS].up.wait(), 5.0)
        api = Api(base, session, app[REDIS].keys)
        assert await api.get("/api/scopes") == (200, {"scopes": [], "total": 0, "truncated": False})


async def test_bad_state_under_a_key_is_a_500_quoting_redis(
    populated: tuple[Api, MemoryEngine, list[Event]], aredis: aioredis.Redis
) -> None:
    api, _, _ = populated
    scope = SCOPES[1]
    await aredis.delete(api.keys.scope_key(scope, "rank"))
    await aredis.rpush(api.keys.scope_key(scope, "rank"), "someone else's list")
    status, body = await api.get("/api/outliers", org=scope.org, source=scope.source, pop=scope.pop)
    assert status == 500, body
    assert body["error"].startswith("Redis refused a command: WRONGTYPE") and body["field"] is None
    # the other scopes answer as before
    other = SCOPES[0]
    assert (await api.get("/api/outliers", org=other.org, source=other.source, pop=other.pop))[0] == 200


@pytest.mark.parametrize(
    "query,field",
    [
        ("/api/scopes?limit=" + "9" * 5000, "limit"),  # Python refuses int() of > 4,300 digits: was a 500
        ("/api/scopes?limit=" + "0" * 5000, "limit"),
        ("/api/scopes?limit=10&limit=20", "limit"),
        ("/api/outliers?org=a&org=b&source=s&pop=p", "org"),
        ("/api/outliers?org=a&source=s&pop=p&pop=q", "pop"),
        ("/api/outliers?org=a&source=s&pop=p&limit=1&limit=1", "limit"),
        ("/api/individual?org=a&source=s&source=t&pop=p&id=i", "source"),
        ("/api/individual?org=a&source=s&pop=p&id=i&id=i", "id"),
        ("/websocket?stats=1&stats=1", "stats"),
    ],
)
async def test_huge_numbers_and_repeated_parameters_are_400_naming_them(
    redis_url: str, prefix: str, query: str, field: str
) -> None:
    app = create_app(web_settings(redis_url, prefix))
    async with serving(app) as base, aiohttp.ClientSession() as session:
        async with session.get(f"{base}{query}") as r:
            body = await r.json()
            assert r.status == 400, body
            assert body["field"] == field
            assert "9999" not in body["error"]  # the input is not echoed
            if not query.startswith("/websocket"):
                path = query.partition("?")[0]
                assert not check_response(DOC, path, "get", r.status, body)
