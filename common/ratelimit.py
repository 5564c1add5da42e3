"""Token buckets per client, in memory, bounded (an LRU of ``max_keys`` buckets).

Each key (a token's name, or a client address when anonymous) has a bucket of
``burst`` events refilled at ``rate`` events per second. A charge of ``n``
events is allowed while the bucket holds ``min(n, burst)`` of them; it then
takes all ``n``, so a batch larger than the burst leaves the bucket in debt and
the client waits for the refill (the average rate holds for any batch size).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_MAX_KEYS = 10_000
EPSILON = 1e-9  # refill arithmetic in floats: a bucket refilled "exactly" to 1 may read 0.9999999999


class TokenBuckets:
    """Per-key token buckets; ``rate <= 0`` turns limiting off."""

    def __init__(
        self,
        rate: float,
        burst: float,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst if burst > 0 else max(rate, 1.0)
        self.max_keys = max_keys
        self._clock = clock
        # key -> (tokens, time of that reading); least recently used first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """Whether any limit applies."""
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, key: str) -> tuple[float, float]:
        now = self._clock()
        entry = self._buckets.get(key)
        if entry is None:
            return self.burst, now
        tokens, at = entry
        return min(self.burst, tokens + (now - at) * self.rate), now

    def wait_s(self, key: str, events: int = 1) -> float:
        """Seconds until ``events`` may be charged to ``key`` (0: now); charges nothing."""
        if not self.enabled:
            return 0.0
        tokens, _ = self._tokens(key)
        need = min(float(events), self.burst)
        return 0.0 if tokens + EPSILON >= need else (need - tokens) / self.rate

    def charge(self, key: str, events: int) -> float:
        """Take ``events`` from ``key``'s bucket if allowed; returns 0, else the seconds to wait."""
        if not self.enabled:
            return 0.0
        tokens, now = self._tokens(key)
        need = min(float(events), self.burst)
        if tokens + EPSILON < need:
            return (need - tokens) / self.rate
        self._buckets[key] = (tokens - events, now)
        self._buckets.move_to_end(key)
        if len(self._buckets) > self.max_keys:
            # Evicting the least recently used key forgets its debt: bounded memory wins.
            self._buckets.popitem(last=False)
        return 0.0


def retry_after(wait_s: float) -> int:
    """The ``Retry-After`` header value for a wait: whole seconds, at least 1."""
    return max(1, math.ceil(wait_s))
