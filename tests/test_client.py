"""binormal.client against the real service (combined app, a real worker, a private redis-server)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from binormal import client as bc
from binormal.common.auth import format_line, hash_token
from binormal.common.embedded import RedisServer, find_binary, free_port
from binormal.common.schema import Event
from binormal.worker import Worker
from tests.support.client import Watching
from tests.support.feed import counted, service
from tests.support.http import Served, combined_app, ingest_settings, serving, web_settings
from tests.support.openapi import load_openapi
from tests.support.redis_state import oom_refusals
from tests.support.waiting import wait_for
from tests.support.workers import running_worker, worker_settings

# dataclass -> its schema in docs/openapi.yaml (a JSON pointer below components/schemas)
SCHEMAS: dict[type[Any], tuple[str, ...]] = {
    bc.Reason: ("Reason",),
    bc.DiscreteResult: ("DiscreteResult",),
    bc.Dominated: ("Dominated",),
    bc.Outliers: ("Outliers",),
    bc.Outlier: ("Outliers", "outliers", "items"),
    bc.Feedback: ("Feedback",),
    bc.Individual: ("Individual",),
    bc.ActionCount: ("Individual", "actions", "items"),
    bc.LineError: ("LineError",),
}


def _schema(doc: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    node: dict[str, Any] = doc["components"]["schemas"][path[0]]
    for part in path[1:]:
        node = node["properties"][part] if part != "items" else node["items"]
    return node


def test_dataclasses_match_the_openapi_schemas() -> None:
    doc = load_openapi()
    for cls, path in SCHEMAS.items():
        schema = _schema(doc, path)
        wire = getattr(cls, "WIRE", {})
        fields = {wire.get(f.name, f.name): f for f in dataclasses.fields(cls)}
        assert set(fields) == set(schema["properties"]), (cls.__name__, set(fields) ^ set(schema["properties"]))
        # Required properties have no default; optional ones do.
        required = set(schema.get("required", []))
        no_default = {k for k, f in fields.items() if f.default is dataclasses.MISSING}
        assert no_default == required, (cls.__name__, no_default ^ required)


def _events(n: int, pops: int = 3, ids: int = 20) -> list[Event]:
    return [Event("acme", "web", f"pop{i % pops}", f"user{i % ids}", f"GET /{i % 5}") for i in range(n)]


def _client(base: str, **options: Any) -> bc.AsyncClient:
    return bc.AsyncClient(base, "", **({"backoff_s": 0.02, "max_backoff_s": 0.3} | options))


async def test_send_many_counts_each_event_and_names_rejected_lines(
    combined: Served, worker: Worker, aredis: aioredis.Redis, prefix: str
) -> None:
    truth = _events(250)
    events: list[bc.EventLike] = [*truth[:100], {"org": "acme", "source": "web"}, *truth[100:]]
    async with _client(combined.base, batch=64) as c:
        res = await c.send_many(events)
        assert res.accepted == 250 and res.rejected == 1, res
        assert [e.line for e in res.errors] == [101] and res.errors[0].field == "pop", res.errors
        assert len(set(res.event_ids)) == 251 and res.tries == 4
        assert await counted(aredis, prefix, truth) == []
        ind = await c.individual("acme/web/pop0", "user0")
        assert isinstance(ind, bc.Individual) and (ind.org, ind.pop, ind.id) == ("acme", "pop0", "user0")
        assert ind.count == sum(1 for e in truth if (e.pop, e.id) == ("pop0", "user0"))
        assert all(isinstance(a, bc.ActionCount) for a in ind.actions) and ind.feedback is None
        top = await c.outliers(("acme", "web", "pop1"), limit=5)
        assert isinstance(top, bc.Outliers) and 1 <= len(top.outliers) <= 5
        assert all(isinstance(r, bc.Reason) for o in top.outliers for r in o.reasons)
        with pytest.raises(bc.ApiError) as err:
            await c.individual("acme/web/nope", "user0")
        assert err.value.status == 404


async def test_discrete_answers_typed_and_a_retry_is_the_first_result(combined: Served, worker: Worker) -> None:
    async with _client(combined.base) as c:
        ev = {"org": "acme", "source": "web", "pop": "d", "id": "alice", "action": "GET /", "event_id": "e-1"}
        first = await c.discrete(ev)
        assert isinstance(first, bc.DiscreteResult) and first.event_id == "e-1" and not first.duplicate
        assert first.count == 1 and first.this_action_count == 1
        again = await c.discrete(ev)
        assert again.duplicate and again.count == 1
        other = await c.discrete({k: v for k, v in ev.items() if k != "event_id"})
        assert other.count == 2 and other.event_id != "e-1"
        with pytest.raises(bc.ApiError) as err:
            await c.discrete({**ev, "action": "POST /"})  # the same id for another event
        assert err.value.status == 409


async def test_sync_client_on_its_own_thread(combined: Served, worker: Worker) -> None:
    def run() -> tuple[bc.SendResult, bc.Individual]:
        with bc.Client(combined.base, "", backoff_s=0.02) as c:
            sent = c.send({"org": "acme", "source": "web", "pop": "s", "id": "bob", "action": "GET /"})
            deadline = time.monotonic() + 20
            while True:  # the worker counts asynchronously: 404 until then
                try:
                    return sent, c.individual("acme/web/s", "bob")
                except bc.ApiError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)  # poll interval (this thread's own loop; the condition is the count)

    sent, ind = await asyncio.wait_for(asyncio.to_thread(run), 30)
    assert sent.accepted == 1 and ind.count == 1


def test_client_reads_url_and_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BINORMAL_URL", "http://127.0.0.1:1/")
    monkeypatch.setenv("BINORMAL_TOKEN", "s3cret")
    c = bc.AsyncClient()
    assert c.base == "http://127.0.0.1:1" and "s3cret" not in repr(c)
    with pytest.raises(ValueError):
        bc.split_scope("acme/web")


async def test_gives_up_after_bounded_tries_naming_the_pending_ids() -> None:
    async with bc.AsyncClient(f"http://127.0.0.1:{free_port()}", "", tries=3, backoff_s=0.01) as c:
        with pytest.raises(bc.GaveUp) as err:
            await c.send_many(_events(3))
    assert "cannot connect" in err.value.reason and len(err.value.pending) == 3
    assert err.value.result is not None and err.value.result.tries == 3


async def test_restart_mid_batch_loses_and_doubles_nothing(
    redis_url: str, prefix: str, worker: Worker, aredis: aioredis.Redis
) -> None:
    port = free_port()
    truth = _events(3000, pops=4, ids=50)

    def app() -> Any:
        return combined_app(web_settings(redis_url, prefix), ingest_settings(redis_url, prefix))

    async with contextlib.AsyncExitStack() as first:
        base = await first.enter_async_context(serving(app(), port))
        c = Watching(base, "", batch=50, tries=1000, backoff_s=0.02, max_backoff_s=0.2, timeout_s=5)
        c.hold_after = 5  # five batches in, the sixth waits until the server is down
        task = asyncio.create_task(c.send_many(truth))
        await asyncio.wait_for(c.held.wait(), 30)
    # The first server is gone; the client keeps trying until it is back on the same port.
    c.resume.set()
    try:
        await wait_for(lambda: any(o.startswith("transient") for o in c.outcomes), timeout=30, what="a failed try")
        assert not task.done()
        async with serving(app(), port):
            res = await asyncio.wait_for(task, 60)
    finally:
        task.cancel()
        await c.close()
    # Refused connections wrote nothing, so each line was accepted (and written to the stream) once.
    assert res.rejected == 0 and res.accepted == len(truth), res
    assert res.tries > len(truth) // 50
    keys = worker_settings(redis_url, prefix).keys
    ids = [f[b"event_id"].decode() for s in keys.streams() for _, f in await aredis.xrange(s)]
    assert sorted(ids) == sorted(res.event_ids)
    # Every event counted exactly once: the counters equal the truth.
    assert await counted(aredis, prefix, truth) == []


async def test_resends_only_the_lines_redis_refused(tmp_path: Path, prefix: str) -> None:
    """A full Redis refuses part of a batch (503 with unwritten_lines): only those lines go again."""
    n = 2000
    truth = [Event("acme", "web", f"pop{i % 3}", f"user{i % 50:02d}-" + "x" * 900, f"GET /{i % 7}") for i in range(n)]
    server = RedisServer(tmp_path / "redis", binary=find_binary("path")).start()
    redis = aioredis.Redis.from_url(server.url, protocol=2)
    try:
        used = int((await redis.info("memory"))["used_memory"])
        await redis.config_set("maxmemory-policy", "noeviction")
        await redis.config_set("maxmemory", used + 600_000)  # room for a few hundred ~1 KiB entries
        async with service(server.url, prefix, pipeline_batch=100, retry_after_s=1) as url:
            c = Watching(url, "", batch=1000, tries=1000, backoff_s=0.05, max_backoff_s=0.5)
            task = asyncio.create_task(c.send_many(truth))
            try:
                await wait_for(lambda: oom_refusals(redis), timeout=60, what="redis refusing writes (OOM)")
                await redis.config_set("maxmemory", 0)
                res = await asyncio.wait_for(task, 60)
            finally:
                task.cancel()
                await c.close()
        assert res.accepted == n and res.rejected == 0, res
        assert any(o.startswith("reply") and "resend" in o for o in c.outcomes), c.outcomes
        keys = worker_settings(server.url, prefix).keys
        ids = [f[b"event_id"].decode() for s in keys.streams() for _, f in await redis.xrange(s)]
        assert sorted(ids) == sorted(res.event_ids)  # each line written once: accepted lines never resent
        async with running_worker(worker_settings(server.url, prefix)):
            assert await counted(redis, prefix, truth) == []
    finally:
        await redis.aclose()
        server.stop()


async def test_the_token_from_the_environment_is_sent(
    tmp_path: Path, redis_url: str, prefix: str, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(
        format_line("prod", "producer", frozenset({"acme"}), hash_token("tok-prod"))
        + format_line("view", "viewer", frozenset({"acme"}), hash_token("tok-view"))
    )
    ws = web_settings(redis_url, prefix, tokens_file=str(tokens))
    async with serving(combined_app(ws, ingest_settings(redis_url, prefix, tokens_file=str(tokens)))) as base:
        monkeypatch.setenv("BINORMAL_URL", base)
        monkeypatch.setenv("BINORMAL_TOKEN", "tok-prod")
        async with bc.AsyncClient(backoff_s=0.02) as c:
            assert (await c.send({"org": "acme", "source": "web", "pop": "t", "id": "u", "action": "a"})).accepted == 1
            with pytest.raises(bc.ApiError) as err:  # a producer token cannot read
                await c.individual("acme/web/t", "u")
            assert err.value.status == 403
        async with bc.AsyncClient(token="tok-view", backoff_s=0.02) as c:
            ind = await wait_for(lambda: _individual(c, "acme/web/t", "u"), timeout=30, what="the event counted")
            assert ind.count == 1
        async with bc.AsyncClient(token="", tries=1) as c:
            with pytest.raises(bc.ApiError) as err:
                await c.send({"org": "acme", "source": "web", "pop": "t", "id": "u", "action": "a"})
            assert err.value.status == 401


async def _individual(c: bc.AsyncClient, scope: str, ident: str) -> bc.Individual | None:
    try:
        return await c.individual(scope, ident)
    except bc.ApiError as exc:
        if exc.status != 404:
            raise
        return None
