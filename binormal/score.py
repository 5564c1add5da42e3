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
import os
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

import orjson

from binormal.common.keys import Scope
from binormal.common.schema import Event, InvalidEvent, parse_json
from binormal.offline import Engine, Options, exact_rows, no_gc
from binormal.rows import Row, scope_rows
from binormal.split import SplitError, can_split, split_blocks

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
    jobs: int = 1,
) -> int:
    """Process ``path`` in order; print top outliers per scope (or JSON per individual).

    ``jobs`` > 1: the scopes are shared among that many processes (:mod:`binormal.split`) when the
    default engine reads a regular file; the output is the same.
    """
    with open_input(path) as stream:
        bar = Bar(errors, progress, input_size(path, stream))
        sink: IO[str] | Bar = bar if progress else errors
        if converter is not None and progress:
            converter.reporter.write = bar.write
        with no_gc():
            blocks = _blocks(path, stream, opts, top, as_json, sink, bar, progress, converter, exact, jobs)
        bar.close()
    if not as_json:
        blocks.sort(key=lambda b: (b[1], b[2], b[3]))
    out.write("".join([b[4] for b in blocks]))
    return 0


Block = tuple[int, str, str, str, str]  # (ordinal, org, source, pop, text): one scope's output


def _blocks(
    path: str,
    stream: IO[bytes],
    opts: Options,
    top: int,
    as_json: bool,
    sink: IO[str] | Bar,
    bar: Bar,
    progress: bool,
    converter: Any,
    exact: bool,
    jobs: int,
) -> list[Block]:
    """Every scope's output in order of first appearance: the fast line engine (in ``jobs``
    processes when it can), or events one by one (``--exact``, ``--map``, ``--transform``)."""
    if not exact and converter is None:
        tick = (lambda n: bar.tick(n, _position(stream))) if progress else None

        def render(engine: Engine) -> list[Block]:
            return [
                scope_block(sc.ordinal, sc.scope, scope_rows(sc, opts, None), top, as_json, opts.window > 0)
                for sc in engine.scopes.values()
            ]

        if jobs > 1 and can_split(path, stream):
            return split_blocks(path, stream, opts, jobs, render, open_input, sink, tick)
        engine = Engine(opts)
        engine.feed(stream, sink, tick)
        return render(engine)
    events = read_events(stream, sink, converter)
    if progress:
        events = _ticking(events, bar, stream)
    if exact:
        rows = exact_rows(events, opts)
    else:
        engine = Engine(opts)
        for event in events:
            engine.add(event)
        rows = list(engine.rows())
    by_scope: dict[Scope, list[Row]] = {}
    for r in rows:
        by_scope.setdefault(r.scope, []).append(r)
    recent = opts.window > 0
    return [scope_block(i, scope, mine, top, as_json, recent) for i, (scope, mine) in enumerate(by_scope.items())]


def scope_block(ordinal: int, scope: Scope, rows: list[Row], top: int, as_json: bool, recent: bool = False) -> Block:
    """One scope's output: a JSON line per individual (``recent``: with its recent score), or its
    table of the ``top`` outliers."""
    if as_json:
        dumps = orjson.dumps
        text = "".join([dumps(r.as_json(recent)).decode() + "\n" for r in rows])
        return (ordinal, scope.org, scope.source, scope.pop, text)
    shown = sorted(rows, key=lambda r: (-round(r.zscore, 3), r.ident))[:top]
    learning = sum(1 for r in rows if r.learning)
    note = f", {learning} learning" if learning else ""
    lines = [
        f"== org={scope.org} source={scope.source} pop={scope.pop} ({len(rows)} individuals{note})\n",
        f"{'zscore':>8} {'score':>9} {'count':>7}  id  (top reason)\n",
    ]
    for r in shown:
        explain = r.snapshot.assess(r.counts, 5)[1]
        reason = explain[0] if explain else None
        why = f"{reason['action']} {reason['kind']} ({reason['bits']} bits)" if reason else ""
        mark = "  [learning]" if r.learning else ""
        lines.append(f"{r.zscore:>8.3f} {r.score:>9.3f} {r.count:>7}  {r.ident}  {why}{mark}\n")
    return (ordinal, scope.org, scope.source, scope.pop, "".join(lines))


def fast_rows(stream: IO[bytes], opts: Options, errors: IO[str] | Bar, bar: Bar | None = None) -> Iterator[Row]:
    """NDJSON lines through the fast engine (:mod:`binormal.offline`), the rows at the end."""
    engine = Engine(opts)
    engine.feed(stream, errors, None if bar is None else (lambda n: bar.tick(n, _position(stream))))
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
    jobs: int = 1,
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
            return score_file(path, top, as_json, opts, out, sys.stderr, converter, progress, exact, jobs)
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
    except SplitError as exc:
        sys.stderr.write(f"binormal score: {exc}\n")
        return 1
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
