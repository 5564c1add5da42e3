"""Worker configuration (environment variables documented in README)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from binormal.common.config import DEFAULT_REDIS_URL, ConfigError, env_float, env_int, env_str, environ, redis_env
from binormal.common.keys import DEFAULT_PREFIX, Keyspace


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a scorer worker needs; build with :meth:`from_env`."""

    redis_url: str = DEFAULT_REDIS_URL
    prefix: str = DEFAULT_PREFIX
    shards: int = 4
    consumer: str = ""
    batch: int = 500
    inflight: int = 2
    block_ms: int = 1000
    claim_idle_ms: int = 30_000
    max_deliveries: int = 5
    snapshot_max_age_ms: int = 1000
    cap: int = 100
    seen_ttl_s: int = 3_600
    reply_ttl_s: int = 60
    trim_interval_s: float = 1.0
    dead_maxlen: int = 100_000
    grace_s: float = 10.0
    heartbeat_s: float = 2.0
    explain_limit: int = 5
    forget_consumers_s: float = 3_600.0  # 0: never
    max_actions: int = 10_000  # distinct actions per scope; an event with a new one past it is dead-lettered

    def __post_init__(self) -> None:
        if self.block_ms >= 4000:
            raise ConfigError("BINORMAL_BLOCK_MS must stay below the 5 s socket timeout")
        if self.claim_idle_ms <= self.block_ms:
            raise ConfigError("BINORMAL_CLAIM_IDLE_MS must exceed BINORMAL_BLOCK_MS")

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
        """Read ``REDIS_URL`` and ``BINORMAL_*`` variables."""
        e = environ() if env is None else env
        return cls(
            **redis_env(e),
            consumer=env_str(e, "BINORMAL_CONSUMER", ""),
            batch=env_int(e, "BINORMAL_BATCH", 500, minimum=1),
            inflight=env_int(e, "BINORMAL_INFLIGHT", 2, minimum=1),
            block_ms=env_int(e, "BINORMAL_BLOCK_MS", 1000, minimum=1),
            claim_idle_ms=env_int(e, "BINORMAL_CLAIM_IDLE_MS", 30_000, minimum=1),
            max_deliveries=env_int(e, "BINORMAL_MAX_DELIVERIES", 5, minimum=1),
            snapshot_max_age_ms=env_int(e, "BINORMAL_SNAPSHOT_MAX_AGE_MS", 1000),
            cap=env_int(e, "BINORMAL_CAP", 100, minimum=1),
            seen_ttl_s=env_int(e, "BINORMAL_IDEMPOTENCY_TTL_S", 3_600, minimum=1),
            reply_ttl_s=env_int(e, "BINORMAL_REPLY_TTL_S", 60, minimum=1),
            trim_interval_s=env_float(e, "BINORMAL_TRIM_INTERVAL_S", 1.0),
            dead_maxlen=env_int(e, "BINORMAL_DEAD_MAXLEN", 100_000, minimum=1),
            grace_s=env_float(e, "BINORMAL_GRACE_S", 10.0),
            forget_consumers_s=env_float(e, "BINORMAL_FORGET_CONSUMERS_S", 3_600.0),
            max_actions=env_int(e, "BINORMAL_MAX_ACTIONS", 10_000, minimum=1),
        )
