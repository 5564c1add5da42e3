"""``binormal score FILE``: offline analysis of a log with the in-memory engine, no server.

Lines are NDJSON events, or raw lines turned into events by the feeder's
``--map`` / ``--transform`` (:mod:`binormal.feed.convert`). By default the
population snapshot of a scope is rebuilt every ``refresh`` events of that
scope (the worker's bounded staleness); ``refresh=0`` (``--exact``) rebuilds it
after every event, which gives exactly the results of :class:`MemoryEngine`.
"""

from __future__ import annotations

import gzip
import io
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from binormal.common.keys import Scope
from binormal.common.result import Aggregates, r3
from binormal.common.schema import Event, InvalidEvent, parse_json
from binormal.common.scoring import DEFAULT_CAP, Snapshot, zscore

DEFAULT_REFRESH = 1000  # events per scope between snapshot rebuilds (the default mode; the CLI repeats it)


def open_input(path: str) -> IO[bytes]:
    """``-`` is stdin; a ``.gz`` name is decompressed."""
    if path == "-":
        return sys.stdin.buffer
    if path.endswith(".gz"):
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


@dataclass
class _Scope:
    pop: dict[str, int]
    individuals: dict[str, dict[str, int]]
    scores: dict[str, float]
    agg: Aggregates
    snapshot: Snapshot | None = None
    age: int = 0
    last: dict[str, tuple[Aggregates, Snapshot]] = field(default_factory=dict)


@dataclass
class Last:
    """An individual as of its last event: enough to build its row (and explanation) at the end."""

    scope: Scope
    ident: str
    counts: dict[str, int]
    score: float
    agg: Aggregates
    snapshot: Snapshot

    def row(self) -> dict[str, Any]:
        """The ``--json`` object."""
        a = self.agg
        return {
            "org": self.scope.org,
            "source": self.scope.source,
            "pop": self.scope.pop,
            "id": self.ident,
            "count": sum(self.counts.values()),
            "score": r3(self.score),
            "zscore": r3(zscore(self.score, a.n, a.total, a.total_sq)),
        }


def score_events(events: Iterator[Event], cap: int, refresh: int) -> dict[tuple[Scope, str], Last]:
    """Each individual's state at its last event: the counting of :class:`MemoryEngine`, without results.

    Scores equal :meth:`MemoryEngine.process`'s with ``refresh_every=refresh``
    bit for bit (same snapshots, same :meth:`Snapshot.assess`, same aggregates);
    the per-event result dict and explanation are not built.
    """
    scopes: dict[Scope, _Scope] = {}
    # (scope, id) -> the scope's state; per scope, id -> (aggregates, snapshot) at its last event
    order: dict[tuple[Scope, str], _Scope] = {}
    for event in events:
        scope = event.scope
        st = scopes.get(scope)
        if st is None:
            st = scopes[scope] = _Scope({}, {}, {}, Aggregates())
        ident, action = event.id, event.action
        counts = st.individuals.get(ident)
        if counts is None:
            counts = st.individuals[ident] = {}
            order[(scope, ident)] = st
        counts[action] = counts.get(action, 0) + 1
        pop = st.pop
        pop[action] = pop.get(action, 0) + 1
        snap = st.snapshot
        if snap is None or st.age >= refresh or action not in snap.counts:
            snap = st.snapshot = Snapshot(dict(pop), cap=cap)
            st.age = 0
        st.age += 1
        score = snap.assess(counts, 0)[0]
        scores = st.scores
        agg = st.agg = st.agg.replace(scores.get(ident), score)
        scores[ident] = score
        st.last[ident] = (agg, snap)
    out: dict[tuple[Scope, str], Last] = {}
    for (scope, ident), st in order.items():
        agg, snap = st.last[ident]
        out[(scope, ident)] = Last(scope, ident, st.individuals[ident], st.scores[ident], agg, snap)
    return out


def score_file(
    path: str,
    top: int,
    as_json: bool,
    cap: int,
    out: IO[str],
    errors: IO[str],
    refresh: int = 0,
    converter: Any = None,
    progress: bool = False,
) -> int:
    """Process ``path`` in order; print top outliers per scope (or JSON per individual)."""
    with open_input(path) as stream:
        size = None
        if path != "-":
            try:
                size = os.fstat(stream.fileno()).st_size
            except (OSError, ValueError, io.UnsupportedOperation):
                size = None
        bar = Bar(errors, progress, size)
        events = read_events(stream, bar if progress else errors, converter)
        if progress:
            events = _ticking(events, bar, stream)
        if converter is not None and progress:
            converter.reporter.write = bar.write
        last = score_events(events, cap, refresh)
        bar.close()
    if as_json:
        for item in last.values():
            out.write(orjson.dumps(item.row()).decode() + "\n")
        return 0
    by_scope: dict[Scope, list[dict[str, Any]]] = {}
    for item in last.values():
        r = item.row()
        r["_item"] = item
        by_scope.setdefault(item.scope, []).append(r)
    for scope in sorted(by_scope, key=lambda s: (s.org, s.source, s.pop)):
        rows = sorted(by_scope[scope], key=lambda r: (-r["zscore"], r["id"]))[:top]
        out.write(f"== org={scope.org} source={scope.source} pop={scope.pop} ({len(by_scope[scope])} individuals)\n")
        out.write(f"{'zscore':>8} {'score':>9} {'count':>7}  id  (top reason)\n")
        for r in rows:
            item = r["_item"]
            explain = item.snapshot.assess(item.counts, 5)[1]
            reason = explain[0] if explain else None
            why = f"{reason['action']} {reason['kind']} ({reason['bits']} bits)" if reason else ""
            out.write(f"{r['zscore']:>8.3f} {r['score']:>9.3f} {r['count']:>7}  {r['id']}  {why}\n")
    return 0


def _ticking(events: Iterator[Event], bar: Bar, stream: IO[bytes]) -> Iterator[Event]:
    for n, event in enumerate(events, start=1):
        if not n & 4095:
            bar.tick(n, _position(stream))
        yield event


def main_score(
    path: str,
    top: int,
    as_json: bool,
    cap: int = DEFAULT_CAP,
    refresh: int = 0,
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
        return score_file(path, top, as_json, cap, out, sys.stderr, refresh, converter, progress)
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
