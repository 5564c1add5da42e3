"""A websocket whose writer failed is closed by a task the app keeps until it is done (web/live.py)."""

from __future__ import annotations

import asyncio
import gc

from aiohttp import web

from binormal.web.live import CLOSING_KEY, _close_websockets, _writer_done


class _SlowClose:
    """Stands in for a ``WebSocketResponse`` whose closing handshake waits on the peer."""

    def __init__(self, done: list[str]) -> None:
        self.closed = False
        self._peer = asyncio.Event()  # held only by this object: nothing outside keeps the close alive
        self._done = done

    async def close(self) -> bool:
        await self._peer.wait()
        self._done.append("closed")
        return True

    def answer(self) -> None:
        self._peer.set()


async def _failed() -> None:
    raise ConnectionResetError("peer gone")


async def test_the_close_task_of_a_failed_writer_is_kept_until_done() -> None:
    """Before, ``asyncio.ensure_future`` kept no reference: only the loop's weak set knew the task."""
    app = web.Application()
    app[CLOSING_KEY] = set()
    done: list[str] = []
    writer = asyncio.ensure_future(_failed())
    await asyncio.gather(writer, return_exceptions=True)
    ws = _SlowClose(done)
    _writer_done(writer, ws, app[CLOSING_KEY])  # type: ignore[arg-type]
    answer = ws.answer
    del ws
    await asyncio.sleep(0)  # the close task starts and waits on the peer
    gc.collect()
    closing = [t for t in asyncio.all_tasks() if "_close_quietly" in repr(t.get_coro())]
    assert closing, "the pending close task was garbage-collected"
    assert app[CLOSING_KEY] == set(closing)
    answer()
    async with asyncio.timeout(5):
        await asyncio.gather(*closing)
    await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    assert done == ["closed"]
    assert not app[CLOSING_KEY]  # discarded once done


async def test_shutdown_awaits_the_pending_close_tasks() -> None:
    """``on_shutdown`` waits for close tasks still in flight instead of leaving them to the loop's end."""
    from binormal.web.live import SOCKETS_KEY

    app = web.Application()
    app[CLOSING_KEY] = set()
    app[SOCKETS_KEY] = set()
    done: list[str] = []
    writer = asyncio.ensure_future(_failed())
    await asyncio.gather(writer, return_exceptions=True)
    ws = _SlowClose(done)
    _writer_done(writer, ws, app[CLOSING_KEY])  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert app[CLOSING_KEY]
    shutdown = asyncio.create_task(_close_websockets(app))
    await asyncio.sleep(0)
    assert not shutdown.done()  # it waits for the pending close
    ws.answer()
    async with asyncio.timeout(5):
        await shutdown
    assert done == ["closed"]
