"""Running ``binormal feed`` in tests: input files, the feeder as a child process, a service to feed."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from binormal.common.keys import Keyspace
from binormal.common.schema import Event
from tests.support.events import counts_from_events
from tests.support.http import combined_app, ingest_settings, serving, web_settings
from tests.support.redis_state import check_counters, drained
from tests.support.workers import binormal_command

# ---------------------------------------------------------------- inputs


def event_line(e: Event) -> bytes:
    """An NDJSON line that is directly an event."""
    return orjson.dumps({"org": e.org, "source": e.source, "pop": e.pop, "id": e.id, "action": e.action})


def raw_log_line(e: Event, n: int) -> bytes:
    """A web-server-like log line (nested user, extra fields) that needs --map or --transform."""
    return orjson.dumps(
        {"ts": 1_700_000_000 + n, "service": e.source, "group": e.pop, "user": {"name": e.id}, "request": e.action}
    )


def write_lines(path: Path, lines: Sequence[bytes], newline_at_end: bool = True) -> Path:
    """Write NDJSON (gzip when the name ends in .gz)."""
    data = b"\n".join(lines) + (b"\n" if newline_at_end else b"")
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


# ---------------------------------------------------------------- running things


@dataclass
class FeedRun:
    """One finished ``binormal feed`` process."""

    rc: int
    out: str
    err: str

    @property
    def summary(self) -> dict[str, Any]:
        """The ``--json`` summary (last stdout line)."""
        lines = [ln for ln in self.out.splitlines() if ln.strip()]
        assert lines, f"no summary on stdout; stderr:\n{self.err}"
        return dict(orjson.loads(lines[-1]))


async def start_feed(*args: str, stdin: bool = False, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    """Spawn ``binormal feed ARGS`` (no progress bar; stdout/stderr piped)."""
    return await asyncio.create_subprocess_exec(
        *binormal_command(),
        "feed",
        *([] if "--progress" in args else ["--no-progress"]),
        *args,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


async def finish(proc: asyncio.subprocess.Process, timeout: float = 120.0, data: bytes | None = None) -> FeedRun:
    """Wait for a feeder (killed if it overruns) and collect its output."""
    try:
        out, err = await asyncio.wait_for(proc.communicate(data), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"feeder did not finish in {timeout}s; stderr:\n{err.decode()[-3000:]}") from None
    assert proc.returncode is not None
    return FeedRun(proc.returncode, out.decode(), err.decode())


async def feed(*args: str, timeout: float = 120.0, data: bytes | None = None) -> FeedRun:
    """Run ``binormal feed ARGS`` to the end."""
    return await finish(await start_feed(*args, stdin=data is not None), timeout, data)


@contextlib.asynccontextmanager
async def service(
    redis_url: str, prefix: str, port: int = 0, web: dict[str, Any] | None = None, **ingest: Any
) -> AsyncIterator[str]:
    """Web tier + ingest on one app on a loopback port (as ``binormal run`` serves them)."""
    app = combined_app(web_settings(redis_url, prefix, **(web or {})), ingest_settings(redis_url, prefix, **ingest))
    async with serving(app, port) as base:
        yield base


async def counted(client: aioredis.Redis, prefix: str, truth: Sequence[Event], timeout: float = 90.0) -> list[str]:
    """Wait until the streams are drained and the counters equal ``truth``; else the mismatches at the deadline."""
    keys = Keyspace(prefix=prefix, shards=4)
    truth_counts = counts_from_events(truth)
    deadline = time.monotonic() + timeout
    while True:
        if await drained(client, keys):
            problems = await check_counters(client, keys, truth_counts)
            if not problems:
                return []
        else:
            problems = ["streams not drained"]
        if time.monotonic() > deadline:
            return problems[:20]
        await asyncio.sleep(0.2)


def lines_reported(err: str, path: Path) -> set[int]:
    """Line numbers the feeder reported as ``path:N: ...`` on stderr."""
    out = set()
    for ln in err.splitlines():
        if ln.startswith(f"{path}:"):
            num = ln[len(str(path)) + 1 :].split(":", 1)[0]
            if num.isdigit():
                out.add(int(num))
    return out
