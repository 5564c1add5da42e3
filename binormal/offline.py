"""The offline engine of ``binormal score`` and ``binormal evaluate``: one pass over a log, no server.

Semantics (docs/quality.md, "Offline semantics"): events are counted in file order; a scope's
population snapshot is rebuilt every ``refresh`` of its events, and whenever an event's action
is not in it (``refresh=0``: after every event). Each individual's ``score`` is its score at its
last event against the snapshot in force at that event (the worker's bounded staleness), and its
``zscore``, ``pscore`` and ``rzscore`` compare that final score with the final scores of every
individual of its scope, as ``/api/outliers`` shows once the file is in. So one
:meth:`Snapshot.assess` per individual, at the end, instead of one per event.

Dominance guard (``weight_cap`` W, 0 = off): an individual with raw counts ``x`` over ``n``
events contributes ``x`` to its population while ``n <= W``, else ``normalise(x, W)``. Light
individuals are counted per event; an individual past W is brought up to date lazily, when its
scope's snapshot is rebuilt (its recorded contribution taken out, the new one put in), which
gives at every rebuild exactly the population per-event maintenance gives. Snapshots leave out
actions whose population count is 0.

Recent window (``Options.window`` K, 0 = off; ``binormal evaluate`` only): each individual's last K
actions are kept, and its row gets ``recent`` and ``drift`` (:mod:`binormal.drift`) of its last
``min(K, n // 2)`` events, ``recent`` against the snapshot in force at its last event.

Validation fast path: a line whose scope, action (in that scope) and id were already validated
is counted after two dict lookups (its scope, then its id in that scope); anything else goes
through :func:`schema.parse_json`, so every bad line gets the same message, with its line number,
as before.

Foreign lines (``part``, :mod:`binormal.split`): while at most :data:`SKIP_SCOPES` scopes are
known, an engine skips unparsed every line that starts with the canonical prefix of another
engine's scope, ``{"org":<org>,"source":<source>,"pop":<pop>,`` in orjson's encoding (one
``bytes.startswith`` instead of a parse: ~30 % of the reading at J = 2). Such a line names that
scope unless a later key repeats ``org``, ``source`` or ``pop``: the owner, the only engine that
reads it, checks, and if it does raises :class:`PrefixConflict` (the split runs again without
skipping). A line with such a prefix that is not JSON is reported by the owner.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import itertools
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson

from binormal.common.keys import Scope
from binormal.common.schema import TS_MAX, Event, InvalidEvent, parse_json
from binormal.common.scoring import Snapshot, normalise, weight_cap_usable, zscore
from binormal.rows import Row, scope_rows

MIN_EVENTS = 10  # an individual with fewer events is "learning"
MIN_INDIVIDUALS = 30  # so is every individual of a scope with fewer individuals
_NO_CAP = sys.maxsize
CHUNK = 4096  # lines counted between two progress reports (Engine.feed)
SKIP_SCOPES = 32  # known scopes up to which foreign lines are skipped by prefix (startswith over a tuple)


class PrefixConflict(RuntimeError):
    """A line starts with the canonical prefix of one scope but names another (a repeated key): the
    engines that skipped it by its prefix were wrong, and the split must run again without skipping."""


def canonical_prefix(key: tuple[str, str, str]) -> bytes:
    """How an orjson-encoded event of scope ``key`` starts (the fields in schema order, no spaces)."""
    org, source, pop = (orjson.dumps(v) for v in key)
    return b'{"org":' + org + b',"source":' + source + b',"pop":' + pop + b","


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """The cyclic garbage collector paused: the engine builds no cycles, and the collector's
    passes over its growing state (a dict per individual) cost a third of the run."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def check_weight_cap(weight_cap: int, cap: int) -> str | None:
    """Why ``weight_cap`` cannot be used with normalisation cap ``cap`` (None when it can)."""
    if not weight_cap_usable(weight_cap, cap):
        return f"--weight-cap must be 0 (off) or at least the normalisation cap --cap {cap}, got {weight_cap}"
    return None


@dataclass(frozen=True)
class Options:
    """How to score: normalisation cap N, snapshot refresh (0 = every event), weight cap W (0 = off)."""

    cap: int
    refresh: int
    weight_cap: int
    min_events: int = MIN_EVENTS
    min_individuals: int = MIN_INDIVIDUALS
    window: int = 0  # K of the recent window (binormal/drift.py); 0 = not kept (no recent, no drift)


class ScopeState:
    """Counters of one scope: ``ind`` maps an id to ``[counts, n, snapshot at its last event, scope, id, recent]``.

    ``recent`` is a deque of the id's last ``window`` actions (None when ``Options.window`` is 0).
    """

    __slots__ = ("key", "scope", "ordinal", "pop", "ind", "heavy", "dirty", "snap", "known", "left", "prefix")

    def __init__(self, key: tuple[str, str, str], ordinal: int = 0) -> None:
        self.key = key
        self.scope = Scope(*key)
        self.ordinal = ordinal  # scopes met before this one (its place in the output)
        self.pop: dict[str, int] = {}  # sum of contributions (an action may be at 0)
        self.ind: dict[str, list[Any]] = {}
        self.heavy: dict[str, dict[str, int]] = {}  # id past W -> the contribution pop holds for it
        self.dirty: set[str] = set()  # heavy ids with events since their contribution was recorded
        self.snap: Snapshot | None = None
        self.known: dict[str, int] = {}  # the snapshot's counts
        self.left = 0  # events before the next rebuild
        self.prefix = b""  # canonical_prefix(key), kept while engines skip foreign lines by prefix

    def rebuild(self, opts: Options) -> Snapshot:
        """Bring the heavy individuals' contributions up to date; a new snapshot of the non-zero counts."""
        pop = self.pop
        for ident in self.dirty:
            old = self.heavy[ident]
            new = normalise(self.ind[ident][0], opts.weight_cap)[1]
            for a, c in old.items():
                pop[a] -= c
            for a, c in new.items():
                pop[a] += c
            self.heavy[ident] = new
        self.dirty.clear()
        snap = self.snap = Snapshot({a: c for a, c in pop.items() if c}, cap=opts.cap)
        self.known = snap.counts
        self.left = opts.refresh - 1
        return snap


class Engine:
    """Counts events in order (see the module docstring); :meth:`rows` gives the final results.

    ``part`` ``(me, jobs)``: this engine is one of ``jobs`` reading the same lines
    (:mod:`binormal.split`), and counts only the scopes whose ordinal (the order in which valid
    events first name them) is ``me`` modulo ``jobs``; the others' lines are skipped. A bad line is
    reported by the engine owning the scope it names, or by engine 0 when it names no known scope,
    so that every line is reported exactly once among the ``jobs`` engines.
    """

    def __init__(self, opts: Options, part: tuple[int, int] = (0, 1), skip_by_prefix: bool = True) -> None:
        self.opts = opts
        self.w = opts.weight_cap or _NO_CAP
        self.scopes: dict[tuple[str, str, str], ScopeState] = {}
        self.me, self.jobs = part
        if not 0 <= self.me < self.jobs:
            raise ValueError(f"part must be (me, jobs) with 0 <= me < jobs, got {part}")
        # Every scope met, in the order met (its ordinal), to its state here, or None when another
        # engine counts it (binormal.split).
        self.route: dict[Any, ScopeState | None] = {}
        # Lines to skip unparsed (other engines' canonical prefixes) and this engine's own prefixes;
        # both () when not split, not wanted, or past SKIP_SCOPES scopes (the same line in every engine).
        self.skip: tuple[bytes, ...] = ()
        self.mine: tuple[bytes, ...] = ()
        self.by_prefix = skip_by_prefix and self.jobs > 1
        if not 0 <= opts.window <= opts.cap:  # the window is scored unnormalised (binormal/drift.py)
            raise ValueError(f"window must be 0 (off) or 1..cap {opts.cap}, got {opts.window}")
        self.window = opts.window

    def add(self, event: Event) -> tuple[ScopeState, list[Any]]:
        """Count one validated event (the slow path; :meth:`feed_lines` inlines the same steps)."""
        key = (event.org, event.source, event.pop)
        sc = self.scopes.get(key)
        if sc is None:
            sc = self.scopes[key] = self.route[key] = ScopeState(key, len(self.route))
            self._met(key, sc)
        action = event.action
        rec = sc.ind.get(event.id)
        if rec is None:
            rec = self._record(sc, event.id)
        counts, n = rec[0], rec[1]
        pop = sc.pop
        if action not in pop:
            pop[action] = 0
        if n >= self.w:
            if n == self.w:
                sc.heavy[event.id] = dict(counts)
            sc.dirty.add(event.id)
        else:
            pop[action] += 1
        counts[action] = counts.get(action, 0) + 1
        rec[1] = n + 1
        if self.window:
            rec[5].append(action)
        if sc.left <= 0 or action not in sc.known:
            sc.rebuild(self.opts)
        else:
            sc.left -= 1
        rec[2] = sc.snap
        return sc, rec

    def feed(self, stream: Iterable[bytes], errors: IO[str] | Any, tick: Callable[[int], None] | None = None) -> int:
        """Count every line of ``stream``; ``tick(lines read)`` after each :data:`CHUNK` lines when given."""
        if tick is None:
            return self.feed_lines(stream, errors)
        read = 0
        lines = iter(stream)
        while chunk := list(itertools.islice(lines, CHUNK)):
            read += self.feed_lines(chunk, errors, read + 1)
            tick(read)
        return read

    def feed_lines(self, stream: Iterable[bytes], errors: IO[str] | Any, start: int = 1) -> int:
        """Count NDJSON lines (numbered from ``start``); bad lines are reported on ``errors``. Returns lines read."""
        loads = orjson.loads
        decode_error = orjson.JSONDecodeError
        route = self.route
        w = self.w
        opts = self.opts
        track = self.window > 0
        skip = self.skip
        lineno = start - 1
        for lineno, raw in enumerate(stream, start):  # noqa: B007 (the count is returned)
            if skip and raw.startswith(skip):  # another engine's scope (see the module docstring)
                continue
            try:
                obj = loads(raw)
            except decode_error:
                self._slow(lineno, raw, errors)
                skip = self.skip
                continue
            try:
                # Two lookups, the scope's (10 hot entries here) then the id's in that scope, cost
                # less than one among all individuals by (org, source, pop, id): fewer cache misses.
                # Not a JSON object: indexing a list, string or number raises TypeError.
                # route: every scope met, to its state, or None when another engine counts it
                # (binormal.split); a scope not met yet raises KeyError.
                sc = route[obj["org"], obj["source"], obj["pop"]]
                if sc is None:
                    if self.mine and raw.startswith(self.mine):  # one of ours by its prefix: a repeated key
                        raise PrefixConflict(f"line {lineno}: its prefix names another scope than its fields")
                    continue
                size = len(obj)  # the five fields are read below: a sixth may only be a valid ts
                if size != 5:
                    if size != 6:
                        raise KeyError
                    ts = obj["ts"]
                    if type(ts) is not int or ts < 0 or ts > TS_MAX:
                        raise KeyError
                action = obj["action"]
                rec = sc.ind.get(obj["id"])
                if rec is None:
                    rec = self._newcomer(obj, action)
                counts = rec[0]
                c = counts.get(action)
                if c is None:
                    c = 0
                    if action not in sc.pop:
                        raise KeyError
            except (KeyError, TypeError):  # missing, unhashable or not yet validated: the full check
                self._slow(lineno, raw, errors)
                skip = self.skip
                continue
            n = rec[1]
            if n < w:
                sc.pop[action] += 1
            else:
                if n == w:
                    sc.heavy[rec[4]] = dict(counts)
                sc.dirty.add(rec[4])
            counts[action] = c + 1
            rec[1] = n + 1
            if track:
                rec[5].append(action)
            left = sc.left
            if left <= 0 or action not in sc.known:
                sc.rebuild(opts)
            else:
                sc.left = left - 1
            rec[2] = sc.snap
        return lineno - start + 1

    def _newcomer(self, obj: dict[str, Any], action: Any) -> list[Any]:
        """The record of an id new to a known scope (id and action checked); KeyError: take the full check."""
        ident = obj["id"]
        sc = self.scopes.get((obj["org"], obj["source"], obj["pop"]))
        if sc is None or type(ident) is not str or not _valid_id(ident) or action not in sc.pop:
            raise KeyError(ident)
        return self._record(sc, ident)

    def _record(self, sc: ScopeState, ident: str) -> list[Any]:
        recent: collections.deque[str] | None = collections.deque(maxlen=self.window) if self.window else None
        rec = sc.ind[ident] = [{}, 0, None, sc, ident, recent]
        return rec

    def _slow(self, lineno: int, raw: bytes, errors: IO[str] | Any) -> None:
        """A line the fast path did not take: today's exact checks and messages."""
        line = raw.strip()
        if not line:
            return
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            # With a scope's canonical prefix only its owner reads it (the others skip it); else engine 0.
            if raw.startswith(self.mine) or (self.me == 0 and not raw.startswith(self.skip)):
                errors.write(f"line {lineno}: not JSON: {exc}\n")
            return
        reports = True
        if self.jobs > 1:
            named = _scope_named(obj)
            if raw.startswith(self.mine):  # one of our prefixes: it must name that scope
                own = self.scopes.get(named) if named is not None else None
                if own is None or not raw.startswith(own.prefix):
                    raise PrefixConflict(f"line {lineno}: its prefix names another scope than its fields")
            if named in self.route and self.route[named] is None:  # another engine reports or counts it
                return
            reports = self.me == 0 or named in self.scopes
        try:
            event = parse_json(obj)
        except InvalidEvent as exc:
            if reports:
                errors.write(f"line {lineno}: {exc}\n")
            return
        if self.jobs > 1 and not self._owns((event.org, event.source, event.pop)):
            return
        self.add(event)

    def _owns(self, key: tuple[str, str, str]) -> bool:
        """Whether this engine counts the (valid) scope ``key``; a scope met for the first time is
        given the next ordinal, the same in every engine since they all read the same lines."""
        if key in self.scopes:
            return True
        ordinal = len(self.route)
        if ordinal % self.jobs == self.me:
            return True  # add() creates it with this ordinal
        self.route[key] = None
        self._met(key, None)
        return False

    def _met(self, key: tuple[str, str, str], sc: ScopeState | None) -> None:
        """A scope met for the first time (``sc``: ours, None: another engine's): its prefix is
        skipped (another's) or watched (ours), until more than SKIP_SCOPES scopes are known."""
        if not self.by_prefix:
            return
        if len(self.route) > SKIP_SCOPES:  # startswith over a long tuple would cost more than a parse
            self.by_prefix = False
            self.skip = self.mine = ()
            return
        prefix = canonical_prefix(key)
        if sc is None:
            self.skip += (prefix,)
        else:
            sc.prefix = prefix
            self.mine += (prefix,)

    def rows(self) -> Iterator[Row]:
        """Every individual's final row, scope by scope in order of first appearance."""
        opts = self.opts
        for sc in self.scopes.values():
            yield from scope_rows(sc, opts, None)


def _scope_named(obj: Any) -> tuple[Any, Any, Any] | None:
    """The (org, source, pop) a decoded line names, whatever their types; None if it names none."""
    if type(obj) is not dict:
        return None
    try:
        key = (obj["org"], obj["source"], obj["pop"])
        hash(key)
    except (KeyError, TypeError):  # a field missing, or a list or object (unhashable)
        return None
    return key


def _valid_id(ident: str) -> bool:
    """The id checks of :func:`parse_json` (non-empty, at most 1024 UTF-8 bytes, no lone surrogate)."""
    if not ident:
        return False
    try:
        return len(ident.encode("utf-8")) <= 1024
    except UnicodeEncodeError:
        return False


def exact_rows(events: Iterable[Event], opts: Options) -> list[Row]:
    """``--exact``: a snapshot after every event, and each zscore as of the individual's last event.

    The per-event counting and scoring of :class:`MemoryEngine` (with the weight cap applied
    at every event): rows equal its results at each individual's last event, bit for bit.
    """
    from binormal.common.result import Aggregates  # only here: the default mode does not load it (start-up)

    engine = Engine(Options(opts.cap, 0, opts.weight_cap, opts.min_events, opts.min_individuals, opts.window))
    scores: dict[tuple[str, str, str], dict[str, float]] = {}
    aggs: dict[tuple[str, str, str], Aggregates] = {}
    zs: dict[tuple[str, str, str], dict[str, float]] = {}
    for event in events:
        sc, rec = engine.add(event)
        key = (event.org, event.source, event.pop)
        score = rec[2].assess(rec[0], 0)[0]
        mine = scores.setdefault(key, {})
        agg = aggs[key] = aggs.get(key, Aggregates()).replace(mine.get(event.id), score)
        mine[event.id] = score
        zs.setdefault(key, {})[event.id] = zscore(score, agg.n, agg.total, agg.total_sq)
    out: list[Row] = []
    for key, sc in engine.scopes.items():
        out.extend(scope_rows(sc, engine.opts, zs[key]))
    return out
