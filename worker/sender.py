"""The alert sender: reads the alert streams with its own consumer group and POSTs each alert to its webhook.

Its own process (``binormal alerts send``), so a slow or dead webhook never slows scoring: the
workers only XADD alerts (alert.lua). Each alert is delivered by a task of its own (at most
``concurrency`` at once) with a per-request timeout, up to ``tries`` attempts with exponential
backoff and full jitter; then it goes to the failed list (``keys.alert_failed()``, replayable by
``binormal alerts failed --replay``). An alert is acknowledged only once delivered or listed as
failed, so a sender killed mid-delivery leaves it pending, and another sender claims it after
``claim_idle_ms`` (at least once: the receiver may see a retried alert twice, with the same
``X-Binormal-Alert-Id``). An alert names its rule by ``rule_org`` and ``rule`` (names are unique per
org only). Counters (fired, delivered, failed per ``ORG/NAME``) are kept in
``keys.alert_stats()`` and exported by ``/metrics``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import random
import socket
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import structlog
from redis.exceptions import RedisError, ResponseError

from binormal.common.alerts import AlertCache, AlertRule
from binormal.common.connection import Client, execute_raw, is_cluster
from binormal.common.keys import Keyspace, Scope

log = structlog.get_logger("binormal.alerts.sender")

GROUP = "senders"
SIGNATURE_HEADER = "X-Binormal-Signature"
ID_HEADER = "X-Binormal-Alert-Id"
FAILED_MAXLEN = 10_000  # alerts the failed list keeps (the oldest go first)
CLAIM_COUNT = 100  # alerts one XAUTOCLAIM takes over at most (per stream and claim round)


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` + hex HMAC-SHA256 of the body with the rule's secret."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


@dataclass
class SenderSettings:
    """How the sender delivers (``binormal alerts send`` flags)."""

    timeout_s: float = 5.0
    tries: int = 6
    backoff_s: float = 0.5  # first retry waits up to this (full jitter), doubling per try
    backoff_max_s: float = 60.0
    concurrency: int = 64
    claim_idle_ms: int = 60_000
    block_ms: int = 1000
    consumer: str = ""


@dataclass
class SenderCounters:
    """What this sender did (tests, logs)."""

    read: int = 0
    delivered: int = 0
    failed: int = 0
    attempts: int = 0


class Sender:
    """Deliver alerts until :meth:`stop`."""

    def __init__(self, client: Client, keys: Keyspace, settings: SenderSettings) -> None:
        self.client = client
        self.keys = keys
        self.settings = settings
        self.consumer = settings.consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.rules = AlertCache(keys)
        self.counters = SenderCounters()
        self.stop_event = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        # (stream, id) of the alerts in hand: each stream is its own id space (alerts XADDed to two
        # shards in one millisecond share an id), so an id alone would skip the second one.
        self._inflight: set[tuple[str, bytes]] = set()
        # Where each stream's next XAUTOCLAIM starts: a call looks at no more than 10 x COUNT
        # pending entries (Redis 7), so starting at 0-0 every round would never reach idle alerts
        # behind that many fresh ones. Redis answers the cursor 0-0 once the whole list was seen.
        self._claim_from: dict[str, bytes | str] = {}

    def stop(self) -> None:
        """Leave :meth:`run` (deliveries in hand are abandoned, left pending for another sender)."""
        self.stop_event.set()

    async def ensure_groups(self) -> None:
        """Create the senders' group on every alert stream (from its start), if missing."""
        for stream in self.keys.alert_streams():
            try:
                await self.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def run(self) -> None:
        """Read, deliver, claim what dead senders left; until stopped.

        A single Redis: one loop, one multi-stream XREADGROUP. On a cluster the alert streams hash
        to different slots (a multi-stream read is CROSSSLOT), so each stream has a loop of its own
        (and a blocked connection to its node), as the workers' cluster read path does.
        """
        await self.ensure_groups()
        streams = self.keys.alert_streams()
        groups = [[s] for s in streams] if is_cluster(self.client) else [streams]
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            try:
                await asyncio.gather(*(self._loop(http, group) for group in groups))
            finally:
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _loop(self, http: aiohttp.ClientSession, streams: list[str]) -> None:
        """Claim, read and dispatch ``streams`` until stopped."""
        next_claim = 0.0
        while not self.stop_event.is_set():
            try:
                await self.rules.refresh(self.client)
                batch: list[tuple[str, bytes, dict[bytes, bytes]]] = []
                if time.monotonic() >= next_claim:
                    next_claim = time.monotonic() + self.settings.claim_idle_ms / 2000
                    batch = await self._claim(streams)
                batch += await self._read(streams)
            except (RedisError, OSError) as exc:
                log.warning("alert_read_failed", error=str(exc))
                await asyncio.sleep(0.5)
                continue
            for stream, entry_id, fields in batch:
                if (stream, entry_id) in self._inflight:
                    continue
                await self._slots.acquire()
                self._inflight.add((stream, entry_id))
                task = asyncio.ensure_future(self._deliver(http, stream, entry_id, fields))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _read(self, streams: list[str]) -> list[tuple[str, bytes, dict[bytes, bytes]]]:
        """New alerts of ``streams`` (BLOCK; briefly while deliveries are in hand), each counted fired."""
        block = self.settings.block_ms if not self._tasks else 100
        reply: Any
        if is_cluster(self.client):
            # One stream (one slot): a raw XREADGROUP to its node; redis-py's cluster client would
            # first ask a node COMMAND GETKEYS for this movable-keys command on every call.
            [stream] = streams
            cmd = ("XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", 100, "BLOCK", block, "STREAMS", stream, ">")
            [reply] = await execute_raw(self.client, [cmd])
            if isinstance(reply, Exception):
                raise reply
            reply = [(s, [(i, dict(zip(f[0::2], f[1::2])) if f else {}) for i, f in items]) for s, items in reply or []]
        else:
            ids: dict[Any, Any] = {s: ">" for s in streams}
            reply = await self.client.xreadgroup(GROUP, self.consumer, ids, count=100, block=block)
        out: list[tuple[str, bytes, dict[bytes, bytes]]] = []
        for stream, items in reply or []:
            name = stream.decode() if isinstance(stream, bytes) else stream
            for entry_id, fields in items:
                out.append((name, entry_id, fields or {}))
                self.counters.read += 1
                known = self._rule(fields or {})  # an alert queued before names were per org names no org
                rule = known.ident if known is not None else _rule_of(fields or {})
                if rule is not None:
                    await self._count("fired", rule)  # first read by the group: once per alert
        return out

    async def _claim(self, streams: list[str]) -> list[tuple[str, bytes, dict[bytes, bytes]]]:
        """Take over alerts another sender left pending for ``claim_idle_ms`` (it died mid-delivery)."""
        out: list[tuple[str, bytes, dict[bytes, bytes]]] = []
        for stream in streams:
            start = self._claim_from.get(stream, "0-0")
            reply = await self.client.xautoclaim(
                stream, GROUP, self.consumer, self.settings.claim_idle_ms, start, count=CLAIM_COUNT
            )
            self._claim_from[stream] = reply[0]
            for entry_id, fields in reply[1]:
                out.append((stream, entry_id, fields or {}))
        return out

    async def _count(self, what: str, rule: str) -> None:
        try:
            await self.client.hincrby(self.keys.alert_stats(), f"{what}:{rule}", 1)
        except (RedisError, OSError) as exc:
            log.warning("alert_count_failed", error=str(exc))

    async def _deliver(
        self, http: aiohttp.ClientSession, stream: str, entry_id: bytes, fields: dict[bytes, bytes]
    ) -> None:
        try:
            await self._deliver_one(http, stream, entry_id, fields)
        except (RedisError, OSError) as exc:
            # The ack or the failed-list write did not happen: the alert stays pending under our
            # name, and a sender (this one too) claims it after claim_idle_ms and delivers it again.
            log.warning("alert_delivery_interrupted", entry_id=entry_id.decode(), stream=stream, error=str(exc))
        finally:
            self._inflight.discard((stream, entry_id))
            self._slots.release()

    def _rule(self, fields: dict[bytes, bytes]) -> AlertRule | None:
        """The cached rule an alert names: ``rule_org``/``rule``, or (an alert queued before names were
        per org) the rule of that name whose pattern matches the alert's scope."""
        alert = _alert_of(fields)
        name, org = alert.get("rule"), alert.get("rule_org")
        if not isinstance(name, str):
            return None
        if isinstance(org, str):
            return next((r for r in self.rules.rules if r.matches_name(org, name)), None)
        parts = str(alert.get("scope", "")).split("/")
        scope = Scope(*parts) if len(parts) == 3 else None
        return next((r for r in self.rules.rules if r.name == name and scope and r.matches(scope)), None)

    async def _deliver_one(
        self, http: aiohttp.ClientSession, stream: str, entry_id: bytes, fields: dict[bytes, bytes]
    ) -> None:
        body = fields.get(b"alert", b"")
        rule = self._rule(fields)
        if rule is None:
            # A worker (or another loop of ours) may know a rule our cache does not hold yet: the
            # cache looks at the version at most every 0.5 s. One GET when the version has not moved.
            await self.rules.refresh(self.client, force=True)
            rule = self._rule(fields)
        if rule is None:
            log.warning("alert_dropped", entry_id=entry_id.decode(), reason="its rule no longer exists")
            await self.client.xack(stream, GROUP, entry_id)
            return
        headers = {"Content-Type": "application/json", ID_HEADER: entry_id.decode()}
        if rule.secret is not None:
            headers[SIGNATURE_HEADER] = sign(rule.secret, body)
        error = ""
        for attempt in range(self.settings.tries):
            if attempt:
                cap = min(self.settings.backoff_max_s, self.settings.backoff_s * 2 ** (attempt - 1))
                await asyncio.sleep(random.uniform(0, cap))  # full jitter: retries of many alerts spread out
            self.counters.attempts += 1
            try:
                async with http.post(rule.webhook, data=body, headers=headers) as resp:
                    if 200 <= resp.status < 300:
                        await self.client.xack(stream, GROUP, entry_id)
                        self.counters.delivered += 1
                        await self._count("delivered", rule.ident)
                        return
                    error = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:200]
            log.info(
                "alert_attempt_failed", rule=rule.name, entry_id=entry_id.decode(), attempt=attempt + 1, error=error
            )
        record = orjson.dumps(
            {"stream": stream, "entry_id": entry_id.decode(), "error": error, "at": int(time.time() * 1000)}
        )
        pipe = self.client.pipeline(transaction=False)
        # The failed list holds the alert itself; the stream entry is acked only after it is listed.
        pipe.lpush(self.keys.alert_failed(), record[:-1] + b',"alert":' + (body or b"null") + b"}")
        pipe.ltrim(self.keys.alert_failed(), 0, FAILED_MAXLEN - 1)
        await pipe.execute()
        await self.client.xack(stream, GROUP, entry_id)
        self.counters.failed += 1
        await self._count("failed", rule.ident)
        log.warning("alert_failed", rule=rule.name, entry_id=entry_id.decode(), error=error)


def _alert_of(fields: dict[bytes, bytes]) -> dict[str, Any]:
    try:
        alert = orjson.loads(fields.get(b"alert", b""))
    except orjson.JSONDecodeError:
        return {}
    return alert if isinstance(alert, dict) else {}


def _rule_of(fields: dict[bytes, bytes]) -> str | None:
    """The counters' key of an alert's rule: ``ORG/NAME`` (a bare name for an alert queued before)."""
    alert = _alert_of(fields)
    name, org = alert.get("rule"), alert.get("rule_org")
    if not isinstance(name, str):
        return None
    return f"{org}/{name}" if isinstance(org, str) else name


async def list_failed(client: Client, keys: Keyspace, limit: int = 1000) -> list[dict[str, Any]]:
    """The failed alerts, newest first."""
    return [orjson.loads(raw) for raw in await client.lrange(keys.alert_failed(), 0, limit - 1)]


async def replay_failed(client: Client, keys: Keyspace, limit: int = 1000) -> int:
    """Put failed alerts back on their alert stream (as new entries) and off the failed list; returns how many."""
    done = 0
    for _ in range(limit):
        raw: Any = await client.lindex(keys.alert_failed(), -1)  # oldest first
        if raw is None:
            break
        record = orjson.loads(raw)
        # Added before it leaves the list: a failure between the two replays it twice, never loses it.
        await client.xadd(record["stream"], {"alert": orjson.dumps(record["alert"])})
        await client.lrem(keys.alert_failed(), -1, raw)
        done += 1
    return done
