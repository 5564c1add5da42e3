"""The ingest service: ``POST /events`` writes batches of events to the stream.

Body: NDJSON (``application/x-ndjson``, one event object per line, blank lines
ignored) or a JSON array (``application/json``), at most ``max_body_bytes``
once decoded: it may be sent ``Content-Encoding: gzip`` (or ``deflate``), as
log shippers do (docs/integrations.md); a body that does not decode is a
``400``, any other coding a ``415``.
Each event is validated on its own (:func:`common.schema.parse_json`); valid
ones are XADDed to their scope's shard in pipelined round trips of
``pipeline_batch`` commands, invalid ones are reported, never written::

    202 {"accepted": 998, "rejected": 2,
         "errors": [{"line": 3, "error": "action: is missing", "field": "action"}, ...]}

``line`` is 1-based (for a JSON array: index + 1); at most ``MAX_ERRORS`` are
listed. A batch with no valid event is a ``400`` with the same body plus
``error`` and ``field``. Events may carry ``event_id``: the worker counts an
id once, so a retried batch does not double count.

A line whose action is new to a scope that already has ``max_actions``
distinct actions is rejected like an invalid one (ingest/actioncap.py).

Backpressure: when the consumer group's outstanding work (see
:func:`common.store.stream_lag`) passes ``max_lag`` the answer is ``503`` with
``Retry-After`` and nothing is written. The reading is reused for ``lag_check_s``.

Honest outcomes: when Redis fails during the write, every valid line is known
accepted, unknown (sent, no answer: resend with the same ``event_id``) or
unwritten (refused, e.g. ``OOM``, or never sent), and the answer is::

    503 {"error": "redis unavailable", "field": null, "accepted": 244, "rejected": 2, "errors": [...],
         "unknown": 756, "unknown_lines": [[246, 1001]], "unwritten": 1000, "unwritten_lines": [[1002, 2001]],
         "hint": "..."}

Ranges are inclusive body lines; a range never spans a rejected line or an
event outside its set (blank lines may sit inside).
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from aiohttp import web
from redis.exceptions import ResponseError

from binormal.common import metrics
from binormal.common.connection import Client, execute_partial, refused_write, xadd_command
from binormal.common.guard import org_forbidden, principal_of, setup_auth
from binormal.common.health import setup_health
from binormal.common.http import (
    JSON,
    ApiError,
    body_coding,
    body_not_json,
    json_response,
    rate_limit,
    read_body,
    require_content_type,
)
from binormal.common.keys import Keyspace
from binormal.common.redisapp import REDIS, setup_redis
from binormal.common.schema import Event, InvalidEvent, loads_json, parse_json, parse_json_lines
from binormal.common.server import setup_limits
from binormal.common.store import stream_lag
from binormal.ingest.actioncap import ActionCap
from binormal.ingest.settings import IngestSettings

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

    async def get(self, client: Client) -> int:
        """The cached reading, refreshed when older than ``ttl_s``."""
        if time.monotonic() - self.read_at < self.ttl_s:
            return self.value
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._read(client))
        # shield: one caller going away must not cancel the reading the others await
        return await asyncio.shield(self._task)

    async def _read(self, client: Client) -> int:
        lag = sum((await stream_lag(client, self.keys, self.limit)).values())
        self.value, self.read_at = lag, time.monotonic()
        return lag


@dataclass
class Batch:
    """A parsed body: valid events with their line numbers, and the errors."""

    events: list[tuple[int, Event]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    rejected: int = 0
    rejected_lines: list[int] = field(default_factory=list)  # every one, ascending (line ranges stop at them)

    def reject(self, line: int, error: str, field_name: str | None) -> None:
        """Record one bad line (listed while under ``MAX_ERRORS``)."""
        self.rejected += 1
        self.rejected_lines.append(line)
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"line": line, "error": error, "field": field_name})

    def add(self, line: int, obj: Any) -> None:
        """Validate one decoded event."""
        try:
            self.events.append((line, parse_json(obj)))
        except InvalidEvent as exc:
            self.reject(line, str(exc), exc.field)


def parse_ndjson(body: bytes) -> Batch:
    """One event per line; blank lines are skipped but still numbered (repeated keys rejected)."""
    events, errors = parse_json_lines(body)  # orjson, validated, repeated keys rejected
    batch = Batch(events=events)
    for number, error, field_name in errors:
        batch.reject(number, error, field_name)
    return batch


def parse_array(body: bytes) -> Batch:
    """A JSON array of events; "line" is the index + 1."""
    try:
        items = loads_json(body)  # each item with repeated keys is flagged, and rejected alone
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
    cap: ActionCap


INGEST = web.AppKey("binormal_ingest", Ingest)


def setup(app: web.Application, settings: IngestSettings) -> None:
    """Register ``POST /events`` (and health, Redis) on ``app``."""
    setup_redis(app, settings.redis_url, settings.keys, settings.redis_cluster)
    setup_health(app, settings.ready_heartbeat_s)
    setup_auth(app, settings)
    setup_limits(app, settings.http_limits)
    app[INGEST] = Ingest(
        settings,
        settings.keys,
        LagReader(settings.keys, settings.lag_check_s, settings.max_lag),
        ActionCap(settings.keys, settings.max_actions),
    )
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
    require_coding(request)
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
    rate_limit(request, 1, charge=False)  # a caller in debt is refused before its body is read
    body = await read_body(request, st.settings.max_body_bytes)
    batch = parse_ndjson(body) if ctype == NDJSON else parse_array(body)
    _check_orgs(request, batch)  # every line before any write: a foreign org writes nothing
    rate_limit(request, len(batch.events) + batch.rejected)  # every line is an event; 429 writes nothing
    if batch.events:
        before = batch.rejected
        batch.events = await st.cap.check(client, batch.events, batch)
        if batch.rejected != before:  # refused by the action cap: keep the report in line order
            batch.rejected_lines.sort()
            batch.errors.sort(key=lambda err: int(err["line"]))
    _REJECTED.inc(batch.rejected)
    summary: dict[str, Any] = {"accepted": 0, "rejected": batch.rejected, "errors": batch.errors}
    if not batch.events:
        first = batch.errors[0] if batch.errors else None
        error = "no valid event in the body" if first else "the body holds no event"
        raise ApiError(400, error, first["field"] if first else "body", **summary)
    await _write(client, st, batch, summary)
    return json_response(summary, status=202)


def require_coding(request: web.Request) -> None:
    """``415`` unless the body's ``Content-Encoding`` is absent or gzip, deflate, identity (one coding)."""
    body_coding(request)


def _check_orgs(request: web.Request, batch: Batch) -> None:
    """``403`` naming the first org (and its lines) the token may not use; nothing is written then."""
    principal = principal_of(request)
    if principal is None or principal.orgs is None:
        return
    orgs = principal.orgs
    lines = [line for line, ev in batch.events if ev.org not in orgs]
    if lines:
        org = next(ev.org for line, ev in batch.events if line == lines[0])
        raise org_forbidden(principal, org, accepted=0, lines=lines[:MAX_ERRORS], forbidden=len(lines))


async def _write(client: Client, st: Ingest, batch: Batch, summary: dict[str, Any]) -> None:
    """XADD in pipelined chunks, in body order; sets ``summary["accepted"]``.

    Every line ends known accepted (its XADD answered), unwritten (Redis refused
    it, or it was never sent because Redis could not be reached or an earlier
    chunk failed) or unknown (sent, but the link failed before its answer). Any
    unwritten or unknown line makes the answer a ``503`` listing them as ranges.
    """
    keys = st.keys
    streams = keys.streams()
    step = st.settings.pipeline_batch
    events = batch.events
    accepted = 0
    unknown: list[int] = []  # indexes into events
    unwritten: list[int] = []
    error: str | None = None
    why: list[str] = []  # why the unwritten lines were not written
    done = 0
    while done < len(events) and error is None:
        chunk = events[done : done + step]
        commands = [xadd_command(streams[keys.shard(ev.scope)], ev.to_fields()) for _, ev in chunk]
        got = await execute_partial(client, commands)
        for k, r in enumerate(got.replies):
            if isinstance(r, Exception):
                # Redis answered and refused it (e.g. OOM under maxmemory noeviction): not written.
                unwritten.append(done + k)
                error = error or (refused_write(r) if isinstance(r, ResponseError) else f"redis refused: {r!s:.200}")
            else:
                accepted += 1
        if unwritten:
            why.append(f"{len(unwritten)} refused by redis")
        if got.error is not None:
            rest = range(done + len(got.replies), done + len(chunk))
            # Redis answers a connection's commands in order: replies read prove their XADDs ran,
            # the rest are in doubt once sent, and certainly not written if nothing was sent.
            (unknown if got.sent else unwritten).extend(rest)
            if not got.sent:
                why.append(f"{len(rest)} not sent: redis could not be reached")
            error = error or "redis unavailable"
            log.warning("ingest_link_failed", error=str(got.error)[:200] or type(got.error).__name__, sent=got.sent)
        done += len(chunk)
    if done < len(events):
        why.append(f"{len(events) - done} not sent: an earlier part of the batch failed")
        unwritten.extend(range(done, len(events)))
    summary["accepted"] = accepted
    _ACCEPTED.inc(accepted)
    if error is None:
        return
    log.error("ingest_write_incomplete", error=error, accepted=accepted, unknown=len(unknown), unwritten=len(unwritten))
    raise ApiError(
        503,
        error,
        None,
        {"Retry-After": str(st.settings.retry_after_s)},
        **summary,
        unknown=len(unknown),
        unknown_lines=line_ranges(events, unknown, batch.rejected_lines),
        unwritten=len(unwritten),
        unwritten_lines=line_ranges(events, unwritten, batch.rejected_lines),
        unwritten_reason="; ".join(why),
        hint=(
            "lines in unknown_lines may or may not have been written: resend them with the same event_id "
            "(counted once; a line without event_id may then count twice); lines in unwritten_lines were "
            "not written: resend them"
        ),
    )


def line_ranges(events: list[tuple[int, Event]], members: list[int], rejected_lines: list[int]) -> list[list[int]]:
    """``events[k]`` for ``k`` in ``members`` (ascending) as inclusive ``[first, last]`` line ranges.

    A range covers consecutive events only: it stops before any event not in
    ``members`` and any rejected line (``rejected_lines`` ascending), so every
    non-blank line inside a range is a member.
    """
    out: list[list[int]] = []
    prev = -2
    for k in members:
        line = events[k][0]
        if out and k == prev + 1 and bisect_left(rejected_lines, line) == bisect_right(rejected_lines, out[-1][1]):
            out[-1][1] = line
        else:
            out.append([line, line])
        prev = k
    return out
