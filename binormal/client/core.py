"""The client itself: :class:`AsyncClient` (aiohttp) and :class:`Client` (it, on a private loop thread)."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import uuid
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import aiohttp
import orjson

from binormal.client.results import (
    ApiError,
    BinormalError,
    DiscreteResult,
    EventsReply,
    GaveUp,
    Individual,
    LineError,
    Outliers,
    Queued,
    SendResult,
    TooLarge,
    Transient,
    build,
)
from binormal.common.schema import Event

DEFAULT_URL = "http://127.0.0.1:8080"
URL_ENV = "BINORMAL_URL"
TOKEN_ENV = "BINORMAL_TOKEN"
MAX_BATCH = 10_000  # lines per POST /events (the service's own bound is in bytes: 413 splits further)

EventLike = Event | Mapping[str, Any]
Scope = str | tuple[str, str, str]
T = TypeVar("T")


def event_fields(event: EventLike) -> dict[str, Any]:
    """The JSON object of an event (``common.schema.Event`` or a mapping), copied."""
    if isinstance(event, Event):
        d: dict[str, Any] = {"org": event.org, "source": event.source, "pop": event.pop, "id": event.id}
        d["action"] = event.action
        for name in ("event_id", "id_ttl", "ts"):
            if getattr(event, name) is not None:
                d[name] = getattr(event, name)
        return d
    return dict(event)


def with_event_id(event: EventLike) -> dict[str, Any]:
    """The event's JSON object with an ``event_id`` (a random 128-bit one when it has none)."""
    d = event_fields(event)
    if not d.get("event_id"):
        d["event_id"] = uuid.uuid4().hex
    return d


def split_scope(scope: Scope) -> tuple[str, str, str]:
    """``"org/source/pop"`` or a 3-tuple as (org, source, pop)."""
    parts = tuple(scope.split("/")) if isinstance(scope, str) else tuple(scope)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"scope must be org/source/pop (three non-empty parts), got {scope!r}")
    return parts[0], parts[1], parts[2]


def retry_after(headers: Mapping[str, str], default: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form), else ``default``."""
    raw = headers.get("Retry-After")
    if raw is None:
        return default
    try:
        return max(0.0, float(raw))
    except ValueError:
        return default


def error_text(doc: Any, raw: bytes, limit: int = 300) -> tuple[str, str | None]:
    """(error, field) of an error answer, readable even when it is not the service's JSON."""
    if isinstance(doc, dict):
        err, fld = doc.get("error") or doc.get("message") or doc, doc.get("field")
        return str(err)[:limit], fld if isinstance(fld, str) else None
    return raw[:limit].decode("utf-8", "replace").strip(), None


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _line_errors(errors: Any) -> list[LineError]:
    out = []
    for err in errors or []:
        if isinstance(err, dict) and isinstance(err.get("line"), int):
            out.append(LineError(err["line"], str(err.get("error", "rejected")), err.get("field")))
    return out


def events_reply(status: int, headers: Mapping[str, str], raw: bytes, lines: int) -> EventsReply:
    """Read one ``POST /events`` answer for a body of ``lines`` lines; raises when it holds no verdict.

    202 (and a 400 whose every line is invalid) carries accepted/rejected/errors.
    A 503 naming ``unknown_lines``/``unwritten_lines`` settles the rest: those
    lines go again (unknown ones may be written already; their event ids make
    that harmless). Any other 503, 429, 408 or 5xx wrote nothing known: :class:`Transient`.
    """
    doc = _json(raw)
    err, fld = error_text(doc, raw)
    if status == 503 and isinstance(doc, dict) and ("unknown_lines" in doc or "unwritten_lines" in doc):
        try:
            accepted, rejected = int(doc.get("accepted", 0)), int(doc.get("rejected", 0))
            todo = {
                n
                for key in ("unknown_lines", "unwritten_lines")
                for a, b in doc.get(key) or []
                for n in range(max(1, int(a)), min(int(b), lines) + 1)  # clipped to the body: bounded
            }
        except (TypeError, ValueError):
            raise Transient("POST /events: service unavailable (unreadable answer)", retry_after(headers)) from None
        errors = _line_errors(doc.get("errors"))
        listed = {e.line for e in errors}
        resend = [n - 1 for n in sorted(todo) if n not in listed]
        if not resend and accepted + rejected < lines:
            raise Transient(f"POST /events: {err}", retry_after(headers))
        unknown, unwritten = int(doc.get("unknown") or 0), int(doc.get("unwritten") or 0)
        reason = f"{err} ({unknown} lines in doubt, {unwritten} not written)"
        return EventsReply(accepted, rejected, errors, resend, reason, retry_after(headers))
    if status in (429, 503):
        raise Transient(f"POST /events: service busy ({status}: {err[:120]})", retry_after(headers))
    if status == 408 or status >= 500:
        raise Transient(f"POST /events: HTTP {status}: {err[:120]}", retry_after(headers))
    if status == 413:
        raise TooLarge(status, err, fld, doc)
    verdict = isinstance(doc, dict) and "accepted" in doc and "rejected" in doc
    if status not in (200, 202) and not (status == 400 and verdict):
        raise ApiError(status, err, fld, doc)
    if not verdict:
        raise Transient(f"POST /events: unreadable answer {raw[:120]!r}")
    try:
        return EventsReply(int(doc["accepted"]), int(doc["rejected"]), _line_errors(doc.get("errors")))
    except (TypeError, ValueError):
        raise Transient(f"POST /events: unreadable answer {raw[:120]!r}") from None


class AsyncClient:
    """The asyncio client; use ``async with AsyncClient() as c:`` (or :meth:`close`)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout_s: float = 10.0,
        tries: int = 8,
        backoff_s: float = 0.1,
        max_backoff_s: float = 10.0,
        batch: int = 1000,
        user_agent: str = "binormal-client",
    ) -> None:
        if tries < 1 or batch < 1 or timeout_s <= 0:
            raise ValueError("tries and batch must be >= 1 and timeout_s > 0")
        self.base = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        self._token = token if token is not None else os.environ.get(TOKEN_ENV, "")  # never printed
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, 5.0))
        self.tries, self.backoff_s, self.max_backoff_s = tries, backoff_s, max_backoff_s
        self.batch = min(batch, MAX_BATCH)
        self.user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"AsyncClient({self.base!r}, token={'set' if self._token else 'unset'})"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session (idempotent)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on first use, inside the running loop
            headers = {"User-Agent": self.user_agent}
            if self._token:
                headers["Authorization"] = f"Bearer {self._token}"
            self._session = aiohttp.ClientSession(
                timeout=self.timeout, connector=aiohttp.TCPConnector(limit=8), headers=headers
            )
        return self._session

    def backoff(self, attempt: int, after: float | None = None) -> float:
        """Seconds before try ``attempt + 2``: full jitter on ``backoff_s * 2**attempt``, capped, >= Retry-After."""
        wait = random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2**attempt))
        return min(self.max_backoff_s, max(wait, after or 0.0))

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One request (no retry): (status, headers, body); :class:`Transient` when no answer came."""
        session = self._open()
        try:
            async with session.request(method, self.base + path, data=body, headers=headers, params=params) as resp:
                return resp.status, resp.headers, await resp.read()
        except TimeoutError:
            raise Transient(f"no answer from {self.base} within {self.timeout.total:g} s") from None
        except aiohttp.ClientConnectorError as exc:
            raise Transient(f"cannot connect to {self.base} ({exc.os_error.strerror or exc.os_error})") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise Transient(f"connection to {self.base} failed: {type(exc).__name__}: {exc}") from None

    async def post_events(self, lines: Sequence[bytes]) -> EventsReply:
        """One ``POST /events`` of NDJSON ``lines`` (no retry): the verdict, or raises (see :func:`events_reply`)."""
        body = b"\n".join(lines) + b"\n"
        status, headers, raw = await self.request("POST", "/events", body, {"Content-Type": "application/x-ndjson"})
        return events_reply(status, headers, raw, len(lines))

    async def send(self, event: EventLike) -> SendResult:
        """Send one event to ``/events`` (see :meth:`send_many`)."""
        return await self.send_many([event])

    async def send_many(self, events: Iterable[EventLike]) -> SendResult:
        """Send events in batches of ``batch`` lines; retries resend only lines not yet accepted or rejected.

        Returns the counts and rejections (``LineError.line`` is the 1-based index
        into ``events``); raises :class:`GaveUp` when lines were still in doubt after
        ``tries`` tries of a batch, :class:`ApiError` when the service refuses the request itself.
        """
        docs = [with_event_id(e) for e in events]
        ids = [str(d["event_id"]) for d in docs]
        lines = [orjson.dumps(d) for d in docs]
        accepted, tries = 0, 0
        errors: list[LineError] = []
        start = 0
        size = self.batch
        while start < len(lines):
            end = min(start + size, len(lines))
            todo = list(range(start, end))  # indexes into lines, not yet settled
            attempt = 0
            while todo:
                tries += 1
                try:
                    reply = await self.post_events([lines[i] for i in todo])
                except TooLarge:
                    if attempt or len(todo) == 1:  # a resend is a subset of a body that fitted
                        raise
                    size = max(1, len(todo) // 2)  # for the rest of the call
                    end = start + size
                    todo = list(range(start, end))
                    continue
                except Transient as exc:
                    reason, after, keep = exc.reason, exc.after, todo  # no verdict: every line again
                else:
                    accepted += reply.accepted
                    errors.extend(
                        LineError(todo[e.line - 1] + 1, e.error, e.field)
                        for e in reply.errors
                        if 1 <= e.line <= len(todo)  # body line -> position in the input
                    )
                    keep = [todo[i] for i in reply.resend]
                    reason, after = reply.reason, reply.after
                attempt += 1
                if keep and attempt >= self.tries:
                    done = SendResult(accepted, len(errors), sorted(errors, key=lambda e: e.line), ids, tries)
                    pending = [ids[i] for i in keep] + ids[end:]  # in doubt, then never sent
                    raise GaveUp(f"gave up after {attempt} tries: {reason}", done, pending)
                todo = keep
                if todo:
                    await asyncio.sleep(self.backoff(attempt - 1, after))
            start = end
        return SendResult(accepted, len(errors), sorted(errors, key=lambda e: e.line), ids, tries)

    async def discrete(self, event: EventLike) -> DiscreteResult:
        """``POST /discrete``: count the event and return its score; retried with its event id as Idempotency-Key."""
        doc = with_event_id(event)
        body, eid = orjson.dumps(doc), str(doc["event_id"])
        headers = {"Content-Type": "application/json", "Idempotency-Key": eid}
        last = ""
        after: float | None = None
        for attempt in range(self.tries):
            if attempt:
                await asyncio.sleep(self.backoff(attempt - 1, after))
            after = None
            try:
                status, hdrs, raw = await self.request("POST", "/discrete", body, headers)
            except Transient as exc:
                last = exc.reason
                continue
            answer = _json(raw)
            if status == 200:
                return build(DiscreteResult, answer)
            err, fld = error_text(answer, raw)
            if status == 504 or status == 429 or status >= 500:
                last, after = f"POST /discrete: HTTP {status}: {err}", retry_after(hdrs)
                continue
            raise ApiError(status, err, fld, answer)
        if last.startswith("POST /discrete: HTTP 504"):
            raise Queued(eid)
        raise GaveUp(f"gave up after {self.tries} tries: {last}", pending=[eid])

    async def _get(self, path: str, **params: str) -> Any:
        last = ""
        after: float | None = None
        for attempt in range(self.tries):
            if attempt:
                await asyncio.sleep(self.backoff(attempt - 1, after))
            try:
                status, hdrs, raw = await self.request("GET", path, params=params)
            except Transient as exc:
                last, after = exc.reason, None
                continue
            answer = _json(raw)
            if status == 200:
                return answer
            err, fld = error_text(answer, raw)
            if status in (408, 429) or status >= 500:
                last, after = f"GET {path}: HTTP {status}: {err}", retry_after(hdrs)
                continue
            raise ApiError(status, err, fld, answer)
        raise GaveUp(f"gave up after {self.tries} tries: {last}")

    async def outliers(
        self, scope: Scope, limit: int = 10, *, muted: bool = False, exclude_learning: bool = False
    ) -> Outliers:
        """``GET /api/outliers``: the scope's top individuals by score."""
        org, source, pop = split_scope(scope)
        params = {"org": org, "source": source, "pop": pop, "limit": str(limit)}
        params |= {"muted": "1" if muted else "0", "exclude_learning": "1" if exclude_learning else "0"}
        return build(Outliers, await self._get("/api/outliers", **params))

    async def individual(self, scope: Scope, id: str, limit: int = 100) -> Individual:
        """``GET /api/individual``: one individual's counts per action against the expected counts."""
        org, source, pop = split_scope(scope)
        doc = await self._get("/api/individual", org=org, source=source, pop=pop, id=id, limit=str(limit))
        return build(Individual, doc)


class Client:
    """The sync client: an :class:`AsyncClient` on a private event-loop thread (same arguments).

    A thread rather than urllib keeps one implementation of the retry rules
    and needs no new dependency; the loop thread is a daemon, ended by :meth:`close`.
    """

    def __init__(self, url: str | None = None, token: str | None = None, **options: Any) -> None:
        self._async = AsyncClient(url, token, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="binormal-client", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"Client({self._async.base!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coro.close()
            raise BinormalError("the client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        """Close the session and stop the loop thread (idempotent)."""
        if self._loop.is_closed():
            return
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def send(self, event: EventLike) -> SendResult:
        """See :meth:`AsyncClient.send`."""
        return self._run(self._async.send(event))

    def send_many(self, events: Iterable[EventLike]) -> SendResult:
        """See :meth:`AsyncClient.send_many`."""
        return self._run(self._async.send_many(list(events)))

    def discrete(self, event: EventLike) -> DiscreteResult:
        """See :meth:`AsyncClient.discrete`."""
        return self._run(self._async.discrete(event))

    def outliers(
        self, scope: Scope, limit: int = 10, *, muted: bool = False, exclude_learning: bool = False
    ) -> Outliers:
        """See :meth:`AsyncClient.outliers`."""
        return self._run(self._async.outliers(scope, limit, muted=muted, exclude_learning=exclude_learning))

    def individual(self, scope: Scope, id: str, limit: int = 100) -> Individual:
        """See :meth:`AsyncClient.individual`."""
        return self._run(self._async.individual(scope, id, limit))
