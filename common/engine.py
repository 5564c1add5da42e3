"""In-memory reference engine: the Redis state model without Redis.

It is the specification the Redis worker is tested against (with snapshot
staleness 0 both give identical results per event) and the engine behind
``binormal score FILE``, which analyses a log with no server running.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from binormal.common.calibration import (
    DEFAULT_MIN_EVENTS,
    DEFAULT_MIN_INDIVIDUALS,
    NO_ROBUST,
    Robust,
    SortedScores,
    is_learning,
)
from binormal.common.keys import Scope
from binormal.common.result import ActionStats, Aggregates, make_result
from binormal.common.schema import Event
from binormal.common.scoring import DEFAULT_CAP, Snapshot, zscore


@dataclass
class ScopeState:
    """All counters of one scope."""

    pop: dict[str, int] = field(default_factory=dict)
    sq: dict[str, int] = field(default_factory=dict)
    k: dict[str, int] = field(default_factory=dict)
    individuals: dict[str, dict[str, int]] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    agg: Aggregates = field(default_factory=Aggregates)
    ranked: SortedScores = field(default_factory=SortedScores)  # the rank zset's scores, ascending
    robust: Robust = NO_ROBUST  # median and MAD of ``ranked`` at the last refresh
    snapshot: Snapshot | None = None
    snapshot_age: int = 0


class MemoryEngine:
    """Processes events in order, exactly as one Redis worker would.

    ``refresh_every`` is the snapshot staleness in events per scope: 0 (the
    default) rebuilds the population snapshot after every event, which is what
    the Redis worker does with ``BINORMAL_SNAPSHOT_MAX_AGE_MS=0``. The scope's
    median and MAD (``rzscore``) are refreshed at the same points, right after
    the event's score is committed. ``min_events`` and ``min_individuals`` are
    the ``learning`` thresholds.
    """

    def __init__(
        self,
        cap: int = DEFAULT_CAP,
        refresh_every: int = 0,
        explain_limit: int = 5,
        min_events: int = DEFAULT_MIN_EVENTS,
        min_individuals: int = DEFAULT_MIN_INDIVIDUALS,
    ) -> None:
        self.cap = cap
        self.refresh_every = refresh_every
        self.explain_limit = explain_limit
        self.min_events = min_events
        self.min_individuals = min_individuals
        self.scopes: dict[Scope, ScopeState] = {}

    def process(self, event: Event, timestamp: int | None = None) -> dict[str, Any]:
        """Count one event and return its result."""
        st = self.scopes.setdefault(event.scope, ScopeState())
        counts = st.individuals.setdefault(event.id, {})
        k = counts.get(event.action, 0)
        counts[event.action] = k + 1
        st.pop[event.action] = st.pop.get(event.action, 0) + 1
        # When a count goes k -> k+1 the sum of squares grows by 2k+1.
        st.sq[event.action] = st.sq.get(event.action, 0) + 2 * k + 1
        if k == 0:
            st.k[event.action] = st.k.get(event.action, 0) + 1

        snap = st.snapshot
        refreshed = snap is None or st.snapshot_age >= self.refresh_every or not snap.covers(counts)
        if refreshed:
            snap = Snapshot(dict(st.pop), cap=self.cap)
            st.snapshot, st.snapshot_age = snap, 0
        assert snap is not None
        st.snapshot_age += 1

        score, explain = snap.assess(counts, self.explain_limit)
        old = st.scores.get(event.id)
        st.agg = st.agg.replace(old, score)
        st.scores[event.id] = score
        st.ranked.replace(old, score)
        if refreshed:
            st.robust = st.ranked.robust()
        stats = ActionStats(st.pop[event.action], st.sq[event.action], st.k[event.action])
        ts = event.ts if event.ts is not None else (timestamp if timestamp is not None else 0)
        return make_result(
            event,
            counts,
            score,
            explain,
            st.agg,
            stats,
            ts,
            rank=st.ranked.rank(score),
            robust=st.robust,
            min_events=self.min_events,
            min_individuals=self.min_individuals,
        )

    def run(self, events: Iterable[Event]) -> list[dict[str, Any]]:
        """Process ``events`` in order, returning every result."""
        return [self.process(e) for e in events]

    def current(self, scope: Scope, ident: str) -> dict[str, Any]:
        """The individual's current score and zscore (as of its last event)."""
        st = self.scopes[scope]
        score = st.scores[ident]
        events = sum(st.individuals[ident].values())
        return {
            "org": scope.org,
            "source": scope.source,
            "pop": scope.pop,
            "id": ident,
            "count": events,
            "score": round(score, 3),
            "zscore": round(zscore(score, st.agg.n, st.agg.total, st.agg.total_sq), 3),
            "pscore": round(st.ranked.rank(score).pscore, 3),
            "rzscore": round(st.robust.z(score), 3),
            "learning": is_learning(events, st.agg.n, self.min_events, self.min_individuals),
        }

    def individuals(self) -> Iterable[tuple[Scope, str]]:
        """Every (scope, id) seen so far."""
        for scope, st in self.scopes.items():
            for ident in st.individuals:
                yield scope, ident
