"""The distinct-action cap (``BINORMAL_MAX_ACTIONS``) as a per-line pre-check for ``POST /events``.

The worker enforces the cap (apply.lua refuses an entry whose action is new
to a scope that already has the maximum, and it is dead-lettered); this
check tells HTTP producers per line instead, before anything is written.

Cost for normal scopes: each scope's number of actions (HLEN of its pop hash)
is cached for ``ttl_s``; a scope whose cached size plus the batch's distinct
actions for it stays within the cap needs nothing more. Only scopes that may
pass it get one HLEN + HMGET of the batch's actions (all in one round trip),
and only their new actions past the cap are refused. Concurrent batches may
still pass the cap together by a little; the worker has the last word.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from binormal.common.connection import Client, execute_raw
from binormal.common.keys import Keyspace, Scope
from binormal.common.schema import Event, action_cap_reason

CACHE_SCOPES = 100_000  # scope sizes remembered at most (cleared past it)


class Rejects(Protocol):
    """What the check reports refused lines to (ingest's Batch)."""

    def reject(self, line: int, error: str, field_name: str | None) -> None: ...


@dataclass
class ActionCap:
    """Per-scope action counts, cached; see the module docstring."""

    keys: Keyspace
    max_actions: int
    ttl_s: float = 1.0
    sizes: dict[Scope, tuple[int, float]] = field(default_factory=dict)

    async def check(self, client: Client, events: list[tuple[int, Event]], batch: Rejects) -> list[tuple[int, Event]]:
        """``events`` without those refused by the cap (each reported with ``batch.reject``)."""
        # Distinct actions per scope, in order of first use. A plain tuple key per line
        # (built in C) rather than ev.scope (a NamedTuple made in Python): this loop is
        # the whole cost for normal scopes.
        by_key: dict[tuple[str, str, str], dict[str, None]] = {}
        for _, ev in events:
            key = (ev.org, ev.source, ev.pop)
            acts = by_key.get(key)
            if acts is None:
                acts = by_key[key] = {}
            acts[ev.action] = None
        wanted = {Scope(*key): acts for key, acts in by_key.items()}
        now = time.monotonic()
        stale = [s for s in wanted if now - self.sizes.get(s, (0, float("-inf")))[1] > self.ttl_s]
        if stale:
            got = await execute_raw(client, [("HLEN", self.keys.scope_key(s, "pop")) for s in stale])
            self._remember(stale, got, now)
        near: list[Scope] = []
        for s, actions in wanted.items():
            size, at = self.sizes.get(s, (0, now))
            if size + len(actions) > self.max_actions:
                near.append(s)
            else:
                # Until the next reading, assume every action of the batch was new: an upper
                # bound, so a later batch is checked early rather than let past the cap.
                self.sizes[s] = (size + len(actions), at)
        if not near:
            return events
        refused = await self._refused(client, near, wanted, now)
        if not refused:
            return events
        kept: list[tuple[int, Event]] = []
        for line, ev in events:
            count = refused.get((ev.scope, ev.action))
            if count is None:
                kept.append((line, ev))
            else:
                batch.reject(line, action_cap_reason(count), "action")
        await self._flag(client, refused)
        return kept

    async def _refused(
        self, client: Client, near: Sequence[Scope], wanted: dict[Scope, dict[str, None]], now: float
    ) -> dict[tuple[Scope, str], int]:
        """(scope, action) pairs past the cap, with the scope's action count; one round trip."""
        commands: list[tuple[Any, ...]] = []
        for s in near:
            pop = self.keys.scope_key(s, "pop")
            commands += [("HLEN", pop), ("HMGET", pop, *wanted[s])]
        got = await execute_raw(client, commands)
        out: dict[tuple[Scope, str], int] = {}
        for i, s in enumerate(near):
            size, present = got[2 * i], got[2 * i + 1]
            if isinstance(size, Exception) or isinstance(present, Exception):
                continue  # bad state under the key: the worker dead-letters such events with the reason
            room = self.max_actions - int(size)
            admitted = 0
            for action, value in zip(wanted[s], present):
                if value is not None:
                    continue  # known to the scope: always counted
                if admitted < room:
                    admitted += 1  # a new action that still fits
                else:
                    out[(s, action)] = int(size)
            self.sizes[s] = (int(size) + admitted, now)
        return out

    async def _flag(self, client: Client, refused: dict[tuple[Scope, str], int]) -> None:
        """Count the refused events' scopes in the shard's capped hash (what /api/scopes shows)."""
        scopes = {s for s, _ in refused}
        await execute_raw(client, [("HINCRBY", self.keys.capped(self.keys.shard(s)), s.token, 1) for s in scopes])

    def _remember(self, scopes: Sequence[Scope], sizes: Sequence[Any], now: float) -> None:
        if len(self.sizes) > CACHE_SCOPES:
            self.sizes.clear()
        for s, size in zip(scopes, sizes):
            if not isinstance(size, Exception):
                self.sizes[s] = (int(size), now)
