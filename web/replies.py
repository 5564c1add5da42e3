"""Request-reply over pub/sub: one subscription per web process, one future per request.

``POST /discrete`` registers a fresh request id (``rid``) here, XADDs the event
with ``rid`` and this process's reply channel, and awaits the future. A worker
PUBLISHes the result (with ``rid``) to that channel; :meth:`ReplyWaiter.run`
reads the channel on ONE pub/sub connection and resolves the matching future.

Pub/sub keeps nothing and a subscription can die silently (redis-py#2417), so
the listener PINGs when the channel is quiet, treats a long silence as a dead
link, resubscribes with backoff, and after every (re)subscription reads the
stored copy (``SET ... EX`` by the worker) of each request still waiting, in
case its reply was published while nobody listened. A reply for a request that
already gave up is dropped (counted in ``binormal_late_replies``). The map is
bounded: past ``max_pending`` waiting requests, :meth:`register` refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError

from binormal.common import metrics
from binormal.common.connection import TRANSIENT, Client, pubsub_of

log = structlog.get_logger("binormal.web.replies")


class TooManyWaiting(RuntimeError):
    """``max_pending`` requests are already waiting for their replies."""


class ReplyWaiter:
    """Map ``rid -> Future`` fed by one subscription to this instance's reply channel."""

    def __init__(
        self,
        client: Client | None,
        channel: str,
        *,
        max_pending: int = 20_000,
        ping_interval_s: float = 5.0,
        poll_s: float = 1.0,
    ) -> None:
        self._client = client
        self.channel = channel
        self.max_pending = max_pending
        self.ping_interval_s = ping_interval_s
        self.poll_s = poll_s
        self.subscribed = asyncio.Event()
        self.received = 0
        self.late = 0
        self.resubscriptions = 0
        # Set by stop(): the loops below also end on it, because redis-py can
        # swallow a task cancellation that lands while a read timeout expires
        # (the shutdown then waited forever for this task).
        self.stopping = False
        self._waiting: dict[
            str, tuple[asyncio.Future[dict[str, Any] | None], str | None, asyncio.TimerHandle | None]
        ] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def client(self) -> Client:
        """The Redis client (set once Redis was reached)."""
        if self._client is None:
            raise RedisConnectionError("redis not reached yet")
        return self._client

    @client.setter
    def client(self, client: Client) -> None:
        self._client = client

    def register(
        self, rid: str, stored_key: str | None = None, timeout_s: float | None = None
    ) -> asyncio.Future[dict[str, Any] | None]:
        """A future resolved with the reply for ``rid`` (call before XADD).

        ``stored_key`` is where the worker keeps a copy of the result; it is
        read after a resubscription for requests whose publish may have been
        lost. After ``timeout_s`` the future resolves to None (one timer
        handle: cheaper than an ``asyncio.timeout`` block per request).
        """
        if len(self._waiting) >= self.max_pending:
            raise TooManyWaiting(f"{self.max_pending} requests already waiting")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any] | None] = loop.create_future()
        timer = loop.call_later(timeout_s, _expire, fut) if timeout_s is not None else None
        self._waiting[rid] = (fut, stored_key, timer)
        return fut

    def discard(self, rid: str) -> None:
        """Forget ``rid`` (answered or given up); a reply arriving later is dropped."""
        got = self._waiting.pop(rid, None)
        if got is not None and got[2] is not None:
            got[2].cancel()

    def deliver(self, data: bytes) -> bool:
        """Resolve the future of the reply ``data`` (JSON with ``rid``); False if nobody waits.

        A message may also carry several replies as NDJSON (one per line).
        """
        if b"\n" in data:
            delivered = [self.deliver(line) for line in data.split(b"\n") if line.strip()]
            return any(delivered)
        try:
            reply = orjson.loads(data)
        except orjson.JSONDecodeError:
            reply = None
        if not isinstance(reply, dict):
            log.warning("bad_reply", size=len(data))
            return False
        rid = reply.pop("rid", None)
        self.received += 1
        if "score" in reply:
            metrics.SCORED.inc()
        got = self._waiting.pop(rid, None) if isinstance(rid, str) else None
        if got is None or got[0].done():
            self.late += 1
            metrics.LATE_REPLIES.inc()
            return False
        got[0].set_result(reply)
        if got[2] is not None:
            got[2].cancel()
        return True

    def stop(self) -> None:
        """Make :meth:`run` return within ``poll_s`` (cancel its task too)."""
        self.stopping = True

    async def run(self) -> None:
        """Listen until cancelled or stopped, resubscribing with backoff after any connection error."""
        delay = 0.1
        while not self.stopping:
            pubsub = pubsub_of(self.client)
            try:
                await pubsub.subscribe(self.channel)
                await self._confirm(pubsub)
                self.subscribed.set()
                log.info("reply_channel_subscribed", channel=self.channel, waiting=len(self._waiting))
                delay = 0.1
                await self._recover()
                await self._listen(pubsub)
            except TRANSIENT as exc:
                log.warning(
                    "reply_channel_lost",
                    channel=self.channel,
                    error=str(exc) or type(exc).__name__,
                    retry_in_s=round(delay, 2),
                )
            except Exception:  # a dead listener would time out every request: log, resubscribe
                log.exception("reply_listener_failed", channel=self.channel, retry_in_s=round(delay, 2))
            finally:
                self.subscribed.clear()
                with contextlib.suppress(*TRANSIENT):
                    await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]
            if self.stopping:
                return
            self.resubscriptions += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _confirm(self, pubsub: Any) -> None:
        """Wait for the subscribe acknowledgement: from then on no publish is missed."""
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not self.stopping:
            msg = await pubsub.get_message(timeout=1.0)
            if msg is not None and msg["type"] == "subscribe":
                return
            if msg is not None and msg["type"] == "message":
                self.deliver(msg["data"])
        if not self.stopping:
            raise TimeoutError("no subscribe confirmation")

    async def _listen(self, pubsub: Any) -> None:
        last_heard = time.monotonic()
        pinged = False
        while not self.stopping:
            # parse_response, not get_message: the raw RESP2 reply without
            # redis-py's per-message dict and hooks (~40% cheaper per reply).
            raw = await pubsub.parse_response(block=False, timeout=self.poll_s)
            now = time.monotonic()
            if raw is not None:
                last_heard = now
                pinged = False
                if isinstance(raw, list) and len(raw) == 3 and raw[0] == b"message":
                    self.deliver(raw[2])
                continue
            silent = now - last_heard
            if silent > 3 * self.ping_interval_s:
                raise ConnectionError(f"reply channel silent for {silent:.1f}s (PING unanswered)")
            if silent > self.ping_interval_s and not pinged:
                # Answered on this connection by a ["pong", ""] reply.
                await pubsub.ping()
                pinged = True

    async def _recover(self) -> None:
        """Resolve waiting requests whose result was stored while we were not subscribed."""
        pending = [(rid, key) for rid, (fut, key, _) in self._waiting.items() if key is not None and not fut.done()]
        if not pending:
            return
        pipe = self.client.pipeline(transaction=False)
        for _, key in pending:
            pipe.get(key)
        found = 0
        for (rid, _), raw in zip(pending, await pipe.execute()):
            got = self._waiting.pop(rid, None) if raw is not None else None
            if got is not None and not got[0].done():
                got[0].set_result(orjson.loads(raw))
                if got[2] is not None:
                    got[2].cancel()
                found += 1
        if found:
            log.info("replies_recovered_from_store", count=found)


def _expire(fut: asyncio.Future[dict[str, Any] | None]) -> None:
    """Timer callback: the request's time is up."""
    if not fut.done():
        fut.set_result(None)
