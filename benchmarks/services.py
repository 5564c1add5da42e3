"""Starting ``binormal`` services for the benchmarks and waiting until they answer."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp


def binormal() -> list[str]:
    """The ``binormal`` console script of this interpreter's environment (or ``-m`` as a fallback)."""
    script = Path(sys.executable).with_name("binormal")
    return [str(script)] if script.exists() else [sys.executable, "-P", "-m", "binormal"]


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``binormal ARGS`` in the background, stdout and stderr appended to ``log``."""
    with open(log, "ab") as fh:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([*binormal(), *args], env=env, stdout=fh, stderr=fh)


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
