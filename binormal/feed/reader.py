"""Inputs of ``binormal feed``: NDJSON chunks from files, .gz, stdin and growing files (``--follow``).

Reading is done in chunks (``read1``) split on ``\\n`` by hand, so the byte
offset of every line is known exactly (it is part of the line's event id and
of the saved resume position). A line is only ever taken once it is complete:
when following a growing file, a last line without its newline waits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import io
import os
import sys
import threading
from typing import IO, Protocol, runtime_checkable

CHUNK = 1 << 20  # bytes per read


class InputError(RuntimeError):
    """An input that cannot be opened or resumed."""


@runtime_checkable
class Source(Protocol):
    """Where one input's bytes come from, in chunks; the feeder splits them into lines."""

    @property
    def start(self) -> int:
        """Byte offset of the first chunk (the resume point, or just past a late newline)."""
        ...

    @property
    def truncated(self) -> bool:
        """Following: the file was truncated or replaced (read it again from its start)."""
        ...

    async def read(self, stop: asyncio.Event) -> bytes | None:
        """Next chunk; ``b""`` at the end; None when nothing new came yet (wait :meth:`idle`, then read again)."""
        ...

    async def idle(self, stop: asyncio.Event) -> None:
        """Wait before reading again after :meth:`read` returned None."""
        ...

    def progress(self) -> int:
        """Bytes of the stored input read so far (for the ETA)."""
        ...

    def close(self) -> None:
        """Release the input."""
        ...


def open_source(path: str, offset: int, follow: bool) -> Source:
    """The source of one FILE argument (``-`` is stdin; must run inside the event loop)."""
    if path == "-":
        return StdinChunks(asyncio.get_running_loop())
    return FileChunks(path, offset, follow)


def open_binary(path: str) -> io.BufferedIOBase:
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
    start = 0
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
            except (RuntimeError, concurrent.futures.CancelledError):
                # The loop closed, or ended and cancelled the put (a concurrent.futures error, not asyncio's).
                return
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
