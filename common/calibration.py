"""Calibrated scores: ``pscore``, ``learning``, ``rzscore`` and the novelty flags (issue 11, Deliver 3).

Shared by the Redis worker, the in-memory engine and the query API, so the same
state gives the same numbers everywhere (docs/quality.md, "Calibrated scores"):

- ``pscore``: mid-rank percentile of a score among the scope's current scores,
  ``(below + ties / 2) / n`` (``below`` strictly lower, ``ties`` equal, itself
  included): exact, from ``ZCOUNT`` / ``ZCARD`` of the rank zset.
- ``learning``: the individual has fewer than ``BINORMAL_MIN_EVENTS`` events or
  its scope fewer than ``BINORMAL_MIN_INDIVIDUALS`` individuals.
- ``rzscore``: ``(score - median) / (1.4826 * MAD)``, 0 when the MAD is 0; the
  median and MAD come from at most ``SAMPLE_POINTS`` evenly spaced order
  statistics of the scope's scores (:func:`sample_ranks`), refreshed at the
  engine's refresh points, so both engines compute it from the same sample.
- ``novel``: the individual's first event of its action; ``new_action``: the
  scope's first event of its action (the first individual doing it, ``k == 1``).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from binormal.common.config import setting

SAMPLE_POINTS = 1025  # order statistics read for the median and MAD (ranks 0, n/1024, ..., n-1)
MAD_SCALE = 1.4826  # MAD * 1.4826 estimates the standard deviation of a normal distribution
DEFAULT_MIN_EVENTS = 10
DEFAULT_MIN_INDIVIDUALS = 30


@dataclass(frozen=True)
class LearningSettings:
    """Thresholds below which a result is flagged ``learning`` (a base of the worker's and web tier's settings)."""

    min_events: int = setting(
        "BINORMAL_MIN_EVENTS",
        DEFAULT_MIN_EVENTS,
        minimum=0,
        maximum=1_000_000,
        doc="an individual with fewer events is shown as learning",
    )
    min_individuals: int = setting(
        "BINORMAL_MIN_INDIVIDUALS",
        DEFAULT_MIN_INDIVIDUALS,
        minimum=0,
        maximum=1_000_000,
        doc="every individual of a scope with fewer individuals is shown as learning",
    )


@dataclass(frozen=True, slots=True)
class Rank:
    """Where a score stands in its scope's rank zset: ``ZCOUNT`` strictly below, equal, and ``ZCARD``."""

    below: int = 0
    ties: int = 0
    n: int = 0

    @property
    def pscore(self) -> float:
        """``(below + ties / 2) / n``; 0 for an empty scope."""
        return (self.below + self.ties / 2) / self.n if self.n > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Robust:
    """Median and MAD of a scope's scores (from :func:`robust_of` on a sample)."""

    median: float = 0.0
    mad: float = 0.0

    def z(self, score: float) -> float:
        """``(score - median) / (1.4826 * MAD)``; 0 when the MAD is 0."""
        if self.mad <= 0.0:
            return 0.0
        return (score - self.median) / (MAD_SCALE * self.mad)


NO_ROBUST = Robust()


def is_learning(events: int, individuals: int, min_events: int, min_individuals: int) -> bool:
    """Thin evidence: too few events of the individual, or too few individuals in its scope."""
    return events < min_events or individuals < min_individuals


def sample_ranks(n: int, points: int = SAMPLE_POINTS) -> list[int]:
    """The 0-based ranks read from ``n`` sorted scores: all of them up to ``points``, else ``points`` evenly spaced.

    Rank ``i * (n - 1) // (points - 1)`` for ``i = 0 .. points - 1``: the first
    and last score, and no two consecutive ranks further apart than
    ``ceil((n - 1) / (points - 1))``. ``commit.lua`` reads the same ranks.
    """
    if n <= points:
        return list(range(n))
    return [i * (n - 1) // (points - 1) for i in range(points)]


def sample_sorted(scores: Sequence[float], points: int = SAMPLE_POINTS) -> list[float]:
    """The sample of an ascending list of scores (what ``commit.lua`` returns for the rank zset)."""
    return [scores[r] for r in sample_ranks(len(scores), points)]


def _median_of(get: Callable[[int], float], m: int) -> float:
    half = m // 2
    return get(half) if m % 2 else (get(half - 1) + get(half)) / 2


def _kth_of_two(a: Callable[[int], float], la: int, b: Callable[[int], float], lb: int, k: int) -> float:
    """The ``k``-th smallest (0-based) of two ascending sequences, in O(log) steps."""
    lo, hi = max(0, k + 1 - lb), min(k + 1, la)
    while True:
        i = (lo + hi) // 2  # taken from ``a``; the other k + 1 - i from ``b``
        j = k + 1 - i
        if i < la and j > 0 and b(j - 1) > a(i):
            lo = i + 1
        elif i > 0 and j < lb and a(i - 1) > b(j):
            hi = i - 1
        else:
            if i == 0:
                return b(j - 1)
            if j == 0:
                return a(i - 1)
            return max(a(i - 1), b(j - 1))


def _robust_sorted(get: Callable[[int], float], m: int) -> Robust:
    """Median and MAD of ``m`` ascending values ``get(0..m-1)``, without sorting the deviations.

    The deviations ``|v - median|`` are two ascending runs (from the median outwards, left
    and right), so their median is a selection over two sorted sequences. ``med - v`` is
    exactly ``abs(v - med)`` (IEEE subtraction is sign-symmetric): the values are the ones
    a sort of the deviations would give, bit for bit.
    """
    if m == 0:
        return NO_ROBUST
    med = _median_of(get, m)
    lo, hi = 0, m  # p: the first index whose value is >= the median
    while lo < hi:
        mid = (lo + hi) // 2
        if get(mid) < med:
            lo = mid + 1
        else:
            hi = mid
    p = lo

    def left(t: int) -> float:
        return med - get(p - 1 - t)

    def right(t: int) -> float:
        return get(p + t) - med

    half = m // 2
    if m % 2:
        mad = _kth_of_two(left, p, right, m - p, half)
    else:
        mad = (_kth_of_two(left, p, right, m - p, half - 1) + _kth_of_two(left, p, right, m - p, half)) / 2
    return Robust(med, mad)


def robust_of(sample: Sequence[float]) -> Robust:
    """Median and MAD (median absolute deviation) of an ascending sample; zeros for an empty one."""
    return _robust_sorted(sample.__getitem__, len(sample))


class SortedScores:
    """A scope's current scores in ascending order (the in-memory twin of the rank zset)."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: list[float] = []

    def replace(self, old: float | None, new: float) -> None:
        """One individual's score goes from ``old`` (None: new individual) to ``new``."""
        if old is not None:
            del self.values[bisect.bisect_left(self.values, old)]
        bisect.insort(self.values, new)

    def rank(self, score: float) -> Rank:
        """The :class:`Rank` of ``score`` (``ZCOUNT -inf (score``, ``ZCOUNT [score [score``, ``ZCARD``)."""
        lo = bisect.bisect_left(self.values, score)
        hi = bisect.bisect_right(self.values, score, lo)
        return Rank(lo, hi - lo, len(self.values))

    def robust(self, points: int = SAMPLE_POINTS) -> Robust:
        """Median and MAD of the sample of the current scores (:func:`sample_ranks`), without copying it."""
        values, n = self.values, len(self.values)
        if n <= points:
            return _robust_sorted(values.__getitem__, n)
        step = points - 1
        return _robust_sorted(lambda i: values[i * (n - 1) // step], points)


def bits_per_event(score: float, events: int, cap: int) -> float:
    """The score per normalised event, ``score / n'`` with ``n' = min(n, N)``; 0 for no events.

    A variant the evaluation harness offers (docs/quality.md): it ranks an individual with few
    events but rare actions (low and slow) above one whose bits come from sheer volume.
    """
    n_norm = min(events, cap)
    return score / n_norm if n_norm > 0 else 0.0
