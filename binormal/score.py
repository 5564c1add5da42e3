"""``binormal score FILE``: offline analysis of a log with no server (engine: :mod:`binormal.offline`).

Lines are NDJSON events, or raw lines turned into events by the feeder's
``--map`` / ``--transform`` (:mod:`binormal.feed.convert`). By default the
population snapshot of a scope is rebuilt every ``refresh`` events of that
scope (the worker's bounded staleness) and each individual is scored once, at
the end, against the snapshot in force at its last event; ``--exact`` rebuilds
it after every event and scores every event, which gives exactly the results of
:class:`MemoryEngine` (the zscore of each individual's last event).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

import orjson

from binormal.common.keys import Scope
from binormal.common.schema import Event, InvalidEvent, parse_json
from binormal.offline import Engine, Options, Row, exact_rows, no_gc

DEFAULT_REFRESH = 1000  # events per scope between snapshot rebuilds (the default mode; the CLI repeats it)


def open_input(path: str) -> IO[bytes]:
    """``-`` is stdin; a ``.gz`` name is decompressed."""
    if path == "-":
        return sys.stdin.buffer
    if path.endswith(".gz"):
        import gzip  # only for .gz input (start-up)

        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


class Bar:
    """Progress on a terminal's stderr: events read, events/s and (known size) percent and ETA."""

    def __init__(self, stream: IO[str], enabled: bool, size: int | None) -> None:
        self.stream = stream
        self.enabled = enabled
        self.size = size
        self.started = time.monotonic()
        self._last = 0.0
        self._drawn = False

    def write(self, text: str) -> None:
        """A message above the bar."""
        if self._drawn:
            self.stream.write("\r\x1b[2K")
            self._drawn = False
        self.stream.write(text)

    def tick(self, events: int, position: int | None) -> None:
        """Redraw at most five times a second."""
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.2:
            return
        self._last = now
        elapsed = max(now - self.started, 1e-6)
        text = f"read {events:,} events  {events / elapsed:,.0f} events/s"
        if self.size and position is not None:
            fraction = min(position / self.size, 1.0)
            eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
            filled = int(20 * fraction)
            text = f"[{'#' * filled}{'.' * (20 - filled)}] {fraction * 100:5.1f}%  {text}  ETA {_hms(eta)}"
        self.stream.write("\r\x1b[2K" + text)
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Erase the bar."""
        if self._drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._drawn = False


def input_size(path: str, stream: IO[bytes]) -> int | None:
    """Bytes of the file behind ``stream`` (None for stdin or when not known): the bar's 100 %."""
    if path == "-":
        return None
    try:
        return os.fstat(stream.fileno()).st_size
    except (OSError, ValueError, io.UnsupportedOperation):
        return None


def _hms(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _position(stream: IO[bytes]) -> int | None:
    """Bytes of the file read so far (the compressed file's for .gz), None when not known."""
    raw: Any = getattr(stream, "fileobj", None) or stream
    try:
        return int(raw.tell())
    except (OSError, ValueError, AttributeError):
        return None


def read_events(stream: IO[bytes], errors: IO[str] | Bar, converter: Any = None) -> Iterator[Event]:
    """Yield events from lines; report bad lines (with numbers) and carry on.

    ``converter`` is a :class:`binormal.feed.convert.LineConverter` (``--map``,
    ``--transform``); without one each line must be an NDJSON event.
    """
    for lineno, raw in enumerate(stream, start=1):
        if converter is not None:
            got = converter.convert(raw.rstrip(b"\r\n"), 0, "score", f"line {lineno}")
            if isinstance(got, Event):
                yield got
            continue
        line = raw.strip()
        if not line:
            continue
        try:
            obj = orjson.loads(line)
            yield parse_json(obj)
        except orjson.JSONDecodeError as exc:
            errors.write(f"line {lineno}: not JSON: {exc}\n")
        except InvalidEvent as exc:
            errors.write(f"line {lineno}: {exc}\n")


def score_file(
    path: str,
    top: int,
    as_json: bool,
    opts: Options,
    out: IO[str],
    errors: IO[str],
    converter: Any = None,
    progress: bool = False,
    exact: bool = False,
) -> int:
    """Process ``path`` in order; print top outliers per scope (or JSON per individual)."""
    with open_input(path) as stream:
        bar = Bar(errors, progress, input_size(path, stream))
        sink: IO[str] | Bar = bar if progress else errors
        if converter is not None and progress:
            converter.reporter.write = bar.write
        with no_gc():
            rows = _rows(stream, opts, sink, bar, progress, converter, exact)
        bar.close()
    if as_json:
        dumps = orjson.dumps
        out.write("".join([dumps(r.as_json()).decode() + "\n" for r in rows]))
        return 0
    by_scope: dict[Scope, list[Row]] = {}
    for r in rows:
        by_scope.setdefault(r.scope, []).append(r)
    for scope in sorted(by_scope, key=lambda s: (s.org, s.source, s.pop)):
        mine = by_scope[scope]
        shown = sorted(mine, key=lambda r: (-round(r.zscore, 3), r.ident))[:top]
        learning = sum(1 for r in mine if r.learning)
        note = f", {learning} learning" if learning else ""
        out.write(f"== org={scope.org} source={scope.source} pop={scope.pop} ({len(mine)} individuals{note})\n")
        out.write(f"{'zscore':>8} {'score':>9} {'count':>7}  id  (top reason)\n")
        for r in shown:
            explain = r.snapshot.assess(r.counts, 5)[1]
            reason = explain[0] if explain else None
            why = f"{reason['action']} {reason['kind']} ({reason['bits']} bits)" if reason else ""
            mark = "  [learning]" if r.learning else ""
            out.write(f"{r.zscore:>8.3f} {r.score:>9.3f} {r.count:>7}  {r.ident}  {why}{mark}\n")
    return 0


def _rows(
    stream: IO[bytes], opts: Options, sink: IO[str] | Bar, bar: Bar, progress: bool, converter: Any, exact: bool
) -> list[Row]:
    """Every individual's row: the fast line engine, or events one by one (``--exact``, ``--map``, ``--transform``)."""
    if not exact and converter is None:
        return list(fast_rows(stream, opts, sink, bar if progress else None))
    events = read_events(stream, sink, converter)
    if progress:
        events = _ticking(events, bar, stream)
    if exact:
        return exact_rows(events, opts)
    engine = Engine(opts)
    for event in events:
        engine.add(event)
    return list(engine.rows())


CHUNK = 4096  # lines counted between two progress-bar updates


def fast_rows(stream: IO[bytes], opts: Options, errors: IO[str] | Bar, bar: Bar | None = None) -> Iterator[Row]:
    """NDJSON lines through the fast engine (:mod:`binormal.offline`), the rows at the end."""
    engine = Engine(opts)
    if bar is None:
        engine.feed_lines(stream, errors)
    else:
        lineno = 1
        while chunk := list(itertools.islice(stream, CHUNK)):
            engine.feed_lines(chunk, errors, lineno)
            lineno += len(chunk)
            bar.tick(lineno - 1, _position(stream))
    return engine.rows()


def _ticking(events: Iterator[Event], bar: Bar, stream: IO[bytes]) -> Iterator[Event]:
    for n, event in enumerate(events, start=1):
        if not n & 4095:
            bar.tick(n, _position(stream))
        yield event


def main_score(
    path: str,
    top: int,
    as_json: bool,
    opts: Options,
    exact: bool = False,
    field_map: str | None = None,
    transform: str | None = None,
    progress: bool | None = None,
) -> int:
    """Entry point used by the CLI."""
    out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", write_through=True)
    if progress is None:
        progress = sys.stderr.isatty()
    try:
        converter = make_converter(field_map, transform)
    except RuntimeError as exc:  # InputError: a bad --map or --transform
        sys.stderr.write(f"binormal score: {exc}\n")
        return 2
    try:
        with no_gc():  # also while the rows are written (score_file pauses it only while counting)
            return score_file(path, top, as_json, opts, out, sys.stderr, converter, progress, exact)
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, and point stdout at
        # /dev/null so the interpreter's final flush does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, EOFError) as exc:
        # Missing file, a directory, no permission, not gzip (BadGzipFile is an
        # OSError) or a truncated .gz (EOFError): one clear line, exit 2.
        sys.stderr.write(f"binormal score: cannot read {path}: {exc}\n")
        return 2
    finally:
        with contextlib.suppress(OSError, ValueError):  # leave sys.stdout usable (the wrapper would close it)
            out.detach()


def make_converter(field_map: str | None, transform: str | None) -> Any:
    """The feeder's line converter for ``--map`` / ``--transform``, or None for plain NDJSON events."""
    if field_map is None and transform is None:
        return None
    from binormal.feed.convert import FieldMap, LineConverter, load_transform
    from binormal.feed.reader import InputError
    from binormal.feed.report import ErrorReporter, Stats

    if field_map is not None and transform is not None:
        raise InputError("--transform and --map cannot be used together")
    fn = load_transform(transform) if transform else None
    fmap = FieldMap.parse(field_map) if field_map else None

    def write(text: str) -> None:
        sys.stderr.write(text)

    return LineConverter(Stats(), ErrorReporter(write), fn, fmap)
