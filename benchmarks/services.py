"""Starting ``binormal`` services for the benchmarks and waiting until they answer."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.support.processes import spawn
from tests.support.workers import binormal_command as binormal

__all__ = ["binormal", "spawn", "wait_ready"]  # spawn and binormal are the tests' own (tests/support)


async def wait_ready(base: str, timeout: float = 60.0) -> None:
    """Poll ``GET base/readyz`` until it answers 200 (Redis, group and worker heartbeat seen)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{base}/readyz", timeout=aiohttp.ClientTimeout(total=2.0)) as r:
                    if r.status == 200:
                        return
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{base} not ready after {timeout}s")
