"""ingest/app.py: POST /events over real sockets: batches, bad input, backpressure, idempotency."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from binormal.common.embedded import free_port
from binormal.common.keys import Keyspace
from binormal.common.schema import Event
from binormal.ingest.app import create_app
from binormal.worker.worker import ensure_groups
from tests.support.backends import both_backends
from tests.support.events import counts_from_events, ndjson
from tests.support.events import numbered_event as ev
from tests.support.http import Served, ingest_settings, post_raw, served, serving
from tests.support.openapi import assert_documented
from tests.support.redis_state import check_counters, drained
from tests.support.waiting import wait_for
from tests.support.workers import running_worker, worker_settings

NDJSON = "application/x-ndjson"


class Ingest(Served):
    """A running ingest service."""

    @property
    def events(self) -> str:
        return f"{self.base}/events"


async def _start(redis_url: str, prefix: str, **overrides: Any) -> AsyncIterator[Ingest]:
    settings = ingest_settings(redis_url, prefix, **overrides)
    app = create_app(settings)
    async with served(app, settings.keys, Ingest) as running:
        yield running


@pytest.fixture
async def ingest(redis_url: str, prefix: str) -> AsyncIterator[Ingest]:
    async for svc in _start(redis_url, prefix):
        yield svc


async def total_len(client: aioredis.Redis, keys: Keyspace) -> int:
    return sum([await client.xlen(s) for s in keys.streams()])


def documented(status: int, body: Any, method: str = "post") -> None:
    assert_documented("/events", method, status, body)


@both_backends
async def test_mixed_ndjson_batch_keeps_valid_lines_and_reports_bad_ones(
    ingest: Ingest, aredis: aioredis.Redis
) -> None:
    lines = [
        orjson.dumps(ev(1)),
        b"",  # blank: skipped, still numbered
        orjson.dumps(ev(2, action="")),
        b"not json",
        orjson.dumps(ev(3)) + b"\r",  # CRLF line ending
        orjson.dumps([1, 2]),
        orjson.dumps(ev(4, id=7)),
        b'{"org": "\xff", "source": "s", "pop": "p", "id": "i", "action": "a"}',
        orjson.dumps(ev(5, acton="x")),
        orjson.dumps(ev(6, event_id="e6", ts=1700000000000)),
    ]
    status, got, _ = await post_raw(ingest.session, ingest.events, b"\n".join(lines) + b"\n", NDJSON)
    assert status == 202, got
    documented(202, got)
    assert got["accepted"] == 3 and got["rejected"] == 6
    assert [(e["line"], e["field"]) for e in got["errors"]] == [
        (3, "action"),
        (4, "body"),
        (6, "body"),
        (7, "id"),
        (8, "body"),
        (9, "acton"),
    ]
    assert await total_len(aredis, ingest.keys) == 3
    # The entries carry the documented fields, in body order per shard.
    entries = []
    for stream in ingest.keys.streams():
        entries += [fields for _, fields in await aredis.xrange(stream)]
    ids = sorted(f[b"id"] for f in entries)
    assert ids == sorted([b"u1", b"u3", b"u6"])
    e6 = next(f for f in entries if f[b"id"] == b"u6")
    assert e6[b"event_id"] == b"e6" and e6[b"ts"] == b"1700000000000"
    assert b"rid" not in e6 and b"reply_to" not in e6


async def test_json_array_batch_uses_index_plus_one_as_line(ingest: Ingest, aredis: aioredis.Redis) -> None:
    body = orjson.dumps([ev(1), ev(2, pop=None), "x", ev(3)])
    status, got, _ = await post_raw(ingest.session, ingest.events, body, "application/json")
    assert status == 202, got
    documented(202, got)
    assert got["accepted"] == 2 and got["rejected"] == 2
    assert [(e["line"], e["field"]) for e in got["errors"]] == [(2, "pop"), (3, "body")]
    assert await total_len(aredis, ingest.keys) == 2


BAD = [
    pytest.param(b"not json\n", NDJSON, 400, "body", id="ndjson-not-json"),
    pytest.param(b"[1]\n", NDJSON, 400, "body", id="ndjson-line-not-object"),
    pytest.param(ndjson([ev(1, org=None)]), NDJSON, 400, "org", id="null-field"),
    pytest.param(ndjson([{k: v for k, v in ev(1).items() if k != "action"}]), NDJSON, 400, "action", id="missing"),
    pytest.param(ndjson([ev(1, id="")]), NDJSON, 400, "id", id="empty"),
    pytest.param(ndjson([ev(1, id=["x"])]), NDJSON, 400, "id", id="list"),
    pytest.param(ndjson([ev(1, source=3)]), NDJSON, 400, "source", id="number"),
    pytest.param(ndjson([ev(1, pop="p" * 300)]), NDJSON, 400, "pop", id="over-limit"),
    pytest.param(ndjson([ev(1, extra=1)]), NDJSON, 400, "extra", id="unknown-field"),
    pytest.param(b'{"org": "\xc3\x28"}\n', NDJSON, 400, "body", id="non-utf8"),
    pytest.param(b"", NDJSON, 400, "body", id="empty-body"),
    pytest.param(b"\n\n", NDJSON, 400, "body", id="blank-lines-only"),
    pytest.param(b"not json", "application/json", 400, "body", id="json-not-json"),
    pytest.param(orjson.dumps(ev(1)), "application/json", 400, "body", id="json-object-not-array"),
    pytest.param(b"[]", "application/json", 400, "body", id="json-empty-array"),
    pytest.param(b"[\xff]", "application/json", 400, "body", id="json-non-utf8"),
    pytest.param(ndjson([ev(1)]), "text/plain", 415, "Content-Type", id="wrong-content-type"),
    pytest.param(ndjson([ev(1)]), None, 415, "Content-Type", id="no-content-type"),
    pytest.param(ndjson([ev(1)]), "application/x-ndjson; charset=utf-16", 415, "Content-Type", id="wrong-charset"),
]


@pytest.mark.parametrize(("body", "ctype", "status", "field"), BAD)
async def test_bad_input_is_4xx_json_naming_the_field_and_writes_nothing(
    ingest: Ingest, aredis: aioredis.Redis, body: bytes, ctype: str | None, status: int, field: str
) -> None:
    got_status, got, _ = await post_raw(ingest.session, ingest.events, body, ctype)
    assert got_status == status, got
    assert got["field"] == field, got
    documented(status, got)
    assert await total_len(aredis, ingest.keys) == 0


async def test_body_over_the_limit_is_413(redis_url: str, prefix: str, aredis: aioredis.Redis) -> None:
    async for svc in _start(redis_url, prefix, max_body_bytes=2048):
        status, got, _ = await post_raw(svc.session, svc.events, ndjson([ev(i) for i in range(100)]), NDJSON)
        assert status == 413 and got["field"] == "body", got
        documented(413, got)
        assert await total_len(aredis, svc.keys) == 0


async def test_get_is_405(ingest: Ingest) -> None:
    async with ingest.session.get(ingest.events) as r:
        got = await r.json()
        assert r.status == 405 and got["field"] == "method"


@pytest.mark.parametrize("with_group", [False, True], ids=["no-group-yet", "group-exists"])
async def test_backpressure_503_with_retry_after_writes_nothing(
    redis_url: str, prefix: str, aredis: aioredis.Redis, with_group: bool
) -> None:
    async for svc in _start(redis_url, prefix, max_lag=5, lag_check_s=0.0, retry_after_s=3):
        if with_group:
            await ensure_groups(aredis, svc.keys.streams(), svc.keys.group)
        status, got, _ = await post_raw(svc.session, svc.events, ndjson([ev(i) for i in range(10)]), NDJSON)
        assert status == 202 and got["accepted"] == 10  # lag was 0 when it came in
        status, got, headers = await post_raw(svc.session, svc.events, ndjson([ev(99)]), NDJSON)
        assert status == 503, got
        assert headers["Retry-After"] == "3"
        assert got["lag"] == 10 and got["max_lag"] == 5
        documented(503, got)
        assert await total_len(aredis, svc.keys) == 10
        # A worker drains the backlog (and trims it): accepted again.
        async with running_worker(worker_settings(redis_url, prefix, trim_interval_s=0.05)):
            await wait_for(lambda: drained(aredis, svc.keys), timeout=30.0, what="drain")

            async def accepted() -> bool:
                s, _, _ = await post_raw(svc.session, svc.events, ndjson([ev(100)]), NDJSON)
                return s == 202

            await wait_for(accepted, timeout=30.0, interval=0.1, what="backpressure released")


async def test_lag_reading_is_cached_for_lag_check_s(redis_url: str, prefix: str, aredis: aioredis.Redis) -> None:
    async for svc in _start(redis_url, prefix, max_lag=5, lag_check_s=60.0):
        for _ in range(3):  # 30 entries, yet the reading taken before the first stays 0 for 60 s
            status, _, _ = await post_raw(svc.session, svc.events, ndjson([ev(i) for i in range(10)]), NDJSON)
            assert status == 202
        assert await total_len(aredis, svc.keys) == 30


@both_backends
async def test_events_are_counted_by_the_worker_in_pipelined_batches(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    objs = [ev(i, id=f"u{(i * 7) % 23}", action=f"a{(i * i) % 13}") for i in range(5000)]
    async for svc in _start(redis_url, prefix, pipeline_batch=700):
        status, got, _ = await post_raw(svc.session, svc.events, ndjson(objs), NDJSON)
        assert status == 202 and got == {"accepted": 5000, "rejected": 0, "errors": []}
        async with running_worker(worker_settings(redis_url, prefix)):
            await wait_for(lambda: drained(aredis, svc.keys), timeout=60, what="drain")
        truth = counts_from_events(Event(**o) for o in objs)
        assert await check_counters(aredis, svc.keys, truth) == []


@both_backends
async def test_event_ids_make_a_resent_batch_count_once(redis_url: str, prefix: str, aredis: aioredis.Redis) -> None:
    objs = [ev(i, event_id=f"batch1-{i}") for i in range(50)]
    async for svc in _start(redis_url, prefix):
        async with running_worker(worker_settings(redis_url, prefix)):
            for _ in range(2):  # the producer retries the whole batch
                status, got, _ = await post_raw(svc.session, svc.events, ndjson(objs), NDJSON)
                assert status == 202 and got["accepted"] == 50
            await wait_for(lambda: drained(aredis, svc.keys), what="drain")
        truth = counts_from_events(Event(**o) for o in objs)
        assert await check_counters(aredis, svc.keys, truth) == []


async def test_errors_list_is_bounded(ingest: Ingest) -> None:
    body = b"x\n" * 1500 + ndjson([ev(1)])
    status, got, _ = await post_raw(ingest.session, ingest.events, body, NDJSON)
    assert status == 202
    assert got["rejected"] == 1500 and len(got["errors"]) == 1000 and got["accepted"] == 1


async def test_redis_unavailable_is_503_not_a_hang(prefix: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    app = create_app(ingest_settings(url, prefix))
    async with serving(app, wait_redis=False) as base, aiohttp.ClientSession() as session:
        async with session.get(f"{base}/healthz") as r:
            assert r.status == 200
        status, got, headers = await post_raw(session, f"{base}/events", ndjson([ev(1)]), NDJSON)
        assert status == 503 and got["error"] == "redis unavailable" and headers["Retry-After"]
        documented(503, got)
        async with session.get(f"{base}/readyz") as r:
            assert r.status == 503


async def test_duplicate_keys_reject_only_their_line(ingest: Ingest, aredis: aioredis.Redis) -> None:
    good = orjson.dumps(ev(1))
    dup = b'{"org":"acme","org":"beta","source":"web","pop":"p","id":"u","action":"a"}'
    for body, ctype in (
        (good + b"\n" + dup + b"\n" + good + b"\n", NDJSON),
        (b"[" + good + b"," + dup + b"]", "application/json"),
    ):
        status, got, _ = await post_raw(ingest.session, ingest.events, body, ctype)
        assert status == 202, got
        documented(202, got)
        assert got["rejected"] == 1 and got["errors"][0]["line"] == 2 and got["errors"][0]["field"] == "org", got
    assert await total_len(aredis, ingest.keys) == 3
    status, got, _ = await post_raw(ingest.session, ingest.events, dup, NDJSON)
    assert status == 400 and got["field"] == "org", got
