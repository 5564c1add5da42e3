"""The web tier: ``POST /discrete`` (request-reply), the query API, the live view, health.

``POST /discrete`` is the seed's endpoint, answered synchronously: the event is
validated, XADDed to its scope's stream shard with a fresh request id (``rid``)
and this process's reply channel, and the handler awaits the worker's result
through :class:`~web.replies.ReplyWaiter` (one pub/sub connection per process).

Event id: the ``Idempotency-Key`` header (once, UTF-8), else the body's
``event_id``, else a random one (128 bits from ``os.urandom``). The worker
counts an event id once per scope (for ``BINORMAL_IDEMPOTENCY_TTL_S``; a random
one, sent with ``id_ttl``, for ``BINORMAL_GENERATED_ID_TTL_S``); a retry of the
same event (same scope, id and action) is answered with the first result plus
``"duplicate": true``, the same key for a different event is a ``409``.
A write whose fate is unknown (the link failed after sending) is a ``503``
with ``"queued": "unknown"``; ``"queued": false`` only when it surely was not
written. An action past ``BINORMAL_MAX_ACTIONS`` is refused by the worker: 422.
When no result comes within ``discrete_timeout_s`` the stored copy of the
result is tried once, then the answer is ``504`` naming the ``event_id``
under which the event is queued (it will still be counted; retry with that
key to read its result without counting it twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from binormal.common import metrics
from binormal.common.connection import (
    TRANSIENT,
    Client,
    InDoubt,
    execute_partial,
    refusal_text,
    refused_write,
    xadd_command,
)
from binormal.common.guard import require_org, setup_auth
from binormal.common.health import setup_health
from binormal.common.http import (
    JSON,
    ApiError,
    body_not_json,
    json_response,
    rate_limit,
    read_body,
    require_content_type,
    unavailable,
)
from binormal.common.keys import Keyspace
from binormal.common.redisapp import REDIS, setup_redis
from binormal.common.schema import LIMITS, Event, InvalidEvent, loads_json, parse_json
from binormal.common.server import setup_limits
from binormal.web.live import setup_live
from binormal.web.query import setup_query
from binormal.web.replies import ReplyWaiter, TooManyWaiting
from binormal.web.settings import WebSettings

log = structlog.get_logger("binormal.web")

# The seed's response keys in the seed's order, then ours (org, event_id, explain, muted, the calibrated fields).
RESPONSE_KEYS = (
    "score",
    "count",
    "zscore",
    "source",
    "pop",
    "id",
    "action",
    "timestamp",
    "thisActionCount",
    "actionzscore",
    "org",
    "event_id",
    "explain",
    "muted",
    "pscore",
    "rzscore",
    "bits_per_event",
    "learning",
    "novel",
    "new_action",
    "recent",  # only with BINORMAL_RECENT_WINDOW > 0 (common/recent.py)
)
DUPLICATE_POLL_S = 0.01  # a duplicate's first result may still be in flight: re-read its stored copy this often

_ACCEPTED = metrics.EVENTS_ACCEPTED.labels("/discrete")
_REJECTED = metrics.EVENTS_REJECTED.labels("/discrete")
_OUTCOME = {
    name: metrics.DISCRETE_REQUESTS.labels(name)
    for name in ("ok", "duplicate", "stored", "timeout", "invalid", "unavailable", "overloaded")
}


class XaddBatcher:
    """Coalesces the XADDs of concurrent requests into pipelined round trips.

    A single XADD costs redis-py ~100 us of CPU; in a pipeline it costs ~10 us.
    Requests queue their entry and await a future; one task sends everything
    queued in one pipeline, and whatever arrives meanwhile goes in the next, so
    one request alone waits for no timer and many share a round trip.
    """

    def __init__(self, client: Client | None, max_batch: int = 500) -> None:
        self._client = client
        self.max_batch = max_batch
        self.round_trips = 0
        self._queue: list[tuple[str, dict[str, str], asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()

    @property
    def client(self) -> Client:
        """The Redis client (set once Redis was reached)."""
        if self._client is None:
            raise RedisConnectionError("redis not reached yet")
        return self._client

    @client.setter
    def client(self, client: Client) -> None:
        self._client = client

    async def xadd(self, stream: str, fields: dict[str, str]) -> None:
        """Append one entry; raises what Redis answered for it (a ResponseError: not written),
        TRANSIENT when it was never sent (not written), :class:`InDoubt` when it was sent
        but no reply came (it may or may not be written)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((stream, fields, fut))
        self._wakeup.set()
        await fut

    async def run(self) -> None:
        """Send queued entries until cancelled."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                await self._send(batch)

    async def _send(self, batch: list[tuple[str, dict[str, str], asyncio.Future[None]]]) -> None:
        self.round_trips += 1
        results: list[Any]
        try:
            got = await execute_partial(self.client, [xadd_command(stream, fields) for stream, fields, _ in batch])
        except Exception as exc:  # never let this task die: every request would hang
            log.exception("xadd_batch_failed", entries=len(batch))
            results = [InDoubt(str(exc))] * len(batch)
        else:
            # Replies read prove their XADDs ran; after a lost link the rest are in doubt
            # if they were sent, and certainly not written if no connection was had.
            missing: BaseException | None = None
            if got.error is not None:
                missing = InDoubt(str(got.error) or type(got.error).__name__) if got.sent else got.error
            results = got.replies + [missing] * (len(batch) - len(got.replies))
        for (_, _, fut), result in zip(batch, results):
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(None)


@dataclass
class Discrete:
    """State of ``POST /discrete`` for one application."""

    settings: WebSettings
    keys: Keyspace
    channel: str
    waiter: ReplyWaiter
    writer: XaddBatcher


DISCRETE = web.AppKey("binormal_discrete", Discrete)
_WEB_SETTINGS = web.AppKey("binormal_web_settings", WebSettings)


def setup(app: web.Application, settings: WebSettings) -> None:
    """Register the web tier's routes and cleanup contexts on ``app``."""
    setup_redis(app, settings.redis_url, settings.keys, settings.redis_cluster)
    setup_health(app, settings.ready_heartbeat_s)
    setup_auth(app, settings)
    setup_limits(app, settings.http_limits)
    app[_WEB_SETTINGS] = settings
    app.cleanup_ctx.append(_replies_ctx)
    app.router.add_post("/discrete", discrete)
    setup_query(app, settings)
    setup_live(app, settings)


def create_app(settings: WebSettings | None = None) -> web.Application:
    """A stand-alone web tier application."""
    settings = settings or WebSettings.from_env()
    app = web.Application(client_max_size=settings.max_body_bytes)
    setup(app, settings)
    return app


def instance_name(settings: WebSettings) -> str:
    """This process's reply channel suffix: ``BINORMAL_INSTANCE`` or host-pid-random."""
    return settings.instance or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


async def _replies_ctx(app: web.Application) -> AsyncIterator[None]:
    """Subscribe to this instance's reply channel (once Redis is up) for the app's lifetime."""
    settings = app[_WEB_SETTINGS]
    handle = app[REDIS]
    channel = settings.keys.reply_channel(instance_name(settings))
    waiter = ReplyWaiter(None, channel)
    writer = XaddBatcher(None)

    def bind(client: Client) -> None:  # runs before handle.up is set: no request sees them unbound
        waiter.client = client
        writer.client = client

    handle.on_connect(bind)
    app[DISCRETE] = Discrete(settings, settings.keys, channel, waiter, writer)

    async def listen() -> None:
        await handle.up.wait()
        await waiter.run()

    tasks = [asyncio.create_task(listen(), name="reply-waiter"), asyncio.create_task(writer.run(), name="xadd")]
    try:
        yield
    finally:
        waiter.stop()  # ends it even if the cancel below gets lost inside redis-py
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class RequestIds:
    """Unpredictable ids: 128 random bits each from ``os.urandom`` (a CSPRNG).

    They name events (made-up event ids) and requests (``rid``) and are echoed
    to callers, so they must not be guessable: a caller who could predict the
    next ids could claim them first and make other callers' events duplicates.
    ``os.urandom`` is a system call, slow on virtual machines, so the bytes are
    drawn ``block`` ids at a time (as hex) and sliced; every id is still 16
    fresh random bytes, never reused.
    """

    def __init__(self, block: int = 256) -> None:
        self._block = block
        self._hex = ""
        self._pos = 0
        # A forked child must not hand out the ids left in its parent's block.
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._hex, self._pos = "", 0

    def new(self) -> str:
        """A fresh id (32 hex chars, 128 random bits, like a uuid4 hex)."""
        pos = self._pos
        if pos >= len(self._hex):
            self._hex = os.urandom(16 * self._block).hex()
            pos = 0
        self._pos = pos + 32
        return self._hex[pos : pos + 32]


_IDS = RequestIds()


def _event_id(request: web.Request, event: Event) -> tuple[str, bool]:
    """``Idempotency-Key`` header, else the body's ``event_id``, else a fresh unique id.

    The flag is True for a made-up id: only a retry after our own 504 can bring
    it back, so the worker is asked to remember it for a shorter time.
    """
    headers = request.headers.getall("Idempotency-Key", ())
    if not headers:
        return (event.event_id, False) if event.event_id else (_IDS.new(), True)
    if len(headers) > 1:
        raise ApiError(400, f"Idempotency-Key must be sent once, got {len(headers)} headers", "Idempotency-Key")
    key = headers[0].strip()
    try:
        # aiohttp decodes header bytes with surrogateescape; a non-UTF-8 key has no UTF-8 form.
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "Idempotency-Key is not valid UTF-8", "Idempotency-Key") from None
    if key == "":
        raise ApiError(400, "Idempotency-Key must not be empty", "Idempotency-Key")
    if len(key.encode("utf-8", "surrogateescape")) > LIMITS["event_id"]:
        raise ApiError(400, f"Idempotency-Key is over the limit of {LIMITS['event_id']} bytes", "Idempotency-Key")
    if event.event_id is not None and event.event_id != key:
        raise ApiError(400, "Idempotency-Key and the body's event_id differ", "Idempotency-Key")
    return key, False


def shape(result: dict[str, Any], started: float) -> dict[str, Any]:
    """The response: ``runtime`` (integer ms) then the result's public keys (``rid`` dropped)."""
    out: dict[str, Any] = {"runtime": int((time.perf_counter() - started) * 1000.0 + 0.5)}
    for key in RESPONSE_KEYS:
        if key in result:
            out[key] = result[key]
    return out


async def discrete(request: web.Request) -> web.Response:
    """``POST /discrete``: count one event and answer its score (see module docstring)."""
    started = time.perf_counter()
    st = request.app[DISCRETE]
    rate_limit(request, 1)  # 429 (BINORMAL_RATE_LIMIT): nothing read, nothing written
    try:
        require_content_type(request, (JSON,))
        body = await read_body(request, st.settings.max_body_bytes)
        try:
            obj = loads_json(body)  # orjson, plus repeated keys flagged
        except orjson.JSONDecodeError:
            raise body_not_json(body) from None
        try:
            # An Idempotency-Key header is the event id (checked by _event_id below).
            event = parse_json(obj, header_event_id="Idempotency-Key" in request.headers)
        except InvalidEvent as exc:
            raise ApiError(400, str(exc), exc.field) from None
        event_id, generated = _event_id(request, event)
        require_org(request, event.org)
    except ApiError:
        _REJECTED.inc()
        _OUTCOME["invalid"].inc()
        raise
    try:
        request.app[REDIS].require()
    except ApiError:
        _OUTCOME["unavailable"].inc()
        raise
    keys = st.keys
    shard = keys.shard(event.scope)
    stored_key = keys.reply(event.scope, event_id, shard)
    rid = _IDS.new()
    remaining = st.settings.discrete_timeout_s - (time.perf_counter() - started)
    try:
        fut = st.waiter.register(rid, stored_key, max(remaining, 0.001))
    except TooManyWaiting:
        _OUTCOME["overloaded"].inc()
        raise ApiError(503, "too many requests waiting for a result", None, {"Retry-After": "1"}) from None
    reply: dict[str, Any] | None = None
    try:
        fields = event.to_fields()
        fields["event_id"] = event_id
        if generated:
            fields["id_ttl"] = str(st.settings.generated_id_ttl_s)
        fields["rid"] = rid
        fields["reply_to"] = st.channel
        try:
            await st.writer.xadd(keys.stream(shard), fields)
        except InDoubt:
            _OUTCOME["unavailable"].inc()
            raise unavailable(
                event_id=event_id,
                queued="unknown",
                hint="the link to redis failed after the event was sent, so it may or may not be queued; "
                "retry with the same Idempotency-Key (it is counted once)",
            ) from None
        except TRANSIENT:
            _OUTCOME["unavailable"].inc()
            raise unavailable(
                event_id=event_id,
                queued=False,
                hint="the event was not queued (redis could not be reached); retry with the same Idempotency-Key",
            ) from None
        except ResponseError as exc:
            # Redis answered and refused it (e.g. OOM under maxmemory noeviction): not written.
            _OUTCOME["unavailable"].inc()
            log.error("discrete_write_refused", error=refusal_text(exc))
            raise ApiError(
                503,
                refused_write(exc),
                None,
                {"Retry-After": "1"},
                event_id=event_id,
                queued=False,
            ) from None
        _ACCEPTED.inc()
        reply = await fut  # None when the time is up
    finally:
        st.waiter.discard(rid)
    if reply is None:
        return await _timed_out(request, st, stored_key, event, event_id, generated, started)
    if reply.get("rejected"):
        _OUTCOME["invalid"].inc()
        # Refused by the worker (the distinct-action cap): dead-lettered, not counted.
        raise ApiError(422, str(reply.get("error")), reply.get("field"), event_id=event_id)
    if reply.get("duplicate"):
        if reply.get("same_event") is False:
            return _reused(event_id)
        return await _duplicate(request, st, stored_key, event, event_id, started)
    if not same_event(reply, event):
        # A stored copy read after a resubscription: its event id was first used by another event.
        return _reused(event_id)
    _OUTCOME["ok"].inc()
    return json_response(shape(reply, started))


def same_event(result: dict[str, Any], event: Event) -> bool:
    """Is ``result`` (a reply or stored copy) the result of ``event``: same scope, individual and action?"""
    return (
        result.get("id") == event.id
        and result.get("action") == event.action
        and result.get("org") == event.org
        and result.get("source") == event.source
        and result.get("pop") == event.pop
    )


def _reused(event_id: str) -> web.Response:
    """409: the event id was first used by a different event (nothing of this one was counted)."""
    _OUTCOME["duplicate"].inc()
    return json_response(
        {
            "error": f"event_id {event_id!r} was already used for a different event",
            "field": "Idempotency-Key",
            "event_id": event_id,
            "duplicate": True,
        },
        status=409,
    )


async def _timed_out(
    request: web.Request, st: Discrete, stored_key: str, event: Event, event_id: str, generated: bool, started: float
) -> web.Response:
    """No reply in time: answer the stored copy if the worker wrote one (for this event), else 504."""
    try:
        raw = await request.app[REDIS].client.get(stored_key)
    except TRANSIENT:
        raw = None
    if raw is not None:
        stored = orjson.loads(raw)
        if not same_event(stored, event):
            return _reused(event_id)
        _OUTCOME["stored"].inc()
        return json_response(shape(stored, started))
    _OUTCOME["timeout"].inc()
    log.info("discrete_timeout", event_id=event_id, timeout_s=st.settings.discrete_timeout_s)
    within = f" within {st.settings.generated_id_ttl_s}s" if generated else ""
    return json_response(
        {
            "error": (
                f"no result within {st.settings.discrete_timeout_s:g}s; the event was queued under "
                f"event_id {event_id!r} and will still be counted (retry with Idempotency-Key: "
                f"{event_id}{within} to get its result without counting it twice)"
            ),
            "field": None,
            "event_id": event_id,
            "queued": True,
        },
        status=504,
    )


async def _duplicate(
    request: web.Request, st: Discrete, stored_key: str, event: Event, event_id: str, started: float
) -> web.Response:
    """The event id was counted before: answer the first result (its stored copy) marked duplicate.

    Only for the same event: a stored copy of another event (an older
    worker's marker cannot tell) is a 409. The first result may still be on
    its way (its copy is stored after the duplicate notice of the same
    batch), so the copy is re-read until the request's deadline.
    """
    client = request.app[REDIS].client
    deadline = started + st.settings.discrete_timeout_s
    while True:
        raw = await client.get(stored_key)
        if raw is not None:
            stored = orjson.loads(raw)
            if not same_event(stored, event):
                return _reused(event_id)
            _OUTCOME["duplicate"].inc()
            return json_response(dict(shape(stored, started), duplicate=True))
        if time.perf_counter() >= deadline:
            break
        await asyncio.sleep(DUPLICATE_POLL_S)
    _OUTCOME["duplicate"].inc()
    return json_response(
        {
            "error": f"event_id {event_id!r} was already counted and its result is no longer stored",
            "field": "Idempotency-Key",
            "event_id": event_id,
            "duplicate": True,
        },
        status=409,
    )
