"""Behaviour change over time (issue 11): an individual's recent events against the population and its own past.

The **window** of an individual with ``n`` events is its last ``k = min(K, n // 2)`` events
(``K`` = ``--window``, default 50 = N / 2): the recent half of a short history, the last K events
of a long one, so a window never outweighs the history it is compared with. Its counts ``w_a``;
the earlier events ``o_a = x_a - w_a`` over ``m = n - k``.

- ``recent``: the binomial surprisal (:meth:`Snapshot.assess`, bits) of the window counts against
  the scope's population, exactly ``score`` of an individual whose whole history were the window
  (``k <= K <= N``, so no normalisation).
- ``drift``: log2 of the likelihood ratio of "window and earlier events follow two multinomials"
  over "one multinomial for all n" (maximum-likelihood mixes; the G statistic over 2 ln 2):
  ``sum_a w_a log2(w_a n / (k x_a)) + o_a log2(o_a n / (m x_a))``. It is ``n`` times the mutual
  information in bits between (window or earlier) and the action: 0 when the window has exactly
  the mix of the rest, at most ``n H(k/n)`` bits, and it needs no population (a stationary
  individual with an odd mix has a low drift). 0 when ``k == 0``.

Maintenance (:func:`window_step` is the rule, step by step as ``apply.lua`` does it for ``recent``
in the service with ``BINORMAL_RECENT_WINDOW``, common/recent.py): a list of each individual's
last K actions, newest first, and a hash of its window counts; per event the new action enters
the window and, when ``k`` does not grow (``n`` even before the event, or ``k == K``), the action
``k`` places back leaves it: O(1) list and hash commands, and ``drift`` is O(the individual's
own actions) (``drift`` is not in the service).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Mapping

from binormal.common.scoring import LN2

DEFAULT_WINDOW = 50  # K: the last K events at most (N / 2 for the default cap N = 100)


def window_size(n: int, window: int) -> int:
    """``k = min(K, n // 2)``: the number of recent events compared with the earlier ones."""
    return min(window, n // 2)


def window_counts(recent: deque[str] | list[str], n: int, window: int) -> dict[str, int]:
    """Counts of the last ``window_size(n, window)`` actions; ``recent`` holds at least those, oldest first."""
    k = window_size(n, window)
    if k <= 0:
        return {}
    tail = list(recent)[-k:]
    if len(tail) < k:
        raise ValueError(f"window of {k} events asked, only {len(tail)} kept")
    return dict(Counter(tail))


def window_step(kept: deque[str], window: dict[str, int], n: int, action: str, size: int) -> str | None:
    """Count the individual's event number ``n + 1`` into ``kept`` (its last actions, newest first) and
    ``window`` (the counts of its last ``window_size(n, size)`` actions); returns the action that left.

    The commands a Redis script would run: ``LPUSH``, ``HINCRBY``; when ``k`` does not grow,
    ``LINDEX k`` and ``HINCRBY -1`` (``HDEL`` at 0); then ``LTRIM 0 size-1``.
    """
    kept.appendleft(action)
    window[action] = window.get(action, 0) + 1
    left = None
    k = window_size(n, size)
    if window_size(n + 1, size) == k:  # the window keeps its size: its oldest action leaves
        left = kept[k]  # after the push: 0 is the new action, 1..k the window before it
        if window[left] == 1:
            del window[left]
        else:
            window[left] -= 1
    while len(kept) > size:
        kept.pop()
    return left


def drift_bits(counts: Mapping[str, int], window: Mapping[str, int]) -> float:
    """Log2 likelihood ratio of two multinomials (window, earlier events) over one (all events); >= 0."""
    n = sum(counts.values())
    k = sum(window.values())
    m = n - k
    if k <= 0 or m <= 0:
        return 0.0
    stray = set(window) - set(counts)
    if stray:
        raise ValueError(f"window actions {sorted(stray)} not in the counts")
    terms: list[float] = []
    for action, x in counts.items():
        w = window.get(action, 0)
        o = x - w
        if w < 0 or o < 0:
            raise ValueError(f"window count of {action!r} ({w}) outside 0..{x}")
        # 0 log 0 = 0 (the limit): an action absent from one side adds nothing on that side
        if w:
            terms.append(w * math.log(w * n / (k * x)))
        if o:
            terms.append(o * math.log(o * n / (m * x)))
    return max(math.fsum(terms) / LN2, 0.0)
