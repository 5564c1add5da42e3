"""``binormal score FILE``: offline analysis of an NDJSON log with the in-memory engine."""

from __future__ import annotations

import gzip
import io
import os
import sys
from collections.abc import Iterator
from typing import IO, Any

import orjson

from binormal.common.engine import MemoryEngine
from binormal.common.keys import Scope
from binormal.common.schema import InvalidEvent, parse_json


def open_input(path: str) -> IO[bytes]:
    """``-`` is stdin; a ``.gz`` name is decompressed."""
    if path == "-":
        return sys.stdin.buffer
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def read_events(stream: IO[bytes], errors: IO[str]) -> Iterator[Any]:
    """Yield events from NDJSON lines; report bad lines (with numbers) and carry on."""
    for lineno, raw in enumerate(stream, start=1):
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


def score_file(path: str, top: int, as_json: bool, cap: int, out: IO[str], errors: IO[str]) -> int:
    """Process ``path`` in order; print top outliers per scope (or JSON per individual)."""
    engine = MemoryEngine(cap=cap)
    last: dict[tuple[Scope, str], dict[str, Any]] = {}
    with open_input(path) as stream:
        for event in read_events(stream, errors):
            r = engine.process(event)
            last[(event.scope, event.id)] = r
    if as_json:
        for r in last.values():
            row = {k: r[k] for k in ("org", "source", "pop", "id", "count", "score", "zscore")}
            out.write(orjson.dumps(row).decode() + "\n")
        return 0
    by_scope: dict[Scope, list[dict[str, Any]]] = {}
    for (scope, _), r in last.items():
        by_scope.setdefault(scope, []).append(r)
    for scope in sorted(by_scope, key=lambda s: (s.org, s.source, s.pop)):
        rows = sorted(by_scope[scope], key=lambda r: (-r["zscore"], r["id"]))[:top]
        out.write(f"== org={scope.org} source={scope.source} pop={scope.pop} ({len(by_scope[scope])} individuals)\n")
        out.write(f"{'zscore':>8} {'score':>9} {'count':>7}  id  (top reason)\n")
        for r in rows:
            reason = r["explain"][0] if r["explain"] else None
            why = f"{reason['action']} {reason['kind']} ({reason['bits']} bits)" if reason else ""
            out.write(f"{r['zscore']:>8.3f} {r['score']:>9.3f} {r['count']:>7}  {r['id']}  {why}\n")
    return 0


def main_score(path: str, top: int, as_json: bool, cap: int) -> int:
    """Entry point used by the CLI."""
    out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", write_through=True)
    try:
        return score_file(path, top, as_json, cap, out, sys.stderr)
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
