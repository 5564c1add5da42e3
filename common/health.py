"""HTTP plumbing shared by the web tier and the ingest service.

- :func:`setup_redis`: one Redis client per application (a cleanup context),
  connected in the background with :func:`~common.connection.wait_until_up`,
  so a service started before Redis serves ``/healthz`` at once, reports
  not-ready on ``/readyz`` and answers other requests ``503`` JSON
  ``redis unavailable`` instead of hanging (the seed's FIXME).
- :func:`setup_health`: ``GET /healthz``, ``GET /readyz``, ``GET /metrics`` and
  the middleware that times every request and turns every error into JSON.
- :class:`ApiError`, :func:`read_body`, :func:`require_content_type`: the
  pieces handlers use to answer ``4xx`` JSON ``{"error": ..., "field": ...}``.

Both setup functions are idempotent, so ``binormal run`` can set up the web
tier and the ingest service on one application: the routes, the middleware
and the client exist once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from redis.exceptions import OutOfMemoryError, ResponseError

from binormal.common import metrics
from binormal.common.auth import PRINCIPAL
from binormal.common.connection import TRANSIENT, make_client, wait_until_up
from binormal.common.keys import Keyspace
from binormal.common.ratelimit import retry_after
from binormal.common.runtime import tune_gc
from binormal.common.server import HTTP_STATE, run_app
from binormal.common.store import dead_lengths, groups_present, heartbeat_ages, stream_lag

log = structlog.get_logger("binormal.http")

REDIS_POOL_SIZE = 64  # connections per HTTP process (requests wait for one, see make_client)
REDIS_POOL_WAIT_S = 2.0
PROBE_TIMEOUT_S = 1.0  # /readyz and /metrics never wait longer than this on Redis
JSON = "application/json"


class ApiError(Exception):
    """An error answered as JSON: ``{"error": message, "field": field, ...extra}``."""

    def __init__(
        self,
        status: int,
        error: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: object,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.body: dict[str, Any] = {"error": error, "field": field, **extra}
        self.headers = headers or {}

    def response(self) -> web.Response:
        """The JSON response for this error."""
        return json_response(self.body, status=self.status, headers=self.headers)


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """``obj`` as an ``application/json`` response (orjson)."""
    return web.Response(body=orjson.dumps(obj), status=status, content_type=JSON, headers=headers)


def unavailable(retry_after_s: int = 1, **extra: Any) -> ApiError:
    """``503 redis unavailable`` with ``Retry-After``."""
    return ApiError(503, "redis unavailable", None, {"Retry-After": str(retry_after_s)}, **extra)


def out_of_memory(retry_after_s: int = 5, **extra: Any) -> ApiError:
    """``503`` for a Redis at its ``maxmemory``: the write was refused, nothing was stored."""
    return ApiError(
        503,
        "redis is out of memory (maxmemory reached): the write was refused and nothing was stored; "
        "raise maxmemory (BINORMAL_REDIS_MAXMEMORY for the embedded Redis) or free memory, then retry",
        None,
        {"Retry-After": str(retry_after_s)},
        **extra,
    )


def require_content_type(request: web.Request, allowed: Iterable[str]) -> str:
    """The request's media type if it is one of ``allowed`` (UTF-8 charset only), else ``415``."""
    allowed = tuple(allowed)
    ctype = request.content_type
    if ctype not in allowed:
        # The header is not echoed: an error never quotes the caller's input.
        missing = "Content-Type" not in request.headers
        raise ApiError(
            415, f"Content-Type must be {' or '.join(allowed)}{' (none was sent)' if missing else ''}", "Content-Type"
        )
    charset = request.charset
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise ApiError(415, "charset must be utf-8", "Content-Type")
    return ctype


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, or ``413`` as soon as it passes ``limit`` bytes (never buffered past it).

    The whole body must arrive within the app's ``body_timeout_s``
    (``BINORMAL_BODY_TIMEOUT_S``), else ``408``: a body trickled in byte by
    byte does not hold a connection for ever.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise ApiError(413, f"body is {declared} bytes, over the limit of {limit}", "body", limit=limit)
    state = request.app.get(HTTP_STATE)
    timeout_s = state.limits.body_timeout_s if state is not None else None
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                chunk = await request.content.readany()
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"body is over the limit of {limit} bytes", "body", limit=limit)
                chunks.append(chunk)
    except TimeoutError:
        metrics.HTTP_REFUSED.labels("body_timeout").inc()
        raise ApiError(
            408, f"body not received within {timeout_s:g}s", "body", headers={"Connection": "close"}
        ) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def rate_limit(request: web.Request, events: int, charge: bool = True) -> None:
    """``429`` with ``Retry-After`` when the caller is over its rate (``BINORMAL_RATE_LIMIT`` events/s).

    The caller is the token's name when authenticated (``request[PRINCIPAL]``),
    else the client address. ``charge=False`` only checks that one event would pass.
    """
    state = request.app.get(HTTP_STATE)
    if state is None or not state.buckets.enabled:
        return
    principal = request.get(PRINCIPAL)
    key = f"token:{principal.name}" if principal is not None else f"addr:{request.remote}"
    wait_s = state.buckets.charge(key, events) if charge else state.buckets.wait_s(key, 1)
    if wait_s > 0:
        metrics.RATE_LIMITED.inc()
        raise ApiError(
            429,
            f"rate limit of {state.buckets.rate:g} events/s exceeded; nothing was written",
            None,
            {"Retry-After": str(retry_after(wait_s))},
            limit=state.buckets.rate,
        )


def body_not_json(body: bytes) -> ApiError:
    """The 400 for a body orjson refused: not UTF-8, or not JSON."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return ApiError(400, f"body is not valid UTF-8 (byte {exc.start})", "body")
    return ApiError(400, "body is not valid JSON", "body")


# ---------------------------------------------------------------- Redis handle


class RedisHandle:
    """The application's Redis client and whether it has been reached yet."""

    def __init__(self, client: aioredis.Redis, keys: Keyspace) -> None:
        self.client = client
        self.keys = keys
        self.up = asyncio.Event()

    def require(self) -> aioredis.Redis:
        """The client, or ``503 redis unavailable`` while Redis was never reached."""
        if not self.up.is_set():
            raise unavailable()
        return self.client


@dataclass(frozen=True)
class RedisConfig:
    """What :func:`setup_redis` was asked for (checked when called twice)."""

    url: str
    keys: Keyspace


@dataclass
class Supervision:
    """What a supervising process (``binormal run``) says about its embedded Redis.

    ``state``: ``running``, ``restarting`` (it died and is being started again:
    not ready, still alive) or ``failed`` (restarts keep failing: the process
    cannot heal itself, so liveness fails too). ``detail`` says why.
    """

    state: str = "running"
    detail: str = ""


REDIS = web.AppKey("binormal_redis", RedisHandle)
SUPERVISION = web.AppKey("binormal_supervision", Supervision)
_REDIS_CONFIG = web.AppKey("binormal_redis_config", RedisConfig)
_HEALTH_READY_S = web.AppKey("binormal_ready_heartbeat_s", float)


def setup_redis(app: web.Application, url: str, keys: Keyspace) -> None:
    """Give ``app`` a Redis client (``app[REDIS]``) for its lifetime; idempotent."""
    config = RedisConfig(url, keys)
    existing = app.get(_REDIS_CONFIG)
    if existing is not None:
        if existing != config:
            raise ValueError(f"services on one app must share Redis settings: {existing} != {config}")
        return
    app[_REDIS_CONFIG] = config
    app.cleanup_ctx.append(_redis_ctx)


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[_REDIS_CONFIG]
    client = make_client(config.url, max_connections=REDIS_POOL_SIZE, pool_timeout=REDIS_POOL_WAIT_S)
    handle = RedisHandle(client, config.keys)
    app[REDIS] = handle
    stop = asyncio.Event()

    async def connect() -> None:
        log.info("waiting_for_redis", url=_safe_url(config.url))
        if await wait_until_up(client, stop):
            handle.up.set()
            metrics.REDIS_UP.set(1)
            log.info("redis_ready", url=_safe_url(config.url))

    task = asyncio.create_task(connect(), name="redis-connect")
    try:
        yield
    finally:
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()


def _safe_url(url: str) -> str:
    """The URL without a password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


# ---------------------------------------------------------------- health routes and middleware


def setup_health(app: web.Application, ready_heartbeat_s: float) -> None:
    """Register ``/healthz``, ``/readyz``, ``/metrics`` and the JSON/timing middleware; idempotent."""
    if _HEALTH_READY_S in app:
        return
    app[_HEALTH_READY_S] = ready_heartbeat_s
    app.middlewares.append(observe)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time the request (histogram) and answer every error as JSON.

    ``ApiError`` carries its own body; aiohttp's HTTP errors (404, 405, 413)
    become ``{"error": reason, "field": ...}``; a Redis outage or a Redis at
    its maxmemory (OOM) becomes ``503``;
    a command Redis refused (bad state under a key: WRONGTYPE) is a ``500``
    that quotes Redis; anything else is logged and answered ``500``.
    """
    started = time.perf_counter()
    resp: web.StreamResponse
    try:
        resp = await handler(request)
    except ApiError as exc:
        resp = exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        field = "method" if exc.status == 405 else ("body" if exc.status == 413 else None)
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        resp = json_response({"error": exc.reason, "field": field}, exc.status, headers)
    except TRANSIENT as exc:
        log.warning("redis_error", path=request.path, error=str(exc) or type(exc).__name__)
        resp = unavailable().response()
    except OutOfMemoryError:
        # maxmemory reached (noeviction): Redis refused the write, nothing of it was stored.
        log.error("redis_out_of_memory", path=request.path)
        resp = out_of_memory().response()
    except ResponseError as exc:
        log.error("redis_refused", path=request.path, error=str(exc))
        resp = json_response({"error": f"Redis refused a command: {exc}", "field": None}, 500)
    except Exception:
        log.exception("request_failed", path=request.path)
        resp = json_response({"error": "internal error", "field": None}, 500)
    if not isinstance(resp, web.WebSocketResponse):
        route = request.match_info.route.resource
        key = (route.canonical if route is not None else "unmatched", request.method, resp.status // 100)
        child = _latency.get(key)
        if child is None:
            # Bounded: routes are the registered ones (plus "unmatched"), methods and status classes few.
            child = _latency[key] = metrics.REQUEST_SECONDS.labels(key[0], key[1][:10], f"{key[2]}xx")
        child.observe(time.perf_counter() - started)
    return resp


_latency: dict[tuple[str, str, int], Any] = {}


async def healthz(request: web.Request) -> web.Response:
    """The process is alive (no dependency is checked), unless its supervisor cannot heal its Redis."""
    sup = request.app.get(SUPERVISION)
    if sup is None:
        return json_response({"status": "alive"})
    if sup.state == "failed":
        return json_response({"status": "failing", "embedded_redis": sup.state, "reason": sup.detail}, 503)
    return json_response({"status": "alive", "embedded_redis": sup.state})


async def readyz(request: web.Request) -> web.Response:
    """Ready when Redis answers, every shard has the consumer group and a worker beat recently."""
    handle = request.app[REDIS]
    max_age_s = request.app[_HEALTH_READY_S]
    checks: dict[str, Any] = {"redis": False, "groups": False, "worker": False}
    reasons: list[str] = []
    sup = request.app.get(SUPERVISION)
    if sup is not None and sup.state != "running":
        reasons.append(sup.detail or f"embedded redis {sup.state}")
    if not handle.up.is_set():
        reasons.append("redis not reached yet")
    else:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await handle.client.ping()
                checks["redis"] = True
                missing = await groups_present(handle.client, handle.keys)
                beats = await heartbeat_ages(handle.client, handle.keys)
        except TRANSIENT as exc:
            reasons.append(f"redis unreachable: {exc or type(exc).__name__}")
        else:
            checks["groups"] = not missing
            if missing:
                reasons.append(f"consumer group missing on shards {missing}")
            age_s = min(beats.values(), default=math.inf)  # judged by Redis TIME (store.heartbeat_ages)
            checks["worker"] = age_s <= max_age_s
            if not checks["worker"]:
                reasons.append("no worker heartbeat" if not beats else f"newest worker heartbeat is {age_s:.1f}s old")
    metrics.REDIS_UP.set(1 if checks["redis"] else 0)
    ready = all(checks.values()) and not (sup is not None and sup.state != "running")
    body = {"ready": ready, "checks": checks, "reasons": reasons}
    return json_response(body, 200 if ready else 503)


async def metrics_view(request: web.Request) -> web.Response:
    """Prometheus text format; the stream lag and dead-letter gauges are read from Redis now."""
    handle = request.app[REDIS]
    if handle.up.is_set():
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                lag = await stream_lag(handle.client, handle.keys)
                dead = await dead_lengths(handle.client, handle.keys)
        except TRANSIENT as exc:
            metrics.REDIS_UP.set(0)
            log.warning("metrics_redis_error", error=str(exc) or type(exc).__name__)
        else:
            metrics.REDIS_UP.set(1)
            for shard, n in lag.items():
                metrics.STREAM_LAG.labels(str(shard)).set(n)
            for shard, n in dead.items():
                metrics.DEAD_LETTERED.labels(str(shard)).set(n)
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


def serve(app: web.Application, host: str, port: int, name: str) -> None:
    """Run one service's ``app`` in the foreground until SIGINT/SIGTERM.

    Graceful: the socket closes, in-flight requests get up to 5 s, then the
    cleanup contexts (pub/sub listeners, Redis client) are torn down.
    """
    log.info("listening", service=name, url=f"http://{host}:{port}")
    tune_gc()  # everything is imported and the app built: freeze it
    run_app(app, host, port, shutdown_timeout=5.0)  # web.run_app with common.server's bounds
