"""``binormal feed FILE...``: send an NDJSON log to the service, resumable, with retries and progress.

A producer task reads lines and turns them into validated events (each with
an event id derived from the input, see :mod:`binormal.feed.state`); the
sender delivers them in order, one unit at a time (a batch, or one event with
``--sync``), retrying a unit until the service gives a verdict on it. Only
then does the saved position move past its lines, so a crash at any point
resends at most the units after the last save, with the same event ids: the
worker counts each id once. Ctrl-C or SIGTERM stops after the unit in flight.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import orjson

from binormal.feed.convert import STRICT_STOP, FieldMap, LineConverter, load_transform
from binormal.feed.reader import InputError, Source, first_line, open_source
from binormal.feed.report import ErrorReporter, Progress, Stats, summary, summary_text
from binormal.feed.settings import FeedSettings
from binormal.feed.state import Position, StateError, StateFile, default_state_path, file_key
from binormal.feed.transport import Fatal, Item, Outcome, Retry, TooLarge, Transport, open_transport

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass
class Batch:
    """Events of consecutive lines of one input; ``end`` is the position after its last line."""

    input: int
    items: list[Item]
    end: Position


class Stopped(Exception):
    """A stop was requested while a unit was still waiting to be retried."""


class GaveUp(Exception):
    """The service kept failing for longer than ``--retry-for``."""


@dataclass
class Input:
    """One FILE argument, its state file and where to start."""

    path: str
    state: StateFile | None
    start: Position | None = None
    size: int = 0
    done_bytes: int = 0


class Feeder:
    """One run of ``binormal feed``: ``await Feeder(settings).run()`` returns the exit code."""

    def __init__(self, settings: FeedSettings, out: IO[bytes] | None = None, err: IO[str] | None = None) -> None:
        self.settings = settings
        self.out = out if out is not None else sys.stdout.buffer
        self.err = err if err is not None else sys.stderr
        self.stats = Stats()
        self.started = time.monotonic()
        self.stop = asyncio.Event()
        self.retrying = False
        self.status = "done"
        self.inputs: list[Input] = []
        self.current = 0
        self.sources: dict[int, Source] = {}
        self.progress = Progress(self.err, self._progress_enabled(), self.stats, self.started)
        self.reporter = ErrorReporter(self.progress.write, settings.errors_shown)
        self.converter: LineConverter | None = None
        self.transport: Transport = open_transport(settings)
        self._positions: dict[int, Position] = {}
        self._saved: dict[int, Position] = {}
        self._last_save = 0.0
        self._best: dict[tuple[Any, ...], float] = {}
        self._signals = 0
        self._out_closed = False

    def _progress_enabled(self) -> bool:
        if self.settings.progress is not None:
            return self.settings.progress
        return bool(getattr(self.err, "isatty", lambda: False)())

    def say(self, text: str) -> None:
        """A message for the user on stderr."""
        self.progress.write(text if text.endswith("\n") else text + "\n")

    # ------------------------------------------------------------ setup

    def prepare(self) -> None:
        """Check options, inputs and state files before anything is sent (raises InputError/StateError)."""
        st = self.settings
        if not st.files:
            raise InputError("no input files")
        if st.transform and st.field_map:
            raise InputError("--transform and --map cannot be used together")
        if st.files.count("-") > 1:
            raise InputError("stdin (-) can be given only once")
        if st.follow and len(st.files) > 1:
            raise InputError("--follow takes a single file")
        transform = load_transform(st.transform) if st.transform else None
        fmap = FieldMap.parse(st.field_map) if st.field_map else None
        self.converter = LineConverter(self.stats, self.reporter, transform, fmap, st.strict, st.id_ttl)
        shared = StateFile(Path(st.state)) if st.state else None
        for path in st.files:
            if path == "-":
                self.say("reading stdin: its position is not saved, an interrupted run cannot be resumed")
                self.inputs.append(Input(path, None))
                continue
            if not os.path.isfile(path):
                raise InputError(f"{path}: no such file")
            state = shared or StateFile(default_state_path(path))
            state.check_writable()
            inp = Input(path, state, size=os.path.getsize(path))
            if st.from_start:
                state.forget(path)
            else:
                inp.start = self._resume_point(path, state)
            self.inputs.append(inp)

    def _resume_point(self, path: str, state: StateFile) -> Position | None:
        saved = state.get(path)
        if saved is None or saved.offset == 0:
            return None
        target = state.target_of(path)
        if target and target != self.target:
            raise StateError(
                f"{path} was fed up to line {saved.line:,} to {target}, not to {self.target} "
                f"(state {state.path}): use --from-start to feed it to this one from the beginning"
            )
        line = first_line(path)
        if line is None or file_key(line) != saved.key:
            raise StateError(
                f"{state.path} holds a position for a different {path} (its first line changed): "
                "use --from-start to feed the new file from the beginning"
            )
        self.say(f"{path}: resuming after line {saved.line:,} (byte {saved.offset:,}) from {state.path}")
        return saved

    @property
    def target(self) -> str:
        """Where events go, as recorded in the state file (no password)."""
        st = self.settings
        if st.mode == "direct":
            u = urlsplit(st.redis_url)
            return f"{u.scheme}://{u.hostname}:{u.port or 6379}{u.path or '/0'} prefix={st.prefix}"
        u = urlsplit(st.url)
        return f"{u.scheme}://{u.hostname}:{u.port or (443 if u.scheme == 'https' else 80)}{u.path.rstrip('/')}"

    def fraction(self) -> float | None:
        """Share of the input bytes done, when every input has a known size."""
        if self.settings.follow or any(i.path == "-" for i in self.inputs):
            return None
        total = sum(i.size for i in self.inputs)
        if total <= 0:
            return None
        done = sum(i.done_bytes for i in self.inputs[: self.current])
        src = self.sources.get(self.current)
        if src is not None:
            done += src.progress()
        return min(done / total, 1.0)

    # ------------------------------------------------------------ run

    async def run(self) -> int:
        """Feed every input; save the state; print the summary. Returns the exit code."""
        try:
            self.prepare()
        except (InputError, StateError) as exc:
            self.say(f"binormal feed: {exc}")
            return EXIT_USAGE
        self._install_signals()
        await self.transport.open()
        ticker = asyncio.ensure_future(self._tick()) if self.progress.enabled else None
        queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=2)
        producer = asyncio.ensure_future(self._produce(queue))
        code = EXIT_OK
        try:
            await self._consume(queue, producer)
        except Stopped:
            pass
        except GaveUp as exc:
            self.status, code = "failed", EXIT_FAILED
            self.say(f"binormal feed: giving up: {exc}")
        except Fatal as exc:
            self.status, code = "failed", EXIT_FAILED
            self.say(f"binormal feed: {exc}")
        except (InputError, StateError) as exc:
            self.status, code = "failed", EXIT_FAILED
            self.say(f"binormal feed: {exc}")
        except asyncio.CancelledError:
            self.status = "interrupted"
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        finally:
            # Save first, before any await: a second Ctrl-C during the cleanup cannot lose the position.
            self._save_all(force=True)
            producer.cancel()
            if ticker is not None:
                ticker.cancel()
            try:
                await asyncio.gather(producer, *([ticker] if ticker else []), return_exceptions=True)
                await self.transport.close()
            except asyncio.CancelledError:
                self.status = "interrupted"
            for src in self.sources.values():
                src.close()
            self.progress.clear()
        if self.status == "interrupted":
            code = 128 + self._signum
        elif self.status == "strict":
            code = EXIT_FAILED
        self._summary()
        return code

    _signum: int = int(signal.SIGINT)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig, main)

    def _on_signal(self, sig: int, main: asyncio.Task[Any] | None) -> None:
        self._signals += 1
        self._signum = int(sig)
        self.status = "interrupted"
        if self._signals == 1:
            self.stop.set()
            self.say(f"{signal.Signals(sig).name}: stopping after the batch in flight (again to stop at once)")
        elif main is not None:
            main.cancel()

    async def _produce(self, queue: asyncio.Queue[Batch | None]) -> None:
        """Read every input in order and queue its batches; None at the end."""
        for idx, inp in enumerate(self.inputs):
            if self.stop.is_set():
                break
            self.current = idx
            if not await self._produce_input(idx, inp, queue):
                break
        await queue.put(None)

    async def _produce_input(self, idx: int, inp: Input, queue: asyncio.Queue[Batch | None]) -> bool:
        """Queue the batches of one input; False when the run must not go on (--strict)."""
        st, conv = self.settings, self.converter
        assert conv is not None
        # --sync sends one event per request anyway: small batches only bound the read-ahead.
        batch_size = min(st.batch, 50) if st.mode == "sync" else st.batch
        start = inp.start
        while True:
            offset = start.offset if start else 0
            lineno = start.line if start else 0
            key = start.key if start else ""
            src = open_source(inp.path, offset, st.follow)
            offset = src.start
            self.sources[idx] = src
            name = "stdin" if inp.path == "-" else inp.path
            items: list[Item] = []
            nbytes = 0
            partial = b""
            queued = lineno  # last line covered by a queued batch
            while not self.stop.is_set():
                chunk = await src.read(self.stop)
                if chunk is None:  # following and nothing new: hand over what we have
                    if lineno > queued:
                        await queue.put(Batch(idx, items, Position(key, offset, lineno)))
                        items, nbytes, queued = [], 0, lineno
                    await src.idle(self.stop)
                    continue
                if chunk:
                    lines = (partial + chunk).split(b"\n")
                    partial = lines.pop()
                    eol = 1
                elif partial and not st.follow:
                    lines, partial, eol = [partial], b"", 0  # a last line without newline is complete
                else:
                    break
                for raw in lines:
                    lineno += 1
                    begin = offset
                    offset += len(raw) + eol
                    self.stats.read += 1
                    if lineno == 1:
                        key = file_key(raw)
                    ev = conv.convert(raw, begin, key, f"{name}:{lineno}")
                    if ev is None:
                        continue
                    if ev is STRICT_STOP:
                        # Send what came before the bad line, then stop there.
                        await queue.put(Batch(idx, items, Position(key, begin, lineno - 1)))
                        self.status = "strict"
                        self.say(f"{name}:{lineno}: stopping (--strict)")
                        return False
                    items.append(Item(lineno, offset, ev))
                    nbytes += len(raw)
                    if len(items) >= batch_size or nbytes >= st.batch_bytes:
                        await queue.put(Batch(idx, items, Position(key, offset, lineno)))
                        items, nbytes, queued = [], 0, lineno
                await asyncio.sleep(0)  # let the sender, signals and the progress bar run
            if lineno > queued and not self.stop.is_set():
                await queue.put(Batch(idx, items, Position(key, offset, lineno)))
            inp.done_bytes = inp.size
            if src.truncated and not self.stop.is_set():
                self.say(f"{inp.path} was truncated or replaced: reading the new file from its start")
                src.close()
                start = None
                inp.size = os.path.getsize(inp.path) if os.path.exists(inp.path) else 0
                continue
            return True

    async def _consume(self, queue: asyncio.Queue[Batch | None], producer: asyncio.Future[None]) -> None:
        """Deliver batches in order until the end, a stop request, or a failure."""
        while True:
            get: asyncio.Future[Batch | None] = asyncio.ensure_future(queue.get())
            waiting: list[asyncio.Future[Any]] = [get, producer]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                producer.result()  # the producer failed: raise its error
                return
            batch = get.result()
            if batch is None:
                return
            if self.stop.is_set():
                raise Stopped
            await self._deliver_batch(batch)
            self._positions[batch.input] = batch.end
            self._save_all()

    async def _deliver_batch(self, batch: Batch) -> None:
        if not batch.items:
            return
        if self.settings.mode != "sync":
            await self._deliver(batch.items, batch.input)
            return
        for i, it in enumerate(batch.items):
            if i and self.stop.is_set():
                raise Stopped
            await self._deliver([it], batch.input)
            self._positions[batch.input] = Position(batch.end.key, it.end, it.lineno)
            self._save_all()

    async def _deliver(self, items: Sequence[Item], idx: int) -> None:
        """Send one unit until the service gives a verdict on every event of it (same events, same ids).

        When the service says which lines it did not take (Redis failed
        mid-batch: lines unknown or unwritten), only those are sent again.
        """
        attempt = 0
        failing_since: float | None = None
        while True:
            try:
                outcome = await self.transport.send(items)
                if outcome.resend:
                    taken = len(items) - len(outcome.resend)
                    self._account(items, outcome, idx, sent=taken)
                    items = outcome.resend
                    raise Retry(f"{outcome.reason}; resending those {len(items)} lines", outcome.after)
            except TooLarge as exc:
                if len(items) == 1:
                    self._account(items, Outcome(rejected=[(items[0].lineno, f"too large: {exc}")]), idx)
                    return
                half = len(items) // 2
                await self._deliver(items[:half], idx)
                await self._deliver(items[half:], idx)
                return
            except Retry as exc:
                now = time.monotonic()
                failing_since = failing_since or now
                if self.settings.retry_for_s and now - failing_since >= self.settings.retry_for_s:
                    raise GaveUp(f"{exc.reason} (failing for {now - failing_since:.0f} s)") from None
                delay = self._backoff(attempt, exc.after)
                attempt += 1
                self.stats.retries += 1
                self.retrying = True
                if attempt & (attempt - 1) == 0:  # attempts 1, 2, 4, 8, ...: say so without flooding
                    self.say(f"{exc.reason}; retry {attempt} in {delay:.1f} s")
                if self.stop.is_set():
                    raise Stopped from None
                try:
                    await asyncio.wait_for(self.stop.wait(), timeout=delay)
                    raise Stopped
                except TimeoutError:
                    continue
            if attempt:
                self.retrying = False
                self.say(f"delivered after {attempt} retr{'y' if attempt == 1 else 'ies'}")
            self._account(items, outcome, idx)
            return

    def _backoff(self, attempt: int, after: float | None) -> float:
        """Exponential backoff with jitter; a server's Retry-After is honoured (plus a little jitter)."""
        if after is not None:
            return float(min(after, self.settings.max_backoff_s) * random.uniform(1.0, 1.2))
        return float(min(self.settings.max_backoff_s, 0.1 * 2**attempt) * random.uniform(0.5, 1.0))

    def _account(self, items: Sequence[Item], outcome: Outcome, idx: int, sent: int | None = None) -> None:
        s = self.stats
        s.sent += len(items) if sent is None else sent
        s.accepted += outcome.accepted
        s.rejected += len(outcome.rejected)
        name = "stdin" if self.inputs[idx].path == "-" else self.inputs[idx].path
        for lineno, error in outcome.rejected:
            self.reporter.line("rejected", f"{name}:{lineno}", f"rejected by the service: {error}")
        for note in outcome.notes:
            self.reporter.line("note", name, note)
        for result in outcome.results:
            self._print_result(result)

    def _print_result(self, r: dict[str, Any]) -> None:
        """--sync: print when an individual's score rises above its previous maximum (the seed's rule)."""
        score = r.get("score")
        if not isinstance(score, (int, float)):
            return
        key = (r.get("org"), r.get("source"), r.get("pop"), r.get("id"))
        if score <= self._best.get(key, float("-inf")):
            return
        self._best[key] = score
        z = r.get("zscore")
        if self.settings.min_zscore is not None and not (isinstance(z, (int, float)) and z >= self.settings.min_zscore):
            return
        self.progress.clear()
        self._emit(orjson.dumps(r) + b"\n")

    def _emit(self, data: bytes) -> None:
        """Write to stdout; when its reader went away (``| head``), stop the run cleanly."""
        if self._out_closed:
            return
        try:
            self.out.write(data)
            self.out.flush()
        except (OSError, ValueError):
            self._out_closed = True
            if not self.stop.is_set():
                self.status, self._signum = "interrupted", int(signal.SIGPIPE)
                self.stop.set()
                self.say("stdout closed: stopping after the batch in flight")

    def _save_all(self, force: bool = False) -> None:
        """Write changed positions, at most every ``save_every_s`` unless ``force``."""
        now = time.monotonic()
        if not force and now - self._last_save < self.settings.save_every_s:
            return
        self._last_save = now
        for idx, pos in self._positions.items():
            inp = self.inputs[idx]
            if inp.state is None or self._saved.get(idx) == pos:
                continue
            try:
                inp.state.save(inp.path, pos, self.target)
            except OSError as exc:
                self.say(f"binormal feed: cannot save the state to {inp.state.path}: {exc}")
                continue
            self._saved[idx] = pos

    async def _tick(self) -> None:
        """Redraw the progress bar until cancelled."""
        while True:
            self.progress.draw(self.fraction(), self.retrying)
            await asyncio.sleep(0.25)

    def _summary(self) -> None:
        elapsed = time.monotonic() - self.started
        positions = {self.inputs[i].path: (p.offset, p.line) for i, p in self._positions.items()}
        doc = summary(self.stats, elapsed, self.status, self.settings.mode, [i.path for i in self.inputs], positions)
        if self.settings.json:
            self._emit(orjson.dumps(doc) + b"\n")
            return
        self.say(summary_text(doc, elapsed))


def feed(settings: FeedSettings) -> int:
    """Run ``binormal feed`` with ``settings``; returns the exit code."""
    return asyncio.run(Feeder(settings).run())
