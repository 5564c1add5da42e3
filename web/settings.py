"""Web tier configuration: /discrete request-reply, query API, live view."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from binormal.common.auth import AuthSettings
from binormal.common.calibration import LearningSettings
from binormal.common.config import ServiceSettings, from_env, setting
from binormal.common.keys import Keyspace
from binormal.common.recent import RecentSettings, check_recent_window
from binormal.common.server import HttpLimits, limits_of


@dataclass(frozen=True)
class WebSettings(ServiceSettings, HttpLimits, AuthSettings, LearningSettings, RecentSettings):
    """Everything the web tier needs; build with :meth:`from_env` (README: configuration)."""

    host: str = setting("HOST", "127.0.0.1", doc="where binormal run and binormal web listen")
    port: int = setting("PORT", 8080, doc="HTTP port of binormal run and binormal web")
    instance: str = setting("BINORMAL_INSTANCE", "", shown="`host-pid-random`", doc="reply channel name")
    discrete_timeout_s: float = setting(
        "BINORMAL_DISCRETE_TIMEOUT_S", 2.0, minimum=0.01, doc="how long POST /discrete waits for the worker"
    )
    max_body_bytes: int = setting("BINORMAL_DISCRETE_MAX_BYTES", 16_384, minimum=256, doc="POST /discrete body limit")
    ready_heartbeat_s: float = setting(
        "BINORMAL_READY_HEARTBEAT_S", 10.0, doc="a worker heartbeat newer than this -> ready"
    )
    generated_id_ttl_s: int = setting(
        "BINORMAL_GENERATED_ID_TTL_S", 600, minimum=1, doc="how long the worker remembers an event_id made up here"
    )
    ws_queue: int = setting(
        "BINORMAL_WS_QUEUE", 2_000, minimum=1, doc="results buffered per websocket client before dropping oldest"
    )
    ws_max_fps: float = setting(
        "BINORMAL_WS_MAX_FPS", 20.0, minimum=0.1, doc="frames per second per websocket client (results coalesced)"
    )
    ws_heartbeat_s: float = setting(
        "BINORMAL_WS_HEARTBEAT_S", 20.0, minimum=0.5, doc="websocket ping interval; no pong within half of it: closed"
    )
    cap: int = setting("BINORMAL_CAP", 100, minimum=1, doc="normalisation cap N")
    max_websockets: int = setting(
        "BINORMAL_MAX_WEBSOCKETS", 200, minimum=1, doc="open /websocket clients per process; past it 503"
    )

    def __post_init__(self) -> None:
        check_recent_window(self.recent_window, self.cap)  # /api/* scores the window unnormalised too

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
        """Read every declared variable (``REDIS_URL``, ``HOST``, ``PORT``, ``BINORMAL_*``)."""
        return from_env(cls, env)
