"""Starting ``binormal`` services for the benchmarks and waiting until they answer."""

from __future__ import annotations

import aiohttp

from tests.support.http import wait_ready as wait_service_ready
from tests.support.processes import spawn
from tests.support.workers import binormal_command as binormal

__all__ = ["binormal", "spawn", "wait_service"]  # spawn and binormal are the tests' own (tests/support)


async def wait_service(base: str, timeout: float = 60.0) -> None:
    """Poll ``GET base/readyz`` until it answers 200 (Redis, group and worker heartbeat seen)."""
    async with aiohttp.ClientSession() as session:
        await wait_service_ready(session, base, timeout)
