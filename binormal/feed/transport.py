"""How ``binormal feed`` delivers events: HTTP batches, one-by-one ``/discrete``, or XADD.

Each :class:`Transport` sends one unit (a batch, or one event for ``--sync``) and
either returns what the service said about every event in it, or raises
:class:`Retry` (nothing is known about the unit: send the very same unit
again later; its event ids make a second copy harmless), :class:`TooLarge`
(split it) or :class:`Fatal` (stop the run).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast, runtime_checkable

import orjson
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from binormal import client
from binormal.client import retry_after
from binormal.common.connection import TRANSIENT, Client, open_client
from binormal.common.keys import Keyspace
from binormal.common.schema import Event
from binormal.feed.settings import FeedSettings

# Redis errors worth waiting out (loading after a restart, out of memory for now, ...).
RETRYABLE_REDIS = ("LOADING", "BUSY", "TRYAGAIN", "OOM", "MASTERDOWN", "READONLY", "CLUSTERDOWN")


class Retry(Exception):
    """The unit's fate is unknown or it was refused for now; send it again (``after`` seconds, if given)."""

    def __init__(self, reason: str, after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.after = after


class TooLarge(Exception):
    """The request was refused for its size (413): split the unit."""


class Fatal(Exception):
    """The whole request was refused for a reason retrying cannot fix."""


@dataclass(frozen=True, slots=True)
class Item:
    """One event to send: its line number and the byte offset just after its line."""

    lineno: int
    end: int
    event: Event


@dataclass
class Outcome:
    """What the service said about one unit."""

    accepted: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (lineno, "field: error")
    results: list[dict[str, Any]] = field(default_factory=list)  # --sync answers
    notes: list[str] = field(default_factory=list)  # warnings worth showing
    # Items the service did not take (unknown or unwritten): send these again, same event ids.
    resend: list[Item] = field(default_factory=list)
    reason: str = ""  # why they must be resent
    after: float | None = None  # the service's Retry-After


@runtime_checkable
class Transport(Protocol):
    """One way of delivering units of events: :meth:`open`, :meth:`send` each unit, :meth:`close`."""

    async def open(self) -> None:
        """Create the client (before the first :meth:`send`)."""
        ...

    async def send(self, items: Sequence[Item]) -> Outcome:
        """Deliver one unit; raises :class:`Retry`, :class:`TooLarge` or :class:`Fatal`."""
        ...

    async def close(self) -> None:
        """Release the client (idempotent)."""
        ...


def open_transport(settings: FeedSettings) -> Transport:
    """The transport of ``settings.mode``: ``batch`` (POST /events), ``sync`` (POST /discrete), ``direct`` (XADD)."""
    st = settings
    if st.mode == "direct":
        return DirectTransport(st.redis_url, st.keys, st.timeout_s, st.max_backlog, st.redis_cluster)
    if st.mode == "sync":
        return SyncTransport(st.url, st.timeout_s, st.token)
    return BatchTransport(st.url, st.timeout_s, st.token)


def event_json(e: Event) -> bytes:
    """The JSON a producer sends for ``e`` (the fields of ``common.schema.JSON_FIELDS``)."""
    d: dict[str, Any] = {"org": e.org, "source": e.source, "pop": e.pop, "id": e.id, "action": e.action}
    if e.event_id is not None:
        d["event_id"] = e.event_id
    if e.id_ttl is not None:
        d["id_ttl"] = e.id_ttl
    if e.ts is not None:
        d["ts"] = e.ts
    return orjson.dumps(d)


def _error_text(body: bytes, limit: int = 300) -> str:
    err, fld = client.error_text(_json_or_none(body), body, limit)
    return f"{fld}: {err}" if fld and not err.startswith(f"{fld}:") else err


class HttpTransport:
    """Common HTTP plumbing: a :class:`binormal.client.AsyncClient` (one session, keep-alive, timeouts).

    The feeder keeps its own retry loop (it saves its place between units), so
    only the client's single-request layer is used here, never its retries.
    """

    def __init__(self, url: str, timeout_s: float, token: str = "") -> None:
        self.base = url.rstrip("/")
        # BINORMAL_TOKEN: sent as Authorization: Bearer, never printed ("" sends none).
        self.client = client.AsyncClient(self.base, token, timeout_s=timeout_s, user_agent="binormal-feed")

    async def open(self) -> None:
        """Nothing to do: the client opens its session on the first request."""

    async def close(self) -> None:
        """Close the session."""
        await self.client.close()

    async def _post(self, path: str, body: bytes, content_type: str) -> tuple[int, Mapping[str, str], bytes]:
        try:
            return await self.client.request("POST", path, body, {"Content-Type": content_type})
        except client.Transient as exc:
            raise Retry(exc.reason) from None

    @staticmethod
    def _classify(status: int, headers: Mapping[str, str], body: bytes, what: str) -> None:
        """Raise for answers that are not a per-event verdict."""
        if status == 503 or status == 429:
            raise Retry(f"{what}: service busy ({status}: {_error_text(body, 120)})", retry_after(headers))
        if status == 408 or status >= 500:
            raise Retry(f"{what}: HTTP {status}: {_error_text(body, 120)}", retry_after(headers))
        if status == 413:
            raise TooLarge(_error_text(body))
        _refused(status, body, what)


def _refused(status: int, body: bytes, what: str) -> None:
    if status in (401, 403, 421):
        # No credentials, a token without this route's role or org, or a Host not served: no retry helps.
        raise Fatal(f"{what}: HTTP {status}: {_error_text(body)} (set BINORMAL_TOKEN to a producer token)")


class BatchTransport(HttpTransport):
    """``POST /events`` with an NDJSON body; the 202 answer says which lines were rejected."""

    path = "/events"

    async def send(self, items: Sequence[Item]) -> Outcome:
        """Send ``items`` as one NDJSON request (read by :func:`binormal.client.events_reply`)."""
        try:
            reply = await self.client.post_events([event_json(it.event) for it in items])
        except client.Transient as exc:
            raise Retry(exc.reason, exc.after) from None
        except client.TooLarge as exc:
            raise TooLarge(f"{exc.field}: {exc.error}" if exc.field else exc.error) from None
        except client.ApiError as exc:
            body = orjson.dumps(exc.body) if exc.body is not None else exc.error.encode()
            _refused(exc.status, body, f"POST {self.path}")
            raise Fatal(f"POST {self.base}{self.path} answered {exc.status}: {_error_text(body)}") from None
        out = self._verdict(items, reply.accepted, reply.rejected, reply.errors)
        if reply.resend:
            # Unknown lines may have been written: they go again with their same event ids (counted once).
            out.resend = [items[i] for i in reply.resend]
            out.reason, out.after = reply.reason, reply.after
        elif reply.accepted + reply.rejected != len(items):
            out.notes.append(
                f"the service counted {reply.accepted} accepted + {reply.rejected} rejected for {len(items)} lines sent"
            )
        return out

    @staticmethod
    def _verdict(items: Sequence[Item], accepted: int, rejected: int, errors: list[client.LineError]) -> Outcome:
        """Outcome with the accepted count and the rejected lines mapped to input line numbers."""
        out = Outcome(accepted=accepted)
        for err in errors:
            idx = err.line - 1  # 1-based line of the request body
            lineno = items[idx].lineno if 0 <= idx < len(items) else -1
            fld, msg = err.field, err.error
            out.rejected.append((lineno, f"{fld}: {msg}" if fld and not msg.startswith(f"{fld}:") else msg))
        for _ in range(rejected - len(out.rejected)):  # the service lists a bounded number of errors
            out.rejected.append((-1, "rejected (not listed by the service)"))
        return out


class SyncTransport(HttpTransport):
    """``POST /discrete``, one event per request, answers kept for printing (the seed's way)."""

    path = "/discrete"

    async def send(self, items: Sequence[Item]) -> Outcome:
        """Send each event of ``items`` in turn (the feed loop gives one at a time)."""
        out = Outcome()
        for it in items:
            status, headers, raw = await self._post(self.path, event_json(it.event), "application/json")
            if status == 504:
                doc = _json_or_none(raw)
                if isinstance(doc, dict) and doc.get("queued") is True:
                    out.accepted += 1
                    out.notes.append(f"line {it.lineno}: no result in time; queued as {it.event.event_id}")
                    continue
            if status in (400, 413, 422):
                out.rejected.append((it.lineno, _error_text(raw)))
                continue
            self._classify(status, headers, raw, f"POST {self.path}")
            if status == 200:
                doc = _json_or_none(raw)
                if not isinstance(doc, dict):
                    raise Retry(f"POST {self.path}: unreadable answer {raw[:120]!r}")
                out.accepted += 1
                out.results.append(doc)
            else:
                raise Fatal(f"POST {self.base}{self.path} answered {status}: {_error_text(raw)}")
        return out


def _json_or_none(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


class DirectTransport:
    """XADD straight into the stream shards (the public entry schema), pipelined.

    Backpressure: when the shards hold more than ``max_backlog`` entries in all
    (XLEN; the workers trim what every group acknowledged), wait before adding more.
    """

    def __init__(
        self, redis_url: str, keys: Keyspace, timeout_s: float, max_backlog: int, cluster: bool | None = None
    ) -> None:
        self.redis_url = redis_url
        self.cluster = cluster
        self.keys = keys
        self.timeout_s = timeout_s
        self.max_backlog = max_backlog
        self.client: Client | None = None
        self._stream_of: dict[tuple[str, str, str], str] = {}

    async def open(self) -> None:
        """Nothing yet: the client is made when Redis is first reached (single node or cluster)."""

    async def close(self) -> None:
        """Close the client."""
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    def _stream(self, e: Event) -> str:
        k = (e.org, e.source, e.pop)
        s = self._stream_of.get(k)
        if s is None:
            s = self._stream_of[k] = self.keys.stream(self.keys.shard(e.scope))
            if len(self._stream_of) > 100_000:
                self._stream_of.clear()
        return s

    async def send(self, items: Sequence[Item]) -> Outcome:
        """XADD every event in one pipeline round trip."""
        try:
            if self.client is None:
                # A cluster client routes each XADD by its stream's {P.s} tag (docs/stream.md).
                self.client = await open_client(
                    self.redis_url, cluster=self.cluster, socket_timeout=self.timeout_s, max_connections=4
                )
            client = self.client
            if self.max_backlog:
                pipe = client.pipeline(transaction=False)
                for s in self.keys.streams():
                    pipe.xlen(s)
                backlog = sum(int(n) for n in await pipe.execute())
                if backlog > self.max_backlog:
                    raise Retry(f"stream backlog {backlog} > {self.max_backlog} entries; waiting for the workers", 1.0)
            pipe = client.pipeline(transaction=False)
            for it in items:
                # to_fields() is dict[str, str]; redis-py types its mapping with wider keys (dict is invariant).
                pipe.xadd(self._stream(it.event), cast("dict[FieldT, EncodableT]", it.event.to_fields()))
            await pipe.execute()
        except ResponseError as exc:
            if str(exc).split(" ", 1)[0] in RETRYABLE_REDIS:
                raise Retry(f"redis: {exc}") from None
            raise Fatal(f"redis refused XADD: {exc}") from None
        except TRANSIENT as exc:
            raise Retry(f"redis unreachable at {self.redis_url}: {type(exc).__name__}: {exc}") from None
        return Outcome(accepted=len(items))
