"""A real webhook receiver on a free loopback port (aiohttp), for the alert tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Received:
    """One request the receiver got: its body and headers."""

    body: bytes
    headers: dict[str, str]


@dataclass
class Receiver:
    """What the receiver got and how it answers: ``fail_first`` 500s, then 200 (``hang``: never answers)."""

    fail_first: int = 0
    hang: bool = False
    got: list[Received] = field(default_factory=list)  # requests answered 200
    attempts: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.attempts += 1
        if self.hang:
            await asyncio.sleep(3600)  # the sender's timeout cuts it
        if self.attempts <= self.fail_first:
            return web.Response(status=500, text="down")
        self.got.append(Received(body, dict(request.headers)))
        return web.Response(status=200, text="ok")


@contextlib.asynccontextmanager
async def receiving(receiver: Receiver) -> AsyncIterator[Receiver]:
    """Serve ``receiver`` on 127.0.0.1 (free port) at ``/hook``; its ``url`` set."""
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield receiver
    finally:
        await runner.cleanup()
