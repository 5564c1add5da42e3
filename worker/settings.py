"""Worker configuration (environment variables documented in README)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from binormal.common.calibration import LearningSettings
from binormal.common.config import ConfigError, ServiceSettings, from_env, setting
from binormal.common.keys import Keyspace
from binormal.common.recent import RecentSettings, check_recent_window
from binormal.common.scoring import weight_cap_usable
from binormal.common.scripts import Guard


@dataclass(frozen=True)
class WorkerSettings(ServiceSettings, LearningSettings, RecentSettings):
    """Everything a scorer worker needs; build with :meth:`from_env` (README: configuration)."""

    consumer: str = setting("BINORMAL_CONSUMER", "", shown="`host-pid`", doc="the worker's consumer name")
    batch: int = setting("BINORMAL_BATCH", 500, minimum=1, doc="XREADGROUP COUNT")
    inflight: int = setting("BINORMAL_INFLIGHT", 2, minimum=1, doc="batches a worker keeps in flight")
    block_ms: int = setting("BINORMAL_BLOCK_MS", 1000, minimum=1, doc="XREADGROUP BLOCK (below the socket timeout)")
    claim_idle_ms: int = setting(
        "BINORMAL_CLAIM_IDLE_MS", 30_000, minimum=1, doc="pending entries idle this long are taken over"
    )
    max_deliveries: int = setting(
        "BINORMAL_MAX_DELIVERIES", 5, minimum=1, doc="an entry delivered more often is dead-lettered"
    )
    snapshot_max_age_ms: int = setting(
        "BINORMAL_SNAPSHOT_MAX_AGE_MS", 1000, doc="staleness of the population snapshot; 0 = exact"
    )
    cap: int = setting("BINORMAL_CAP", 100, minimum=1, doc="normalisation cap N")
    seen_ttl_s: int = setting(
        "BINORMAL_IDEMPOTENCY_TTL_S", 3_600, minimum=1, doc="how long an event_id is remembered at most"
    )
    reply_ttl_s: int = setting("BINORMAL_REPLY_TTL_S", 60, minimum=1, doc="how long a stored /discrete reply is kept")
    trim_interval_s: float = setting("BINORMAL_TRIM_INTERVAL_S", 1.0, doc="how often acknowledged history is trimmed")
    dead_maxlen: int = setting("BINORMAL_DEAD_MAXLEN", 100_000, minimum=1, doc="dead-letter stream length bound")
    grace_s: float = setting("BINORMAL_GRACE_S", 10.0, doc="on SIGTERM, time to finish the batch in hand")
    heartbeat_s: float = 2.0
    explain_limit: int = 5
    forget_consumers_s: float = setting(
        "BINORMAL_FORGET_CONSUMERS_S", 3_600.0, doc="idle consumers with nothing pending are deleted; 0: never"
    )
    max_actions: int = setting(
        "BINORMAL_MAX_ACTIONS", 10_000, minimum=1, doc="distinct actions per scope; a new one past it: dead letter"
    )
    # -1 (the default) stands for "the normalisation cap N", resolved in __post_init__.
    weight_cap: int = setting(
        "BINORMAL_WEIGHT_CAP",
        -1,
        shown="`BINORMAL_CAP`",
        doc="dominance guard W: an individual past W events adds its normalised counts to p_a; 0 = off",
    )
    dominance_share: float = setting(
        "BINORMAL_DOMINANCE_SHARE",
        0.2,
        maximum=1.0,
        doc="a scope is flagged when one individual has more than this share of its events (0 < x <= 1)",
    )
    dominance_min_events: int = setting(
        "BINORMAL_DOMINANCE_MIN_EVENTS", 1000, minimum=1, doc="raw events a scope needs before it can be flagged"
    )

    idle_ttl_s: int = setting(
        "BINORMAL_IDLE_TTL_S",
        0,
        doc="an individual unseen this long is removed with its contribution (retention); 0 = never",
    )
    max_individuals: int = setting(
        "BINORMAL_MAX_INDIVIDUALS", 0, doc="individuals per scope; past it the least recently seen go; 0 = no cap"
    )
    sweep_interval_s: float = setting(
        "BINORMAL_SWEEP_INTERVAL_S", 10.0, minimum=0.01, doc="how often a worker sweeps for idle individuals"
    )

    def __post_init__(self) -> None:
        if self.weight_cap == -1:
            object.__setattr__(self, "weight_cap", self.cap)
        if not weight_cap_usable(self.weight_cap, self.cap):
            raise ConfigError(
                f"BINORMAL_WEIGHT_CAP must be 0 (off) or at least BINORMAL_CAP ({self.cap}), got {self.weight_cap}"
                " (below N an individual's normalised count could meet a population count of 0)"
            )
        check_recent_window(self.recent_window, self.cap)
        if not self.dominance_share > 0.0:
            raise ConfigError(f"BINORMAL_DOMINANCE_SHARE must be > 0 and <= 1, got {self.dominance_share}")
        if self.block_ms >= 4000:
            raise ConfigError("BINORMAL_BLOCK_MS must stay below the 5 s socket timeout")
        if self.claim_idle_ms <= self.block_ms:
            raise ConfigError("BINORMAL_CLAIM_IDLE_MS must exceed BINORMAL_BLOCK_MS")

    @property
    def retention(self) -> bool:
        """Idle expiry or the per-scope cap is on: apply.lua keeps the last-seen index, the worker sweeps."""
        return self.idle_ttl_s > 0 or self.max_individuals > 0

    @property
    def guard(self) -> Guard:
        """What apply.lua needs of the dominance guard."""
        return Guard(self.weight_cap, self.dominance_share, self.dominance_min_events)

    @property
    def keys(self) -> Keyspace:
        """Key builder for this deployment."""
        return Keyspace(prefix=self.prefix, shards=self.shards)

    @property
    def consumer_name(self) -> str:
        """Stable consumer name: BINORMAL_CONSUMER, else host-pid."""
        return self.consumer or f"{socket.gethostname()}-{os.getpid()}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        """Read every declared variable (``REDIS_URL``, ``BINORMAL_*``)."""
        return from_env(cls, env)
