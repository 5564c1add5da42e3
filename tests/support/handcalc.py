"""Scoring written out by hand from the formulas of docs/scoring.md, for tests of ``explain``.

Independent of ``common/scoring.py`` on purpose: the binomial pmf straight from
``math.lgamma``, the mode by scanning every count (not the closed form), the
normalisation and the weight cap with exact fractions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Any


def pmf_ln(x: int, n: int, p: float) -> float:
    """ln C(n, x) + x ln p + (n - x) ln(1 - p), with 0 ln 0 = 0."""
    if p == 0.0:
        return 0.0 if x == 0 else -math.inf
    if p == 1.0:
        return 0.0 if x == n else -math.inf
    return (
        math.lgamma(n + 1) - math.lgamma(x + 1) - math.lgamma(n - x + 1) + x * math.log(p) + (n - x) * math.log(1 - p)
    )


def bits_by_hand(x: int, n: int, p: float) -> float:
    """log2 of P(most likely count) / P(x), the most likely count found by trying each."""
    best = max(pmf_ln(k, n, p) for k in range(n + 1))
    return max((best - pmf_ln(x, n, p)) / math.log(2), 0.0)


def round_half_up(q: Fraction) -> int:
    """floor(q + 1/2)."""
    return math.floor(q + Fraction(1, 2))


def scaled(counts: Mapping[str, int], cap: int) -> tuple[int, dict[str, int]]:
    """``(n', x')``: counts scaled to ``min(n, cap)`` events, each rounded half up."""
    n = sum(counts.values())
    if n <= cap:
        return n, dict(counts)
    return cap, {a: round_half_up(Fraction(x * cap, n)) for a, x in counts.items()}


def capped_population(individuals: Mapping[str, Mapping[str, int]], weight_cap: int) -> dict[str, int]:
    """C_a = the sum of each individual's counts, scaled to ``weight_cap`` events past it (0: raw)."""
    pop: dict[str, int] = {}
    for counts in individuals.values():
        part = dict(counts) if weight_cap == 0 else scaled(counts, weight_cap)[1]
        for a, c in part.items():
            pop[a] = pop.get(a, 0) + c
    return pop


def explain_by_hand(counts: Mapping[str, int], pop: Mapping[str, int], cap: int, limit: int) -> list[dict[str, Any]]:
    """Every action of the population with bits > 0, most bits first (ties by name), the first ``limit``.

    Each: action, raw count, observed x', expected n' p_a (unrounded), bits (unrounded), kind.
    """
    total = sum(pop.values())
    n_norm, norm = scaled(counts, cap)
    rows: list[dict[str, Any]] = []
    for action, c in pop.items():
        if c == 0:
            continue
        p = c / total
        x = norm.get(action, 0)
        b = bits_by_hand(x, n_norm, p)
        if b > 0.0:
            expected = n_norm * p
            kind = "over" if x > expected else "missing"
            rows.append(
                {
                    "action": action,
                    "count": counts.get(action, 0),
                    "observed": x,
                    "expected": expected,
                    "bits": b,
                    "kind": kind,
                }
            )
    rows.sort(key=lambda r: (-r["bits"], r["action"]))
    return rows[:limit]


def _loglik_ln(actions: list[str]) -> float:
    """ln of the maximum-likelihood multinomial probability of the sequence: sum_a c ln(c / len)."""
    total = len(actions)
    return sum(c * math.log(c / total) for c in (actions.count(a) for a in set(actions)))


def drift_by_hand(actions: list[str], window: int) -> float:
    """log2 of L(window and earlier events, each its own mix) / L(one mix for the whole sequence).

    The window is the last ``min(window, len // 2)`` actions; each likelihood at its maximum.
    """
    k = min(window, len(actions) // 2)
    if k == 0:
        return 0.0
    recent, earlier = actions[len(actions) - k :], actions[: len(actions) - k]
    return (_loglik_ln(recent) + _loglik_ln(earlier) - _loglik_ln(actions)) / math.log(2)


def recent_by_hand(actions: list[str], window: int, pop: Mapping[str, int]) -> float:
    """The binomial surprisal of the window's counts (no normalisation) over every action of ``pop``."""
    k = min(window, len(actions) // 2)
    recent = actions[len(actions) - k :]
    total = sum(pop.values())
    return sum(bits_by_hand(recent.count(a), k, c / total) for a, c in pop.items() if c)
