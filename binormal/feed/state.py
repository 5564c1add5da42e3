"""Where ``binormal feed`` stopped: per-input position files and event ids.

Resuming safely rests on two things:

* every event gets an ``event_id`` computed from the input alone (a key for the
  file, the byte offset of the line, a digest of the line), so a batch sent
  again after a crash or a retry carries the same ids, and the worker's
  idempotency marker (apply.lua ``SET NX`` on the id, kept for
  ``BINORMAL_IDEMPOTENCY_TTL_S``, 1 h by default) makes the copy harmless;
* the position after the last line the service accepted (or that was
  deliberately skipped) is saved atomically: write a temporary file, fsync it,
  ``os.replace`` it over the old one, fsync the directory. A crash leaves
  either the old or the new state, never half of one.

The file key is a digest of the input's first line, so it survives renames,
compression (``log.json`` and ``log.json.gz`` get the same ids) and growth.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

STATE_VERSION = 1
STATE_SUFFIX = ".feedstate.json"


class StateError(RuntimeError):
    """A state file that cannot be read, written, or does not match its input."""


def file_key(first_line: bytes) -> str:
    """Key of an input: 16 hex digits of BLAKE2b over its first line (without EOL)."""
    return hashlib.blake2b(b"binormal-feed-v1\0" + first_line.rstrip(b"\r\n"), digest_size=8).hexdigest()


def event_id(key: str, offset: int, line: bytes) -> str:
    """Deterministic id of the line starting at byte ``offset`` of input ``key``.

    The digest of the line itself makes two different files that happen to
    share a first line still give different ids for different lines.
    """
    digest = hashlib.blake2b(line, digest_size=6).hexdigest()
    return f"f{key}.{offset}.{digest}"


@dataclass(frozen=True)
class Position:
    """Resume point: ``offset`` is the byte after the last finished line, ``line`` its number."""

    key: str
    offset: int
    line: int


def default_state_path(input_path: str) -> Path:
    """``<input>.feedstate.json`` next to the input."""
    return Path(input_path + STATE_SUFFIX)


class StateFile:
    """One JSON state file holding the position of one or more inputs (keyed by absolute path)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._inputs: dict[str, dict[str, Any]] = {}
        self._loaded = False

    def check_writable(self) -> None:
        """Fail early (before anything is sent) when the state cannot be saved."""
        directory = self.path.parent if str(self.path.parent) else Path(".")
        if not directory.is_dir():
            raise StateError(f"state directory {directory} does not exist (use --state PATH)")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise StateError(f"cannot write the state file in {directory} (use --state PATH)")
        if self.path.exists() and not os.access(self.path, os.R_OK):
            raise StateError(f"cannot read the state file {self.path}")

    def load(self) -> None:
        """Read the file if it exists; a missing file is an empty state."""
        self._loaded = True
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StateError(f"cannot read the state file {self.path}: {exc}") from exc
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise StateError(f"state file {self.path} is not JSON ({exc}); delete it or use --from-start") from exc
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION or not isinstance(doc.get("inputs"), dict):
            raise StateError(f"state file {self.path} has an unknown format; delete it or use --from-start")
        self._inputs = doc["inputs"]

    def get(self, input_path: str) -> Position | None:
        """Saved position of ``input_path`` (absolute path is the key), if any."""
        if not self._loaded:
            self.load()
        entry = self._inputs.get(os.path.abspath(input_path))
        if entry is None:
            return None
        try:
            return Position(key=str(entry["key"]), offset=int(entry["offset"]), line=int(entry["line"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"state file {self.path}: bad entry for {input_path}: {exc}") from exc

    def target_of(self, input_path: str) -> str | None:
        """The service the saved position was fed to (None for state files without one)."""
        if not self._loaded:
            self.load()
        entry = self._inputs.get(os.path.abspath(input_path))
        return None if entry is None or "target" not in entry else str(entry["target"])

    def forget(self, input_path: str) -> None:
        """Drop an input's entry (``--from-start``); saved on the next :meth:`save`."""
        if not self._loaded:
            self.load()
        self._inputs.pop(os.path.abspath(input_path), None)

    def save(self, input_path: str, pos: Position, target: str = "") -> None:
        """Record ``pos`` (fed to ``target``) for ``input_path``; atomic write (temp, fsync, replace)."""
        if not self._loaded:
            self.load()
        self._inputs[os.path.abspath(input_path)] = {
            "key": pos.key,
            "offset": pos.offset,
            "line": pos.line,
            "target": target,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        data = orjson.dumps({"version": STATE_VERSION, "inputs": self._inputs}, option=orjson.OPT_INDENT_2)
        directory = str(self.path.parent) or "."
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        # The rename itself is durable only once the directory entry is on disk.
        try:
            dfd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dfd)
        except OSError:
            pass
        finally:
            os.close(dfd)
