"""Helpers for the tests of ``binormal.client``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from binormal import client as bc


class Watching(bc.AsyncClient):
    """An AsyncClient that records each try's outcome, and can hold one try until told to go on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outcomes: list[str] = []
        self.hold_after: int | None = None  # hold the try after this many until `resume` is set
        self.held = asyncio.Event()
        self.resume = asyncio.Event()

    async def post_events(self, lines: Sequence[bytes]) -> bc.EventsReply:
        """:meth:`AsyncClient.post_events`, recorded in :attr:`outcomes` (``transient: ...`` or ``reply ...``)."""
        if self.hold_after is not None and len(self.outcomes) == self.hold_after:
            self.held.set()
            await self.resume.wait()
        try:
            reply = await super().post_events(lines)
        except bc.Transient as exc:
            self.outcomes.append(f"transient: {exc.reason}")
            raise
        resend = f", resend {len(reply.resend)}" if reply.resend else ""
        self.outcomes.append(f"reply {reply.accepted}/{len(lines)}{resend}")
        return reply
