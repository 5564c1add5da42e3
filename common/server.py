"""The HTTP server with bounds: header/body timeouts, a connection cap, JSON protocol errors.

aiohttp has no timeout for a request head that trickles in, no cap on
connections, and answers a request line or header over its parser limits with
a plain-text ``400`` that quotes the input. :class:`BoundedRequestHandler` (the
per-connection protocol) adds, for every service:

- a head timer: from the first byte of a request head, the whole head must
  arrive within ``header_timeout_s``, else ``408`` JSON and close (an idle
  keep-alive connection is closed after ``keepalive_timeout_s`` instead);
- a send timer: a client that reads nothing while a response (or websocket
  frame) waits in the write buffer for ``send_timeout_s`` is cut (aborted);
- a connection cap: past ``max_connections`` open connections, a new
  connection's first request is answered ``503`` JSON (``Connection: close``)
  without reaching the application, and a connection that sends nothing is
  closed after ``header_timeout_s``;
- protocol errors as JSON that never quote the input: ``414`` (request line
  over ``MAX_URL_BYTES``), ``431`` (a header over ``MAX_HEADER_BYTES``, or more
  than ``MAX_HEADERS`` headers), ``400`` (anything else malformed).

The body timeout is :func:`common.http.read_body`'s; the websocket cap and
the rate limit are the handlers'. :func:`run_app` replaces ``web.run_app`` and
:class:`BoundedAppRunner` replaces ``web.AppRunner`` (tests use it).

The protocol subclass reads aiohttp 3.14's ``RequestHandler`` state
(``_messages``, ``_request_in_progress``, ``_upgraded``, ``_payload_parser``,
``_request_count``), swaps ``_request_handler`` and extends ``pause_writing``; tests/test_server.py
covers each of these, so an aiohttp upgrade that changes them fails there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, ContentEncodingError, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from binormal.common import metrics
from binormal.common.config import field_values, setting
from binormal.common.ratelimit import TokenBuckets

log = structlog.get_logger("binormal.http.server")

MAX_URL_BYTES = 8_190  # request line (method, URL, version); aiohttp's default
MAX_HEADER_BYTES = 8_192  # one header (name + value); differs from MAX_URL_BYTES so the two errors can be told apart
MAX_HEADERS = 128
LINGER_MAX_S = 10.0  # after an early answer, unread body is drained for at most this (and body_timeout_s)


_REFUSED = {
    r: metrics.HTTP_REFUSED.labels(r)
    for r in ("connections", "websockets", "head_timeout", "body_timeout", "send_timeout")
}


@dataclass(frozen=True)
class HttpLimits:
    """The HTTP bounds of one process (both services read the same ``BINORMAL_*`` variables).

    Service settings inherit these fields; :func:`limits_of` takes them back out.
    """

    header_timeout_s: float = setting(
        "BINORMAL_HEADER_TIMEOUT_S", 10.0, minimum=0.05, doc="a request head must arrive within this, else 408"
    )
    body_timeout_s: float = setting(
        "BINORMAL_BODY_TIMEOUT_S", 30.0, minimum=0.05, doc="a whole request body must arrive within this, else 408"
    )
    send_timeout_s: float = setting(
        "BINORMAL_SEND_TIMEOUT_S", 30.0, minimum=0.05, doc="a client that reads nothing for this long is cut"
    )
    keepalive_timeout_s: float = setting(
        "BINORMAL_KEEPALIVE_TIMEOUT_S", 75.0, minimum=0.05, doc="an idle keep-alive connection is closed after this"
    )
    max_connections: int = setting(
        "BINORMAL_MAX_CONNECTIONS", 1_000, minimum=1, doc="open connections per process; past it 503 and close"
    )
    rate_limit: float = setting(
        "BINORMAL_RATE_LIMIT", 0.0, shown="`0` (off)", doc="events/s per token (or address) on /discrete, /events"
    )
    rate_burst: float = setting(
        "BINORMAL_RATE_BURST", 0.0, shown="`0` (= the rate)", doc="token bucket size; 0 = one second's worth"
    )


def limits_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The :class:`HttpLimits` fields set in ``env``, by field name."""
    return field_values(HttpLimits, env)


def limits_of(settings: object) -> HttpLimits:
    """The :class:`HttpLimits` of a service's settings (which carry the same field names)."""
    return HttpLimits(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(HttpLimits)})


class HttpState:
    """Per application: the limits, open connections and the producers' rate limiter."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.connections = 0
        self.refused = 0  # connections answered 503 because of the cap
        self.buckets = TokenBuckets(limits.rate_limit, limits.rate_burst)


HTTP_STATE = web.AppKey("binormal_http_state", HttpState)


def setup_limits(app: web.Application, limits: HttpLimits) -> HttpState:
    """Give ``app`` its :class:`HttpState`; idempotent (services on one app must agree)."""
    existing = app.get(HTTP_STATE)
    if existing is not None:
        if existing.limits != limits:
            raise ValueError(f"services on one app must share HTTP limits: {existing.limits} != {limits}")
        return existing
    state = app[HTTP_STATE] = HttpState(limits)
    return state


def _raw_json(status: int, reason: str, body: dict[str, Any], extra: str = "") -> bytes:
    """A whole HTTP/1.1 response with a JSON body and ``Connection: close``, for the protocol to write."""
    payload = orjson.dumps(body)
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n{extra}\r\n"
    )
    return head.encode("ascii") + payload


class BoundedRequestHandler(RequestHandler):
    """aiohttp's protocol plus the head timer, the connection cap and JSON protocol errors."""

    def __init__(self, manager: web.Server, *, state: HttpState, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._state = state
        self._counted = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._last_payload: Any = None  # the body stream of the newest parsed request
        self._send_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ connection cap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        state = self._state
        state.connections += 1
        metrics.HTTP_CONNECTIONS.inc()
        self._counted = True
        super().connection_made(transport)
        if state.connections > state.limits.max_connections:
            state.refused += 1
            _REFUSED["connections"].inc()
            self._request_handler = self._refuse
            self._arm_head_timer()  # a refused connection that sends nothing does not stay

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._counted = False
            self._state.connections -= 1
            metrics.HTTP_CONNECTIONS.dec()
        self._disarm_head_timer()
        self._disarm_send_timer()
        super().connection_lost(exc)

    async def _refuse(self, request: BaseRequest) -> web.StreamResponse:
        limit = self._state.limits.max_connections
        resp = web.Response(
            body=orjson.dumps({"error": f"too many connections (limit {limit}); retry later", "field": None}),
            status=503,
            content_type="application/json",
            headers={"Retry-After": "1"},
        )
        resp.force_close()
        return resp

    # ------------------------------------------------------------ head timer

    def _idle(self) -> bool:
        """No request is queued, handled or still sending its body, and the connection is not a websocket."""
        if self._messages or self._request_in_progress or self._upgraded or self._payload_parser:
            return False
        payload = self._last_payload
        return payload is None or payload.is_eof()  # not eof: aiohttp is draining an unread body (lingering)

    def data_received(self, data: bytes) -> None:
        idle = self._idle()
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._disarm_head_timer()  # a whole head arrived
            if self._messages:
                self._last_payload = self._messages[-1][1]
        elif idle and data and self._head_timer is None and self.transport is not None:
            self._arm_head_timer()  # the first bytes of a new head

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self._loop.call_later(self._state.limits.header_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport is None or not self._idle():
            return  # a request got going meanwhile; its body has its own timeout
        _REFUSED["head_timeout"].inc()
        timeout = self._state.limits.header_timeout_s
        body = {"error": f"request head not received within {timeout:g}s", "field": "headers"}
        self.transport.write(_raw_json(408, "Request Timeout", body))
        self.force_close()  # transport.close() sends what was written first

    # ------------------------------------------------------------ send timer

    def pause_writing(self) -> None:
        # The transport's write buffer passed its high-water mark: the peer is not reading.
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self._loop.call_later(self._state.limits.send_timeout_s, self._send_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._disarm_send_timer()

    def _disarm_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_timed_out(self) -> None:
        self._send_timer = None
        transport = self.transport
        if transport is None:
            return
        _REFUSED["send_timeout"].inc()
        log.info("http_send_timeout", timeout_s=self._state.limits.send_timeout_s)
        self.force_close()
        # close() would wait to flush a buffer the peer never reads; abort() drops it now.
        transport.abort()

    # ------------------------------------------------------------ protocol errors

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A JSON error for what the parser (or aiohttp) refused; never quotes the input."""
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error")
        field: str | None = None
        if isinstance(exc, LineTooLong):
            limit = exc.args[1] if len(exc.args) > 1 else None
            if limit == self.max_line_size:
                status, field = 414, "url"
                error = f"request line over the limit of {self.max_line_size} bytes"
            else:
                status, field = 431, "headers"
                error = f"a request header is over the limit of {self.max_field_size} bytes"
        elif isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc):
            status, field = 431, "headers"
            error = f"more than {self.max_headers} request headers"
        elif isinstance(exc, ContentEncodingError):
            # A coding aiohttp cannot decode here (zstd or br without their library: "please install"),
            # or a deflate body that ended before its end marker (checked at EOF). The request here is
            # the parser's placeholder, without the original headers: the exception names the coding.
            # Only when aiohttp decodes bodies (auto_decompress, not ours: _protocol_kwargs turns it off).
            text = str(exc).lower()
            if "install" in text:
                status, field = 415, "Content-Encoding"
                error = "Content-Encoding must be gzip, deflate, identity (one coding)"
            else:
                coding = next((c for c in ("deflate", "gzip") if c in text), "compressed")
                status, field, error = 400, "body", f"body is not valid {coding} (Content-Encoding)"
        elif isinstance(exc, HttpProcessingError) or status == 400:
            status = 400
            error = f"malformed HTTP request ({type(exc).__name__ if exc else 'bad request'})"
        elif status == 504:
            error = "the request took too long"
        else:
            status = 500
            error = "internal error"
            self.log_exception("Error handling request", exc_info=exc)
        if status != 500:
            log.info("http_protocol_error", status=status, kind=type(exc).__name__ if exc else None)
        resp = web.Response(
            body=orjson.dumps({"error": error, "field": field}), status=status, content_type="application/json"
        )
        resp.force_close()
        return resp


class BoundedServer(web.Server):
    """``web.Server`` that builds :class:`BoundedRequestHandler` protocols."""

    def __init__(self, *args: Any, state: HttpState, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.state = state

    def __call__(self) -> RequestHandler:
        # _kwargs: what web.Server keeps for its protocols (timeouts, parser limits, access log)
        return BoundedRequestHandler(self, loop=self._loop, state=self.state, **self._kwargs)


def _protocol_kwargs(limits: HttpLimits) -> dict[str, Any]:
    return {
        "keepalive_timeout": limits.keepalive_timeout_s,
        "lingering_time": min(LINGER_MAX_S, limits.body_timeout_s),
        "max_line_size": MAX_URL_BYTES,
        "max_field_size": MAX_HEADER_BYTES,
        "max_headers": MAX_HEADERS,
        # Bodies are decoded by common.http.read_body (common/bodycoding.py): aiohttp's decoding
        # takes a gzip stream cut between two blocks for a complete body.
        "auto_decompress": False,
    }


class BoundedAppRunner(web.AppRunner):
    """``web.AppRunner`` whose server is a :class:`BoundedServer` (limits from ``app[HTTP_STATE]``)."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        state = app.get(HTTP_STATE) or setup_limits(app, HttpLimits())
        kwargs = {**_protocol_kwargs(state.limits), **kwargs}
        super().__init__(app, **kwargs)
        self.state = state

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()  # runs the app's startup and freezes it
        return BoundedServer(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=asyncio.get_running_loop(),
            state=self.state,
            **self._kwargs,
        )


async def _serve_forever(app: web.Application, host: str, port: int, shutdown_timeout: float) -> None:
    runner = BoundedAppRunner(app, handle_signals=True, access_log=None, shutdown_timeout=shutdown_timeout)
    try:
        await runner.setup()  # inside the try: a signal during start-up still runs the cleanup contexts entered
        await web.TCPSite(runner, host, port).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run_app(app: web.Application, host: str, port: int, shutdown_timeout: float = 5.0) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, like ``web.run_app`` (graceful: sockets, then cleanup)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve_forever(app, host, port, shutdown_timeout))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        main.cancel()
        with contextlib.suppress(asyncio.CancelledError, web.GracefulExit, KeyboardInterrupt):
            loop.run_until_complete(main)
        rest = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in rest:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()
