"""The HTTP toolkit shared by the web tier and the ingest service.

- :class:`ApiError`, :func:`json_response`: every error is answered as JSON
  ``{"error": ..., "field": ...}``; :func:`unavailable`, :func:`out_of_memory`
  are the ``503`` s of a Redis that is away or full.
- :func:`require_content_type`, :func:`read_body`, :func:`body_not_json`:
  request bodies checked and bounded (size and time) before anything parses them.
- :func:`rate_limit`: the per-caller token bucket (``429``).
- :func:`observe`: the middleware that times every request and turns every error into JSON.
- :func:`serve`: run one service's app in the foreground.

The Redis client of an app is in :mod:`binormal.common.redisapp`; the health
routes in :mod:`binormal.common.health`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
import structlog
from aiohttp import web
from redis.exceptions import OutOfMemoryError, ResponseError

from binormal.common import log as logconf
from binormal.common import metrics
from binormal.common.auth import PRINCIPAL
from binormal.common.bodycoding import CODINGS, BodyCodingError, BodyDecoder, BodyTooLarge
from binormal.common.connection import TRANSIENT
from binormal.common.ratelimit import retry_after
from binormal.common.runtime import tune_gc
from binormal.common.schema import DuplicateKeys, loads_json
from binormal.common.server import HTTP_STATE, run_app

log = structlog.get_logger("binormal.http")

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


def single_query(request: web.Request, name: str) -> str | None:
    """The query parameter ``name``, None when absent; ``400`` naming it when given more than once."""
    values = request.query.getall(name, ())
    if len(values) > 1:
        raise ApiError(400, f"{name}: given {len(values)} times, give it once", name)
    return values[0] if values else None


def allowed_query(request: web.Request, names: tuple[str, ...]) -> dict[str, str]:
    """The parameters ``names`` that were given (each at most once); ``400`` naming any other one."""
    for name in request.query:
        if name not in names:
            raise ApiError(400, f"query parameter not allowed here (allowed: {', '.join(names)})", name[:64])
    return {name: value for name in names if (value := single_query(request, name)) is not None}


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


def body_coding(request: web.Request) -> str | None:
    """The body's ``Content-Encoding`` to decode here (``gzip``/``deflate``), None for none; ``415`` otherwise.

    None too when aiohttp already decoded it (a plain ``web.AppRunner``: its payload stream then
    counts compressed bytes); the services' :class:`~common.server.BoundedAppRunner` leaves it to us.
    """
    codings = request.headers.getall("Content-Encoding", [])
    if not codings:
        return None
    coding = codings[0].strip().lower()
    if len(codings) > 1 or coding not in CODINGS:
        # The header is not echoed: an error never quotes the caller's input.
        raise ApiError(415, f"Content-Encoding must be {', '.join(CODINGS)} (one coding)", "Content-Encoding")
    if coding == "identity" or request.content.total_compressed_bytes is not None:
        return None
    return coding


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, or ``413`` as soon as it passes ``limit`` bytes (never buffered past it).

    A body sent with ``Content-Encoding: gzip`` (or ``deflate``) is decoded here while it is
    read (:class:`~common.bodycoding.BodyDecoder`), so ``limit`` bounds the decoded size (a gzip
    bomb is a ``413``, never a memory blow-up), and a stream that does not decode, or ends before
    its end marker (truncated), is a ``400`` before the caller sees any of it; another coding is a
    ``415``.

    The whole body must arrive within the app's ``body_timeout_s``
    (``BINORMAL_BODY_TIMEOUT_S``), else ``408``: a body trickled in byte by
    byte does not hold a connection for ever.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise ApiError(413, f"body is {declared} bytes, over the limit of {limit}", "body", limit=limit)
    coding = body_coding(request)
    decoder = BodyDecoder(coding) if coding is not None else None
    state = request.app.get(HTTP_STATE)
    timeout_s = state.limits.body_timeout_s if state is not None else None
    chunks: list[bytes] = []
    size = 0
    too_large = ApiError(413, f"body is over the limit of {limit} bytes", "body", limit=limit)
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                chunk = await request.content.readany()
                if not chunk:
                    break
                if decoder is not None:
                    if decoder.raw + len(chunk) > limit:  # compressed bytes are bounded too
                        raise too_large
                    chunk = decoder.feed(chunk, limit - size)
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
            if decoder is not None:
                decoder.finish()
    except BodyTooLarge:
        raise too_large from None
    except BodyCodingError as exc:
        raise ApiError(400, str(exc), "body") from None
    except web.RequestPayloadError:
        # Under a plain AppRunner aiohttp decodes gzip/deflate itself and fails the read on a stream
        # it cannot decode (it does not notice a gzip stream cut between two blocks: ours does).
        coding = request.headers.get("Content-Encoding", "").strip().lower()
        if coding in ("gzip", "deflate"):
            raise ApiError(400, f"body is not valid {coding} (Content-Encoding: {coding})", "body") from None
        raise ApiError(400, "body could not be read (malformed framing)", "body") from None
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


# ---------------------------------------------------------------- middleware and serving


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def read_json_object(request: web.Request, limit: int) -> dict[str, Any]:
    """The request's JSON object body (``Content-Type: application/json``, at most ``limit`` bytes).

    400 naming the problem for a body that is not JSON, repeats a key, or is not an object.
    """
    require_content_type(request, (JSON,))
    body = await read_body(request, limit)
    try:
        obj: Any = loads_json(body)
    except orjson.JSONDecodeError:
        raise body_not_json(body) from None
    if isinstance(obj, DuplicateKeys):
        raise ApiError(400, f"{obj.duplicate[:64]}: given more than once", obj.duplicate[:64])
    if not isinstance(obj, dict):
        raise ApiError(400, "body must be a JSON object", "body")
    return obj


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


def serve(app: web.Application, host: str, port: int, name: str) -> None:
    """Run one service's ``app`` in the foreground until SIGINT/SIGTERM.

    Graceful: the socket closes, in-flight requests get up to 5 s, then the
    cleanup contexts (pub/sub listeners, Redis client) are torn down.
    """
    logconf.announce(name, logconf.browser_url(host, port))
    log.info("listening", service=name, url=f"http://{host}:{port}")
    tune_gc()  # everything is imported and the app built: freeze it
    run_app(app, host, port, shutdown_timeout=5.0)  # web.run_app with common.server's bounds
