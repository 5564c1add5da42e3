"""``binormal score --jobs J``: the scopes of one file shared among J processes.

Scopes do not interact: a scope's counts, snapshots and final rows depend only on its own events
in file order. So J processes (this one and J - 1 forked copies) each read and parse the whole
file, and each counts, scores and renders only every J-th scope, in the order valid events first
name them (:class:`binormal.offline.Engine` with ``part=(me, J)``). Reading and parsing is done J
times, counting and scoring once: on a file of many scopes the wall time is about one parse plus
1/J of the rest, and the results are byte for byte those of one process. A file of one scope
gains nothing.

Each copy writes its rendered scopes (:data:`Block`) and its bad-line reports to anonymous
temporary files; this process merges them: the scopes in their ordinals' order, the reports in
line order (each line is reported by exactly one engine). A copy that fails makes the whole
command fail: nothing is printed from a partial result.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import signal
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

import orjson

from binormal.offline import Engine, Options, PrefixConflict

Block = tuple[int, str, str, str, str]  # (ordinal, org, source, pop, rendered text)
Render = Callable[[Engine], list[Block]]
UNREADABLE = 2  # a copy's exit status when it could not read the file (this process says so)
CONFLICT = 3  # a copy's exit status on a PrefixConflict (this process runs the split again)
MAX_JOBS = 8  # each process parses the whole file: past a few, more cost CPU and save little wall time


class SplitError(RuntimeError):
    """A forked scoring process failed; its own message went to stderr."""


def usable_jobs(requested: int | None) -> int:
    """``--jobs``: as given, else one per usable CPU (at most :data:`MAX_JOBS`)."""
    if requested is not None:
        return requested
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_JOBS))


def can_split(path: str, stream: IO[bytes]) -> bool:
    """Whether forked copies can read ``path`` again themselves: a regular file (not stdin, a pipe or a
    device), ``os.fork`` exists, and no other thread runs (a fork copies only the calling thread)."""
    threading = sys.modules.get("threading")  # never imported: no thread was started from Python
    if path == "-" or not hasattr(os, "fork") or (threading is not None and threading.active_count() > 1):
        return False
    try:
        raw: Any = getattr(stream, "fileobj", None) or stream  # the .gz file's underlying file
        return stat.S_ISREG(os.fstat(raw.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False


class ReportLog:
    """A bad-line writer for :meth:`Engine.feed_lines` that keeps each report, with its line number,
    in a temporary file, for :func:`merged_reports`. Reports start ``line N:`` (``Engine._slow``)."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink

    def write(self, text: str) -> None:
        number = int(text[5 : text.index(":")])
        self.sink.write(orjson.dumps([number, text]) + b"\n")


def merged_reports(logs: Sequence[IO[bytes]]) -> Iterator[str]:
    """Every engine's reports, in line order (each file is already in line order)."""

    def records(log: IO[bytes]) -> Iterator[tuple[int, str]]:
        log.flush()
        log.seek(0)
        for raw in log:
            number, text = orjson.loads(raw)
            yield number, text

    for _, text in heapq.merge(*(records(log) for log in logs), key=lambda r: r[0]):
        yield text


def split_blocks(
    path: str,
    stream: IO[bytes],
    opts: Options,
    jobs: int,
    render: Render,
    reopen: Callable[[str], IO[bytes]],
    errors: Any,
    tick: Callable[[int], None] | None = None,
    by_prefix: bool = True,
) -> list[Block]:
    """Score ``path`` in ``jobs`` processes (this one reads ``stream`` and calls ``tick`` as
    :meth:`Engine.feed` does, the copies ``reopen(path)``); every scope's block in ordinal order.
    Bad-line reports go to ``errors`` (in line order) at the end.

    ``by_prefix``: the engines skip each other's lines by their prefix; when a line's prefix and
    fields name different scopes (:class:`PrefixConflict`, a repeated key) everything is done
    again without."""
    import tempfile  # here, not at import: ~5 ms of every command's start-up

    logs = [tempfile.TemporaryFile() for _ in range(jobs)]
    outputs = [tempfile.TemporaryFile() for _ in range(jobs - 1)]
    children: list[int] = []
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        for me in range(1, jobs):
            pid = os.fork()
            if pid == 0:  # the copy: never returns
                _child(path, Engine(opts, (me, jobs), by_prefix), render, reopen, ReportLog(logs[me]), outputs[me - 1])
            children.append(pid)
        engine = Engine(opts, (0, jobs), by_prefix)
        engine.feed(stream, ReportLog(logs[0]), tick)
        blocks = render(engine)
        codes = []
        while children:
            _, status = os.waitpid(children[-1], 0)
            children.pop()
            codes.append(os.waitstatus_to_exitcode(status))
        if any(code == CONFLICT for code in codes):
            raise PrefixConflict("a scoring process met a line whose prefix names another scope")
        if any(code == UNREADABLE for code in codes):
            raise SplitError(f"a scoring process could not read {path}")
        if any(codes):
            raise SplitError(f"a scoring process failed (exit status {max(codes, key=abs)})")
        for output in outputs:
            output.seek(0)
            blocks.extend(tuple(b) for b in orjson.loads(output.read() or b"[]"))
        for text in merged_reports(logs):
            errors.write(text)
        blocks.sort(key=lambda b: b[0])
        return blocks
    except PrefixConflict:
        if not by_prefix:  # cannot be: without skipping no engine checks a prefix
            raise
    finally:
        for pid in children:  # this process failed or was interrupted: stop the copies
            with contextlib.suppress(ChildProcessError, ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        for f in logs + outputs:
            f.close()
    stream.seek(0)  # a PrefixConflict: the copies are stopped and their files closed, and all is read again
    return split_blocks(path, stream, opts, jobs, render, reopen, errors, tick, by_prefix=False)


def _child(
    path: str,
    engine: Engine,
    render: Render,
    reopen: Callable[[str], IO[bytes]],
    log: ReportLog,
    output: IO[bytes],
) -> None:
    """A forked copy: count its scopes of the file, write their blocks, and leave with ``os._exit``
    (never through the parent's stack: no ``finally`` of it, no flush of its buffers)."""
    code = 1
    try:
        with reopen(path) as stream:
            engine.feed(stream, log)
        output.write(orjson.dumps(render(engine)))
        output.flush()
        log.sink.flush()
        code = 0
    except (OSError, EOFError):  # the file went away or is a truncated .gz: the parent reports it once
        code = UNREADABLE
    except PrefixConflict:
        code = CONFLICT
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent stops too
        code = 130
    except Exception:  # noqa: BLE001 (any failure is reported here; the exit status fails the command)
        import traceback

        sys.stderr.write(f"binormal score: scoring process {engine.me} failed:\n{traceback.format_exc()}")
        sys.stderr.flush()
    finally:
        os._exit(code)
