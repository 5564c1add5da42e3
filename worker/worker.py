"""The scorer worker: a consumer in the ``scorers`` group of every stream shard.

Loop: read a batch (own backlog first, then new entries; XREADGROUP COUNT/BLOCK),
run it through :class:`~worker.batch.BatchProcessor`, and between batches do the
housekeeping: heartbeat, take over entries of dead consumers (XAUTOCLAIM),
trim history every group has acknowledged and, with retention on, sweep idle
individuals (worker/retention.py). On Redis Cluster a multi-stream
XREADGROUP would be CROSSSLOT, so new entries come from one blocking reader per
stream through a bounded queue instead (:meth:`Worker._reader`); the rest is
per stream already. SIGTERM/SIGINT stop the loop after
the batch in hand; if that takes longer than the grace period the batch is
cancelled, which is safe because nothing is acknowledged before it is applied.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any, cast

import structlog
from redis.exceptions import OutOfMemoryError, ResponseError

from binormal.common.alertcheck import move_alert_states
from binormal.common.alerts import AlertCache
from binormal.common.connection import TRANSIENT, Client, connect, execute_raw, is_cluster, wait_until_up
from binormal.common.migrate import check_layout
from binormal.common.rules import RuleCache
from binormal.common.scripts import Scripts
from binormal.common.store import heartbeat_ages, redis_now_ms
from binormal.worker.batch import BatchProcessor
from binormal.worker.commands import Commands
from binormal.worker.entries import Counters, Entry
from binormal.worker.retention import Sweeper
from binormal.worker.settings import WorkerSettings

log = structlog.get_logger("binormal.worker")

# Uncommitted marks read per shard and claim round: at most 10 HSCAN pages of ~1,000.
MARK_PAGES = 10
MARK_PAGE_SIZE = 1_000
# Cluster read path: connections per node beyond one blocking reader per shard stream.
SPARE_CONNECTIONS = 16


class Worker:
    """One scorer process. ``await Worker(settings).run()`` until stopped."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.keys = settings.keys
        self.consumer = settings.consumer_name
        self.stop_event = asyncio.Event()
        self.ready = asyncio.Event()
        self.processor = BatchProcessor(
            keys=self.keys,
            scripts=Scripts(),
            consumer=self.consumer,
            snapshot_max_age_ms=settings.snapshot_max_age_ms,
            cap=settings.cap,
            seen_ttl_s=settings.seen_ttl_s,
            reply_ttl_s=settings.reply_ttl_s,
            dead_maxlen=settings.dead_maxlen,
            explain_limit=settings.explain_limit,
            max_actions=settings.max_actions,
            guard=settings.guard,
            retention=settings.retention,
            recent_window=settings.recent_window,
            rules=RuleCache(self.keys),
            alerts=AlertCache(self.keys),
            min_events=settings.min_events,
            min_individuals=settings.min_individuals,
        )
        self.sweeper = Sweeper(
            keys=self.keys,
            scripts=self.processor.scripts,
            idle_ttl_s=settings.idle_ttl_s,
            max_individuals=settings.max_individuals,
            weight_cap=settings.weight_cap,
            recent_window=settings.recent_window,
            rules=self.processor.rules,
        )
        self._stream_shard = {s.encode(): i for i, s in enumerate(self.keys.streams())}
        self._backlog: dict[bytes, bytes] = {}
        self._next_claim = 0.0
        self._next_trim = 0.0
        self._next_heartbeat = 0.0
        self._next_forget = 0.0
        self._next_sweep = 0.0
        self._claim_cursor: dict[bytes, bytes] = {}
        self._marks: dict[int, dict[bytes, bytes]] = {}  # uncommitted marks seen last round, per shard
        # Cluster only: batches read by the per-stream readers, waiting for a lane (bounded).
        self._queue: asyncio.Queue[list[Entry]] = asyncio.Queue(maxsize=2 * max(1, settings.inflight))

    @property
    def counters(self) -> Counters:
        """What this worker has done so far."""
        return self.processor.counters

    def request_stop(self) -> None:
        """Finish the batch in hand, then leave :meth:`run`."""
        if not self.stop_event.is_set():
            log.info("worker_stopping", consumer=self.consumer, grace_s=self.settings.grace_s)
            self.stop_event.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT request a graceful stop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    async def run(self) -> None:
        """Consume until :meth:`request_stop`; reconnects through Redis outages."""
        structlog.contextvars.bind_contextvars(consumer=self.consumer)
        found = await connect(
            self.settings.redis_url,
            cluster=self.settings.redis_cluster,
            stop=self.stop_event,
            max_connections=len(self._stream_shard) + SPARE_CONNECTIONS,
        )
        if found is None:
            log.info("worker_stopped", **self.counters.as_dict())
            return
        client: Client = found
        try:
            while not self.stop_event.is_set():
                if not await wait_until_up(client, self.stop_event):
                    break
                try:
                    await self._setup(client)
                    self.ready.set()
                    await self._loop(client)
                except TRANSIENT as exc:
                    self.ready.clear()
                    log.warning("redis_connection_lost", error=str(exc))
                except ResponseError as exc:
                    # The group (or stream) was deleted under us: create it again.
                    if "NOGROUP" not in str(exc):
                        raise
                    self.ready.clear()
                    log.warning("group_missing", error=str(exc))
        finally:
            await self._goodbye(client)
            await client.aclose()
            log.info("worker_stopped", **self.counters.as_dict(), expired=self.sweeper.removed)

    async def _setup(self, client: Client) -> None:
        """Create the group on every shard; start by re-reading our own backlog."""
        await check_layout(client, self.keys)  # refuses data of layout 1 (binormal migrate)
        moved = await move_alert_states(client, self.keys)  # one GET once done (common/alertcheck.py)
        if moved:
            log.info("alert_states_moved", states=moved)
        await ensure_groups(client, self.keys.streams(), self.keys.group)
        await self.processor.scripts.load_all(client)
        # After a restart (or a lost connection) entries we were given but had
        # not applied are still pending under our name: XREADGROUP from id 0
        # returns them, before any new entry.
        self._backlog = {s: b"0" for s in self._stream_shard}
        log.info("worker_ready", streams=len(self._stream_shard), group=self.keys.group)

    async def _loop(self, client: Client) -> None:
        # Own backlog first, in one lane, so it is applied before anything new.
        while self._backlog and not self.stop_event.is_set():
            entries = await self._read(client, Commands())
            if entries:
                await self._run_batch(client, entries, None)
        lanes = [asyncio.ensure_future(self._lane(client, i)) for i in range(self.lanes)]
        readers: list[asyncio.Future[None]] = []
        if is_cluster(client):
            self._queue = asyncio.Queue(maxsize=2 * self.lanes)
            readers = [asyncio.ensure_future(self._reader(client, s)) for s in self._stream_shard]
        lanes_done: asyncio.Future[list[None]] | None = None
        readers_done: asyncio.Future[list[None]] | None = None
        try:
            if not readers:
                await asyncio.gather(*lanes)
                return
            # Lanes end on a stop request; a reader's failure (lost link, NOGROUP) ends them all.
            lanes_done = asyncio.gather(*lanes)
            readers_done = asyncio.gather(*readers)
            await asyncio.wait({lanes_done, readers_done}, return_when=asyncio.FIRST_COMPLETED)
            for done in (readers_done, lanes_done):
                if done.done():
                    done.result()
        finally:
            for task in (*lanes, *readers):
                task.cancel()
            await asyncio.gather(*lanes, *readers, return_exceptions=True)
            for gathered in (lanes_done, readers_done):
                if gathered is not None and gathered.done() and not gathered.cancelled():
                    gathered.exception()  # retrieved (raised above when it mattered)

    async def _reader(self, client: Client, stream: bytes) -> None:
        """Cluster read path: XREADGROUP of ONE stream (one slot), BLOCK, into the lanes' queue.

        One XREADGROUP over several shard streams would be CROSSSLOT on a
        cluster, so each stream has its reader (and a connection to its node).
        Entries read and still queued when we stop stay pending under our
        name: the next start re-reads them as backlog, or others claim them.
        """
        g, c = self.keys.group, self.consumer
        cmd = (
            "XREADGROUP",
            "GROUP",
            g,
            c,
            "COUNT",
            self.settings.batch,
            "BLOCK",
            self.settings.block_ms,
            "STREAMS",
            stream,
            ">",
        )
        while not self.stop_event.is_set():
            reply = (await execute_raw(client, [cmd]))[0]
            self.processor.counters.round_trips += 1
            if isinstance(reply, Exception):
                raise reply
            entries = self._entries(reply)
            if entries:
                await self._queue.put(entries)

    async def _take(self, client: Client, tail: Commands) -> list[Entry]:
        """Cluster read path: up to ``batch`` entries from the readers' queue (waits at most BLOCK)."""
        if tail.commands:
            await self.processor.flush(client, tail)  # publish now: the wait below may be long
        try:
            entries = await asyncio.wait_for(self._queue.get(), timeout=self.settings.block_ms / 1000)
        except TimeoutError:
            return []
        while len(entries) < self.settings.batch and not self._queue.empty():
            entries = entries + self._queue.get_nowait()
        return entries

    @property
    def lanes(self) -> int:
        """Batches in flight at once: 1 in exact mode (snapshot staleness 0).

        With two lanes Python scores one batch while Redis runs the other's
        scripts, which uses both cores; the effect is that of two consumers:
        counters stay exact, and commit.lua keeps each individual's newest score
        when the lanes' commits arrive in the other order.
        """
        return 1 if self.settings.snapshot_max_age_ms == 0 else self.settings.inflight

    async def _lane(self, client: Client, lane: int) -> None:
        # A batch's publishing commands ride in front of the lane's next read.
        tail = Commands()
        try:
            while not self.stop_event.is_set():
                if lane == 0 and self._housekeeping_due():
                    # Replies first: housekeeping costs round trips of its own.
                    await self.processor.flush(client, tail)
                    await self._housekeeping(client)
                entries = await self._read(client, tail)
                if entries:
                    await self._run_batch(client, entries, tail)
        finally:
            if tail.commands:
                await self.processor.flush(client, tail)

    async def _run_batch(self, client: Client, entries: list[Entry], tail: Commands | None) -> None:
        """Process a batch; a stop request during it waits at most the grace period."""
        task = asyncio.ensure_future(self.processor.process(client, entries, tail))
        while True:
            stop_wait = asyncio.ensure_future(self.stop_event.wait())
            done, _ = await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                stop_wait.cancel()
                task.result()
                return
            # Stop requested mid-batch: give it the grace period, then cancel.
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=self.settings.grace_s)
            except TimeoutError:
                task.cancel()
                log.warning("batch_cancelled_after_grace", entries=len(entries))
                # Let it unwind before the caller goes on to close the client
                # (asyncio.wait neither raises its CancelledError nor swallows ours).
                await asyncio.wait({task})
            return

    async def _read(self, client: Client, tail: Commands) -> list[Entry]:
        """Own backlog first (from id 0, non-blocking), then new entries (BLOCK).

        ``tail`` (the previous batch's publishing commands) is sent in the same
        write, ahead of the XREADGROUP, and emptied.
        """
        if self._backlog:
            if is_cluster(client):
                entries = await self._read_backlog_per_stream(client)
            else:
                entries = self._entries(await self._xreadgroup(client, tail, dict(self._backlog), block=False))
            got = {e.stream for e in entries}
            for stream in list(self._backlog):
                if stream in got:
                    self._backlog[stream] = max((e.id for e in entries if e.stream == stream), key=_id_key)
                else:
                    del self._backlog[stream]
            if entries:
                return entries
        if is_cluster(client):
            return await self._take(client, tail)
        return self._entries(await self._xreadgroup(client, tail, {s: b">" for s in self._stream_shard}, block=True))

    async def _read_backlog_per_stream(self, client: Client) -> list[Entry]:
        """Cluster: the own-backlog read as one XREADGROUP per stream, sent grouped per node at once."""
        head = ("XREADGROUP", "GROUP", self.keys.group, self.consumer, "COUNT", self.settings.batch, "STREAMS")
        replies = await execute_raw(client, [(*head, s, i) for s, i in self._backlog.items()])
        self.processor.counters.round_trips += 1
        entries: list[Entry] = []
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
            entries += self._entries(reply)
        return entries

    async def _xreadgroup(self, client: Client, tail: Commands, ids: dict[bytes, bytes], block: bool) -> Any:
        """XREADGROUP GROUP g c COUNT n [BLOCK ms] STREAMS ... as a raw RESP2 reply."""
        cmd: list[Any] = ["XREADGROUP", "GROUP", self.keys.group, self.consumer, "COUNT", self.settings.batch]
        if block:
            cmd += ["BLOCK", self.settings.block_ms]
        cmd += ["STREAMS", *ids.keys(), *ids.values()]
        sent = len(tail.commands)
        replies = await execute_raw(client, [*tail.commands, cmd])
        tail.commands.clear()
        self.processor.counters.round_trips += 1
        for r in replies[:sent]:
            if isinstance(r, Exception):
                log.error("publish_failed", error=str(r))
        if isinstance(replies[-1], Exception):
            raise replies[-1]
        return replies[-1]

    def _entries(self, reply: Any) -> list[Entry]:
        """Entries of a raw XREADGROUP/XAUTOCLAIM reply: [[stream, [[id, [f, v, ...] | nil]]]]."""
        out: list[Entry] = []
        for stream, items in reply or []:
            shard = self._stream_shard[stream]
            for entry_id, flat in items:
                fields = dict(zip(flat[0::2], flat[1::2])) if flat else {}
                out.append(Entry(stream, shard, entry_id, fields))
        return out

    def _housekeeping_due(self) -> bool:
        now = time.monotonic()
        due = min(self._next_heartbeat, self._next_claim)
        if self.settings.trim_interval_s > 0:
            due = min(due, self._next_trim)
        if self.settings.forget_consumers_s > 0:
            due = min(due, self._next_forget)
        if self.settings.retention:
            due = min(due, self._next_sweep)
        return now >= due

    async def _housekeeping(self, client: Client) -> None:
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.settings.heartbeat_s
            # Redis's clock, not this host's: readers judge ages by Redis TIME too.
            try:
                await client.hset(self.keys.workers(), self.consumer, await redis_now_ms(client))
            except OutOfMemoryError as exc:
                # A full Redis (maxmemory, noeviction) refuses the HSET: keep scoring what it lets
                # through; the heartbeat goes stale, which /readyz reports.
                log.warning("heartbeat_refused", error=str(exc))
        if now >= self._next_claim:
            self._next_claim = now + max(self.settings.claim_idle_ms / 2000.0, 0.5)
            await self._claim(client)
            await self._repair(client)
        if self.settings.trim_interval_s > 0 and now >= self._next_trim:
            self._next_trim = now + self.settings.trim_interval_s
            for stream in self._stream_shard:
                await trim_acknowledged(client, stream)
        if self.settings.forget_consumers_s > 0 and now >= self._next_forget:
            self._next_forget = now + min(60.0, self.settings.forget_consumers_s / 2)
            await self._forget_dead_consumers(client)
        if self.settings.retention and now >= self._next_sweep:
            self._next_sweep = now + self.settings.sweep_interval_s
            # Idle expiry and the per-scope cap (worker/retention.py): bounded per round.
            await self.sweeper.sweep(client)

    async def _claim(self, client: Client) -> None:
        """Take over entries pending longer than the claim idle time (dead consumers).

        No lock: XAUTOCLAIM is atomic, and apply.lua's XACK check makes a
        double take-over harmless. The cursor is kept between rounds.
        """
        for stream, shard in self._stream_shard.items():
            cursor = self._claim_cursor.get(stream, b"0-0")
            reply = await client.xautoclaim(
                stream,
                self.keys.group,
                self.consumer,
                min_idle_time=self.settings.claim_idle_ms,
                start_id=cursor,
                count=self.settings.batch,
            )
            self.processor.counters.round_trips += 1
            self._claim_cursor[stream] = reply[0]
            claimed = [Entry(stream, shard, eid, fields or {}) for eid, fields in reply[1] if eid is not None]
            if len(reply) > 2 and reply[2]:
                # Redis 7 drops ids whose entries were deleted from the PEL itself.
                log.warning("claimed_deleted_entries", stream=stream.decode(), ids=len(reply[2]))
            if not claimed:
                continue
            log.info("claimed", stream=stream.decode(), entries=len(claimed))
            await self._mark_over_delivered(client, stream, claimed)
            await self.processor.process(client, claimed)

    async def _repair(self, client: Client) -> None:
        """Commit the scores a dead worker applied but never committed.

        apply.lua marks each individual with its applied entry in the shard's
        uncommitted hash and commit.lua clears the mark: it lives for
        milliseconds. A mark seen unchanged a whole claim round apart was left
        by a worker that died (or whose commit failed) in between; its
        counters are right, only the individual's score is missing or old.
        """
        for shard in range(self.keys.shards):
            key = self.keys.uncommitted(shard)
            marks: dict[bytes, bytes] = {}
            cursor = 0
            for _ in range(MARK_PAGES):
                cursor, page = await client.hscan(key, cursor, count=MARK_PAGE_SIZE)
                self.processor.counters.round_trips += 1
                marks.update(cast(dict[bytes, bytes], page))
                if cursor == 0:
                    break
            before = self._marks.get(shard, {})
            self._marks[shard] = marks
            stale = [(ikey, entry_id) for ikey, entry_id in marks.items() if before.get(ikey) == entry_id]
            if stale:
                try:
                    await self.processor.repair(client, shard, stale)
                except ResponseError as exc:  # bad state under a key: say so, keep scoring
                    log.error("repair_failed", shard=shard, individuals=len(stale), error=str(exc))

    async def _forget_dead_consumers(self, client: Client) -> None:
        """Delete consumers idle longer than ``forget_consumers_s`` with nothing pending.

        A worker started without BINORMAL_CONSUMER joins under a new host-pid
        name each time, so a group would collect one dead consumer per restart.
        A live consumer's idle time starts over at each XREADGROUP (at least
        every BLOCK ms), and one with nothing pending loses nothing when deleted
        (its next XREADGROUP would create it again). Their heartbeats go too.
        """
        limit_ms = int(self.settings.forget_consumers_s * 1000)
        me = self.consumer.encode()
        forgotten: set[str] = set()
        for stream in self._stream_shard:
            for c in await client.xinfo_consumers(stream, self.keys.group):
                name = c["name"]
                if name != me and int(c["pending"]) == 0 and int(c["idle"]) > limit_ms:
                    await client.xgroup_delconsumer(stream, self.keys.group, name)
                    forgotten.add(name.decode(errors="replace"))
        ages = await heartbeat_ages(client, self.keys)
        silent = [name for name, age_s in ages.items() if name != self.consumer and age_s * 1000 > limit_ms]
        if silent:
            await client.hdel(self.keys.workers(), *silent)
        if forgotten or silent:
            log.info("forgot_dead_consumers", consumers=sorted(forgotten), heartbeats=len(silent))

    async def _mark_over_delivered(self, client: Client, stream: bytes, claimed: list[Entry]) -> None:
        """Entries delivered more than ``max_deliveries`` times go to the dead letters."""
        pipe = client.pipeline(transaction=False)
        for e in claimed:
            pipe.xpending_range(stream, self.keys.group, min=e.id, max=e.id, count=1)
        infos = await pipe.execute()
        self.processor.counters.round_trips += 1
        for e, info in zip(claimed, infos):
            if info and int(info[0]["times_delivered"]) > self.settings.max_deliveries:
                e.reason = f"delivered {info[0]['times_delivered']} times without being applied"
                e.fields = e.fields or {}

    async def _goodbye(self, client: Client) -> None:
        try:
            await asyncio.wait_for(client.hdel(self.keys.workers(), self.consumer), timeout=1.0)
        except TRANSIENT:
            pass


async def ensure_groups(client: Client, streams: list[str], group: str) -> None:
    """XGROUP CREATE ... 0 MKSTREAM on every stream; an existing group is fine.

    Start id 0, not ``$``: entries written before the group existed must be read.
    Only BUSYGROUP (group exists) is tolerated; any other error propagates.
    """
    for stream in streams:
        try:
            await client.xgroup_create(stream, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


async def trim_acknowledged(client: Client, stream: bytes | str) -> int:
    """XTRIM MINID below what any group still needs; returns entries removed.

    For each group the boundary is its oldest pending entry, or its
    last-delivered id when nothing is pending (everything up to it is acked).
    Never MAXLEN: that would delete pending or unread entries (redis#6199).
    """
    groups = await client.xinfo_groups(stream)
    if not groups:
        return 0
    bounds: list[bytes] = []
    for g in groups:
        if int(g["pending"]) > 0:
            summary = await client.xpending(stream, g["name"])
            if summary["min"] is not None:
                bounds.append(summary["min"] if isinstance(summary["min"], bytes) else str(summary["min"]).encode())
                continue
            # Acknowledged between XINFO and XPENDING: nothing pending now, so
            # everything up to the last-delivered id read above is acked.
            last = g["last-delivered-id"]
            bounds.append(last if isinstance(last, bytes) else str(last).encode())
        else:
            last = g["last-delivered-id"]
            bounds.append(last if isinstance(last, bytes) else str(last).encode())
    minid = min(bounds, key=_id_key)
    if minid in (b"0-0", b"0"):
        return 0
    return int(await client.xtrim(stream, minid=minid.decode(), approximate=False))


def _id_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)
