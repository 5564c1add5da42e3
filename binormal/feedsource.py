"""Inputs of ``binormal feed``: reading NDJSON (files, .gz, stdin, growing files) and turning lines into events.

Reading is done in chunks (``read1``) split on ``\\n`` by hand, so the byte
offset of every line is known exactly (it is part of the line's event id and
of the saved resume position). A line is only ever taken once it is complete:
when following a growing file, a last line without its newline waits.
"""

from __future__ import annotations

import asyncio
import gzip
import importlib
import importlib.util
import os
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from binormal.common.schema import JSON_FIELDS, InvalidEvent, parse_json
from binormal.feedstate import event_id

CHUNK = 1 << 20  # bytes per read
TransformFn = Callable[[Any], Any]


class InputError(RuntimeError):
    """An input that cannot be opened or resumed."""


class MapError(ValueError):
    """A ``--map`` path that does not resolve on a line; ``field`` is the event field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


# ---------------------------------------------------------------- reading


def open_binary(path: str) -> Any:
    """Open ``path`` for reading bytes (``.gz`` decompressed): a BufferedReader or GzipFile."""
    try:
        if path.endswith(".gz"):
            return gzip.open(path, "rb")
        return open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot open {path}: {exc.strerror or exc}") from exc


def first_line(path: str) -> bytes | None:
    """The first line of a file (without its newline), None when the file is empty."""
    with open_binary(path) as f:
        try:
            line = f.readline()
        except (OSError, EOFError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from exc
    return line.rstrip(b"\n") if line else None


class FileChunks:
    """Chunks of a file (plain or gzip) from a byte offset; optionally follows growth.

    ``progress()`` is the position in the *stored* file (compressed bytes for
    ``.gz``), for the ETA.
    """

    def __init__(self, path: str, offset: int, follow: bool, poll_s: float = 0.25) -> None:
        self.path = path
        self.follow = follow
        self.poll_s = poll_s
        self.gz = path.endswith(".gz")
        self.f = open_binary(path)
        self.size = os.path.getsize(path)
        self.consumed = offset
        self.start = offset  # where reading starts (the saved offset, or just past a late newline)
        if offset:
            self._check_resume(offset)
            self.consumed = self.start
        self.truncated = False

    def _check_resume(self, offset: int) -> None:
        """The saved offset must be at a line start inside the file."""
        if not self.gz and offset > self.size:
            raise InputError(
                f"{self.path} is shorter ({self.size} bytes) than the saved position ({offset}): "
                "it was truncated or replaced; use --from-start"
            )
        try:
            self.f.seek(offset - 1)
            before = self.f.read(1)
        except (OSError, EOFError) as exc:
            raise InputError(f"cannot seek {self.path} to {offset}: {exc}") from exc
        if len(before) != 1:
            raise InputError(f"{self.path} ends before the saved position {offset}; use --from-start")
        after = self.f.read(1)
        if before != b"\n" and after == b"\n":
            # The last line was fed complete at the end of the file; its newline came later.
            offset += 1
        elif before != b"\n" and after != b"":
            raise InputError(
                f"the saved position {offset} of {self.path} is not at the start of a line "
                "(the last line was still being written when it was fed?); use --from-start"
            )
        self.f.seek(offset)
        self.start = offset

    def progress(self) -> int:
        """Bytes of the stored file read so far."""
        if self.gz:
            raw = getattr(self.f, "fileobj", None)
            try:
                return int(raw.tell()) if raw is not None else 0
            except (OSError, ValueError):
                return 0
        return self.consumed

    async def read(self, stop: asyncio.Event) -> bytes | None:
        """Next chunk; ``b""`` at the end; None when following and nothing new was written yet."""
        try:
            chunk: bytes = self.f.read1(CHUNK)
        except (OSError, EOFError) as exc:
            raise InputError(f"cannot read {self.path}: {exc}") from exc
        if chunk:
            self.consumed += len(chunk)
            return chunk
        if not self.follow or stop.is_set() or self._rewritten():
            return b""
        return None

    async def idle(self, stop: asyncio.Event) -> None:
        """Following: wait a poll interval (or until ``stop``) before reading again."""
        try:
            await asyncio.wait_for(stop.wait(), timeout=self.poll_s)
        except TimeoutError:
            pass

    def _rewritten(self) -> bool:
        """Following: the file shrank below what we read (copytruncate) or the path is a new file."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False  # rotated away, the new file not created yet: keep waiting
        mine = os.fstat(self.f.fileno())
        if (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev) or (not self.gz and mine.st_size < self.consumed):
            self.truncated = True
            return True
        return False

    def close(self) -> None:
        """Close the file."""
        self.f.close()


class StdinChunks:
    """Chunks of stdin, read by a daemon thread so a quiet pipe never blocks the event loop.

    A daemon thread (not an executor) so that a read still blocked at exit
    cannot keep the process alive.
    """

    path = "-"
    follow = False
    truncated = False
    size = 0

    def __init__(self, loop: asyncio.AbstractEventLoop, stream: IO[bytes] | None = None, linger_s: float = 0.2) -> None:
        self.linger_s = linger_s
        self.eof = False
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)
        self.loop = loop
        self.consumed = 0
        self.thread = threading.Thread(target=self._pump, name="feed-stdin", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        while True:
            try:
                chunk = self.stream.read1(CHUNK)  # type: ignore[union-attr]
            except (OSError, ValueError):
                chunk = b""
            fut = asyncio.run_coroutine_threadsafe(self.queue.put(chunk), self.loop)
            try:
                fut.result()
            except (RuntimeError, asyncio.CancelledError):
                return  # loop closed
            if not chunk:
                return

    async def read(self, stop: asyncio.Event) -> bytes | None:
        """Next chunk, ``b""`` at end of input, None when nothing came for ``linger_s``."""
        if self.eof:
            return b""
        try:
            chunk = await asyncio.wait_for(self.queue.get(), timeout=self.linger_s)
        except TimeoutError:
            return None
        self.consumed += len(chunk)
        self.eof = not chunk
        return chunk

    async def idle(self, stop: asyncio.Event) -> None:
        """Nothing to wait for: :meth:`read` already waited."""

    def progress(self) -> int:
        """Bytes read (no known total)."""
        return self.consumed

    def close(self) -> None:
        """Nothing to close (stdin stays open)."""


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


# ---------------------------------------------------------------- error reports


class ErrorReporter:
    """Per-line problems on stderr: every line number (up to ``limit`` per kind), each traceback once."""

    def __init__(self, write: Callable[[str], None], limit: int = 200) -> None:
        self.write = write
        self.limit = limit
        self.shown: dict[str, int] = {}
        self.hidden: dict[str, int] = {}
        self._tracebacks: dict[tuple[str, ...], int] = {}

    def line(self, kind: str, where: str, message: str) -> None:
        """Report one line's problem unless ``kind`` already hit the limit."""
        n = self.shown.get(kind, 0)
        if n >= self.limit:
            if kind not in self.hidden:
                self.write(f"(more {kind} lines are not shown; the summary counts them)\n")
            self.hidden[kind] = self.hidden.get(kind, 0) + 1
            return
        self.shown[kind] = n + 1
        self.write(f"{where}: {message}\n")

    def transform_error(self, where: str, exc: BaseException) -> None:
        """A transform raised: the line number always, the traceback the first time this error is seen."""
        # Skip the first frame: it is our call site, not the user's code.
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        frames = traceback.extract_tb(tb)
        last = frames[-1] if frames else None
        sig = (type(exc).__name__, last.filename if last else "", str(last.lineno if last else 0))
        summary = f"transform error: {type(exc).__name__}: {exc}"
        first = self._tracebacks.get(sig)
        if first is None:
            self._tracebacks[sig] = 1
            detail = "".join(traceback.format_list(frames)) + "".join(traceback.format_exception_only(exc))
            self.line("transform error", where, f"{summary}\nTraceback (most recent call last):\n{detail.rstrip()}")
        else:
            self.line("transform error", where, summary)


# ---------------------------------------------------------------- lines -> events


@dataclass
class Stats:
    """Counters of one run (the ``--json`` summary)."""

    read: int = 0
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    transform_errors: int = 0
    bad_json: int = 0
    skipped: int = 0
    retries: int = 0


STRICT_STOP = object()  # convert(): a transform error under --strict


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

    def convert(self, raw: bytes, start: int, key: str, where: str) -> Any:
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
