"""Lines into events for ``binormal feed``: ``--transform module:function``, ``--map``, schema validation.

Every event gets the deterministic ``event_id`` of its line (see :mod:`binormal.feed.state`)
unless the line or the transform already set one.
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from binormal.common.schema import JSON_FIELDS, Event, InvalidEvent, parse_json
from binormal.feed.reader import InputError
from binormal.feed.report import ErrorReporter, Stats
from binormal.feed.state import event_id

TransformFn = Callable[[Any], Any]  # the user's function: a parsed JSON line in, an event dict or None out


class MapError(ValueError):
    """A ``--map`` path that does not resolve on a line; ``field`` is the event field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


# ---------------------------------------------------------------- transforms


def load_transform(spec: str) -> TransformFn:
    """Load ``module:function`` (``function`` defaults to ``process_event``).

    ``module`` is an importable module name (the current directory is searched
    first, like the seed's ``feed_lib_processor.py``) or a path to a ``.py`` file.
    """
    module_name, _, func_name = spec.partition(":")
    func_name = func_name or "process_event"
    if not module_name:
        raise InputError(f"--transform {spec!r}: expected module:function")
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise InputError(f"--transform: no such file {module_name}")
            mod_spec = importlib.util.spec_from_file_location(f"binormal_transform_{path.stem}", path)
            if mod_spec is None or mod_spec.loader is None:
                raise InputError(f"--transform: cannot load {module_name}")
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except InputError:
        raise
    except Exception as exc:  # the user's module failed to import: show why, whatever it was
        detail = "".join(traceback.format_exception(exc))
        raise InputError(f"--transform: importing {module_name} failed:\n{detail}") from exc
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise InputError(f"--transform: {module_name} has no function {func_name}")
    return fn  # type: ignore[no-any-return]


@dataclass(frozen=True)
class FieldMap:
    """``--map org=acme,id=.user.name``: each event field a literal or a ``.dotted.path`` into the line."""

    literals: dict[str, str]
    paths: dict[str, tuple[str, ...]]

    @classmethod
    def parse(cls, spec: str) -> FieldMap:
        """Parse the comma-separated ``field=value`` list."""
        literals: dict[str, str] = {}
        paths: dict[str, tuple[str, ...]] = {}
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            name, eq, value = item.partition("=")
            name = name.strip()
            if not eq:
                raise InputError(f"--map: {item!r} is not field=value")
            if name not in JSON_FIELDS:
                raise InputError(f"--map: unknown field {name!r} (fields: {', '.join(sorted(JSON_FIELDS))})")
            if name in literals or name in paths:
                raise InputError(f"--map: field {name!r} given twice")
            if value.startswith(".") and len(value) > 1:
                paths[name] = tuple(value[1:].split("."))
            else:
                literals[name] = value
        return cls(literals, paths)

    def apply(self, obj: Any) -> dict[str, Any]:
        """The event dict for one parsed line; missing fields keep the line's own (if any)."""
        out: dict[str, Any] = {}
        if isinstance(obj, dict):
            # Fields not mapped are taken from the line itself when it has them.
            for name in JSON_FIELDS:
                if name in obj and name not in self.literals and name not in self.paths:
                    out[name] = obj[name]
        out.update(self.literals)
        for name, path in self.paths.items():
            value = _lookup(obj, path)
            if value is _MISSING:
                raise MapError(name, f"path .{'.'.join(path)} not found in the line")
            out[name] = _scalar(name, path, value)
        return out


_MISSING = object()


def _lookup(obj: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if isinstance(obj, dict):
            if part not in obj:
                return _MISSING
            obj = obj[part]
        elif isinstance(obj, list) and part.lstrip("-").isdigit():
            i = int(part)
            if not -len(obj) <= i < len(obj):
                return _MISSING
            obj = obj[i]
        else:
            return _MISSING
    return obj


def _scalar(name: str, path: tuple[str, ...], value: Any) -> Any:
    """Map values: numbers become text (ids are often numeric); ``ts`` stays an integer."""
    where = "." + ".".join(path)
    if name == "ts":
        if isinstance(value, str) and value.isdigit():
            return int(value)
        return value  # schema validation reports anything else
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    kind = "null" if value is None else type(value).__name__
    raise MapError(name, f"{where} is {kind}, not text")


class Stop(enum.Enum):
    """What :meth:`LineConverter.convert` returns for a transform error under ``--strict``."""

    STRICT = "strict"


STRICT_STOP: Final = Stop.STRICT


class LineConverter:
    """One NDJSON line -> a validated :class:`Event` (with its deterministic event id), or None."""

    def __init__(
        self,
        stats: Stats,
        reporter: ErrorReporter,
        transform: TransformFn | None = None,
        field_map: FieldMap | None = None,
        strict: bool = False,
        id_ttl: int | None = None,
    ) -> None:
        self.stats = stats
        self.reporter = reporter
        self.transform = transform
        self.field_map = field_map
        self.strict = strict
        self.id_ttl = id_ttl

    def convert(self, raw: bytes, start: int, key: str, where: str) -> Event | Stop | None:
        """``raw`` is the line without its newline, ``start`` its byte offset.

        Returns an Event, None (line skipped, already counted and reported) or
        :data:`STRICT_STOP`.
        """
        line = raw.strip()
        if not line:
            self.stats.skipped += 1
            return None
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            self.stats.bad_json += 1
            self.reporter.line("bad JSON", where, f"not JSON ({exc}); skipped")
            return None
        d: Any
        if self.transform is not None:
            try:
                d = self.transform(obj)
            except Exception as exc:  # the user's code: any error is reported, never fatal unless --strict
                self.stats.transform_errors += 1
                self.reporter.transform_error(where, exc)
                return STRICT_STOP if self.strict else None
            if d is None:
                self.stats.skipped += 1
                return None
            if not isinstance(d, dict):
                self.stats.transform_errors += 1
                self.reporter.line(
                    "transform error", where, f"transform returned {type(d).__name__}, expected a dict or None"
                )
                return STRICT_STOP if self.strict else None
        elif self.field_map is not None:
            try:
                d = self.field_map.apply(obj)
            except MapError as exc:
                self.stats.rejected += 1
                self.reporter.line("rejected", where, f"rejected: {exc}")
                return None
        else:
            d = obj
        if isinstance(d, dict):
            added: dict[str, Any] = {}
            if "event_id" not in d:
                added["event_id"] = event_id(key, start, raw)
            if self.id_ttl is not None and "id_ttl" not in d:
                added["id_ttl"] = self.id_ttl
            if added:
                d = {**d, **added}  # a copy: the user's dict is left as it was
        try:
            return parse_json(d)
        except InvalidEvent as exc:
            self.stats.rejected += 1
            self.reporter.line("rejected", where, f"rejected: {exc}")
            return None
