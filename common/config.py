"""Settings from the environment: each field of a settings dataclass declares its variable once.

A field made with :func:`setting` carries its variable name, bounds and a one-line
description in ``dataclasses.field(metadata=...)``; :func:`from_env` reads every such
field of a settings class (str, int, float, bool, Path and tuple-of-str, or the field's
own ``parse``). The default is the dataclass default, written nowhere else.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from binormal.common.keys import DEFAULT_PREFIX

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
MAX_LIST = 100  # entries of a comma-list setting
_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no")

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable."""


def setting(
    env: str,
    default: Any,
    *,
    doc: str = "",
    minimum: float | None = 0,
    maximum: float | None = None,
    parse: Callable[[str, str], Any] | None = None,
    unset: Callable[[], Any] | None = None,
    shown: str | None = None,
    repr: bool = True,
) -> Any:
    """A settings field read from ``env``: ``default`` when unset or empty.

    ``minimum``/``maximum`` bound numbers; ``parse(name, raw)`` replaces the type's
    parser; ``unset()`` computes the value when the variable is unset (the dataclass
    default then stands only for direct construction); ``shown`` is the default as
    README's table words it when it is not the literal value; ``repr=False`` keeps a secret out of
    the dataclass's repr (and so out of logs).
    """
    meta = {
        "env": env,
        "doc": doc,
        "minimum": minimum,
        "maximum": maximum,
        "parse": parse,
        "unset": unset,
        "shown": shown,
    }
    return dataclasses.field(default=default, repr=repr, metadata=meta)


def declared(cls: type) -> list[tuple[dataclasses.Field[Any], Any]]:
    """``(field, type)`` of every field of ``cls`` declared with :func:`setting`."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if "env" in f.metadata]


def _number(name: str, raw: str, kind: type, meta: Mapping[str, Any]) -> Any:
    try:
        value = kind(raw)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name} must be {what}, got {raw[:40]!r}") from None
    if meta["minimum"] is not None and value < meta["minimum"]:
        raise ConfigError(f"{name} must be >= {meta['minimum']}, got {value}")
    if meta["maximum"] is not None and value > meta["maximum"]:
        raise ConfigError(f"{name} must be <= {meta['maximum']}, got {value}")
    return value


def parse_list(name: str, raw: str) -> tuple[str, ...]:
    """A comma list, lower-cased, at most ``MAX_LIST`` entries of at most 255 characters."""
    items = tuple(part.strip().lower() for part in raw.split(",") if part.strip())
    if len(items) > MAX_LIST:
        raise ConfigError(f"{name} has {len(items)} entries, at most {MAX_LIST}")
    if any(len(item) > 255 for item in items):
        raise ConfigError(f"{name}: an entry is over 255 characters")
    return items


def parse_bool(name: str, raw: str) -> bool:
    """``1``/``true``/``yes`` or ``0``/``false``/``no``, any case."""
    value = raw.lower()
    if value not in _TRUE + _FALSE:
        raise ConfigError(f"{name} must be 0 or 1, got {value[:20]!r}")
    return value in _TRUE


def _parse(name: str, raw: str, kind: Any, meta: Mapping[str, Any]) -> Any:
    if meta["parse"] is not None:
        return meta["parse"](name, raw)
    if kind is bool:
        return parse_bool(name, raw)
    if kind in (int, float):
        return _number(name, raw, kind, meta)
    if kind is Path:
        return Path(raw)
    if typing.get_origin(kind) is tuple:
        return parse_list(name, raw)
    return raw


def field_values(cls: type, env: Mapping[str, str]) -> dict[str, Any]:
    """The declared fields of ``cls`` that ``env`` sets (or whose ``unset`` computes them), by field name."""
    out: dict[str, Any] = {}
    for f, kind in declared(cls):
        raw = env.get(f.metadata["env"], "")
        if raw != "":
            out[f.name] = _parse(f.metadata["env"], raw, kind, f.metadata)
        elif f.metadata["unset"] is not None:
            out[f.name] = f.metadata["unset"]()
    return out


def from_env(cls: type[T], env: Mapping[str, str] | None = None) -> T:
    """An instance of the settings dataclass ``cls`` from ``env`` (default: the process environment)."""
    return cls(**field_values(cls, environ() if env is None else env))


def read(cls: type, name: str, env: Mapping[str, str] | None = None) -> Any:
    """One declared field of ``cls``: its value from ``env``, else its default (other fields untouched)."""
    e = environ() if env is None else env
    for f, kind in declared(cls):
        if f.name == name:
            raw = e.get(f.metadata["env"], "")
            if raw != "":
                return _parse(f.metadata["env"], raw, kind, f.metadata)
            return f.metadata["unset"]() if f.metadata["unset"] is not None else f.default
    raise KeyError(f"{cls.__name__} declares no setting {name!r}")


@dataclass(frozen=True)
class ServiceSettings:
    """What every service reads alike: the Redis to use, its key layout, the log level."""

    redis_url: str = setting(
        "REDIS_URL", DEFAULT_REDIS_URL, shown=f"embedded (run) / `{DEFAULT_REDIS_URL}`", doc="Redis to use"
    )
    redis_cluster: bool | None = setting(
        "BINORMAL_REDIS_CLUSTER",
        None,
        parse=parse_bool,
        shown="auto (`INFO cluster`)",
        doc="1: REDIS_URL is a Redis Cluster node, 0: a single Redis (checked when first reached)",
    )
    prefix: str = setting("BINORMAL_PREFIX", DEFAULT_PREFIX, doc="key prefix")
    shards: int = setting("BINORMAL_SHARDS", 4, minimum=1, doc="stream shards (fixed for a deployment)")
    log_level: str = setting("BINORMAL_LOG_LEVEL", "INFO", doc="log level of a service started alone")


def environ() -> Mapping[str, str]:
    """The process environment (one place, so tests can pass their own mapping)."""
    return os.environ
