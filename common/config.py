"""Helpers to read settings from the environment (each service has its own dataclass)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from binormal.common.keys import DEFAULT_PREFIX

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable."""


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    """``env[name]`` or ``default`` when unset or empty."""
    value = env.get(name, "")
    return value if value != "" else default


def env_int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    """Integer setting, at least ``minimum``."""
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def env_float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    """Float setting, at least ``minimum``."""
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def redis_env(env: Mapping[str, str]) -> dict[str, Any]:
    """``redis_url``, ``prefix`` and ``shards``: the settings every service reads alike."""
    return {
        "redis_url": env_str(env, "REDIS_URL", DEFAULT_REDIS_URL),
        "prefix": env_str(env, "BINORMAL_PREFIX", DEFAULT_PREFIX),
        "shards": env_int(env, "BINORMAL_SHARDS", 4, minimum=1),
    }


def environ() -> Mapping[str, str]:
    """The process environment (one place, so tests can pass their own mapping)."""
    return os.environ
