"""What ``binormal feed`` tells its user: per-line problems, the progress bar, the end-of-run summary.

Nothing here knows the feeder: the bar and the summary are given the counters
(:class:`Stats`) and plain numbers.
"""

from __future__ import annotations

import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import IO, Any


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


class Progress:
    """One status line on a terminal (stderr), redrawn a few times a second; messages go above it."""

    def __init__(self, stream: IO[str], enabled: bool, stats: Stats, started: float) -> None:
        self.stream = stream
        self.enabled = enabled
        self.stats = stats
        self.started = started  # time.monotonic() at the start of the run
        self.closed = False
        self._drawn = False

    def write(self, text: str) -> None:
        """A message (ends with a newline), above the bar; a closed stderr is ignored."""
        self.clear()
        self._put(text)

    def _put(self, text: str) -> None:
        if self.closed:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # BrokenPipeError, or the stream was closed
            self.closed = True
            self.enabled = False

    def clear(self) -> None:
        """Erase the bar (before other output on the terminal)."""
        if self._drawn:
            self._drawn = False
            self._put("\r\x1b[2K")

    def draw(self, fraction: float | None, retrying: bool) -> None:
        """Redraw the bar: ``fraction`` of the input done (None: unknown), ``retrying`` a unit."""
        if not self.enabled:
            return
        s, elapsed = self.stats, max(time.monotonic() - self.started, 1e-6)
        rate = s.read / elapsed
        text = f"read {s.read:,}  sent {s.sent:,}  rejected {s.rejected:,}  {rate:,.0f} lines/s"
        if fraction is not None:
            eta = (elapsed / fraction - elapsed) if fraction > 0 else 0.0
            width = 20
            filled = int(width * fraction)
            text = f"[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:5.1f}%  {text}  ETA {_hms(eta)}"
        if retrying:
            text += "  (retrying)"
        columns = shutil.get_terminal_size((100, 20)).columns
        self._put("\r\x1b[2K" + text[: max(columns - 1, 10)])
        self._drawn = not self.closed


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def summary(
    stats: Stats,
    elapsed: float,
    status: str,
    mode: str,
    files: list[str],
    positions: dict[str, tuple[int, int]],
) -> dict[str, Any]:
    """The ``--json`` summary: the counters, rate, status, and each input's (offset, line) reached."""
    return {
        **asdict(stats),
        "seconds": round(elapsed, 3),
        "rate": round(stats.read / elapsed, 1) if elapsed > 0 else 0.0,
        "status": status,
        "mode": mode,
        "files": files,
        "positions": {path: {"offset": offset, "line": line} for path, (offset, line) in positions.items()},
    }


def summary_text(doc: dict[str, Any], elapsed: float) -> str:
    """The one-line summary on stderr (without ``--json``) of a :func:`summary` document."""
    return (
        f"{doc['status']}: {doc['read']:,} lines read in {elapsed:.1f} s ({doc['rate']:,.0f}/s); "
        f"{doc['sent']:,} sent, {doc['accepted']:,} accepted, {doc['rejected']:,} rejected, "
        f"{doc['transform_errors']:,} transform errors, {doc['bad_json']:,} bad JSON, {doc['skipped']:,} skipped"
        + (f", {doc['retries']:,} retries" if doc["retries"] else "")
    )
