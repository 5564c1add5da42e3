"""An independent, slow reference of ``binormal score``'s semantics, and a file that exercises them.

:func:`reference_rows` recomputes, event by event and from the definition (docs/quality.md,
"Offline semantics"), what :mod:`binormal.offline` computes with its shortcuts (lazy weight-cap
updates, one score per individual, the inlined bits): every individual's contribution to its
population is recomputed after each of its events, and the final comparisons are written out
with sorted lists and :mod:`statistics`, not bisect.
"""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

from binormal.common.result import Aggregates
from binormal.common.schema import Event
from binormal.common.scoring import Snapshot, normalise, zscore

Key = tuple[str, str, str, str]


def offline_events(seed: int = 5, n: int = 6000) -> list[Event]:
    """Three scopes (one with 12 individuals, all learning), few-event ids, and one heavy individual.

    ``heavy`` does a third of ``big``'s events, two of them ``RARE`` (an action nobody else does,
    whose share is too small to survive the weight cap: its population count is then 0).
    """
    rng = random.Random(seed)
    actions = [f"GET /{i}" for i in range(12)]
    weights = [1.0 / (i + 1) for i in range(12)]
    scopes = [("acme", "web", "big"), ("acme", "api", "tokens"), ("other", "web", "small")]
    out: list[Event] = []
    rare_left = 2
    for i in range(n):
        org, source, pop = scopes[0] if i % 2 == 0 else scopes[1 + (i // 2) % 2]
        if pop == "big" and rng.random() < 0.6:
            ident = "heavy"
            if rare_left and i > n // 2 and rng.random() < 0.01:
                action, rare_left = "RARE", rare_left - 1
            else:
                action = rng.choice(actions)
        else:
            count = 12 if pop == "small" else 60
            ident = f"u{rng.randrange(count)}" if pop == "small" or rng.random() < 0.97 else f"once{i}"
            action = rng.choices(actions, weights)[0]
        out.append(Event(org, source, pop, ident, action, ts=1_700_000_000_000 + i))
    return out


def _contribution(counts: dict[str, int], weight_cap: int) -> dict[str, int]:
    n = sum(counts.values())
    return dict(counts) if weight_cap == 0 or n <= weight_cap else normalise(counts, weight_cap)[1]


def reference_rows(
    events: list[Event],
    cap: int = 100,
    refresh: int = 1000,
    weight_cap: int = 100,
    exact: bool = False,
    min_events: int = 10,
    min_individuals: int = 30,
) -> dict[Key, dict[str, Any]]:
    """``binormal score --json`` rows by (org, source, pop, id), from the definition.

    ``exact``: a snapshot after every event and the zscore each individual had at its last event.
    """
    pop: dict[tuple[str, str, str], dict[str, int]] = {}
    counts: dict[Key, dict[str, int]] = {}
    given: dict[Key, dict[str, int]] = {}  # what each individual contributes right now
    snaps: dict[tuple[str, str, str], Snapshot] = {}
    ages: dict[tuple[str, str, str], int] = {}
    last: dict[Key, Snapshot] = {}
    aggs: dict[tuple[str, str, str], Aggregates] = {}
    now: dict[Key, float] = {}
    z_at_last: dict[Key, float] = {}
    for e in events:
        scope = (e.org, e.source, e.pop)
        key = (*scope, e.id)
        mine = counts.setdefault(key, {})
        mine[e.action] = mine.get(e.action, 0) + 1
        p = pop.setdefault(scope, {})
        for a, c in given.get(key, {}).items():
            p[a] -= c
        given[key] = _contribution(mine, weight_cap)
        for a, c in given[key].items():
            p[a] = p.get(a, 0) + c
        snap = snaps.get(scope)
        if exact or snap is None or ages[scope] >= refresh or e.action not in snap.counts:
            snap = snaps[scope] = Snapshot({a: c for a, c in p.items() if c > 0}, cap=cap)
            ages[scope] = 0
        ages[scope] += 1
        last[key] = snap
        if exact:
            score = snap.score(mine)
            agg = aggs[scope] = aggs.get(scope, Aggregates()).replace(now.get(key), score)
            now[key] = score
            z_at_last[key] = zscore(score, agg.n, agg.total, agg.total_sq)
    rows: dict[Key, dict[str, Any]] = {}
    for scope in pop:
        keys = [k for k in counts if k[:3] == scope]
        final = {k: last[k].score(counts[k]) for k in keys}
        values = [final[k] for k in keys]
        total, total_sq = math.fsum(values), math.fsum(v * v for v in values)
        median = statistics.median(values)
        mad = statistics.median([abs(v - median) for v in values])
        for k in keys:
            s, n = final[k], sum(counts[k].values())
            z = z_at_last[k] if exact else zscore(s, len(values), total, total_sq)
            rows[k] = {
                "org": k[0],
                "source": k[1],
                "pop": k[2],
                "id": k[3],
                "count": n,
                "score": round(s, 3),
                "zscore": round(z, 3),
                "pscore": round(sum(1 for v in values if v < s) / len(values), 3),
                "rzscore": round((s - median) / (1.4826 * mad), 3) if mad > 0 else 0.0,
                "bits_per_event": round(s / min(n, cap), 3),
                "learning": n < min_events or len(values) < min_individuals,
            }
    return rows
