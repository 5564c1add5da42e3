"""Retention: the worker's sweep for idle individuals (``BINORMAL_IDLE_TTL_S``) and the per-scope cap.

With retention on, apply.lua stamps each applied entry's individual in its
scope's last-seen zset (id -> Redis TIME ms). A sweep reads, per scope, the
oldest members of that zset and hands them to ``expire.lua``, which decides
again from the zset which of them go (idle since the cutoff, or past the
``BINORMAL_MAX_INDIVIDUALS`` least recently seen) and removes each with all it
contributed, atomically. The read is only a hint: a member another worker
removed meanwhile is skipped by the script, so every worker may sweep every
shard at once without a lock, and nothing is removed twice.

Every step is bounded: at most ``SWEEP_SCOPES`` scopes per shard and round
(an SSCAN cursor carries on next round), ``SWEEP_BATCH`` individuals per
script call, ``SWEEP_CALLS`` calls per scope and round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.exceptions import NoScriptError, ResponseError

from binormal.common.connection import Client, execute_raw
from binormal.common.keys import Keyspace, Scope
from binormal.common.rules import RuleCache
from binormal.common.scripts import Expire, Expired, ExpireScope, Scripts
from binormal.common.store import redis_now_ms

log = structlog.get_logger("binormal.worker")

SWEEP_SCOPES = 1_000  # scopes read per shard and round (SSCAN pages of SCAN_PAGE)
SCAN_PAGE = 250
SWEEP_BATCH = 50  # individuals per expire.lua call (a call blocks Redis for a few milliseconds at most)
SWEEP_CALLS = 20  # calls per scope and round: at most 1,000 individuals of a scope per round


@dataclass
class Sweeper:
    """One worker's retention sweep; :meth:`sweep` runs one bounded round over every shard."""

    keys: Keyspace
    scripts: Scripts
    idle_ttl_s: int = 0  # 0: no idle expiry
    max_individuals: int = 0  # 0: no cap
    weight_cap: int = 0  # W, as apply.lua maintains the population
    recent_window: int = 0  # K > 0: the individuals' recent lists and window hashes go with them
    rules: RuleCache | None = None  # who is excluded from learning (did not move the population)
    batch: int = SWEEP_BATCH
    removed: int = 0  # individuals this worker removed so far
    cursors: dict[int, int] = field(default_factory=dict)  # SSCAN cursor of each shard's scopes set

    async def sweep(self, client: Client) -> int:
        """One round: every shard's scopes (bounded); returns the individuals removed."""
        # The cutoff is judged by Redis's clock, the clock apply.lua stamps with;
        # read once and passed to the script (an older cutoff only removes less).
        cutoff = await redis_now_ms(client) - self.idle_ttl_s * 1000 if self.idle_ttl_s > 0 else -1
        if self.rules is not None:
            await self.rules.refresh(client)
        done = 0
        for shard in range(self.keys.shards):
            try:
                scopes = await self._scopes(client, shard)
            except ResponseError as exc:  # bad state under the shard's scopes set: the other shards go on
                log.error("sweep_failed", shard=shard, error=str(exc))
                continue
            if scopes:
                done += await self.sweep_scopes(client, shard, scopes, cutoff)
        return done

    async def _scopes(self, client: Client, shard: int) -> list[Scope]:
        """Up to ``SWEEP_SCOPES`` scopes of ``shard``, carrying on from last round's cursor."""
        key = self.keys.scopes(shard)
        cursor = self.cursors.get(shard, 0)
        tokens: set[bytes | str] = set()
        while True:
            cursor, page = await client.sscan(key, cursor, count=SCAN_PAGE)
            tokens.update(page)
            if cursor == 0 or len(tokens) >= SWEEP_SCOPES:
                break
        self.cursors[shard] = cursor
        out: list[Scope] = []
        for t in sorted(t.decode("utf-8", "replace") if isinstance(t, bytes) else t for t in tokens):
            try:
                out.append(Scope.from_token(t))
            except ValueError:
                log.error("scope_token_invalid", shard=shard, token=t[:200])
        return out

    async def sweep_scopes(self, client: Client, shard: int, scopes: Sequence[Scope], cutoff_ms: int) -> int:
        """Remove what is idle (last seen at or before ``cutoff_ms``, -1: none) or over the cap in ``scopes``.

        One round trip reads the oldest ``batch`` members of each scope's last-seen zset, one more runs
        ``expire.lua`` for the scopes that have candidates; a scope whose whole page went is read again
        (at most ``SWEEP_CALLS`` times).
        """
        todo = list(scopes)
        removed = 0
        for _ in range(SWEEP_CALLS):
            if not todo:
                break
            pipe = client.pipeline(transaction=False)
            for scope in todo:
                last = self.keys.scope_key(scope, "last", shard)
                pipe.zcard(last)
                pipe.zrange(last, 0, self.batch - 1, withscores=True)
            read = await pipe.execute(raise_on_error=False)
            calls: list[tuple[Scope, int, list[Any], list[Any]]] = []
            for i, scope in enumerate(todo):
                card, page = read[2 * i], read[2 * i + 1]
                if isinstance(card, ResponseError) or isinstance(page, ResponseError):
                    log.error("sweep_read_failed", org=scope.org, source=scope.source, pop=scope.pop)
                    continue
                over = int(card) - self.max_individuals if self.max_individuals > 0 else 0
                # The oldest come first: the idle ones and the ones past the cap are a prefix.
                picked = [
                    m.decode("utf-8")
                    for j, (m, stamp) in enumerate(page)
                    if (cutoff_ms >= 0 and stamp <= cutoff_ms) or j < over
                ]
                if picked:
                    keys, args = self._pack(scope, shard, picked, cutoff_ms)
                    calls.append((scope, len(page), keys, args))
            if not calls:
                break
            results = await self._run(client, calls)
            todo = []
            for (scope, page_len, _, _), r in zip(calls, results):
                if isinstance(r, ResponseError):
                    # Bad state under a key of the scope: nothing of it was written.
                    log.error("expire_failed", org=scope.org, source=scope.source, pop=scope.pop, error=str(r))
                    continue
                got: Expired = Expire.decode(r)
                removed += got.removed
                if got.removed:
                    log.info(
                        "individuals_expired",
                        org=scope.org,
                        source=scope.source,
                        pop=scope.pop,
                        removed=got.removed,
                        left=got.left,
                    )
                if got.removed == page_len == self.batch:
                    todo.append(scope)  # the whole page went: there may be more
        self.removed += removed
        return removed

    def _pack(self, scope: Scope, shard: int, idents: Sequence[str], cutoff_ms: int) -> tuple[list[Any], list[Any]]:
        rules = self.rules
        candidates = [
            (self.keys.individual(scope, ident, shard), ident, rules is not None and rules.is_excluded(scope, ident))
            for ident in idents
        ]
        return Expire.pack(
            (self.keys.uncommitted(shard), self.keys.expired(shard)),
            ExpireScope.of(self.keys.scope_prefix(scope, shard)),
            scope.token,
            cutoff_ms,
            self.max_individuals,
            self.weight_cap,
            candidates,
            self.recent_window,
        )

    async def _run(self, client: Client, calls: Sequence[tuple[Scope, int, list[Any], list[Any]]]) -> list[Any]:
        """EVALSHA every call in one round trip; after a NOSCRIPT load the scripts and send them again.

        Sending again is safe: the script decides from the zset, a member already removed is skipped.
        """
        sha = self.scripts.sha(Expire.NAME)
        for attempt in (1, 2):
            # execute_raw, not a redis-py pipeline: a cluster pipeline refuses EVALSHA,
            # execute_raw groups the calls per node (each call's keys are of one slot).
            results = await execute_raw(
                client, [("EVALSHA", sha, len(keys), *keys, *args) for _, _, keys, args in calls]
            )
            if attempt == 1 and any(isinstance(r, NoScriptError) for r in results):
                await self.scripts.load_all(client)
                continue
            return results
        raise AssertionError("unreachable")
