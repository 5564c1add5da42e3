"""docs/integrations.md: the exact bodies of log shippers' HTTP outputs against the real ingest and worker.

Vector (json array / NDJSON), Fluent Bit (json / json_lines) and Logstash
(json_batch), gzip-compressed as those shippers send them, are accepted and
counted; a resent batch counts once (event_id); the shippers' own fields
that the transform must drop are refused naming the field; bad gzip, a gzip
bomb, an unsupported coding and a wrong array shape get clear 4xx answers.
"""

from __future__ import annotations

import asyncio
import gzip
import resource
import zlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from binormal.common.schema import Event
from binormal.ingest.app import create_app
from tests.support.events import counts_from_events
from tests.support.http import Served, ingest_settings, post_raw, served
from tests.support.openapi import assert_documented
from tests.support.redis_state import check_counters, drained
from tests.support.shippers import (
    JSON,
    NDJSON,
    SHIPPERS,
    Shipped,
    access_records,
    fluentbit_json,
    logstash_json_batch,
    vector_json,
)
from tests.support.waiting import wait_for
from tests.support.workers import running_worker, worker_settings


class Ingest(Served):
    """A running ingest service."""

    @property
    def events(self) -> str:
        return f"{self.base}/events"


@pytest.fixture
async def ingest(redis_url: str, prefix: str) -> AsyncIterator[Ingest]:
    settings = ingest_settings(redis_url, prefix)
    async with served(create_app(settings), settings.keys, Ingest) as running:
        yield running


async def ship(svc: Ingest, req: Shipped) -> tuple[int, Any]:
    status, got, _ = await post_raw(svc.session, svc.events, req.body, None, **req.headers)
    assert_documented("/events", "post", status, got)
    return status, got


async def written(client: aioredis.Redis, svc: Ingest) -> int:
    return sum([await client.xlen(s) for s in svc.keys.streams()])


async def test_every_shipper_shape_is_accepted_and_counted_once_even_when_resent(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    settings = ingest_settings(redis_url, prefix)
    sent: list[dict[str, Any]] = []
    async with served(create_app(settings), settings.keys, Ingest) as svc:
        async with running_worker(worker_settings(redis_url, prefix)):
            for name, build in SHIPPERS.items():
                records = access_records(name, 60)
                req = build(records)
                assert req.headers.get("Content-Encoding") == "gzip"
                for _ in range(2):  # the shipper retries the whole request (a timeout, a 503): event_id dedups
                    status, got = await ship(svc, req)
                    assert status == 202, (name, got)
                    assert got == {"accepted": 60, "rejected": 0, "errors": []}, name
                sent += records
            await wait_for(lambda: drained(aredis, svc.keys), timeout=60, what="drain")
    truth = counts_from_events(Event(**r) for r in sent)
    assert await check_counters(aredis, settings.keys, truth) == []


@pytest.mark.parametrize("name", list(SHIPPERS))
@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
async def test_shapes_with_and_without_gzip_write_every_record(
    ingest: Ingest, aredis: aioredis.Redis, name: str, compress: bool
) -> None:
    records = access_records(name, 25, event_id=False)
    status, got = await ship(ingest, SHIPPERS[name](records, compress=compress))
    assert status == 202 and got["accepted"] == 25, got
    assert await written(aredis, ingest) == 25


@pytest.mark.parametrize(
    ("req", "field"),
    [
        # Fluent Bit's default json_date_key "date" (a float): the docs set json_date_key false.
        (fluentbit_json([{**access_records("fb", 1)[0], "date": 1764547200.123}]), "date"),
        # Logstash adds @timestamp and @version unless the mutate removes them.
        (logstash_json_batch([{**access_records("ls", 1)[0], "@timestamp": "2025-12-01T00:00:00Z"}]), "@timestamp"),
        # A Vector event that skipped the remap still has message and timestamp.
        (vector_json([{"message": "GET /", "timestamp": "2025-12-01T00:00:00Z"}]), "message"),
    ],
    ids=["fluentbit-date", "logstash-timestamp", "vector-untransformed"],
)
async def test_untransformed_shipper_fields_are_refused_naming_them(
    ingest: Ingest, aredis: aioredis.Redis, req: Shipped, field: str
) -> None:
    status, got = await ship(ingest, req)
    assert status == 400, got
    assert got["errors"][0]["field"] == field and got["errors"][0]["line"] == 1, got
    assert await written(aredis, ingest) == 0


GOOD = orjson.dumps(access_records("x", 3, event_id=False))


@pytest.mark.parametrize(
    ("body", "headers", "status", "field", "says"),
    [
        (b"not gzip at all", {"Content-Encoding": "gzip"}, 400, "body", "not valid gzip"),
        (gzip.compress(GOOD)[:10] + b"\xff" * 20, {"Content-Encoding": "gzip"}, 400, "body", "not valid gzip"),
        (zlib.compress(GOOD)[:-6], {"Content-Encoding": "deflate"}, 400, "body", "not valid deflate"),
        # the fuzzer's case: aiohttp's own decoder left this request unanswered until the client gave up
        (b"[]", {"Content-Encoding": "deflate"}, 400, "body", "not valid deflate"),
        (GOOD, {"Content-Encoding": "zstd"}, 415, "Content-Encoding", "Content-Encoding must be"),
        (GOOD, {"Content-Encoding": "snappy"}, 415, "Content-Encoding", "Content-Encoding must be"),
        (gzip.compress(gzip.compress(GOOD)), {"Content-Encoding": "gzip, gzip"}, 415, "Content-Encoding", "one coding"),
    ],
    ids=["garbage", "corrupt", "truncated-deflate", "not-deflate", "zstd", "snappy", "stacked"],
)
async def test_bad_or_unsupported_encoding_is_4xx_naming_it(
    ingest: Ingest, aredis: aioredis.Redis, body: bytes, headers: dict[str, str], status: int, field: str, says: str
) -> None:
    got_status, got, _ = await post_raw(ingest.session, ingest.events, body, JSON, **headers)
    assert got_status == status, got
    assert got["field"] == field and says in got["error"], got
    assert_documented("/events", "post", status, got)
    assert await written(aredis, ingest) == 0


def _gzip_cut_between_lines(lines: list[bytes], keep: int) -> bytes:
    """A gzip stream of ``lines`` cut right after the first ``keep`` lines (a full flush there, no trailer).

    What a shipper killed mid-request, or a proxy that lost the tail, leaves: every byte up to the
    cut decodes to whole NDJSON lines, only the end marker and CRC are missing.
    """
    out = zlib.compressobj(6, zlib.DEFLATED, 31)
    head = out.compress(b"".join(lines[:keep])) + out.flush(zlib.Z_FULL_FLUSH)
    return head


NDJSON_LINES = [orjson.dumps(r) + b"\n" for r in access_records("t", 6, event_id=False)]
WHOLE_GZIP = gzip.compress(b"".join(NDJSON_LINES))


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (_gzip_cut_between_lines(NDJSON_LINES, 3), "truncated"),
        (WHOLE_GZIP[:-8], "truncated"),  # every line and the end block, no CRC/size trailer
        (WHOLE_GZIP[:-8] + bytes([WHOLE_GZIP[-8] ^ 0xFF]) + WHOLE_GZIP[-7:], "not valid gzip"),  # bad CRC
        (WHOLE_GZIP + b"trailing junk", "not valid gzip"),  # bytes after the stream that are no gzip member
    ],
    ids=["cut-between-lines", "no-trailer", "bad-crc", "trailing-junk"],
)
async def test_truncated_or_corrupt_gzip_ndjson_is_400_and_writes_nothing(
    ingest: Ingest, aredis: aioredis.Redis, body: bytes, says: str
) -> None:
    status, got, _ = await post_raw(ingest.session, ingest.events, body, NDJSON, **{"Content-Encoding": "gzip"})
    assert status == 400, got
    assert got["field"] == "body" and says in got["error"] and "gzip" in got["error"], got
    assert_documented("/events", "post", 400, got)
    assert await written(aredis, ingest) == 0


async def test_concatenated_gzip_members_are_one_body(ingest: Ingest, aredis: aioredis.Redis) -> None:
    # RFC 1952: a gzip file may be several members back to back (`cat a.gz b.gz`); all of them count.
    body = gzip.compress(b"".join(NDJSON_LINES[:2])) + gzip.compress(b"".join(NDJSON_LINES[2:]))
    status, got, _ = await post_raw(ingest.session, ingest.events, body, NDJSON, **{"Content-Encoding": "gzip"})
    assert status == 202 and got["accepted"] == 6, got
    assert await written(aredis, ingest) == 6


async def test_repeated_content_encoding_header_is_415(ingest: Ingest, aredis: aioredis.Redis) -> None:
    headers = [("Content-Type", JSON), ("Content-Encoding", "gzip"), ("Content-Encoding", "gzip")]
    async with ingest.session.post(ingest.events, data=gzip.compress(GOOD), headers=headers) as r:
        got = await r.json()
        assert r.status == 415 and got["field"] == "Content-Encoding", got
    assert await written(aredis, ingest) == 0


def _bomb(decoded: int) -> bytes:
    """A gzip stream of ``decoded`` zero bytes, built without holding them (about 1/1000 the size)."""
    out = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip header and trailer
    block = bytes(1 << 20)
    parts = [out.compress(block) for _ in range(decoded >> 20)]
    return b"".join(parts) + out.flush()


async def test_gzip_bomb_is_413_without_decoding_it_into_memory(ingest: Ingest, aredis: aioredis.Redis) -> None:
    bomb = _bomb(512 << 20)  # 512 MiB once decoded, about half a MiB on the wire
    assert len(bomb) < 1 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux; the service runs in this process
    status, got, _ = await post_raw(ingest.session, ingest.events, bomb, NDJSON, **{"Content-Encoding": "gzip"})
    assert status == 413 and got["field"] == "body" and got["limit"] == 8 * 1024 * 1024, got
    assert_documented("/events", "post", 413, got)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 128, f"peak memory grew by {grown_mib:.0f} MiB while refusing the bomb"
    assert await written(aredis, ingest) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (orjson.dumps(access_records("x", 1, event_id=False)[0]), "body"),  # one object: Logstash format => json
        (orjson.dumps([access_records("x", 2, event_id=False)]), "body"),  # an array of one array
        (orjson.dumps({"events": access_records("x", 2, event_id=False)}), "body"),  # a wrapped batch
    ],
    ids=["object", "nested-array", "wrapped"],
)
async def test_wrong_array_shape_is_400(ingest: Ingest, aredis: aioredis.Redis, body: bytes, field: str) -> None:
    status, got, _ = await post_raw(
        ingest.session, ingest.events, gzip.compress(body), JSON, **{"Content-Encoding": "gzip"}
    )
    assert status == 400 and got["field"] == field, got
    assert_documented("/events", "post", 400, got)
    assert await written(aredis, ingest) == 0


async def test_gzip_array_reports_bad_records_by_index_plus_one(ingest: Ingest, aredis: aioredis.Redis) -> None:
    records: list[Any] = access_records("x", 4, event_id=False)
    records[1] = {**records[1], "host": "web-1"}  # a field the transform forgot
    records[3] = "GET /"  # not an object
    status, got = await ship(ingest, fluentbit_json(records))
    assert status == 202, got
    assert got["accepted"] == 2 and got["rejected"] == 2
    assert [(e["line"], e["field"]) for e in got["errors"]] == [(2, "host"), (4, "body")]
    assert await written(aredis, ingest) == 2


@pytest.mark.parametrize("coding", ["deflate", "gzip"])
async def test_a_body_that_is_not_its_coding_is_answered_on_a_kept_alive_connection(
    ingest: Ingest, aredis: aioredis.Redis, coding: str
) -> None:
    """The fuzzer's request byte for byte (HTTP/1.1, keep-alive, 2-byte body): a 400 comes back, promptly."""
    host, port = ingest.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\nContent-Type: application/json\r\n"
        + f"Content-Encoding: {coding}\r\nContent-Length: 2\r\n\r\n[]".encode()
    )
    try:
        status_line = await asyncio.wait_for(reader.readline(), 5.0)
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 400"), status_line
    assert await written(aredis, ingest) == 0
