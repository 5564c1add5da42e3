"""Ingest service configuration: POST /events."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from binormal.common.auth import auth_env
from binormal.common.config import DEFAULT_REDIS_URL, env_float, env_int, env_str, environ, redis_env
from binormal.common.keys import DEFAULT_PREFIX, Keyspace
from binormal.common.server import HttpLimits, limits_env, limits_of


@dataclass(frozen=True)
class IngestSettings:
    """Everything the ingest service needs; build with :meth:`from_env`."""

    redis_url: str = DEFAULT_REDIS_URL
    prefix: str = DEFAULT_PREFIX
    shards: int = 4
    host: str = "127.0.0.1"
    port: int = 8081
    max_body_bytes: int = 8 * 1024 * 1024  # POST /events body limit
    pipeline_batch: int = 1_000  # XADDs per pipelined round trip
    max_lag: int = 200_000  # consumer-group lag above which /events answers 503
    lag_check_s: float = 0.25  # how long a lag reading is reused
    retry_after_s: int = 1
    ready_heartbeat_s: float = 10.0
    tokens_file: str = ""  # BINORMAL_TOKENS_FILE; empty: auth off (loopback only)
    allow_anonymous: bool = False  # BINORMAL_ALLOW_ANONYMOUS: auth off on other interfaces too
    allowed_origins: tuple[str, ...] = ()  # BINORMAL_ALLOWED_ORIGINS besides the page's own
    allowed_hosts: tuple[str, ...] = ()  # BINORMAL_ALLOWED_HOSTS; empty: bound address + loopback names
    max_actions: int = 10_000  # distinct actions per scope; lines with a new action past it are rejected
    # HTTP bounds (common.server.HttpLimits; the same variables for every service)
    header_timeout_s: float = 10.0  # a request head must arrive within this, else 408
    body_timeout_s: float = 30.0  # a whole request body must arrive within this, else 408
    send_timeout_s: float = 30.0  # a client that reads nothing of a response for this long is cut
    keepalive_timeout_s: float = 75.0  # an idle keep-alive connection is closed after this
    max_connections: int = 1_000  # open connections per process; past it 503 and close
    rate_limit: float = 0.0  # events/s per token (or client address) on /discrete and /events; 0 = off
    rate_burst: float = 0.0  # token bucket size; 0 = rate_limit (one second's worth)

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
        """Read ``REDIS_URL``, ``HOST``, ``INGEST_PORT`` and ``BINORMAL_*`` variables."""
        e = environ() if env is None else env
        return cls(
            **redis_env(e),
            **auth_env(e),
            **limits_env(e),
            host=env_str(e, "HOST", "127.0.0.1"),
            port=env_int(e, "INGEST_PORT", 8081),
            max_body_bytes=env_int(e, "BINORMAL_EVENTS_MAX_BYTES", 8 * 1024 * 1024, minimum=1024),
            pipeline_batch=env_int(e, "BINORMAL_INGEST_BATCH", 1_000, minimum=1),
            max_lag=env_int(e, "BINORMAL_MAX_LAG", 200_000, minimum=1),
            lag_check_s=env_float(e, "BINORMAL_LAG_CHECK_S", 0.25),
            retry_after_s=env_int(e, "BINORMAL_RETRY_AFTER_S", 1, minimum=1),
            ready_heartbeat_s=env_float(e, "BINORMAL_READY_HEARTBEAT_S", 10.0),
            max_actions=env_int(e, "BINORMAL_MAX_ACTIONS", 10_000, minimum=1),
        )
