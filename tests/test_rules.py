"""Analyst rules and feedback (common/rules.py, web/rules.py, binormal rules): mute, exclude, mark.

Through the real service: the private redis-server, a ``binormal worker`` child process, web and
ingest on one app on a real socket with a tokens file (analyst, viewer, another org's analyst).
Plus the exclusion equivalence of the Redis worker and the in-memory engine at staleness 0.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from binormal.common.auth import hash_token
from binormal.common.engine import MemoryEngine
from binormal.common.keys import Keyspace, Scope
from binormal.common.rules import Rule, RuleCache, RuleError, add_rule, list_rules, parse_rule
from binormal.common.schema import Event
from tests.support.backends import both_backends
from tests.support.events import engine_events, ndjson
from tests.support.http import combined_app, ingest_settings, serving, web_settings
from tests.support.redis_state import Collector, drained, hgetall_int, no_uncommitted, xadd_events
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess, binormal_command, running_worker, worker_settings

pytestmark = pytest.mark.timeout(120)

TOKENS = {  # name: (role, orgs)
    "analyst": ("analyst", "acme"),
    "viewer": ("viewer", "acme"),
    "beta-analyst": ("analyst", "beta"),
    "admin": ("admin", "*"),
    "producer": ("producer", "acme"),
}
NORMAL = ["GET /"] * 6 + ["GET /item"] * 3 + ["POST /cart"]
SCANNER = ["GET /.env", "GET /wp-admin", "GET /.git/config", "GET /"]


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer tok-{name}"}


class Svc:
    def __init__(self, base: str, http: aiohttp.ClientSession, keys: Keyspace, rc: aioredis.Redis, env: dict[str, str]):
        self.base, self.http, self.keys, self.redis, self.env = base, http, keys, rc, env

    async def call(self, method: str, path: str, who: str, **kw: Any) -> tuple[int, Any]:
        headers = {**auth(who), **kw.pop("headers", {})}
        async with self.http.request(method, self.base + path, headers=headers, **kw) as r:
            return r.status, await r.json(content_type=None)

    async def rule(self, who: str = "analyst", **fields: str) -> tuple[int, Any]:
        return await self.call("POST", "/api/rules", who, json={"org": "acme", "source": "web", **fields})

    async def send(self, events: list[dict[str, str]]) -> None:
        status, body = await self.call(
            "POST",
            "/events",
            "admin",
            data=ndjson(events),
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert status == 202, body
        await wait_for(lambda: drained(self.redis, self.keys), timeout=30, what="the worker drained the streams")
        await wait_for(lambda: no_uncommitted(self.redis, self.keys), timeout=30, what="every score committed")

    async def individual(self, pop: str, ident: str) -> dict[str, Any]:
        q = {"org": "acme", "source": "web", "pop": pop, "id": ident}
        status, body = await self.call("GET", "/api/individual", "viewer", params=q)
        assert status == 200, body
        return dict(body)

    async def population(self, pop: str) -> list[dict[str, int]]:
        scope = Scope("acme", "web", pop)
        return [await hgetall_int(self.redis, self.keys.scope_key(scope, k)) for k in ("pop", "sq", "k")]


@pytest.fixture
async def svc(tmp_path: Path, redis_url: str, prefix: str, aredis: aioredis.Redis) -> AsyncIterator[Svc]:
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{n} {r} {o} sha256:{hash_token('tok-' + n).hex()}\n" for n, (r, o) in TOKENS.items()))
    ws = web_settings(redis_url, prefix, tokens_file=str(tokens), discrete_timeout_s=5.0)
    ins = ingest_settings(redis_url, prefix, tokens_file=str(tokens))
    env = {"REDIS_URL": redis_url, "BINORMAL_PREFIX": prefix, "BINORMAL_SHARDS": "4", "PATH": "/usr/bin:/bin"}
    worker = WorkerProcess(
        redis_url, prefix, "rules-w1", tmp_path / "worker.log", {"BINORMAL_SNAPSHOT_MAX_AGE_MS": "0"}
    )
    worker.start()
    try:
        async with serving(combined_app(ws, ins)) as base, aiohttp.ClientSession() as http:
            await wait_for(lambda: aredis.hlen(ws.keys.workers()), timeout=20, what="the worker's heartbeat")
            yield Svc(base, http, ws.keys, aredis, env)
    finally:
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.log_lines()[-20:]


def stream(pop: str, ids: list[str], actions: list[str], rounds: int) -> list[dict[str, str]]:
    """``rounds`` events per id, cycling through ``actions`` (shifted per id), interleaved."""
    return [
        {"org": "acme", "source": "web", "pop": pop, "id": ident, "action": actions[(r + i) % len(actions)]}
        for r in range(rounds)
        for i, ident in enumerate(ids)
    ]


# ---------------------------------------------------------------- validation and roles


def test_parse_rule_names_the_field_at_fault() -> None:
    base = {"kind": "mute", "org": "acme", "source": "web", "pop": "users"}
    assert parse_rule({**base, "id": "u1"}, by="a", at=5) == Rule(
        "mute", Scope("acme", "web", "users"), "id", "u1", by="a", at=5
    )
    assert parse_rule({**base, "action": "GET /"}, by="a").target == "action"
    cases = [
        ({**base, "kind": "ban", "id": "u"}, "kind"),
        ({**base}, "id"),
        ({**base, "id": "u", "action": "x"}, "action"),
        ({**base, "kind": "exclude", "action": "x"}, "action"),
        ({**base, "kind": "mark", "id": "u"}, "label"),
        ({**base, "kind": "mark", "id": "u", "label": "meh"}, "label"),
        ({**base, "id": "u", "label": "benign"}, "label"),
        ({**base, "id": "u", "note": "x" * 1001}, "note"),
        ({**base, "id": ""}, "id"),
        ({**base, "id": 5}, "id"),
        ({**base, "id": "u", "note": None}, "note"),
        ({**base, "id": "u", "pop": "p" * 257}, "pop"),
        ({**base, "id": "u", "colour": "red"}, "colour"),
        ({k: v for k, v in base.items() if k != "org"} | {"id": "u"}, "org"),
    ]
    for data, field in cases:
        with pytest.raises(RuleError) as info:
            parse_rule(data, by="a")
        assert info.value.field == field and str(info.value).startswith(field), (data, str(info.value))


async def test_analyst_may_viewer_and_producer_may_not_and_other_orgs_are_refused(svc: Svc) -> None:
    assert (await svc.rule(kind="mute", pop="users", id="u1"))[0] == 201
    assert (await svc.rule(kind="mute", pop="users", id="u1"))[0] == 200  # replaced, not doubled
    assert (await svc.rule("admin", kind="mute", pop="users", id="u2"))[0] == 201
    for who in ("viewer", "producer"):
        status, body = await svc.rule(who, kind="mute", pop="users", id="u3")
        assert status == 403 and body["role"] == "analyst", body
        assert (await svc.call("GET", "/api/rules", who))[0] == 403
        assert (
            await svc.call(
                "DELETE",
                "/api/rules",
                who,
                params={"kind": "mute", "org": "acme", "source": "web", "pop": "users", "id": "u1"},
            )
        )[0] == 403
    # another org's analyst can neither see nor change acme's rules
    status, body = await svc.rule("beta-analyst", kind="mute", pop="users", id="u3")
    assert status == 403 and body["field"] == "org", body
    status, body = await svc.call("GET", "/api/rules", "beta-analyst")
    assert status == 200 and body == {"rules": [], "total": 0}
    assert (await svc.call("GET", "/api/rules", "beta-analyst", params={"org": "acme"}))[0] == 403
    q = {"kind": "mute", "org": "acme", "source": "web", "pop": "users", "id": "u1"}
    assert (await svc.call("DELETE", "/api/rules", "beta-analyst", params=q))[0] == 403
    status, body = await svc.call("GET", "/api/rules", "analyst")
    assert status == 200 and [(r["id"], r["by"]) for r in body["rules"]] == [("u1", "analyst"), ("u2", "admin")]
    assert (await svc.call("DELETE", "/api/rules", "analyst", params=q)) == (
        200,
        {"removed": True, "kind": "mute", "org": "acme", "source": "web", "pop": "users", "id": "u1"},
    )
    status, body = await svc.call("DELETE", "/api/rules", "analyst", params=q)
    assert status == 404 and body["field"] == "id"
    # validation: a 400 naming the field, nothing written
    for fields, field in [
        ({"kind": "mark", "id": "u"}, "label"),
        ({"kind": "mute"}, "id"),
        ({"kind": "x", "id": "u"}, "kind"),
    ]:
        status, body = await svc.rule(**fields, pop="users")
        assert status == 400 and body["field"] == field, body
    status, body = await svc.call(
        "POST",
        "/api/rules",
        "analyst",
        data=b'{"kind": "mute", "kind": "mark"}',
        headers={"Content-Type": "application/json"},
    )
    assert status == 400 and body["field"] == "kind", body
    assert len((await svc.call("GET", "/api/rules", "admin"))[1]["rules"]) == 1


# ---------------------------------------------------------------- mute


@both_backends
async def test_a_mute_added_via_the_api_reaches_the_running_worker_within_a_second(svc: Svc) -> None:
    await svc.send(stream("users", [f"u{i}" for i in range(8)], NORMAL, 10) + stream("users", ["bot"], SCANNER, 10))

    async def discrete(ident: str, action: str) -> dict[str, Any]:
        event = {"org": "acme", "source": "web", "pop": "users", "id": ident, "action": action}
        status, body = await svc.call("POST", "/discrete", "admin", json=event)
        assert status == 200, body
        return dict(body)

    assert (await discrete("bot", "GET /.env"))["muted"] is False
    q = {"org": "acme", "source": "web", "pop": "users"}
    status, top = await svc.call("GET", "/api/outliers", "viewer", params=q)
    assert status == 200 and top["outliers"][0]["id"] == "bot" and top["outliers"][0]["muted"] is False
    assert (await svc.rule(kind="mute", pop="users", id="bot"))[0] == 201
    added = time.monotonic()

    async def muted() -> bool:
        return bool((await discrete("bot", "GET /.env"))["muted"])

    await wait_for(muted, timeout=1.0, interval=0.0, what="the worker to apply the mute")
    took = time.monotonic() - added
    assert took < 1.0, took
    # still counted and scored; left out of /api/outliers unless asked for, then shown muted
    profile = await svc.individual("users", "bot")
    assert profile["muted"] is True and profile["count"] >= 12 and profile["score"] > 0
    status, top = await svc.call("GET", "/api/outliers", "viewer", params=q)
    assert status == 200 and "bot" not in [o["id"] for o in top["outliers"]] and len(top["outliers"]) == 8
    status, top = await svc.call("GET", "/api/outliers", "viewer", params={**q, "muted": "1"})
    assert top["outliers"][0]["id"] == "bot" and top["outliers"][0]["muted"] is True
    assert not any(o["muted"] for o in top["outliers"][1:])
    assert (await svc.call("GET", "/api/outliers", "viewer", params={**q, "muted": "yes"}))[1]["field"] == "muted"
    # an action: events of it are muted, the others not
    assert (await svc.rule(kind="mute", pop="users", action="POST /cart"))[0] == 201

    async def action_muted() -> bool:
        return bool((await discrete("u1", "POST /cart"))["muted"])

    await wait_for(action_muted, timeout=1.0, interval=0.0, what="the worker to apply the action mute")
    assert (await discrete("u1", "GET /"))["muted"] is False


# ---------------------------------------------------------------- exclude and recompute


@both_backends
async def test_an_excluded_id_does_not_move_the_population_and_recompute_rebuilds_without_it(svc: Svc) -> None:
    users = [f"u{i}" for i in range(10)]
    # A: the scanner is excluded before its first event; B: the same without the scanner;
    # C: the scanner learnt from, excluded afterwards and the population recomputed.
    assert (await svc.rule(kind="exclude", pop="A", id="scanner"))[0] == 201
    await _until_worker_sees_rules(svc)
    events = {pop: stream(pop, users, NORMAL, 12) for pop in ("A", "B", "C")}
    for pop in ("A", "C"):
        scanner = stream(pop, ["scanner"], SCANNER, 12)
        events[pop] = [e for pair in zip(events[pop][: len(scanner)], scanner) for e in pair] + events[pop][
            len(scanner) :
        ]
    await svc.send(events["A"] + events["B"] + events["C"])
    pop_a, pop_b, pop_c = [await svc.population(p) for p in ("A", "B", "C")]
    assert pop_a == pop_b  # pop, sq and k: as if the scanner never came
    assert "GET /.env" not in pop_b[0]
    assert pop_c != pop_b and pop_c[0]["GET /.env"] == 3
    for ident in users:  # the others score exactly as without the scanner
        a, b = await svc.individual("A", ident), await svc.individual("B", ident)
        assert (a["score"], a["count"], a["actions"]) == (b["score"], b["count"], b["actions"]), ident
    scanner = await svc.individual("A", "scanner")
    assert (
        scanner["excluded"] is True
        and scanner["count"] == 12
        and math.isfinite(scanner["score"])
        and scanner["score"] > 0
    )
    # C: exclude now, then binormal recompute rebuilds pop/sq/k without it
    assert (await svc.rule(kind="exclude", pop="C", id="scanner"))[0] == 201
    out = await asyncio.to_thread(
        subprocess.run, [*binormal_command(), "recompute"], env=svc.env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    reports = {r["pop"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert (
        reports["C"]["population_rebuilt"] is True
        and reports["C"]["excluded"] == 1
        and reports["C"]["learnt_from"] == 10
    )
    assert "population_rebuilt" not in reports["B"]
    assert await svc.population("C") == pop_b


async def _until_worker_sees_rules(svc: Svc) -> None:
    """Mute a probe id and send it events until a result is muted: the worker has read every earlier rule too."""
    probe = Scope("acme", "web", "probe")

    async def seen() -> bool:
        status, body = await svc.call(
            "POST", "/discrete", "admin", json={**probe._asdict(), "id": "p", "action": "GET /"}
        )
        assert status == 200, body
        # the mute on the probe id (added below) is visible: the worker's cache has the version
        return bool(body["muted"])

    assert (await svc.rule(kind="mute", pop="probe", id="p"))[0] == 201
    await wait_for(seen, timeout=5.0, interval=0.0, what="the worker to read the rules")


# ---------------------------------------------------------------- mark and feedback


async def test_a_mark_shows_in_the_profile_and_evaluate_feedback_writes_the_labels(svc: Svc, tmp_path: Path) -> None:
    await svc.send(stream("users", ["u1", "u2", "evil"], NORMAL, 3))
    assert (await svc.individual("users", "evil"))["feedback"] is None
    status, body = await svc.rule(kind="mark", pop="users", id="evil", label="confirmed", note="sold creds")
    assert status == 201 and body["by"] == "analyst", body
    assert (await svc.rule(kind="mark", pop="users", id="u2", label="benign"))[0] == 201
    fb = (await svc.individual("users", "evil"))["feedback"]
    assert fb["label"] == "confirmed" and fb["by"] == "analyst" and fb["note"] == "sold creds"
    assert abs(fb["at"] / 1000 - time.time()) < 60
    assert (await svc.individual("users", "u1"))["feedback"] is None
    out = tmp_path / "labels.csv"
    got = await asyncio.to_thread(
        subprocess.run,
        [*binormal_command(), "evaluate", "--feedback", str(out)],
        env=svc.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert got.returncode == 0, got.stderr
    with open(out, newline="") as fh:
        assert sorted(csv.reader(fh)) == sorted([["id", "label"], ["evil", "1"], ["u2", "0"]])


# ---------------------------------------------------------------- binormal rules


@both_backends
async def test_rules_command_adds_lists_removes_with_clear_errors_and_exit_codes(svc: Svc) -> None:
    def rules(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*binormal_command(), "rules", *args], env=svc.env, capture_output=True, text=True, timeout=60
        )

    scope = ["--org", "acme", "--source", "web", "--pop", "users"]
    got = await asyncio.to_thread(rules, "add", "exclude", *scope, "--id", "test-account", "--note", "QA")
    assert got.returncode == 0 and '"created":true' in got.stdout, got.stderr
    got = await asyncio.to_thread(rules, "add", "mark", *scope, "--id", "evil")
    assert got.returncode == 2 and "label" in got.stderr and "Traceback" not in got.stderr
    got = await asyncio.to_thread(rules, "list", "--org", "acme")
    assert got.returncode == 0 and '"id":"test-account"' in got.stdout and '"by":"cli"' in got.stdout
    assert (await svc.call("GET", "/api/rules", "analyst"))[1]["total"] == 1  # the API sees it too
    assert (await asyncio.to_thread(rules, "list", "--org", "beta")).stdout == ""
    got = await asyncio.to_thread(rules, "remove", "exclude", *scope, "--id", "test-account")
    assert got.returncode == 0, got.stderr
    got = await asyncio.to_thread(rules, "remove", "exclude", *scope, "--id", "test-account")
    assert got.returncode == 1 and "no exclude rule" in got.stderr
    bad = {**svc.env, "REDIS_URL": "redis://127.0.0.1:1/0"}
    got = await asyncio.to_thread(
        subprocess.run, [*binormal_command(), "rules", "list"], env=bad, capture_output=True, text=True, timeout=60
    )
    assert got.returncode == 3 and "cannot reach Redis" in got.stderr


# ---------------------------------------------------------------- the engines agree on exclusions


@both_backends
async def test_worker_and_memory_engine_agree_with_an_excluded_id_at_staleness_0(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    keys = Keyspace(prefix=prefix, shards=4)
    events = engine_events(seed=11, n_events=1500)
    # 'evil' of pop0 and one more excluded id; evil's rare actions are then its own only at first
    excluded = {(Scope("acme", "web", "pop0"), "evil"), (Scope("acme", "web", "pop1"), "u3")}
    for scope, ident in excluded:
        await add_rule(aredis, keys, Rule("exclude", scope, "id", ident, by="test"))
    cache = RuleCache(keys)
    await cache.refresh(aredis)
    assert cache.excluded == excluded and len(await list_rules(aredis, keys)) == 2
    engine = MemoryEngine(excluded=excluded)
    want = {_key(e): engine.process(e) for e in events}
    async with Collector(aredis, keys.broadcast_channel()) as got:
        async with running_worker(worker_settings(redis_url, prefix, snapshot_max_age_ms=0)):
            await xadd_events(aredis, keys, events)
            results = await got.wait_count(keys.broadcast_channel(), len(events))
    assert {_key_of(r): r for r in results} == want
    for scope, st in engine.scopes.items():
        assert await hgetall_int(aredis, keys.scope_key(scope, "pop")) == st.pop
    assert all(math.isfinite(r["score"]) for r in results)
    evil = [r for r in results if r["id"] == "evil"]
    assert evil and evil[-1]["score"] > 0


def _key(e: Event) -> tuple[str, str, int | None]:
    return e.pop, e.id, e.ts


def _key_of(r: dict[str, Any]) -> tuple[str, str, int | None]:
    return r["pop"], r["id"], r["timestamp"]
