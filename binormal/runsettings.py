"""Settings of ``binormal run``'s embedded Redis and its supervisor (README: environment)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from binormal.common.config import ConfigError, from_env, setting

# Redis' own memory syntax: bytes, or a number with kb/mb/gb (k/m/g too), case-insensitive.
_MEMORY = re.compile(r"^([0-9]{1,15})(b|k|kb|m|mb|g|gb)?$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}
MIN_MAXMEMORY = 1024**2  # below ~1 MiB Redis cannot even hold its own buffers
FSYNC_POLICIES = ("everysec", "always")


def memory_bytes(name: str, raw: str) -> int:
    """Bytes of a Redis memory size (``1gb``, ``512mb``, ``1048576``); ``ConfigError`` otherwise."""
    m = _MEMORY.match(raw.strip())
    if m is None:
        raise ConfigError(f"{name} must be a size such as 1gb, 512mb or 1048576, got {raw[:40]!r}")
    return int(m.group(1)) * _UNITS[(m.group(2) or "").lower()]


def default_maxmemory() -> int:
    """A quarter of the memory this process may use, at least 64 MiB (1 GiB if unknown).

    That memory is the smaller of the machine's RAM (/proc/meminfo) and a
    cgroup v2 limit (/sys/fs/cgroup/memory.max, a container's).
    """
    limits: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        raw = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if raw.isdigit():
            limits.append(int(raw))
    except OSError:
        pass
    if not limits:
        return 1024**3
    return max(min(limits) // 4, 64 * 1024**2)


def _fsync(name: str, raw: str) -> str:
    return raw.lower()  # checked by __post_init__


@dataclass(frozen=True)
class EmbeddedRedisSettings:
    """The embedded redis-server of ``binormal run`` and how it is kept alive."""

    data_dir: Path = setting("BINORMAL_DATA_DIR", Path("var"), shown="`./var`", doc="embedded Redis data (run)")
    port: int = setting(
        "BINORMAL_REDIS_PORT", 0, shown="a free port", doc="embedded Redis port; 0: a free one, kept across restarts"
    )
    maxmemory: int = setting(  # bytes; writes past it are refused (noeviction)
        "BINORMAL_REDIS_MAXMEMORY",
        1024**3,
        parse=memory_bytes,
        unset=default_maxmemory,
        shown="a quarter of RAM",
        doc="embedded Redis maxmemory (noeviction)",
    )
    fsync: str = setting("BINORMAL_FSYNC", "everysec", parse=_fsync, doc="embedded Redis appendfsync")
    restart_attempts: int = setting(
        "BINORMAL_REDIS_RESTART_ATTEMPTS", 10, minimum=1, doc="failed restarts in a row before /healthz fails"
    )
    restart_backoff_s: float = setting(
        "BINORMAL_REDIS_RESTART_BACKOFF_S", 0.2, minimum=0.01, doc="first wait before a restart (doubling)"
    )
    restart_max_backoff_s: float = setting(
        "BINORMAL_REDIS_RESTART_MAX_BACKOFF_S", 5.0, minimum=0.01, doc="longest wait before a restart"
    )
    start_timeout_s: float = setting(  # a big AOF takes a while to load
        "BINORMAL_REDIS_START_TIMEOUT_S", 60.0, minimum=1.0, doc="how long a starting Redis may take to answer"
    )

    def __post_init__(self) -> None:
        if self.fsync not in FSYNC_POLICIES:
            raise ConfigError(f"BINORMAL_FSYNC must be one of {', '.join(FSYNC_POLICIES)}, got {self.fsync[:40]!r}")
        if self.maxmemory < MIN_MAXMEMORY:
            raise ConfigError(f"BINORMAL_REDIS_MAXMEMORY must be at least {MIN_MAXMEMORY} bytes (1mb)")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"BINORMAL_REDIS_PORT must be a TCP port (0-65535), got {self.port}")
        if self.restart_max_backoff_s < self.restart_backoff_s:
            raise ConfigError("BINORMAL_REDIS_RESTART_MAX_BACKOFF_S must be >= BINORMAL_REDIS_RESTART_BACKOFF_S")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EmbeddedRedisSettings:
        """Read the ``BINORMAL_DATA_DIR`` / ``BINORMAL_REDIS_*`` / ``BINORMAL_FSYNC`` variables."""
        return from_env(cls, env)


@dataclass(frozen=True)
class RunSettings:
    """What ``binormal run`` itself reads besides the services' settings."""

    workers: int = setting("BINORMAL_WORKERS", 1, minimum=1, doc="worker processes binormal run starts")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RunSettings:
        """Read ``BINORMAL_WORKERS``."""
        return from_env(cls, env)
