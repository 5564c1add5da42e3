"""In-memory reference engine: the Redis state model without Redis.

It is the specification the Redis worker is tested against (with snapshot
staleness 0 both give identical results per event) and the engine behind
``binormal score FILE``, which analyses a log with no server running.
"""

from __future__ import annotations

from collections import deque
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
from binormal.common.recent import recent_bits
from binormal.common.result import ActionStats, Aggregates, make_result
from binormal.common.schema import Event
from binormal.common.scoring import DEFAULT_CAP, Snapshot, count_event, excluded_view, weight_cap_usable, zscore
from binormal.drift import window_step

DEFAULT_DOMINANCE_SHARE = 0.2
DEFAULT_DOMINANCE_MIN_EVENTS = 1000  # 10 N: a young scope is not flagged


@dataclass
class ScopeState:
    """All counters of one scope."""

    pop: dict[str, int] = field(default_factory=dict)
    raw: dict[str, int] = field(default_factory=dict)  # raw per-action sums s1 (only with a weight cap)
    sq: dict[str, int] = field(default_factory=dict)
    k: dict[str, int] = field(default_factory=dict)
    individuals: dict[str, dict[str, int]] = field(default_factory=dict)
    # recent window (K > 0): per id its last K actions, newest first, and its window's counts
    windows: dict[str, tuple[deque[str], dict[str, int]]] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    agg: Aggregates = field(default_factory=Aggregates)
    ranked: SortedScores = field(default_factory=SortedScores)  # the rank zset's scores, ascending
    robust: Robust = NO_ROBUST  # median and MAD of ``ranked`` at the last refresh
    snapshot: Snapshot | None = None
    snapshot_age: int = 0
    events: int = 0  # raw events of the scope
    top: str = ""  # the individual with the most raw events (the first to reach it)
    top_n: int = 0


class MemoryEngine:
    """Processes events in order, exactly as one Redis worker would.

    ``refresh_every`` is the snapshot staleness in events per scope: 0 (the
    default) rebuilds the population snapshot after every event, which is what
    the Redis worker does with ``BINORMAL_SNAPSHOT_MAX_AGE_MS=0``.

    ``weight_cap`` is the dominance guard's W (``BINORMAL_WEIGHT_CAP``, whose
    default for the services is N): 0, the default here, is off (raw counts,
    exactly as before the guard, so callers that do not pass it keep their
    results); None means N; otherwise it must be at least N
    (:func:`check_weight_cap`). To match a worker with default settings pass
    ``weight_cap=None`` (or N).

    ``excluded`` holds the (scope, id) pairs excluded from learning (common/rules.py): counted in
    their own counts and scored, never in the population's counts nor in its dominance.
    the Redis worker does with ``BINORMAL_SNAPSHOT_MAX_AGE_MS=0``. The scope's
    median and MAD (``rzscore``) are refreshed at the same points, right after
    the event's score is committed. ``min_events`` and ``min_individuals`` are
    the ``learning`` thresholds.

    ``recent_window`` is ``BINORMAL_RECENT_WINDOW`` K: with K > 0 every result has ``recent``, the
    bits of the individual's last ``min(K, n // 2)`` events against the snapshot its score used
    (common/recent.py; apply.lua keeps the same window); 0, the default, leaves it out.
    """

    def __init__(
        self,
        cap: int = DEFAULT_CAP,
        refresh_every: int = 0,
        explain_limit: int = 5,
        weight_cap: int | None = 0,
        dominance_share: float = DEFAULT_DOMINANCE_SHARE,
        dominance_min_events: int = DEFAULT_DOMINANCE_MIN_EVENTS,
        excluded: Iterable[tuple[Scope, str]] = (),
        min_events: int = DEFAULT_MIN_EVENTS,
        min_individuals: int = DEFAULT_MIN_INDIVIDUALS,
        recent_window: int = 0,
    ) -> None:
        if not 0 <= recent_window <= cap:
            raise ValueError(f"recent window must be 0 (off) or 1..cap {cap}, got {recent_window}")
        self.recent_window = recent_window
        self.cap = cap
        self.weight_cap = check_weight_cap(cap if weight_cap is None else weight_cap, cap)
        self.dominance_share = dominance_share
        self.dominance_min_events = dominance_min_events
        self.refresh_every = refresh_every
        self.explain_limit = explain_limit
        self.min_events = min_events
        self.min_individuals = min_individuals
        self.scopes: dict[Scope, ScopeState] = {}
        self.excluded = frozenset(excluded)

    def process(self, event: Event, timestamp: int | None = None) -> dict[str, Any]:
        """Count one event and return its result."""
        st = self.scopes.setdefault(event.scope, ScopeState())
        counts = st.individuals.setdefault(event.id, {})
        k = counts.get(event.action, 0)
        excluded = bool(self.excluded) and (event.scope, event.id) in self.excluded
        if excluded:
            counts[event.action] = k + 1
        else:
            w = self.weight_cap
            n = count_event(counts, st.pop, event.action, w)
            if w:
                st.raw[event.action] = st.raw.get(event.action, 0) + 1
            st.events += 1
            if n > st.top_n:
                st.top, st.top_n = event.id, n
            # When a count goes k -> k+1 the sum of squares grows by 2k+1.
            st.sq[event.action] = st.sq.get(event.action, 0) + 2 * k + 1
            if k == 0:
                st.k[event.action] = st.k.get(event.action, 0) + 1

        window: dict[str, int] | None = None
        if self.recent_window:
            kept, window = st.windows.setdefault(event.id, (deque(), {}))
            window_step(kept, window, sum(counts.values()) - 1, event.action, self.recent_window)

        snap = st.snapshot
        refreshed = snap is None or st.snapshot_age >= self.refresh_every or (not excluded and not snap.covers(counts))
        if refreshed:
            snap = Snapshot(dict(st.pop), cap=self.cap)
            st.snapshot, st.snapshot_age = snap, 0
        assert snap is not None
        st.snapshot_age += 1
        if excluded:
            snap = excluded_view(snap, counts)

        score, explain = snap.assess(counts, self.explain_limit)
        old = st.scores.get(event.id)
        st.agg = st.agg.replace(old, score)
        st.scores[event.id] = score
        st.ranked.replace(old, score)
        if refreshed:
            st.robust = st.ranked.robust()
        a = event.action
        s1 = st.raw.get(a, 0) if self.weight_cap else st.pop.get(a, 0)
        stats = ActionStats(s1, st.sq.get(a, 0), st.k.get(a, 0))
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
            cap=self.cap,
            recent=None if window is None else recent_bits(snap, window),
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

    def dominated(self, scope: Scope) -> dict[str, Any] | None:
        """``{id, share}`` of the individual dominating ``scope`` (apply.lua's rule), else None."""
        st = self.scopes.get(scope)
        if st is None or not is_dominated(st.top_n, st.events, self.dominance_share, self.dominance_min_events):
            return None
        return {"id": st.top, "share": round(st.top_n / st.events, 3)}

    def individuals(self) -> Iterable[tuple[Scope, str]]:
        """Every (scope, id) seen so far."""
        for scope, st in self.scopes.items():
            for ident in st.individuals:
                yield scope, ident


def check_weight_cap(weight_cap: int, cap: int) -> int:
    """``weight_cap`` if usable with normalisation cap ``cap`` (:func:`weight_cap_usable`); else ValueError."""
    if not weight_cap_usable(weight_cap, cap):
        raise ValueError(f"weight cap must be 0 (off) or at least the normalisation cap {cap}, got {weight_cap}")
    return weight_cap


def is_dominated(top_n: int, events: int, share: float, min_events: int) -> bool:
    """The dominance flag: the scope has ``min_events`` raw events and its top individual more than ``share`` of them.

    The same double comparison as apply.lua (``top_n / events > share``).
    """
    return events >= min_events and events > 0 and top_n / events > share
