"""web/app.py idempotency: unpredictable ids, per-scope markers, same id for a different event, header errors.

Everything runs against the private redis-server (real sockets, a real worker).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import redis.asyncio as aioredis

from binormal.common.keys import Keyspace, Scope
from binormal.common.store import read_individual
from binormal.web.app import RequestIds
from tests.support.http import Served, combined_app, ingest_settings, post_json, served, web_settings
from tests.support.openapi import assert_documented
from tests.support.waiting import wait_for
from tests.support.workers import running_worker, worker_settings

ACME = {"org": "acme", "source": "webserver", "pop": "auth_getpost", "id": "individual1", "action": "GET /user/login"}
# A scope of another org in the same stream shard as ACME's (shard 0 of 4): the
# idempotency namespace used to be per shard, so this is where tenants collided.
BETA = dict(ACME, org="beta", pop="auth_getpost1", id="someone-else", action="POST /beta")
NDJSON = "application/x-ndjson"


class Svc(Served):
    """Web tier + ingest on one app (as ``binormal run``), with a session."""

    async def discrete(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return await post_json(self.session, f"{self.base}/discrete", body, headers)


@pytest.fixture
async def svc(redis_url: str, prefix: str) -> AsyncIterator[Svc]:
    ws = web_settings(redis_url, prefix, discrete_timeout_s=3.0)
    app = combined_app(ws, ingest_settings(redis_url, prefix))
    async with served(app, ws.keys, Svc) as running:
        yield running


def documented(status: int, body: Any) -> None:
    assert_documented("/discrete", "post", status, body)


# ---------------------------------------------------------------- generated ids


def test_generated_ids_carry_128_unpredictable_bits() -> None:
    ids = RequestIds(block=7)  # a small block: ids come from several os.urandom draws
    got = [ids.new() for _ in range(2000)]
    assert len(set(got)) == len(got)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in got)
    # No fixed part: every one of the 128 bits takes both values, each about half the time.
    for bit in range(128):
        ones = sum((int(i, 16) >> bit) & 1 for i in got)
        assert 800 < ones < 1200, (bit, ones)
    # Consecutive ids share no prefix beyond chance (the old ids were a fixed prefix + a counter).
    assert max(len(_common_prefix(a, b)) for a, b in zip(got, got[1:])) < 8


def test_a_forked_child_never_repeats_its_parents_ids() -> None:
    import os

    ids = RequestIds()
    ids.new()  # a block is drawn; the rest of it must not reach the child
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next id and leave at once
        os.write(write, ids.new().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 32 and child != ids.new()


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < len(a) and a[n] == b[n]:
        n += 1
    return a[:n]


async def test_predicted_ids_cannot_make_other_callers_events_duplicates(svc: Svc, redis_url: str, prefix: str) -> None:
    """The issue's attack: claim the next generated ids through /events before the victims use them."""
    async with running_worker(worker_settings(redis_url, prefix)):
        status, mine = await svc.discrete(ACME)
        assert status == 200, mine
        seen = mine["event_id"]
        # Old ids were a fixed 64-bit prefix + a 64-bit counter, two per request (event id, rid).
        head, counter = seen[:16], int(seen[16:], 16)
        guesses = [f"{head}{counter + k:016x}" for k in range(1, 2001)]
        lines = [orjson.dumps(dict(ACME, id="attacker", event_id=g)) for g in guesses]
        async with svc.session.post(
            f"{svc.base}/events", data=b"\n".join(lines), headers={"Content-Type": NDJSON}
        ) as r:
            assert r.status == 202, await r.text()
        # Let the worker count the attacker's batch first.
        attacker = Scope("acme", "webserver", "auth_getpost")
        client = aioredis.Redis.from_url(redis_url, protocol=2)
        try:
            await wait_for(
                lambda: _count_at_least(client, svc.keys, attacker, "attacker", "GET /user/login", 2000),
                timeout=30,
                what="the attacker's 2000 events counted",
            )
        finally:
            await client.aclose()
        answers = [await svc.discrete(dict(ACME, id=f"victim{i}")) for i in range(20)]
    assert [s for s, _ in answers] == [200] * 20, answers[:2]
    assert not any(a.get("duplicate") for _, a in answers)
    assert all(a["count"] == 1 for _, a in answers)


async def _count_at_least(
    client: aioredis.Redis, keys: Keyspace, scope: Scope, ident: str, action: str, want: int
) -> bool:
    counts, _ = await read_individual(client, keys, scope, ident)
    return counts.get(action, 0) >= want


# ---------------------------------------------------------------- per-scope markers


async def test_an_event_id_of_one_org_is_a_new_event_under_another(svc: Svc, redis_url: str, prefix: str) -> None:
    assert svc.keys.shard(Scope(BETA["org"], BETA["source"], BETA["pop"])) == svc.keys.shard(
        Scope(ACME["org"], ACME["source"], ACME["pop"])
    )
    async with running_worker(worker_settings(redis_url, prefix)):
        s1, acme = await svc.discrete(ACME, {"Idempotency-Key": "shared-id"})
        s2, beta = await svc.discrete(BETA, {"Idempotency-Key": "shared-id"})
    assert (s1, s2) == (200, 200), (acme, beta)
    assert "duplicate" not in beta, beta  # counted for beta, not a replay of acme's stored result
    assert (beta["org"], beta["id"], beta["action"], beta["count"]) == ("beta", "someone-else", "POST /beta", 1)


async def test_markers_and_stored_replies_live_under_the_scope(
    svc: Svc, redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    async with running_worker(worker_settings(redis_url, prefix)):
        status, got = await svc.discrete(ACME, {"Idempotency-Key": "evt:{1}"})
    assert status == 200, got
    scope = Scope(ACME["org"], ACME["source"], ACME["pop"])
    kp = svc.keys.scope_prefix(scope)
    assert svc.keys.seen(scope, "evt:{1}") == kp + "seen:evt%3A%7B1%7D"
    assert svc.keys.reply(scope, "evt:{1}") == kp + "reply:evt%3A%7B1%7D"
    assert await aredis.exists(svc.keys.seen(scope, "evt:{1}"))
    assert await aredis.exists(svc.keys.reply(scope, "evt:{1}"))


# ---------------------------------------------------------------- same id, different event


async def test_same_event_id_for_a_different_event_is_409_saying_so(
    svc: Svc, redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    scope = Scope(ACME["org"], ACME["source"], ACME["pop"])
    async with running_worker(worker_settings(redis_url, prefix)):
        s1, first = await svc.discrete(ACME, {"Idempotency-Key": "k1"})
        s2, other_action = await svc.discrete(dict(ACME, action="DELETE /admin"), {"Idempotency-Key": "k1"})
        s3, other_id = await svc.discrete(dict(ACME, id="mallory"), {"Idempotency-Key": "k1"})
        s4, same = await svc.discrete(ACME, {"Idempotency-Key": "k1"})
        # Even once the stored reply is gone, the marker tells the events apart.
        await aredis.delete(svc.keys.reply(scope, "k1"))
        s5, late_other = await svc.discrete(dict(ACME, action="DELETE /admin"), {"Idempotency-Key": "k1"})
        s6, late_same = await svc.discrete(ACME, {"Idempotency-Key": "k1"})
    assert s1 == 200 and "duplicate" not in first
    for status, body in ((s2, other_action), (s3, other_id), (s5, late_other)):
        assert status == 409, body
        assert body["error"] == "event_id 'k1' was already used for a different event", body
        assert body["field"] == "Idempotency-Key" and body["event_id"] == "k1"
        assert "score" not in body and "individual1" not in orjson.dumps(body).decode()
        documented(status, body)
    assert s4 == 200 and same["duplicate"] is True and same["count"] == 1
    assert s6 == 409 and "no longer stored" in late_same["error"] and late_same["duplicate"] is True
    documented(s6, late_same)
    # Nothing of the refused events was counted.
    counts, _ = await read_individual(aredis, svc.keys, scope, "individual1")
    assert counts == {"GET /user/login": 1}
    assert not await aredis.exists(svc.keys.individual(scope, "mallory"))


async def test_old_format_marker_still_deduplicates(
    svc: Svc, redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    """A marker written by an older worker holds only the entry id: sameness is unknown."""
    scope = Scope(ACME["org"], ACME["source"], ACME["pop"])
    async with running_worker(worker_settings(redis_url, prefix)):
        s1, first = await svc.discrete(ACME, {"Idempotency-Key": "old"})
        marker = svc.keys.seen(scope, "old")
        value = await aredis.get(marker)
        assert value is not None and b" " in value  # the new format: entry id, space, fingerprint
        await aredis.set(marker, value.split(b" ")[0], keepttl=True)
        # The stored copy settles it: same event -> duplicate, another event -> 409.
        s2, same = await svc.discrete(ACME, {"Idempotency-Key": "old"})
        s3, other = await svc.discrete(dict(ACME, action="x"), {"Idempotency-Key": "old"})
        await aredis.delete(svc.keys.reply(scope, "old"))
        s4, gone = await svc.discrete(dict(ACME, action="x"), {"Idempotency-Key": "old"})
    assert s1 == 200
    assert s2 == 200 and same["duplicate"] is True
    assert s3 == 409 and "different event" in other["error"]
    assert s4 == 409 and "no longer stored" in gone["error"]


# ---------------------------------------------------------------- Idempotency-Key header errors


def _raw_post(base: str, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, Any]:
    """POST /discrete with exactly these header bytes (aiohttp's client would refuse them)."""
    url = urlsplit(base)
    head = [
        b"POST /discrete HTTP/1.1",
        f"Host: {url.netloc}".encode(),
        b"Content-Type: application/json",
        f"Content-Length: {len(body)}".encode(),
        b"Connection: close",
    ]
    head += [name + b": " + value for name, value in headers]
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), orjson.loads(payload)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([(b"Idempotency-Key", b"\xe9\xff")], id="not-utf8"),
        pytest.param([(b"Idempotency-Key", b"caf\xc3")], id="truncated-utf8"),
        pytest.param([(b"Idempotency-Key", b"a"), (b"Idempotency-Key", b"a")], id="twice-same"),
        pytest.param([(b"Idempotency-Key", b"a"), (b"idempotency-key", b"b")], id="twice-different"),
    ],
)
async def test_bad_idempotency_key_header_is_400_naming_it(
    svc: Svc, aredis: aioredis.Redis, headers: list[tuple[bytes, bytes]]
) -> None:
    status, got = await asyncio.to_thread(_raw_post, svc.base, headers, orjson.dumps(ACME))
    assert status == 400, got
    assert got["field"] == "Idempotency-Key" and "Idempotency-Key" in got["error"]
    assert "\xe9" not in got["error"] and "\\x" not in got["error"]  # the bytes are not echoed
    documented(status, got)
    assert sum([await aredis.xlen(s) for s in svc.keys.streams()]) == 0


async def test_utf8_idempotency_key_is_accepted(svc: Svc, redis_url: str, prefix: str) -> None:
    async with running_worker(worker_settings(redis_url, prefix)):
        status, got = await asyncio.to_thread(
            _raw_post, svc.base, [(b"Idempotency-Key", "clé-ü".encode())], orjson.dumps(ACME)
        )
    assert status == 200, got
    assert got["event_id"] == "clé-ü"


async def test_id_ttl_with_the_event_id_only_in_the_idempotency_key_header(
    svc: Svc, redis_url: str, prefix: str
) -> None:
    # The header is the event id: id_ttl in the body needs no body event_id then (it was a 400).
    async with running_worker(worker_settings(redis_url, prefix)):
        status, got = await svc.discrete(dict(ACME, id_ttl=30), {"Idempotency-Key": "hdr-ttl-1"})
        assert status == 200, got
        assert got["event_id"] == "hdr-ttl-1"
        documented(status, got)
    # Without any event id (no header, no body event_id) id_ttl is still refused.
    status, got = await svc.discrete(dict(ACME, id_ttl=30))
    assert status == 400 and got["field"] == "id_ttl", got
