"""The ingest service: ``POST /events`` writes batches of events to the stream.

Body: NDJSON (``application/x-ndjson``, one event object per line, blank lines
ignored) or a JSON array (``application/json``), at most ``max_body_bytes``.
Each event is validated on its own (:func:`common.schema.parse_json`); valid
ones are XADDed to their scope's shard in pipelined round trips of
``pipeline_batch`` commands, invalid ones are reported, never written::

    202 {"accepted": 998, "rejected": 2,
         "errors": [{"line": 3, "error": "action: is missing", "field": "action"}, ...]}

``line`` is 1-based (for a JSON array: index + 1); at most ``MAX_ERRORS`` are
listed. A batch with no valid event is a ``400`` with the same body plus
``error`` and ``field``. Events may carry ``event_id``: the worker counts an
id once, so a retried batch does not double count.

Backpressure: when the consumer group's outstanding work (see
:func:`common.store.stream_lag`) passes ``max_lag`` the answer is ``503`` with
``Retry-After`` and nothing is written. The reading is reused for ``lag_check_s``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
import structlog
from aiohttp import web
from redis.exceptions import OutOfMemoryError

from common import metrics
from common.connection import TRANSIENT, execute_raw, xadd_command
from common.health import (
    JSON,
    REDIS,
    ApiError,
    body_not_json,
    json_response,
    out_of_memory,
    read_body,
    require_content_type,
    serve,
    setup_health,
    setup_redis,
    unavailable,
)
from common.keys import Keyspace
from common.schema import Event, InvalidEvent, parse_json
from common.store import stream_lag
from ingest.settings import IngestSettings

log = structlog.get_logger("binormal.ingest")

NDJSON = "application/x-ndjson"
MAX_ERRORS = 1000  # per-line errors listed in one answer (``rejected`` counts them all)

_ACCEPTED = metrics.EVENTS_ACCEPTED.labels("/events")
_REJECTED = metrics.EVENTS_REJECTED.labels("/events")


@dataclass
class LagReader:
    """The group's outstanding entries over all shards, read at most every ``ttl_s``.

    Concurrent requests share one reading in flight.
    """

    keys: Keyspace
    ttl_s: float
    limit: int | None = None  # the backpressure bound (see stream_lag)
    value: int = 0
    read_at: float = float("-inf")
    _task: asyncio.Future[int] | None = field(default=None, repr=False)

    async def get(self, client: aioredis.Redis) -> int:
        """The cached reading, refreshed when older than ``ttl_s``."""
        if time.monotonic() - self.read_at < self.ttl_s:
            return self.value
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._read(client))
        # shield: one caller going away must not cancel the reading the others await
        return await asyncio.shield(self._task)

    async def _read(self, client: aioredis.Redis) -> int:
        lag = sum((await stream_lag(client, self.keys, self.limit)).values())
        self.value, self.read_at = lag, time.monotonic()
        return lag


@dataclass
class Batch:
    """A parsed body: valid events with their line numbers, and the errors."""

    events: list[tuple[int, Event]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    rejected: int = 0

    def reject(self, line: int, error: str, field_name: str | None) -> None:
        """Record one bad line (listed while under ``MAX_ERRORS``)."""
        self.rejected += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"line": line, "error": error, "field": field_name})

    def add(self, line: int, obj: Any) -> None:
        """Validate one decoded event."""
        try:
            self.events.append((line, parse_json(obj)))
        except InvalidEvent as exc:
            self.reject(line, str(exc), exc.field)


def parse_ndjson(body: bytes) -> Batch:
    """One event per line; blank lines are skipped but still numbered."""
    batch = Batch()
    for number, raw in enumerate(body.split(b"\n"), 1):
        line = raw.strip()
        if not line:
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            err = body_not_json(line)
            batch.reject(number, str(err.body["error"]).replace("body", "line", 1), "body")
            continue
        batch.add(number, obj)
    return batch


def parse_array(body: bytes) -> Batch:
    """A JSON array of events; "line" is the index + 1."""
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise body_not_json(body) from None
    if not isinstance(items, list):
        raise ApiError(400, f"body must be a JSON array of events (or send {NDJSON})", "body")
    batch = Batch()
    for number, obj in enumerate(items, 1):
        batch.add(number, obj)
    return batch


@dataclass
class Ingest:
    """State of ``POST /events`` for one application."""

    settings: IngestSettings
    keys: Keyspace
    lag: LagReader


INGEST = web.AppKey("binormal_ingest", Ingest)


def setup(app: web.Application, settings: IngestSettings) -> None:
    """Register ``POST /events`` (and health, Redis) on ``app``."""
    setup_redis(app, settings.redis_url, settings.keys)
    setup_health(app, settings.ready_heartbeat_s)
    app[INGEST] = Ingest(settings, settings.keys, LagReader(settings.keys, settings.lag_check_s, settings.max_lag))
    app.router.add_post("/events", events)


def create_app(settings: IngestSettings | None = None) -> web.Application:
    """A stand-alone ingest application."""
    settings = settings or IngestSettings.from_env()
    app = web.Application(client_max_size=settings.max_body_bytes)
    setup(app, settings)
    return app


async def events(request: web.Request) -> web.Response:
    """``POST /events``: validate every event, write the valid ones, report the rest."""
    st = request.app[INGEST]
    ctype = require_content_type(request, (NDJSON, JSON))
    client = request.app[REDIS].require()
    lag = await st.lag.get(client)
    if lag > st.settings.max_lag:
        metrics.BACKPRESSURE.inc()
        raise ApiError(
            503,
            f"the scorers are {lag} entries behind (limit {st.settings.max_lag}); nothing was written, retry later",
            None,
            {"Retry-After": str(st.settings.retry_after_s)},
            lag=lag,
            max_lag=st.settings.max_lag,
        )
    body = await read_body(request, st.settings.max_body_bytes)
    batch = parse_ndjson(body) if ctype == NDJSON else parse_array(body)
    _REJECTED.inc(batch.rejected)
    summary: dict[str, Any] = {"accepted": 0, "rejected": batch.rejected, "errors": batch.errors}
    if not batch.events:
        first = batch.errors[0] if batch.errors else None
        error = "no valid event in the body" if first else "the body holds no event"
        raise ApiError(400, error, first["field"] if first else "body", **summary)
    written = await _write(client, st, batch.events, summary)
    summary["accepted"] = written
    return json_response(summary, status=202)


async def _write(client: aioredis.Redis, st: Ingest, events: list[tuple[int, Event]], summary: dict[str, Any]) -> int:
    """XADD in pipelined chunks, in body order; returns how many were written."""
    keys = st.keys
    streams = keys.streams()
    step = st.settings.pipeline_batch
    written = 0
    for start in range(0, len(events), step):
        chunk = events[start : start + step]
        commands = [xadd_command(streams[keys.shard(ev.scope)], ev.to_fields()) for _, ev in chunk]
        try:
            results = await execute_raw(client, commands)
        except TRANSIENT:
            _ACCEPTED.inc(written)
            log.warning("ingest_write_failed", written=written, first_unwritten_line=chunk[0][0])
            raise unavailable(
                st.settings.retry_after_s,
                accepted=written,
                rejected=summary["rejected"],
                first_unwritten_line=chunk[0][0],
                hint="events from first_unwritten_line on may not have been written; resend them with event_id",
            ) from None
        bad = [i for i, r in enumerate(results) if isinstance(r, Exception)]
        if bad:
            # Redis refused writes (e.g. OOM): say exactly which lines were not written.
            done = written + len(chunk) - len(bad)
            _ACCEPTED.inc(done)
            log.error("ingest_write_refused", error=str(results[bad[0]]), refused=len(bad))
            refuse = out_of_memory if isinstance(results[bad[0]], OutOfMemoryError) else unavailable
            raise refuse(
                st.settings.retry_after_s,
                accepted=done,
                rejected=summary["rejected"],
                unwritten_lines=[chunk[i][0] for i in bad],
                hint=f"redis refused the write ({results[bad[0]]}); resend the unwritten lines with event_id",
            )
        written += len(chunk)
    _ACCEPTED.inc(written)
    return written


def main() -> int:
    """``binormal ingest`` / ``python -m ingest``: the ingest service alone on HOST:INGEST_PORT."""
    settings = IngestSettings.from_env()
    serve(create_app(settings), settings.host, settings.port, "ingest")
    return 0
