"""The offline engine's final rows: each individual's score against the snapshot in force at its
last event, compared with the final scores of its scope (docs/quality.md, "Offline semantics").

:class:`_Bits` is :meth:`Snapshot.assess` inlined for the common case, the same float operations
in the same order, so that every score is the same to the last bit (``tests/test_score.py``).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from binormal.common.keys import Scope
from binormal.common.scoring import _LG, LN2, SCORE_EPSILON, Snapshot, zscore
from binormal.drift import drift_bits, window_counts

if TYPE_CHECKING:  # the engine's types only: offline imports this module
    from binormal.offline import Options, ScopeState

MAD_SCALE = 1.4826  # MAD -> standard deviation of a normal distribution


@dataclass
class Row:
    """One individual's final result, with what its explanation needs."""

    scope: Scope
    ident: str
    counts: dict[str, int]
    count: int
    score: float
    zscore: float
    pscore: float
    rzscore: float
    learning: bool
    bits_per_event: float
    snapshot: Snapshot
    recent: float = 0.0  # binormal/drift.py; 0 when Options.window is 0
    drift: float = 0.0

    def as_json(self, recent: bool = False) -> dict[str, Any]:
        """The ``binormal score --json`` object (numbers rounded to 3 decimals); ``recent``: with the
        recent score (``--window``)."""
        s = self.scope
        got = {
            "org": s.org,
            "source": s.source,
            "pop": s.pop,
            "id": self.ident,
            "count": self.count,
            "score": round(self.score, 3),
            "zscore": round(self.zscore, 3),
            "pscore": round(self.pscore, 3),
            "rzscore": round(self.rzscore, 3),
            "bits_per_event": round(self.bits_per_event, 3),
            "learning": self.learning,
        }
        if recent:
            got["recent"] = round(self.recent, 3)
        return got


def scope_rows(sc: ScopeState, opts: Options, zscores: dict[str, float] | None) -> list[Row]:
    """The scope's rows: final scores, and each compared with all of them.

    ``zscores`` (``--exact``) replaces the zscore against the final aggregates by the one each
    individual had at its last event.
    """
    scores: dict[str, float] = {}
    memo: dict[int, _Bits] = {}  # id(snapshot) -> its inlined bits (the snapshots live in sc.ind meanwhile)
    cap = opts.cap
    for ident, rec in sc.ind.items():
        scores[ident] = final_score(rec[2], rec[0], rec[1], cap, memo)
    values = list(scores.values())
    ordered = sorted(values)
    median = _median(ordered) if ordered else 0.0
    mad = _median(sorted(abs(v - median) for v in values)) if values else 0.0
    spread = MAD_SCALE * mad
    few = len(values) < opts.min_individuals
    out: list[Row] = []
    add = out.append
    scope = sc.scope
    size = len(ordered)
    rank = bisect.bisect_left
    count, total, total_sq = len(values), math.fsum(values), math.fsum(v * v for v in values)
    min_events = opts.min_events
    window = opts.window
    for ident, rec in sc.ind.items():
        score = scores[ident]
        n = rec[1]
        z = zscores[ident] if zscores is not None else zscore(score, count, total, total_sq)
        recent = drift = 0.0
        if window:
            mine = window_counts(rec[5], n, window)
            if mine:
                recent = final_score(rec[2], mine, sum(mine.values()), cap, memo)
                drift = drift_bits(rec[0], mine)
        add(
            Row(  # scope, ident, counts, count, score, zscore, pscore, rzscore, learning, bits/event, snapshot
                scope,
                ident,
                rec[0],
                n,
                score,
                z,
                rank(ordered, score) / size,
                (score - median) / spread if spread > 0.0 else 0.0,
                few or n < min_events,
                score / min(n, cap),
                rec[2],
                recent,
                drift,
            )
        )
    return out


def _median(ordered: list[float]) -> float:
    """:func:`statistics.median` of a non-empty sorted list, the same float operation (a mean of
    the middle two), without importing :mod:`statistics` (~7 ms of ``binormal score``'s start-up)."""
    half = len(ordered) // 2
    return ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2


class _Bits:
    """:meth:`Snapshot.bits` and :meth:`Snapshot.bits0` of one snapshot for ``n <= min(cap, 1000)``, inlined.

    The closed form of :meth:`Snapshot.bits` (``0 < p < 1``, ``n`` within the lgamma table), the
    same float operations in the same order, so every term is the same to the last bit (a test
    compares :func:`final_score` with :meth:`Snapshot.assess`). Terms that are exactly 0 are left
    out of the sums: :func:`math.fsum` is exactly rounded, so neither that nor the order of the
    terms changes a sum. Memoised per ``n``: ``Z[n]`` and each action's (mode, logit, -bits(0)).
    ``Z[n]`` stops at the first action (most frequent first) whose mode at ``n`` is 0: its
    ``bits(0)`` and all later ones are exactly 0. So the row of ``n`` lacks exactly the actions
    of mode 0 at ``n`` (:meth:`Snapshot.absent_candidates` holds every action of a non-zero mode
    for ``n <= cap``), whose entry ``(0, logit p, 0.0)`` is the same for every ``n``.
    """

    __slots__ = ("snap", "logit", "zero", "rows", "rare", "order")

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.logit: dict[str, tuple[float, float]] = {}  # action -> (p, logit p)
        self.zero: dict[int, float] = {}  # n -> Z[n]
        self.rows: dict[int, dict[str, tuple[int, float, float]]] = {}  # n -> action -> (m, logit, -bits(0))
        self.rare: dict[str, tuple[int, float, float]] = {}  # the same where m is 0 (shared by every n)
        counts = snap.counts
        self.order = sorted(snap.absent_candidates(), key=counts.__getitem__, reverse=True)

    def _p(self, action: str) -> tuple[float, float]:
        got = self.logit.get(action)
        if got is None:
            p = self.snap.counts[action] / self.snap.total
            got = self.logit[action] = (p, math.log(p) - math.log1p(-p))
        return got

    def _row(self, n: int) -> dict[str, tuple[int, float, float]]:
        """The entries at ``n`` of the actions with a non-zero mode, and ``Z[n]`` from their ``bits(0)``."""
        lg = _LG
        row: dict[str, tuple[int, float, float]] = {}
        values = []
        for action in self.order:
            p, logit = self._p(action)
            m = min(int((n + 1) * p), n)
            if m == 0:
                break
            x = 0
            b0 = max((lg[x] + lg[n - x] - lg[m] - lg[n - m] + (m - x) * logit) / LN2, 0.0)
            row[action] = (m, logit, -b0)
            values.append(b0)
        self.zero[n] = math.fsum(values)
        self.rows[n] = row
        return row

    def _rare(self, action: str) -> tuple[int, float, float]:
        """The entry of an action whose mode at ``n`` is 0 (any ``n`` whose row lacks it): (0, logit p, 0.0)."""
        got = self.rare[action] = (0, self._p(action)[1], 0.0)
        return got

    def score(self, counts: dict[str, int], n: int) -> float:
        """``snap.assess(counts, 0)[0]`` for raw counts of ``n <= cap`` events, every action in the snapshot."""
        row = self.rows.get(n)
        if row is None:
            row = self._row(n)
        terms = [self.zero[n]]
        add = terms.append
        rare = self.rare
        lg = _LG
        for action, x in counts.items():
            got = row.get(action) or rare.get(action) or self._rare(action)
            m, logit, b0 = got
            v = (lg[x] + lg[n - x] - lg[m] - lg[n - m] + (m - x) * logit) / LN2
            if v > 0.0:
                add(v)
            if b0:
                add(b0)
        score = math.fsum(terms)
        return 0.0 if score < SCORE_EPSILON else score


def final_score(snap: Snapshot, counts: dict[str, int], n: int, cap: int, memo: dict[int, _Bits]) -> float:
    """The individual's score against ``snap``: :class:`_Bits` where it applies, else :meth:`Snapshot.assess`."""
    if n > cap or n >= len(_LG) or len(snap.counts) <= 1:
        return snap.assess(counts, 0)[0]
    got = memo.get(id(snap))
    if got is None:
        got = memo[id(snap)] = _Bits(snap)
    try:
        return got.score(counts, n)
    except KeyError:  # an action the snapshot lacks (never with a count, see the module docstring)
        return snap.assess(counts, 0)[0]
