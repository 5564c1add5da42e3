"""The scored result of one event, shared by the Redis worker and the in-memory engine.

Both engines gather the same numbers (the individual's counts after the event,
the population snapshot, the score aggregates after committing the new score,
and the action's integer sums) and hand them to :func:`make_result`, so equal
state gives equal results to the last bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from binormal.common.calibration import (
    DEFAULT_MIN_EVENTS,
    DEFAULT_MIN_INDIVIDUALS,
    NO_ROBUST,
    Rank,
    Robust,
    bits_per_event,
    is_learning,
)
from binormal.common.schema import Event
from binormal.common.scoring import DEFAULT_CAP, action_zscore, zscore


@dataclass(frozen=True, slots=True)
class Aggregates:
    """Running aggregates of the current scores of a scope's individuals."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def replace(self, old: float | None, new: float) -> Aggregates:
        """Aggregates after one individual's score goes from ``old`` to ``new``.

        The float expressions are the ones ``commit.lua`` evaluates, in the same
        order, so both engines round identically.
        """
        prev = 0.0 if old is None else old
        return Aggregates(
            n=self.n + (1 if old is None else 0),
            total=self.total + (new - prev),
            total_sq=self.total_sq + (new * new - prev * prev),
        )


@dataclass(frozen=True, slots=True)
class ActionStats:
    """Exact integer sums of one action's counts among individuals that did it."""

    s1: int
    s2: int
    k: int


def r3(value: float) -> float:
    """Round to 3 decimals, the precision of every number in a response."""
    return round(value, 3)


def make_result(
    event: Event,
    counts: Mapping[str, int],
    score: float,
    explain: list[dict[str, object]],
    agg: Aggregates,
    stats: ActionStats,
    timestamp: int,
    *,
    rank: Rank,
    robust: Robust = NO_ROBUST,
    min_events: int = DEFAULT_MIN_EVENTS,
    min_individuals: int = DEFAULT_MIN_INDIVIDUALS,
    muted: bool = False,
    cap: int = DEFAULT_CAP,
    recent: float | None = None,
) -> dict[str, Any]:
    """Build the seed-compatible result object (plus org, event_id, explain, muted and the calibrated fields).

    ``score`` and ``explain`` come from :meth:`Snapshot.assess` on ``counts``; ``muted`` says a
    mute rule covers the id or the action (common/rules.py);
    ``rank`` is where the committed score stands in its scope (``pscore``),
    ``robust`` the scope's median and MAD at the last refresh (``rzscore``);
    ``learning`` uses the thresholds ``min_events`` and ``min_individuals``
    (docs/quality.md, "Calibrated scores"). ``novel`` and ``new_action`` follow
    from the counts: the individual's first event of the action, and the first
    individual of the scope doing it. ``bits_per_event`` is the score per normalised
    event, ``score / min(count, cap)``: the variant that finds low-and-slow accounts
    (docs/quality.md). ``recent`` (bits, ``BINORMAL_RECENT_WINDOW`` > 0: common/recent.py) is the score
    of the individual's last ``min(K, n // 2)`` events against the same snapshot; None leaves the
    field out, so with the window off a result is exactly what it was before it existed.
    """
    x = counts.get(event.action, 0)
    events = sum(counts.values())
    result = {
        "score": r3(score),
        "count": events,
        "zscore": r3(zscore(score, agg.n, agg.total, agg.total_sq)),
        "org": event.org,
        "source": event.source,
        "pop": event.pop,
        "id": event.id,
        "action": event.action,
        "timestamp": timestamp,
        "thisActionCount": x,
        "actionzscore": r3(action_zscore(x, stats.s1, stats.s2, stats.k)),
        "event_id": event.event_id or event.rid,
        "explain": explain,
        "muted": muted,
        "pscore": r3(rank.pscore),
        "rzscore": r3(robust.z(score)),
        "bits_per_event": r3(bits_per_event(score, events, cap)),
        "learning": is_learning(events, agg.n, min_events, min_individuals),
        "novel": x == 1,
        "new_action": x == 1 and stats.k <= 1,
    }
    if recent is not None:
        result["recent"] = r3(recent)
    return result
