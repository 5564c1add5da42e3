"""Web tier configuration: /discrete request-reply, query API, live view."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from binormal.common.auth import auth_env
from binormal.common.config import DEFAULT_REDIS_URL, env_float, env_int, env_str, environ, redis_env
from binormal.common.keys import DEFAULT_PREFIX, Keyspace
from binormal.common.server import HttpLimits, limits_env, limits_of


@dataclass(frozen=True)
class WebSettings:
    """Everything the web tier needs; build with :meth:`from_env`."""

    redis_url: str = DEFAULT_REDIS_URL
    prefix: str = DEFAULT_PREFIX
    shards: int = 4
    host: str = "127.0.0.1"
    port: int = 8080
    instance: str = ""  # reply channel name; default random per process
    discrete_timeout_s: float = 2.0  # how long POST /discrete waits for the worker
    max_body_bytes: int = 16_384  # POST /discrete body limit
    ready_heartbeat_s: float = 10.0  # a worker heartbeat newer than this -> ready
    reply_ttl_s: int = 60
    generated_id_ttl_s: int = 600  # how long the worker remembers an event_id made up here
    ws_queue: int = 2_000  # results buffered per websocket client before dropping oldest
    ws_max_fps: float = 20.0  # frames per second per websocket client (results coalesced)
    ws_heartbeat_s: float = 20.0  # websocket ping interval; no pong within half of it closes the socket
    cap: int = 100
    tokens_file: str = ""  # BINORMAL_TOKENS_FILE; empty: auth off (loopback only)
    allow_anonymous: bool = False  # BINORMAL_ALLOW_ANONYMOUS: auth off on other interfaces too
    allowed_origins: tuple[str, ...] = ()  # BINORMAL_ALLOWED_ORIGINS besides the page's own
    allowed_hosts: tuple[str, ...] = ()  # BINORMAL_ALLOWED_HOSTS; empty: bound address + loopback names
    # HTTP bounds (common.server.HttpLimits; the same variables for every service)
    header_timeout_s: float = 10.0  # a request head must arrive within this, else 408
    body_timeout_s: float = 30.0  # a whole request body must arrive within this, else 408
    send_timeout_s: float = 30.0  # a client that reads nothing of a response for this long is cut
    keepalive_timeout_s: float = 75.0  # an idle keep-alive connection is closed after this
    max_connections: int = 1_000  # open connections per process; past it 503 and close
    rate_limit: float = 0.0  # events/s per token (or client address) on /discrete and /events; 0 = off
    rate_burst: float = 0.0  # token bucket size; 0 = rate_limit (one second's worth)
    max_websockets: int = 200  # open /websocket clients per process; past it 503

    @property
    def http_limits(self) -> HttpLimits:
        """The HTTP server's bounds."""
        return limits_of(self)

    @property
    def keys(self) -> Keyspace:
        """Key builder for this deployment."""
        return Keyspace(prefix=self.prefix, shards=self.shards)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WebSettings:
        """Read ``REDIS_URL``, ``HOST``, ``PORT`` and ``BINORMAL_*`` variables."""
        e = environ() if env is None else env
        return cls(
            **redis_env(e),
            **auth_env(e),
            **limits_env(e),
            host=env_str(e, "HOST", "127.0.0.1"),
            port=env_int(e, "PORT", 8080),
            instance=env_str(e, "BINORMAL_INSTANCE", ""),
            discrete_timeout_s=env_float(e, "BINORMAL_DISCRETE_TIMEOUT_S", 2.0, minimum=0.01),
            max_body_bytes=env_int(e, "BINORMAL_DISCRETE_MAX_BYTES", 16_384, minimum=256),
            ready_heartbeat_s=env_float(e, "BINORMAL_READY_HEARTBEAT_S", 10.0),
            reply_ttl_s=env_int(e, "BINORMAL_REPLY_TTL_S", 60, minimum=1),
            generated_id_ttl_s=env_int(e, "BINORMAL_GENERATED_ID_TTL_S", 600, minimum=1),
            ws_queue=env_int(e, "BINORMAL_WS_QUEUE", 2_000, minimum=1),
            ws_max_fps=env_float(e, "BINORMAL_WS_MAX_FPS", 20.0, minimum=0.1),
            ws_heartbeat_s=env_float(e, "BINORMAL_WS_HEARTBEAT_S", 20.0, minimum=0.5),
            cap=env_int(e, "BINORMAL_CAP", 100, minimum=1),
            max_websockets=env_int(e, "BINORMAL_MAX_WEBSOCKETS", 200, minimum=1),
        )
