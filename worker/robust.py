"""The worker's per-scope median and MAD of scores (``rzscore``, common/calibration.py).

``commit.lua`` returns a sample of a scope's rank zset (at most
``SAMPLE_POINTS`` evenly spaced order statistics) after the score it is asked
for; :class:`RobustCache` decides which scores ask (refresh points), keeps the
median and MAD computed from the sample per scope, and writes the newest to the
scope's ``robust`` hash for the query API. With staleness 0 every score asks,
so each result uses the median and MAD right after its own commit, as the
in-memory engine does.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from binormal.common.calibration import NO_ROBUST, SAMPLE_POINTS, Robust, robust_of
from binormal.common.keys import Keyspace, Scope
from binormal.worker.commands import Commands

ROBUST_CACHE = 10_000  # scopes whose median and MAD a worker keeps


@dataclass
class RobustCache:
    """Median and MAD per scope, refreshed when older than ``max_age_ms`` (0: after every score)."""

    max_age_ms: int = 1000
    points: int = SAMPLE_POINTS
    entries: OrderedDict[Scope, tuple[Robust, float]] = field(default_factory=OrderedDict)
    dirty: dict[Scope, tuple[int, Robust]] = field(default_factory=dict)  # to write: shard, newest value

    def plan(self, scopes: Sequence[Scope]) -> list[int]:
        """Sample points to ask for after each score of ``scopes`` (in commit order).

        Exact mode: every score. Otherwise the first score of each scope whose
        value is missing or too old, so the rest of the batch uses the fresh one.
        """
        if self.max_age_ms == 0:
            return [self.points] * len(scopes)
        now = time.monotonic()
        max_age = self.max_age_ms / 1000.0
        asked: set[Scope] = set()
        out: list[int] = []
        for scope in scopes:
            got = self.entries.get(scope)
            if scope not in asked and (got is None or now - got[1] > max_age):
                asked.add(scope)
                out.append(self.points)
            else:
                out.append(0)
        return out

    def update(self, scope: Scope, shard: int, sample: Sequence[float]) -> Robust:
        """Median and MAD of a fresh sample (ascending); cached and marked for writing."""
        value = robust_of(sample)
        self.entries[scope] = (value, time.monotonic())
        self.entries.move_to_end(scope)
        while len(self.entries) > ROBUST_CACHE:
            self.entries.popitem(last=False)
        self.dirty[scope] = (shard, value)
        return value

    def get(self, scope: Scope) -> Robust:
        """The cached median and MAD (zeros, so ``rzscore`` 0, before the first sample)."""
        got = self.entries.get(scope)
        return NO_ROBUST if got is None else got[0]

    def write(self, pipe: Commands, keys: Keyspace) -> None:
        """HSET the values sampled since the last write into each scope's ``robust`` hash."""
        for scope, (shard, value) in self.dirty.items():
            pipe.hset(keys.robust(scope, shard), {"median": repr(value.median), "mad": repr(value.mad)})
        self.dirty.clear()
