"""ingest/app.py and web/app.py: honest outcomes when Redis fails mid-write (accepted / unknown / unwritten).

Faults are real: a write blocked by ``CLIENT PAUSE WRITE`` whose connection is
then killed with ``CLIENT KILL ID`` (sent, no reply: in doubt), a private
redis-server with a small ``maxmemory`` (``-OOM`` refusals), a stopped server.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from binormal.common.embedded import RedisServer, find_binary
from binormal.common.redisapp import REDIS
from binormal.common.schema import Event
from binormal.ingest.app import INGEST, line_ranges
from tests.support.events import ndjson, numbered_event
from tests.support.http import combined_app, ingest_settings, post_json, post_raw, serving, web_settings
from tests.support.openapi import assert_documented
from tests.support.redis_state import kill_blocked_xadd, paused_writes
from tests.support.workers import running_worker, worker_settings

NDJSON = "application/x-ndjson"
GOOD = {"org": "acme", "source": "webserver", "pop": "auth_getpost", "id": "individual1", "action": "GET /user/login"}


def ev(i: int, **changes: Any) -> dict[str, Any]:
    """:func:`numbered_event` with an ``event_id`` of its own."""
    return numbered_event(i, **{"event_id": f"line-{i}", **changes})


def documented(path: str, status: int, body: Any) -> None:
    assert_documented(path, "post", status, body)


def expand(ranges: list[list[int]]) -> list[int]:
    return [n for first, last in ranges for n in range(first, last + 1)]


@contextlib.asynccontextmanager
async def app_on(redis_url: str, prefix: str, **ingest: Any) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    ws = web_settings(redis_url, prefix, discrete_timeout_s=1.0)
    app = combined_app(ws, ingest_settings(redis_url, prefix, **ingest))
    async with serving(app) as base, aiohttp.ClientSession() as session:
        await asyncio.wait_for(app[REDIS].up.wait(), 5.0)
        yield base, session


def private_redis(tmp_path: Path) -> RedisServer:
    return RedisServer(tmp_path / "redis", binary=find_binary("path")).start()


# ---------------------------------------------------------------- /events


async def test_link_lost_mid_batch_says_which_lines_are_unknown_and_which_unwritten(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    lines = [orjson.dumps(ev(i)) for i in range(1, 252)]
    lines[49] = b'{"org": "acme"}'  # line 50: rejected (no source, pop, id, action)
    lines[119] = b""  # line 120: blank
    body = b"\n".join(lines) + b"\n"
    async with app_on(redis_url, prefix, pipeline_batch=100) as (base, session):
        async with paused_writes(aredis):
            post = asyncio.create_task(post_raw(session, f"{base}/events", body, NDJSON))
            await kill_blocked_xadd(aredis)
            status, got, headers = await post
    assert status == 503, got
    assert headers["Retry-After"] == "1"
    documented("/events", status, got)
    assert got["error"] == "redis unavailable"
    assert (got["accepted"], got["rejected"]) == (0, 1) and got["errors"][0]["line"] == 50
    # The first chunk (100 events) was sent and never answered; the rest was never sent.
    assert got["unknown"] == 100 and got["unknown_lines"] == [[1, 49], [51, 101]]
    assert got["unwritten"] == 149 and got["unwritten_lines"] == [[102, 251]]
    assert got["unwritten_reason"] == "149 not sent: an earlier part of the batch failed"
    assert "same event_id" in got["hint"]


async def test_redis_out_of_memory_is_503_naming_it_with_the_refused_lines_unwritten(
    tmp_path: Path, prefix: str
) -> None:
    server = private_redis(tmp_path)
    client = aioredis.Redis.from_url(server.url, protocol=2)
    try:
        used = int((await client.info("memory"))["used_memory"])
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set("maxmemory", used + 400_000)
        n = 1000
        objs = [ev(i, id=f"{i:04d}" + "x" * 996) for i in range(1, n + 1)]  # ~1 KiB each: OOM after a few hundred
        body = b"".join(orjson.dumps(o) + b"\n" for o in objs)
        async with app_on(server.url, prefix, pipeline_batch=100) as (base, session):
            status, got, headers = await post_raw(session, f"{base}/events", body, NDJSON)
            keys = ingest_settings(server.url, prefix).keys
            written = {f[b"event_id"].decode() for s in keys.streams() for _, f in await client.xrange(s)}
    finally:
        await client.aclose()
        server.stop()
    assert status == 503, got
    assert headers["Retry-After"] == "1"
    documented("/events", status, got)
    assert got["error"].startswith("redis is out of memory (maxmemory reached) and refused the write: OOM command")

    assert 0 < got["accepted"] < n and got["unknown"] == 0 and got["unknown_lines"] == []
    assert got["accepted"] + got["unwritten"] == n
    # Refused ones in the failing chunk of 100, then the chunks never sent.
    pattern = r"(\d+) refused by redis; (\d+) not sent: an earlier part of the batch failed"
    m = re.fullmatch(pattern, got["unwritten_reason"])
    assert m is not None, got["unwritten_reason"]
    assert int(m[1]) + int(m[2]) == got["unwritten"] and int(m[2]) % 100 == 0
    # Exactly the lines it says are accepted are in the stream; the unwritten ones are not.
    unwritten = expand(got["unwritten_lines"])
    assert len(unwritten) == got["unwritten"]
    assert written == {f"line-{i}" for i in range(1, n + 1) if i not in set(unwritten)}
    assert len(written) == got["accepted"]


async def test_a_whole_batch_is_still_202_with_the_same_body(redis_url: str, prefix: str) -> None:
    body = b"".join(orjson.dumps(ev(i)) + b"\n" for i in range(1, 301)) + b"nope\n"
    async with app_on(redis_url, prefix, pipeline_batch=100) as (base, session):
        status, got, _ = await post_raw(session, f"{base}/events", body, NDJSON)
    assert status == 202
    assert set(got) == {"accepted", "rejected", "errors"}
    assert (got["accepted"], got["rejected"]) == (300, 1)


# ---------------------------------------------------------------- /discrete


async def test_discrete_says_queued_unknown_when_the_link_fails_after_sending(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    async with app_on(redis_url, prefix) as (base, session):
        async with paused_writes(aredis):
            post = asyncio.create_task(post_json(session, f"{base}/discrete", GOOD, {"Idempotency-Key": "in-doubt"}))
            await kill_blocked_xadd(aredis)
            status, got = await post
    assert status == 503, got
    documented("/discrete", status, got)
    assert got["queued"] == "unknown" and got["event_id"] == "in-doubt"
    assert "same Idempotency-Key" in got["hint"]
    # Resending with the same key is safe: counted once, whether or not the first one was written.
    async with app_on(redis_url, prefix) as (base, session), running_worker(worker_settings(redis_url, prefix)):
        key = {"Idempotency-Key": "in-doubt"}
        answers = [await post_json(session, f"{base}/discrete", GOOD, key) for _ in range(2)]
    assert [s for s, _ in answers] == [200, 200], answers
    assert answers[0][1]["count"] == 1 and answers[1][1]["duplicate"] is True and answers[1][1]["count"] == 1


async def test_discrete_says_queued_false_when_redis_is_gone_before_sending(tmp_path: Path, prefix: str) -> None:
    server = private_redis(tmp_path)
    try:
        async with app_on(server.url, prefix) as (base, session):
            server.stop()
            status, got = await post_json(session, f"{base}/discrete", GOOD)
    finally:
        server.stop()
    assert status == 503, got
    documented("/discrete", status, got)
    assert got["queued"] is False


async def test_discrete_on_a_full_redis_is_503_naming_it(tmp_path: Path, prefix: str) -> None:
    server = private_redis(tmp_path)
    client = aioredis.Redis.from_url(server.url, protocol=2)
    try:
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set("maxmemory", 1)
        async with app_on(server.url, prefix) as (base, session):
            status, got = await post_json(session, f"{base}/discrete", GOOD)
            keys = web_settings(server.url, prefix).keys
            assert sum([await client.xlen(s) for s in keys.streams()]) == 0
    finally:
        await client.aclose()
        server.stop()
    assert status == 503, got
    documented("/discrete", status, got)
    assert got["error"].startswith("redis is out of memory (maxmemory reached) and refused the write: OOM command")
    assert got["queued"] is False


async def test_redis_gone_before_sending_leaves_every_line_known_unwritten(tmp_path: Path, prefix: str) -> None:
    server = private_redis(tmp_path)
    try:
        app = combined_app(web_settings(server.url, prefix), ingest_settings(server.url, prefix, lag_check_s=3600.0))
        async with serving(app) as base, aiohttp.ClientSession() as session:
            app[INGEST].cap.ttl_s = 3600.0  # both readings cached: the next request goes straight to its XADDs
            status, _, _ = await post_raw(session, f"{base}/events", ndjson([ev(i) for i in range(3)]), NDJSON)
            assert status == 202
            server.stop()
            status, got, _ = await post_raw(session, f"{base}/events", ndjson([ev(i) for i in range(5)]), NDJSON)
    finally:
        server.stop()
    assert status == 503, got
    documented("/events", status, got)
    assert (got["accepted"], got["unknown"], got["unwritten"]) == (0, 0, 5)
    assert got["unwritten_lines"] == [[1, 5]] and got["unknown_lines"] == []
    assert got["unwritten_reason"] == "5 not sent: redis could not be reached"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["event", "member", "rejected", "blank"]), max_size=60))
def test_line_ranges_cover_exactly_the_member_lines(kinds: list[str]) -> None:
    """Every non-blank line inside a range is a member; every member is inside one."""
    events: list[tuple[int, Event]] = []
    members: list[int] = []
    rejected: list[int] = []
    for number, kind in enumerate(kinds, 1):
        if kind in ("event", "member"):
            if kind == "member":
                members.append(len(events))
            events.append((number, Event("o", "s", "p", "i", "a")))
        elif kind == "rejected":
            rejected.append(number)
    ranges = line_ranges(events, members, rejected)
    inside = {n for first, last in ranges for n in range(first, last + 1)}
    assert {n for n in inside if kinds[n - 1] != "blank"} == {events[k][0] for k in members}
    assert all(first <= last for first, last in ranges)
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))
