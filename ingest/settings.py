"""Ingest service configuration: POST /events."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from binormal.common.auth import AuthSettings
from binormal.common.config import ServiceSettings, from_env, setting
from binormal.common.keys import Keyspace
from binormal.common.server import HttpLimits, limits_of


@dataclass(frozen=True)
class IngestSettings(ServiceSettings, HttpLimits, AuthSettings):
    """Everything the ingest service needs; build with :meth:`from_env` (README: configuration)."""

    host: str = setting("HOST", "127.0.0.1", doc="where binormal ingest listens")
    port: int = setting("INGEST_PORT", 8081, doc="where binormal ingest listens (binormal run: /events on PORT)")
    max_body_bytes: int = setting(
        "BINORMAL_EVENTS_MAX_BYTES", 8 * 1024 * 1024, minimum=1024, doc="POST /events body limit"
    )
    pipeline_batch: int = setting(
        "BINORMAL_INGEST_BATCH", 1_000, minimum=1, doc="XADDs per pipelined round trip in POST /events"
    )
    max_lag: int = setting(
        "BINORMAL_MAX_LAG", 200_000, minimum=1, doc="consumer-group lag above which /events answers 503"
    )
    lag_check_s: float = setting("BINORMAL_LAG_CHECK_S", 0.25, doc="how long a lag reading is reused")
    retry_after_s: int = setting("BINORMAL_RETRY_AFTER_S", 1, minimum=1, doc="the Retry-After of that 503")
    ready_heartbeat_s: float = setting(
        "BINORMAL_READY_HEARTBEAT_S", 10.0, doc="a worker heartbeat newer than this -> ready"
    )
    max_actions: int = setting(
        "BINORMAL_MAX_ACTIONS", 10_000, minimum=1, doc="distinct actions per scope; lines with a new one past it fail"
    )

    @property
    def http_limits(self) -> HttpLimits:
        """The HTTP server's bounds."""
        return limits_of(self)

    @property
    def keys(self) -> Keyspace:
        """Key builder for this deployment."""
        return Keyspace(prefix=self.prefix, shards=self.shards)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> IngestSettings:
        """Read every declared variable (``REDIS_URL``, ``HOST``, ``INGEST_PORT``, ``BINORMAL_*``)."""
        return from_env(cls, env)
