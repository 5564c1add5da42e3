"""Binomial surprisal scoring (docs/design.md, "Scoring in brief"; docs/scoring.md) as pure functions.

Everything here is per scope (org, source, pop). Population counts ``C_a`` give
``p_a = C_a / C``; an individual with counts ``x_a`` over ``n`` events is
normalised to ``n' = min(n, N)`` events and scored by how many bits of surprise
each action's normalised count carries above that action's most likely count.
Actions the individual never did count too.

All sums of floats go through :func:`math.fsum`, which is exactly rounded and so
independent of summation order: the Redis engine and the in-memory engine read
hash fields in different orders and must still agree bit for bit.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

LN2 = math.log(2.0)
DEFAULT_CAP = 100
SCORE_EPSILON = 1e-9  # bits; smaller scores are rounding residue
# lgamma(k + 1) for k = 0..1000: normalised counts never exceed the cap N.
_LG = [math.lgamma(k + 1) for k in range(1001)]


def log_pmf(x: int, n: int, p: float) -> float:
    """Natural log of the binomial probability of ``x`` successes in ``n`` trials.

    Computed with ``lgamma`` so it never underflows. The edges are exact:
    ``p == 0`` allows only ``x == 0`` and ``p == 1`` only ``x == n``
    (``0 * log 0`` is taken as 0, as in the limit).
    """
    if x < 0 or x > n:
        return -math.inf
    if p <= 0.0:
        return 0.0 if x == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if x == n else -math.inf
    return math.lgamma(n + 1) - math.lgamma(x + 1) - math.lgamma(n - x + 1) + x * math.log(p) + (n - x) * math.log1p(-p)


def mode(n: int, p: float) -> int:
    """Most likely count of a Binomial(n, p): ``min(floor((n+1)p), n)``."""
    return min(int(math.floor((n + 1) * p)), n)


def action_bits(x: int, n: int, p: float) -> float:
    """Bits of surprise of seeing ``x`` of ``n`` compared with the most likely count.

    ``log2 P(mode) - log2 P(x)``, which is >= 0 because the mode maximises the
    pmf; tiny negative rounding noise is clamped to 0.
    """
    if n <= 0:
        return 0.0
    diff = log_pmf(mode(n, p), n, p) - log_pmf(x, n, p)
    return max(diff / LN2, 0.0)


def normalise(counts: Mapping[str, int], cap: int = DEFAULT_CAP) -> tuple[int, dict[str, int]]:
    """Scale an individual's counts down to at most ``cap`` events.

    Returns ``(n', {action: x'_a})`` with ``n' = min(n, cap)`` and
    ``x'_a = floor(x_a * n' / n + 0.5)`` (round half up, in exact integer arithmetic).
    """
    n = sum(counts.values())
    if n <= 0:
        return 0, {a: 0 for a in counts}
    n_norm = min(n, cap)
    if n_norm == n:
        return n, dict(counts)
    # floor(x*n'/n + 1/2) == floor((2*x*n' + n) / (2n)) for integers, no float error.
    return n_norm, {a: (2 * x * n_norm + n) // (2 * n) for a, x in counts.items()}


def weight_cap_usable(weight_cap: int, cap: int) -> bool:
    """Whether a weight cap W can go with normalisation cap N: 0 (the guard off) or ``W >= N``.

    With ``W < N`` an individual could be scored with a normalised count ``x'_a > 0`` for an
    action whose population count its own capped contribution rounded to 0 (infinite bits).
    """
    return weight_cap == 0 or weight_cap >= cap


def contribution(counts: Mapping[str, int], weight_cap: int) -> dict[str, int]:
    """What an individual with raw ``counts`` adds to its scope's population counts (the dominance guard).

    ``c(x) = x`` when ``weight_cap`` is 0 (guard off) or ``n = sum x <= weight_cap``;
    else ``normalise(x, weight_cap)[1]`` (integer round half up), so no individual
    weighs more than about ``weight_cap`` events in ``p_a``. Actions whose share
    rounds to 0 stay in the result with 0. docs/quality.md, "Dominance guard".
    """
    if weight_cap <= 0 or sum(counts.values()) <= weight_cap:
        return dict(counts)
    return normalise(counts, weight_cap)[1]


def contribution_delta(before: Mapping[str, int], after: Mapping[str, int], weight_cap: int) -> dict[str, int]:
    """``c(after) - c(before)`` per action of ``after`` (an individual's counts only grow).

    Every action of ``after`` is in the result, 0 included (the caller writes only
    the non-zero ones, but keeps a field for the event's own action so the action
    stays known to the scope). O(the individual's own actions).
    """
    cb = contribution(before, weight_cap)
    ca = contribution(after, weight_cap)
    return {a: c - cb.get(a, 0) for a, c in ca.items()}


def count_event(counts: dict[str, int], pop: dict[str, int], action: str, weight_cap: int, n: int | None = None) -> int:
    """Count one event of ``action`` for an individual and move its scope's population (in place).

    ``counts`` are the individual's raw counts, ``pop`` the scope's population
    counts, ``n`` the individual's events before this one (summed when None).
    The population moves by ``c(after) - c(before)`` (:func:`contribution`):
    O(1) while the individual has at most ``weight_cap`` events (or the cap is
    0), O(its own actions) past it; only changed fields are written, plus the
    event's own action (a field holding 0 keeps the action known). apply.lua
    does the same in Redis. Returns the individual's events after this one.
    """
    if n is None:
        n = sum(counts.values())
    n += 1
    if weight_cap <= 0 or n <= weight_cap:
        counts[action] = counts.get(action, 0) + 1
        pop[action] = pop.get(action, 0) + 1
        return n
    before = dict(counts)
    counts[action] = counts.get(action, 0) + 1
    for a, d in contribution_delta(before, counts, weight_cap).items():
        if d or a == action:
            pop[a] = pop.get(a, 0) + d
    return n


def zscore(value: float, count: int, total: float, total_sq: float) -> float:
    """Standard score of ``value`` against running aggregates (population std).

    ``count``, ``total`` and ``total_sq`` are the number of values, their sum and
    the sum of their squares. Returns 0 when the deviation is 0 (or not defined).
    """
    if count <= 0:
        return 0.0
    mean = total / count
    var = total_sq / count - mean * mean
    if var <= 0.0:
        return 0.0
    sigma = math.sqrt(var)
    # Cancellation in E[x^2] - E[x]^2 leaves noise around 1e-12 relative to the
    # scale of the scores when every score is (nearly) equal: call that zero.
    if sigma <= 1e-9 * max(1.0, abs(mean)):
        return 0.0
    return (value - mean) / sigma


def action_zscore(x: int, s1: int, s2: int, k: int) -> float:
    """z of count ``x`` among the ``k`` individuals that did the action at least once.

    ``s1`` and ``s2`` are the exact integer sums of those counts and of their
    squares, so the variance ``(k*s2 - s1^2) / k^2`` is computed without error
    until the final division.
    """
    if k <= 0:
        return 0.0
    num = k * s2 - s1 * s1
    if num <= 0:
        return 0.0
    return (x * k - s1) / math.sqrt(num)


@dataclass
class Snapshot:
    """Population counts of one scope frozen at a moment, with scoring caches.

    ``bits0(n')`` is ``Z[n'] = sum over all actions of bits_a(0; n')``; the score of
    an individual is then ``Z[n'] + sum over its own actions of
    (bits_a(x'_a) - bits_a(0))``, O(its own actions) instead of O(all actions).
    """

    counts: dict[str, int]
    cap: int = DEFAULT_CAP
    total: int = 0
    _zero: dict[int, float] = field(default_factory=dict, repr=False)
    _bits: dict[tuple[str, int, int], float] = field(default_factory=dict, repr=False)
    _zero_ranked: dict[int, list[tuple[float, str]]] = field(default_factory=dict, repr=False)
    _logit: dict[str, float] = field(default_factory=dict, repr=False)
    _top: list[str] | None = field(default=None, repr=False)
    zeros: set[str] = field(default_factory=set, repr=False)  # known actions whose count is 0 (left out)

    def __post_init__(self) -> None:
        # With the dominance guard a population count may be 0 (the action stays
        # known to the scope). Scoring must equal a population without it: a zero
        # field would make p = 0 terms (harmless) but also break the single-action
        # path (len(counts) <= 1) and the p = 1 edge (bits(0) = inf -> NaN).
        if 0 in self.counts.values():
            self.zeros = {a for a, c in self.counts.items() if not c}
            self.counts = {a: c for a, c in self.counts.items() if c}
        self.total = sum(self.counts.values())

    def p(self, action: str) -> float:
        """Population probability of ``action`` (0 for an action not seen)."""
        if self.total <= 0:
            return 0.0
        return self.counts.get(action, 0) / self.total

    def bits(self, action: str, x: int, n: int) -> float:
        """Cached :func:`action_bits` for this snapshot's ``p_action``.

        For 0 < p < 1 and n within the lgamma table the difference of the two
        log-pmfs is taken in closed form: ``lgamma(n+1)`` cancels and the
        ``log p``/``log(1-p)`` terms collapse into ``(m - x) * logit(p)``, so
        ``bits = (lg[x] + lg[n-x] - lg[m] - lg[n-m] + (m-x) logit p) / ln 2``
        with ``lg[k] = lgamma(k+1)`` precomputed: no lgamma call per action.
        """
        key = (action, x, n)
        got = self._bits.get(key)
        if got is None:
            p = self.p(action)
            if 0.0 < p < 1.0 and n < len(_LG):
                m = min(int((n + 1) * p), n)
                logit = self._logit.get(action)
                if logit is None:
                    logit = self._logit[action] = math.log(p) - math.log1p(-p)
                got = max((_LG[x] + _LG[n - x] - _LG[m] - _LG[n - m] + (m - x) * logit) / LN2, 0.0)
            else:
                got = action_bits(x, n, p)
            if len(self._bits) < 200_000:
                self._bits[key] = got
        return got

    def absent_candidates(self) -> list[str]:
        """The only actions whose absence can cost bits at any ``n <= cap``: the top ``cap + 1`` by count.

        ``bits_a(0; n)`` is exactly 0.0 when the mode ``floor((n+1) p_a)`` is 0,
        i.e. ``p_a < 1/(n+1)``. The mode grows with the count, so the actions
        with a non-zero mode are the most frequent ones; and since the ``p``'s
        sum to 1, at most ``n + 1 <= cap + 1`` of them can have ``p >= 1/(n+1)``
        (a tie at the boundary would make ``cap + 2``: impossible, so ties there
        all have mode 0). Sums and rankings over this list therefore equal those
        over every action, bit for bit (the terms left out are exact zeros).
        Found once per snapshot: O(A log cap), not O(A) per ``n``.
        """
        if self._top is None:
            k = self.cap + 1
            counts = self.counts
            self._top = list(counts) if len(counts) <= k else heapq.nlargest(k, counts, key=counts.__getitem__)
        return self._top

    def bits0(self, n: int) -> float:
        """``Z[n]``: bits of an individual of ``n`` events that did no action at all."""
        got = self._zero.get(n)
        if got is None:
            if n > self.cap:  # never from assess (n' <= cap); the definition then
                got = math.fsum(self.bits(a, 0, n) for a in self.counts)
            else:
                got = math.fsum(self.bits(a, 0, n) for a in self.absent_candidates())
            self._zero[n] = got
        return got

    def _ranked_zero(self, n: int) -> list[tuple[float, str]]:
        """``(-bits_a(0; n), a)`` for the actions whose absence costs bits, most surprising first."""
        got = self._zero_ranked.get(n)
        if got is None:
            pool = self.counts if n > self.cap else self.absent_candidates()
            got = sorted((-b, a) for a in pool if (b := self.bits(a, 0, n)) > 0.0)
            self._zero_ranked[n] = got
        return got

    def add_actions(self, counts: Mapping[str, int]) -> None:
        """Add actions this snapshot lacks, with their current population counts (in place).

        For a worker whose snapshot of a big scope lacks an action the batch just
        applied: the apply's reply carries that action's count, so adding it costs
        O(cap) instead of re-reading the whole population hash (O(actions)).
        The other counts stay as of the snapshot; ``total`` grows by the new
        counts, so every ``p`` (and each cache) is recomputed.
        """
        new = {a: c for a, c in counts.items() if a not in self.counts and c}
        self.zeros.update(a for a, c in counts.items() if not c and a not in self.counts)
        if not new:
            return
        self.zeros.difference_update(new)
        self.counts.update(new)
        self.total += sum(new.values())
        self._zero.clear()
        self._bits.clear()
        self._zero_ranked.clear()
        self._logit.clear()
        if self._top is not None:
            # The other counts did not change: the new top is among the old top and the new actions.
            pool = {a: self.counts[a] for a in (*self._top, *new)}
            self._top = (
                None if len(self.counts) <= self.cap + 1 else heapq.nlargest(self.cap + 1, pool, key=pool.__getitem__)
            )

    def covers(self, actions: Mapping[str, int]) -> bool:
        """True when every action of ``actions`` is known to this snapshot (a zero count is known too)."""
        return all(a in self.counts or a in self.zeros for a in actions)

    def score(self, counts: Mapping[str, int]) -> float:
        """Score (bits) of an individual with raw ``counts`` against this snapshot."""
        return self.assess(counts, 0)[0]

    def explain(self, counts: Mapping[str, int], limit: int = 5) -> list[dict[str, object]]:
        """The actions contributing most bits to ``counts``' score, largest first.

        Each item: action, count (raw), observed (normalised ``x'_a``), expected
        (``n' * p_a``), bits, and kind ``over`` (done more than expected) or
        ``missing`` (done less than expected, including never).
        """
        return self.assess(counts, limit)[1]

    def assess(self, counts: Mapping[str, int], limit: int = 5) -> tuple[float, list[dict[str, object]]]:
        """Score and explanation (``limit`` items) of raw ``counts``, normalising once."""
        n_norm, norm = normalise(counts, self.cap)
        if n_norm == 0:
            return 0.0, []
        own: list[tuple[float, str]] = []
        if len(self.counts) <= 1:
            # One action has p = 1 and bits(0) = inf, which the Z[n'] shortcut
            # cannot subtract; with a single action the direct sum is O(1) anyway.
            score = math.fsum(self.bits(a, norm.get(a, 0), n_norm) for a in self.counts)
        else:
            terms = [self.bits0(n_norm)]
            for action, x in norm.items():
                if x:
                    bx = self.bits(action, x, n_norm)
                    terms.append(bx)
                    terms.append(-self.bits(action, 0, n_norm))
                    if bx > 0.0 and action in self.counts:
                        own.append((bx, action))
            score = math.fsum(terms)
            # Z[n'] is itself rounded, so subtracting the own actions' bits(0)
            # from it can leave a residue of an ulp or two where the exact score
            # is 0 (an individual at every action's mode): call that 0.
            if score < SCORE_EPSILON:
                score = 0.0
        if limit <= 0:
            return score, []
        for action, x in norm.items():
            if not x and action in self.counts:
                b0 = self.bits(action, 0, n_norm)
                if b0 > 0.0:
                    own.append((b0, action))
        # Actions never done: bits(0), ranked once per (snapshot, n'), so only the
        # first few the individual did not do are looked at: O(own actions + limit).
        taken = 0
        for neg_b, action in self._ranked_zero(n_norm):
            if taken >= limit or neg_b >= 0.0:
                break
            if action not in norm:
                own.append((-neg_b, action))
                taken += 1
        own.sort(key=lambda t: (-t[0], t[1]))
        p = self.p
        out: list[dict[str, object]] = []
        for b, action in own[:limit]:
            expected = n_norm * p(action)
            observed = norm.get(action, 0)
            out.append(
                {
                    "action": action,
                    "count": counts.get(action, 0),
                    "observed": observed,
                    "expected": round(expected, 3),
                    "bits": round(b, 3),
                    "kind": "over" if observed > expected else "missing",
                }
            )
        return score, out


def score_direct(counts: Mapping[str, int], pop: Mapping[str, int], cap: int = DEFAULT_CAP) -> float:
    """Reference O(all actions) score: the definition, without the Z[n'] shortcut."""
    total = sum(pop.values())
    n_norm, norm = normalise(counts, cap)
    if n_norm == 0 or total == 0:
        return 0.0
    return math.fsum(action_bits(norm.get(a, 0), n_norm, c / total) for a, c in pop.items())


def excluded_view(snap: Snapshot, counts: Mapping[str, int]) -> Snapshot:
    """The snapshot an individual excluded from learning is scored against.

    Its counts are not in the population, so an action only it did would have ``p = 0`` and an
    infinite score: such actions are added with the individual's own counts, on a copy (the
    shared snapshot is left untouched). O(the scope's actions), only for excluded individuals.
    """
    # Not covers(): an action whose population count is 0 (the weight cap) is known but has p = 0.
    if all(a in snap.counts for a, c in counts.items() if c > 0):
        return snap
    view = Snapshot(dict(snap.counts), cap=snap.cap)
    view.add_actions({a: c for a, c in counts.items() if c > 0})
    return view
