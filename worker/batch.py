"""One batch of stream entries through validate -> apply -> score -> commit -> publish.

Each step is one pipelined round trip for the whole batch, whatever its size:

1. dead-letter invalid entries (``deadletter.lua``: XADD to the dead stream + XACK;
   twin ``scripts.Deadletter``, reply: written or not);
2. apply counters of valid entries (``apply.lua``: counters + XACK, exactly once;
   twin ``scripts.Apply``, reply per entry: Applied, Already, Duplicate, BadState, Capped);
3. refresh population snapshots that are missing, too old or lack an action
   (applied entries become :class:`Ready`);
4. score (:class:`Scored`) and commit every new score in entry order (``commit.lua``:
   zset + aggregates, newest state of each individual wins; twin ``scripts.Commit``,
   reply per score: Committed(agg, newest) or CommitBadState);
5. publish replies (``reply_to``), their stored copies, and the broadcast batch.

The stages are exclusive: an entry with a dead-letter reason never reaches apply.

Lua scripts in a pipeline run one after the other in pipeline order, so with
one worker each apply's reply is the state right after that entry: the results
equal the in-memory engine's, entry for entry.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from redis.exceptions import NoScriptError, ResponseError

from binormal.common.alertcheck import AlertPlanner
from binormal.common.alerts import AlertCache
from binormal.common.calibration import DEFAULT_MIN_EVENTS, DEFAULT_MIN_INDIVIDUALS
from binormal.common.connection import Client, execute_raw
from binormal.common.keys import Keyspace, Scope, fingerprint, mark_entry, recent_in
from binormal.common.recent import recent_bits
from binormal.common.result import make_result
from binormal.common.rules import RuleCache
from binormal.common.schema import InvalidEvent, action_cap_reason, parse_entry
from binormal.common.scoring import Snapshot, excluded_view
from binormal.common.scripts import (
    Already,
    Applied,
    Apply,
    ApplyItem,
    ApplyReply,
    BadState,
    Capped,
    Commit,
    CommitBadState,
    Deadletter,
    Duplicate,
    Guard,
    Score,
    Scripts,
    pairs_int,
)
from binormal.common.store import name_counts
from binormal.worker.commands import Commands
from binormal.worker.entries import Counters, Entry, Ready, Scored, entry_ms, runs_by_shard, runs_of
from binormal.worker.outbox import queue_alerts, queue_publish
from binormal.worker.robust import RobustCache

log = structlog.get_logger("binormal.worker")

SNAPSHOT_CACHE = 10_000  # scopes whose snapshot a worker keeps
# Entries per apply/commit script call: one call instead of one per entry, but
# short enough that a call blocks Redis for only a millisecond or two.
LUA_CHUNK = 100


@dataclass
class BatchProcessor:
    """Runs batches for one worker; holds its snapshot cache and counters."""

    keys: Keyspace
    scripts: Scripts
    consumer: str
    snapshot_max_age_ms: int = 1000
    cap: int = 100
    seen_ttl_s: int = 3_600
    reply_ttl_s: int = 60
    dead_maxlen: int = 100_000
    explain_limit: int = 5
    max_actions: int = 10_000
    guard: Guard = field(default_factory=Guard)  # weight cap W and the dominance flag (apply.lua)
    retention: bool = False  # stamp individuals in their scope's last-seen zset (worker/retention.py)
    recent_window: int = 0  # K: keep each individual's recent window, results carry recent (common/recent.py)
    min_events: int = DEFAULT_MIN_EVENTS  # learning thresholds (common/calibration.py)
    min_individuals: int = DEFAULT_MIN_INDIVIDUALS
    counters: Counters = field(default_factory=Counters)
    snapshots: OrderedDict[Scope, tuple[Snapshot, float]] = field(default_factory=OrderedDict)
    rules: RuleCache | None = None  # mutes and excludes (re-read when their version moves), None: no rules
    robust: RobustCache = field(default_factory=RobustCache)  # per-scope median and MAD (rzscore)
    alerts: AlertCache | None = None  # alert rules (re-read when their version moves), None: no alerting
    planner: AlertPlanner = field(default_factory=AlertPlanner)  # each result's alert check (common/alertcheck.py)

    def __post_init__(self) -> None:
        # The median and MAD are refreshed as often as the population snapshot.
        self.robust.max_age_ms = self.snapshot_max_age_ms

    def validate(self, entries: Sequence[Entry]) -> None:
        """Parse each entry, or set its dead-letter reason.

        An entry that already has a reason (over-delivered) stays a dead letter
        only: the stages are exclusive, it never reaches apply.
        """
        for e in entries:
            if e.reason is not None:
                continue
            if not e.fields:
                e.reason = "entry has no fields (deleted from the stream while pending)"
                continue
            try:
                ev = parse_entry(e.fields)
            except InvalidEvent as exc:
                e.reason = f"invalid: {exc}"
                continue
            scope = ev.scope
            home = self.keys.shard(scope)
            if home != e.shard:
                e.reason = f"wrong shard: written to shard {e.shard}, its scope belongs to shard {home}"
                continue
            e.event = ev
            e.scope = scope
            e.kp = self.keys.scope_prefix(scope, home)
            e.ikey = self.keys.individual(scope, ev.id, home)
            e.fp = fingerprint(ev.id, ev.action)

    async def _execute(self, client: Client, build: Callable[[Commands], None]) -> list[Any]:
        """Run the commands ``build(pipe)`` lists in one round trip; on NOSCRIPT load scripts and rerun.

        Rerunning is safe: apply and dead-letter do nothing for entries already
        acknowledged, and commit never ran (NOSCRIPT fails every EVALSHA).
        """
        for attempt in (1, 2):
            pipe = Commands()
            build(pipe)
            self.counters.round_trips += 1
            results = await execute_raw(client, pipe.commands)
            if attempt == 1 and any(isinstance(r, NoScriptError) for r in results):
                await self.scripts.load_all(client)
                self.counters.round_trips += 1
                continue
            return results
        raise AssertionError("unreachable")

    async def dead_letter(self, client: Client, entries: Sequence[Entry]) -> None:
        """Move entries with a reason to the dead-letter stream (acked atomically)."""
        sha = self.scripts.sha(Deadletter.NAME)

        def build(pipe: Commands) -> None:
            for e in entries:
                keys, args = Deadletter.pack(
                    e.stream,
                    self.keys.dead(e.shard),
                    self.keys.group,
                    e.id,
                    e.reason or "",
                    self.consumer,
                    self.dead_maxlen,
                    e.fields or {},
                )
                pipe.evalsha(sha, len(keys), *keys, *args)

        results = await self._execute(client, build)
        self.counters.lua_calls += len(entries)
        for e, r in zip(entries, results):
            if isinstance(r, ResponseError):
                log.error("dead_letter_failed", entry_id=e.id.decode(), error=str(r))
            elif Deadletter.decode(r):
                self.counters.dead += 1
                log.warning("dead_lettered", entry_id=e.id.decode(), shard=e.shard, reason=e.reason)

    async def process(
        self, client: Client, entries: Sequence[Entry], tail: Commands | None = None
    ) -> list[dict[str, Any]]:
        """Process one batch; returns the results (for tests and tools).

        With ``tail`` the final publishing commands are appended to it instead
        of sent: the worker sends them in front of its next XREADGROUP, which
        saves a round trip per batch (they are sent before it blocks).
        """
        self.counters.batches += 1
        self.counters.read += len(entries)
        self.validate(entries)
        bad = [e for e in entries if e.reason is not None]
        if bad:
            await self.dead_letter(client, bad)
        good = [e for e in entries if e.reason is None and e.event is not None]
        if not good:
            return []
        if self.rules is not None:
            await self.rules.refresh(client)  # one GET at most every 0.5 s, a re-read only on a change
            if self.rules.excluded:
                for e in good:
                    assert e.scope is not None and e.event is not None
                    e.excluded = self.rules.is_excluded(e.scope, e.event.id)
        if self.alerts is not None:
            await self.alerts.refresh(client)  # one GET at most every 0.5 s, a re-read only on a change
        dups: list[Entry] = []
        applied = await self._apply(client, good, dups)
        results: list[tuple[Entry, dict[str, Any]]] = []
        out = Commands() if tail is None else tail
        if applied:
            scorable = await self._refresh_snapshots(client, applied)
            results = await self._score_and_commit(client, scorable)
            queue_publish(out, results, self.keys, self.reply_ttl_s, self.robust, self.counters)
            if self.alerts is not None and self.alerts.rules:
                self._alert(out, results)
        if dups:
            # Only after the results are published and their stored copies SET:
            # a duplicate's waiter reads the first result's stored copy when this
            # note arrives, and that first entry may be in this very batch.
            self._notify_duplicates(out, dups)
        if tail is None:
            await self.flush(client, out)
        return [r for _, r in results]

    async def _apply(self, client: Client, good: Sequence[Entry], dups: list[Entry]) -> list[tuple[Entry, Applied]]:
        """Apply counters; returns applied entries with apply.lua's reply, appends duplicates to ``dups``.

        Entries go to ``apply.lua`` in runs of one shard (at most ``LUA_CHUNK``
        per call). If a call fails, its entries are retried one per call, so one
        poisoned entry cannot hold back the others in its run.
        """
        want_pop = self.snapshot_max_age_ms == 0
        # Snapshots already too old are re-read in the same round trip, after
        # the applies (so they include this batch's counts).
        prefetch = [] if want_pop else self._aged_scopes(good)
        replies: list[tuple[Entry, ApplyReply]] = []
        failed: list[Entry] = []
        for size in (LUA_CHUNK, 1):
            todo = list(good) if size == LUA_CHUNK else failed
            if not todo:
                break
            chunks = runs_of(todo, size)
            extra = prefetch if size == LUA_CHUNK else []

            def build(pipe: Commands) -> None:
                self._build_apply(pipe, chunks, want_pop)
                for scope, shard in extra:
                    pipe.hgetall(self.keys.scope_key(scope, "pop", shard))

            results = await self._execute(client, build)
            self.counters.lua_calls += len(chunks)
            if extra:
                self._store_snapshots(extra, results[len(chunks) :])
                results = results[: len(chunks)]
            failed = []
            for chunk, r in zip(chunks, results):
                if isinstance(r, Exception):
                    if size == 1:
                        # Left pending: redelivered after the claim idle time, and
                        # dead-lettered once it exceeds the delivery limit.
                        log.error("apply_failed", entry_id=chunk[0].id.decode(), error=str(r))
                    failed.extend(chunk)
                    continue
                replies.extend(zip(chunk, Apply.decode(r, want_pop)))
        applied: list[tuple[Entry, Applied]] = []
        broken: list[Entry] = []
        for e, reply in replies:
            if isinstance(reply, Applied):
                self.counters.applied += 1
                applied.append((e, reply))
                if reply.dominated is not None:
                    self._log_dominated(e, reply)
            elif isinstance(reply, Already):
                self.counters.already += 1
            elif isinstance(reply, Duplicate):
                self.counters.duplicates += 1
                same = reply.same_event(e.fp)
                if same is False:
                    self.counters.reused_ids += 1
                first = reply.first_entry.decode()
                log.info("duplicate_event_id", entry_id=e.id.decode(), first_entry=first, same_event=same)
                e.note = {"duplicate": True, "same_event": same}
                dups.append(e)
            elif isinstance(reply, BadState):
                # A key it writes holds another type; nothing was written or acked.
                e.reason = f"bad state: {reply.reason}"
                broken.append(e)
            elif isinstance(reply, Capped):
                # Not counted, not acked: dead-lettered below; its waiter is told why.
                self.counters.capped += 1
                e.reason = action_cap_reason(reply.actions)
                broken.append(e)
                e.note = {"rejected": True, "error": e.reason, "field": "action"}
                dups.append(e)
        if broken:
            await self.dead_letter(client, broken)
        return applied

    def _log_dominated(self, e: Entry, reply: Applied) -> None:
        """Log a scope flagged for the first time (apply.lua's HSETNX makes it once per scope, restarts included)."""
        d = reply.dominated
        assert d is not None and e.scope is not None
        self.counters.dominated += 1
        log.warning(
            "scope_dominated",
            org=e.scope.org,
            source=e.scope.source,
            pop=e.scope.pop,
            id=d.ident,
            share=round(d.share, 3),
            events=d.events,
            scope_events=d.scope_events,
            threshold=self.guard.dominance_share,
        )

    def _build_apply(self, pipe: Commands, chunks: list[list[Entry]], want_pop: bool) -> None:
        """One ``apply.lua`` call per chunk (``Apply.LAYOUT``, documented in the script)."""
        k = self.keys
        sha = self.scripts.sha(Apply.NAME)
        for chunk in chunks:
            first = chunk[0]
            head = (first.stream, k.scopes(first.shard), k.uncommitted(first.shard), k.capped(first.shard))
            items: list[ApplyItem] = []
            for e in chunk:
                ev = e.event
                assert ev is not None and e.scope is not None
                kp = e.kp
                # An entry may ask for a shorter memory of its id (id_ttl), never a longer one.
                ttl = 0 if ev.event_id is None else min(ev.id_ttl or self.seen_ttl_s, self.seen_ttl_s)
                # The marker lives under the scope (kp + "seen:..."): ids of one scope never touch another's.
                marker = k.seen(e.scope, ev.event_id or "", e.shard)
                # the recent window's keys; with K = 0 the counts key stands in (never touched, no new key)
                recent, window = recent_in(kp, ev.id) if self.recent_window else (e.ikey, e.ikey)
                items.append(
                    ApplyItem(
                        kp + "pop",
                        kp + "sq",
                        kp + "k",
                        e.ikey,
                        marker,
                        kp + "raw",
                        kp + "dom",
                        kp + "last",
                        kp + "an",
                        kp + "na",
                        recent,
                        window,
                        e.id,
                        ev.action,
                        e.scope.token,
                        ttl,
                        e.id + b" " + e.fp,
                        ev.id,
                        1 if e.excluded else 0,
                    )
                )
            keys, args = Apply.pack(
                head, k.group, want_pop, self.max_actions, items, self.guard, self.retention, self.recent_window
            )
            pipe.evalsha(sha, len(keys), *keys, *args)

    def _notify_duplicates(self, pipe: Commands, dups: Sequence[Entry]) -> None:
        """Tell request-reply waiters their event was not counted (docs/stream.md has the notes).

        A duplicate's note says ``same_event`` (true: its waiter reads the first
        result's stored copy; false: another event used the id first; null: an
        older worker's marker); a refused one carries ``error`` and ``field``.
        """
        for e in dups:
            ev = e.event
            if ev is not None and ev.reply_to is not None and e.note is not None:
                note = {**e.note, "event_id": ev.event_id, "rid": ev.rid}
                pipe.publish(ev.reply_to, orjson.dumps(note))

    async def flush(self, client: Client, pipe: Commands) -> None:
        """Send collected publishing commands (one round trip) and log failures."""
        if not pipe.commands:
            return
        self.counters.round_trips += 1
        for r in await execute_raw(client, pipe.commands):
            if isinstance(r, Exception):
                log.error("publish_failed", error=str(r))
        pipe.commands.clear()

    def _aged_scopes(self, entries: Sequence[Entry]) -> list[tuple[Scope, int]]:
        """Scopes of ``entries`` whose snapshot is missing or older than the max age."""
        now = time.monotonic()
        max_age = self.snapshot_max_age_ms / 1000.0
        aged: dict[Scope, int] = {}
        for e in entries:
            assert e.scope is not None
            got = self.snapshots.get(e.scope)
            if got is None or now - got[1] > max_age:
                aged[e.scope] = e.shard
        return list(aged.items())

    def _store_snapshots(self, order: Sequence[tuple[Scope, int]], fetched: Sequence[Any]) -> None:
        """Cache snapshots from HGETALL replies (LRU-bounded)."""
        now = time.monotonic()
        self.counters.snapshot_refreshes += len(order)
        for (scope, _), raw in zip(order, fetched):
            if isinstance(raw, Exception):
                # Bad state under the key (WRONGTYPE: someone else's value). The
                # scope gets no snapshot, so its entries are not scored; its
                # applies fail the same way and end in the dead letters.
                self.snapshots.pop(scope, None)
                log.error("snapshot_read_failed", org=scope.org, source=scope.source, pop=scope.pop, error=str(raw))
                continue
            self.snapshots[scope] = (Snapshot(pairs_int(raw), cap=self.cap), now)
            self.snapshots.move_to_end(scope)
        while len(self.snapshots) > SNAPSHOT_CACHE:
            self.snapshots.popitem(last=False)

    async def _refresh_snapshots(self, client: Client, applied: list[tuple[Entry, Applied]]) -> list[Ready]:
        """Give applied entries a population snapshot (docs/design.md: staleness); returns those that have one.

        Aged snapshots were already re-read with the applies; a snapshot lacking
        only the entry's own action gets it added with the count the apply
        returned; here only scopes whose snapshot lacks another action of the
        individual (counted by another worker) cost a round trip.
        An entry whose snapshot could not be read stays counted but unscored:
        its uncommitted mark gets it repaired later.
        """
        if self.snapshot_max_age_ms == 0:
            return [Ready(e, a, self._view(e, a, Snapshot(a.pop or {}, cap=self.cap))) for e, a in applied]
        stale: dict[Scope, int] = {}
        for e, a in applied:
            assert e.scope is not None and e.event is not None
            got = self.snapshots.get(e.scope)
            if got is None:
                stale[e.scope] = e.shard
                continue
            snap, counts = got[0], a.counts
            if snap.covers(counts) or e.excluded:
                continue  # an excluded individual's own actions are added to a copy (_view)
            missing = [x for x in counts if x not in snap.counts]
            if missing == [e.event.action]:
                # Only the entry's own action is new to the snapshot, and the apply
                # returned its population count: add it instead of re-reading the
                # whole hash (O(actions) for a big scope). The full re-read still
                # comes once the snapshot is older than the max age (_aged_scopes).
                snap.add_actions({e.event.action: a.pop_count})
            else:
                stale[e.scope] = e.shard  # another worker's new action: its count is unknown here
        if stale:
            order = list(stale.items())

            def build(pipe: Commands) -> None:
                for scope, shard in order:
                    pipe.hgetall(self.keys.scope_key(scope, "pop", shard))

            self._store_snapshots(order, await self._execute(client, build))
        ready: list[Ready] = []
        for e, a in applied:
            assert e.scope is not None
            got = self.snapshots.get(e.scope)
            if got is None:
                log.error("left_unscored", entry_id=e.id.decode(), reason="no population snapshot")
                continue
            ready.append(Ready(e, a, self._view(e, a, got[0])))
        return ready

    @staticmethod
    def _view(e: Entry, a: Applied, snap: Snapshot) -> Snapshot:
        """The snapshot ``e`` is scored against: ``snap``, or for an excluded individual its view."""
        return excluded_view(snap, a.counts) if e.excluded else snap

    async def _score_and_commit(self, client: Client, ready: list[Ready]) -> list[tuple[Entry, dict[str, Any]]]:
        """Score each applied entry, commit the scores (``commit.lua``), build results."""
        if not ready:
            return []
        scored = [Scored(e, a, *snap.assess(a.counts, self.explain_limit)) for e, a, snap in ready]
        # recent (BINORMAL_RECENT_WINDOW > 0): the window's bits against the snapshot its score used
        recents: dict[int, float] = {}  # by id() of the entry: entry ids are per stream
        if self.recent_window:
            recents = {id(s.entry): recent_bits(r.snapshot, s.applied.window or {}) for s, r in zip(scored, ready)}
        # Which scores bring back a sample of their scope's zset (the median and MAD's refresh points).
        scopes: list[Scope] = []
        for s in scored:
            assert s.entry.scope is not None
            scopes.append(s.entry.scope)
        asks = {s.entry.id: p for s, p in zip(scored, self.robust.plan(scopes))}
        # Runs of one shard (one hash tag per call); order within a shard is kept.
        chunks = runs_by_shard(scored, LUA_CHUNK)

        def build(pipe: Commands) -> None:
            for chunk in chunks:
                scores: list[Score] = []
                for e, a, score, _ in chunk:
                    assert e.event is not None
                    scores.append(Score(e.kp, e.event.id, score, sum(a.counts.values()), e.id, e.ikey, asks[e.id]))
                self._build_commit(pipe, chunk[0].entry.shard, scores)

        results = await self._execute(client, build)
        self.counters.lua_calls += len(chunks)
        out: list[tuple[Entry, dict[str, Any]]] = []
        for chunk, r in zip(chunks, results):
            if isinstance(r, Exception):
                # Counted (apply succeeded) but the scores are not committed; each
                # individual's next event commits a fresh one.
                first = chunk[0].entry.id.decode()
                log.error("commit_failed", entries=len(chunk), first_entry=first, error=str(r))
                continue
            for (e, a, score, explain), reply in zip(chunk, Commit.decode(r), strict=True):
                ev = e.event
                assert ev is not None
                if isinstance(reply, CommitBadState):
                    log.error("commit_skipped", entry_id=e.id.decode(), reason="a key of its scope holds another type")
                    continue
                if not reply.newest:
                    # A batch in flight beside this one already committed a later
                    # state of this individual; its rank score stays the newer one.
                    self.counters.stale_scores += 1
                assert e.scope is not None
                if reply.sample is not None:
                    robust = self.robust.update(e.scope, e.shard, reply.sample)
                else:
                    robust = self.robust.get(e.scope)
                ts = ev.ts if ev.ts is not None else entry_ms(e.id)
                muted = self.rules is not None and self.rules.is_muted(e.scope or ev.scope, ev.id, ev.action)
                result = make_result(
                    ev,
                    a.counts,
                    score,
                    explain,
                    reply.agg,
                    a.stats,
                    ts,
                    rank=reply.rank,
                    robust=robust,
                    min_events=self.min_events,
                    min_individuals=self.min_individuals,
                    muted=muted,
                    cap=self.cap,
                    recent=recents[id(e)] if self.recent_window else None,
                )
                out.append((e, result))
        return out

    def _build_commit(self, pipe: Commands, shard: int, scores: Sequence[Score]) -> None:
        """One ``commit.lua`` call for scores of one shard (``Commit.LAYOUT``, documented in the script)."""
        # The event count orders one individual's states (commit.lua).
        keys, args = Commit.pack(self.keys.uncommitted(shard), scores)
        pipe.evalsha(self.scripts.sha(Commit.NAME), len(keys), *keys, *args)

    async def repair(self, client: Client, shard: int, marks: Sequence[tuple[bytes, bytes]]) -> int:
        """Commit fresh scores for individuals whose last applied entry was never committed.

        ``marks`` are (individual key, mark) pairs of the shard's uncommitted
        hash (``<entry id> <L>``, keys.mark_entry) that stayed unchanged for a
        claim interval: the worker that applied them died before its commit. Each individual is scored on its counts
        now and committed as of that entry (which clears the mark); a later
        event of it arriving meanwhile still wins by its event count. Returns
        the number of scores committed.
        """
        found: list[tuple[Scope, str, bytes, bytes]] = []
        for ikey, mark in marks:
            try:
                scope, ident = self.keys.individual_of(ikey, shard)
            except ValueError as exc:
                log.error("uncommitted_mark_invalid", error=str(exc))
                continue
            found.append((scope, ident, ikey, mark_entry(mark).encode()))
        if not found:
            return 0
        scopes = list(dict.fromkeys(scope for scope, *_ in found))

        def read(pipe: Commands) -> None:
            for _, _, ikey, _ in found:
                pipe.hgetall(ikey.decode("utf-8"))
            for scope in scopes:
                pipe.hgetall(self.keys.scope_key(scope, "pop", shard))

        replies = await self._execute(client, read)
        self._store_snapshots([(scope, shard) for scope in scopes], replies[len(found) :])
        # The hashes are keyed by action number: name them, one HMGET per scope.
        readable: dict[Scope, list[tuple[tuple[Scope, str, bytes, bytes], dict[bytes, bytes]]]] = {}
        for f, raw in zip(found, replies):
            if isinstance(raw, Exception):
                # Bad state under a key: the mark stays (and the next round tries again).
                log.error("repair_read_failed", individual=f[2].decode("utf-8", "replace"), error=str(raw))
                continue
            readable.setdefault(f[0], []).append((f, dict(zip(raw[0::2], raw[1::2]))))
        named: list[tuple[tuple[Scope, str, bytes, bytes], dict[str, int]]] = []
        for scope, rows in readable.items():
            counts_of = await name_counts(client, self.keys, scope, [raw for _, raw in rows], shard)
            named += [(f, c) for (f, _), c in zip(rows, counts_of)]
        scores: list[Score] = []
        for (scope, ident, ikey, entry_id), counts in named:
            got = self.snapshots.get(scope)
            if got is None:
                continue  # its population could not be read (logged by _store_snapshots)
            snap = got[0]
            if self.rules is not None and self.rules.is_excluded(scope, ident):
                snap = excluded_view(snap, counts)
            score = snap.assess(counts, 0)[0]
            kp = self.keys.scope_prefix(scope, shard)
            scores.append(Score(kp, ident, score, sum(counts.values()), entry_id.decode(), ikey.decode("utf-8")))
        done = 0
        for i in range(0, len(scores), LUA_CHUNK):
            chunk = scores[i : i + LUA_CHUNK]
            [r] = await self._execute(client, lambda pipe: self._build_commit(pipe, shard, chunk))
            self.counters.lua_calls += 1
            if isinstance(r, Exception):
                # The marks stay; the next claim round tries again.
                log.error("repair_commit_failed", shard=shard, individuals=len(chunk), error=str(r))
                continue
            done += sum(1 for reply in Commit.decode(r) if not isinstance(reply, CommitBadState))
        self.counters.repaired += done
        if done:
            log.warning("uncommitted_scores_repaired", shard=shard, individuals=done)
        return done

    def _alert(self, pipe: Commands, results: list[tuple[Entry, dict[str, Any]]]) -> None:
        """The alert checks of ``results`` (worker/outbox.py; benchmarks/alerts_overhead.py times this)."""
        assert self.alerts is not None
        queue_alerts(pipe, results, self.keys, self.scripts, self.alerts, self.planner, self.counters)
