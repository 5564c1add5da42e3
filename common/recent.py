"""The ``recent`` score in the service (issue 11, item 3): an option, ``BINORMAL_RECENT_WINDOW`` = K.

``recent`` is the binomial surprisal in bits of an individual's last ``k = min(K, n // 2)`` events
against its population's snapshot: exactly ``score`` of an individual whose whole history were that
window (``k <= K <= N``, so no normalisation), as ``binormal evaluate`` computes it (binormal/drift.py).

With K > 0 apply.lua keeps, per individual, a list of its last K action numbers (newest first) and a
hash of its window's counts (keys.recent_in), step by step as :func:`binormal.drift.window_step`
does; each result (/discrete, websocket, /api/*) then carries ``recent``. With K = 0 (the default)
nothing of it exists: no keys, no Lua work, results as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from binormal.common.config import ConfigError, setting
from binormal.common.scoring import Snapshot


@dataclass(frozen=True)
class RecentSettings:
    """The recent window K (a base of the worker's and web tier's settings; both need it)."""

    recent_window: int = setting(
        "BINORMAL_RECENT_WINDOW",
        0,
        minimum=0,
        doc="K: results carry recent, the bits of the last min(K, n // 2) events; 0 = off; at most BINORMAL_CAP",
    )


def check_recent_window(window: int, cap: int) -> None:
    """ConfigError unless ``0 <= window <= cap`` (the window is scored unnormalised, so at most N events)."""
    if not 0 <= window <= cap:
        raise ConfigError(f"BINORMAL_RECENT_WINDOW must be 0 (off) or 1..BINORMAL_CAP ({cap}), got {window}")


def recent_bits(snap: Snapshot, window: Mapping[str, int]) -> float:
    """``recent``: :meth:`Snapshot.assess` of the window's counts (0.0 for an empty window: ``n < 2``).

    An action of the window the population holds no weight of (p = 0: the weight cap rounded a heavy
    individual's rare action to 0, or an excluded individual's own action) would be infinitely
    surprising; as for an excluded individual's score (scoring.excluded_view) the window's own count
    stands in for it, on a copy. Unnormalised ``x_a`` can meet such a 0 where ``x'_a`` cannot
    (weight_cap_usable), so this is needed here only. O(the scope's actions), only then.
    """
    if not window:
        return 0.0
    counts = snap.counts
    if any(counts.get(a, 0) <= 0 for a, c in window.items() if c > 0):
        own = dict(counts)
        for a, c in window.items():
            if c > 0 and own.get(a, 0) <= 0:
                own[a] = c
        snap = Snapshot(own, cap=snap.cap)
    return snap.assess(window, 0)[0]
