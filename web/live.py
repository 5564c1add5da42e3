"""Live view: ``GET /`` (the page), static files, ``GET /websocket`` and the broadcast subscriber.

:func:`setup_live` wires everything into an aiohttp application. A cleanup
context owns a Redis client of its own, SUBSCRIBEs to the workers' broadcast
channel (``keys.broadcast_channel()``, NDJSON, <= 500 results per message) and
hands each message to the :class:`~web.hub.Hub`, which fans it out to the
websocket clients through one bounded queue and one writer task per client
(wire format documented in :mod:`web.hub`). A second task follows the alert
streams and pushes each new alert to the clients of its org (:mod:`web.alertfeed`).

Pub/sub keeps nothing and a subscription can die silently (redis-py#2417):
the subscriber PINGs its connection when the channel is idle, treats a missing
answer as a dead link, and reconnects with backoff (``wait_until_up``) and
resubscribes. Results published while it is disconnected are lost to the live
view only; they are counted and stored regardless. It never crashes the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from binormal.common import metrics
from binormal.common.auth import Principal
from binormal.common.config import ConfigError
from binormal.common.connection import TRANSIENT, Client, connect, pubsub_of, wait_until_up
from binormal.common.guard import principal_of, still_valid
from binormal.common.http import ApiError, single_query
from binormal.web.alertfeed import follow_alerts
from binormal.web.hub import Hub
from binormal.web.settings import WebSettings

log = structlog.get_logger("binormal.web.live")

STATIC_DIR = Path(__file__).resolve().parent / "static"
PING_INTERVAL_S = 5.0  # PING the pub/sub connection after this much silence
DEAD_AFTER_S = 3 * PING_INTERVAL_S  # nothing at all (not even PONG) for this long -> reconnect
REVOKE_CHECK_S = 1.0  # an open websocket re-checks its token this often

HUB_KEY = web.AppKey("live_hub", Hub)
LIVE_SETTINGS_KEY = web.AppKey("live_settings", WebSettings)
SUBSCRIBER_KEY = web.AppKey[asyncio.Task[None]]("live_subscriber")
ALERT_FEED_KEY = web.AppKey[asyncio.Task[None]]("live_alert_feed")
SOCKETS_KEY = web.AppKey[set[web.WebSocketResponse]]("live_sockets")
# Close tasks of sockets whose writer failed: the event loop keeps only weak references to
# tasks, so the app holds them until they are done (and awaits them on shutdown).
CLOSING_KEY = web.AppKey[set[asyncio.Task[None]]]("live_closing")


def setup_live(app: web.Application, settings: WebSettings) -> None:
    """Register ``/``, ``/static/``, ``/websocket`` and the broadcast subscriber on ``app``."""
    app[HUB_KEY] = Hub(settings.ws_queue, settings.ws_max_fps)
    app[LIVE_SETTINGS_KEY] = settings
    app[SOCKETS_KEY] = set()
    app[CLOSING_KEY] = set()
    app.router.add_get("/", index)
    app.router.add_get("/websocket", websocket)
    app.router.add_static("/static/", STATIC_DIR, append_version=True)
    app.cleanup_ctx.append(_live_ctx)
    app.on_shutdown.append(_close_websockets)


async def index(request: web.Request) -> web.StreamResponse:
    """The live page (no caching: it changes with deployments)."""
    resp = web.FileResponse(STATIC_DIR / "index.html")
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


async def websocket(request: web.Request) -> web.StreamResponse:
    """Stream results to one browser: frames of newline-delimited JSON (see :mod:`web.hub`).

    ``?stats=1`` adds the hello/stats control lines (drop counts) to the stream.
    Past ``max_websockets`` open clients the answer is ``503`` JSON, before the upgrade.
    """
    app = request.app
    hub = app[HUB_KEY]
    settings = app[LIVE_SETTINGS_KEY]
    sockets = app[SOCKETS_KEY]
    stats = single_query(request, "stats")
    if len(sockets) >= settings.max_websockets:
        metrics.HTTP_REFUSED.labels("websockets").inc()
        raise ApiError(
            503,
            f"too many websocket clients (limit {settings.max_websockets}); retry later",
            None,
            {"Retry-After": "1"},
        )
    ws = web.WebSocketResponse(heartbeat=settings.ws_heartbeat_s, max_msg_size=4096)
    if not ws.can_prepare(request).ok:
        raise ApiError(400, "not a websocket upgrade request (Connection: Upgrade, Upgrade: websocket)", "Upgrade")
    sockets.add(ws)  # before the await: concurrent upgrades cannot overshoot the cap
    try:
        await ws.prepare(request)
    except BaseException:
        sockets.discard(ws)
        raise
    # Control lines (hello, stats) only for clients that ask: the seed's page gets results only.
    principal = principal_of(request)
    client = hub.register(control=stats == "1", orgs=principal.orgs if principal else None)
    writer = asyncio.create_task(hub.run_writer(client, ws.send_str), name=f"ws-writer-{client.id}")
    closing = app[CLOSING_KEY]
    writer.add_done_callback(lambda t: _writer_done(t, ws, closing))
    watch = asyncio.create_task(_close_when_revoked(request, ws, principal)) if principal else None
    try:
        # The page sends nothing we need; reading keeps close/pong handling alive.
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                break
    finally:
        hub.unregister(client)
        sockets.discard(ws)
        writer.cancel()
        if watch is not None:
            watch.cancel()
        # the writer's failure was logged by _writer_done
        await asyncio.gather(writer, *([watch] if watch is not None else []), return_exceptions=True)
    return ws


async def _close_when_revoked(request: web.Request, ws: web.WebSocketResponse, principal: Principal) -> None:
    """Close the socket (1008) once its token is revoked or changed in the tokens file."""
    while not ws.closed:
        await asyncio.sleep(REVOKE_CHECK_S)
        if not still_valid(request, principal):
            log.info("ws_token_revoked", name=principal.name)
            with contextlib.suppress(*TRANSIENT, RuntimeError):
                await asyncio.wait_for(ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"token revoked"), 2.0)
            return


def _writer_done(task: asyncio.Task[None], ws: web.WebSocketResponse, closing: set[asyncio.Task[None]]) -> None:
    """A writer that failed (peer gone) closes its socket so the reader ends too (the task kept in ``closing``)."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.info("ws_writer_ended", error=repr(exc))
        if not ws.closed:
            close = asyncio.create_task(_close_quietly(ws), name="ws-close")
            closing.add(close)
            close.add_done_callback(closing.discard)


async def _close_quietly(ws: web.WebSocketResponse) -> None:
    with contextlib.suppress(*TRANSIENT, RuntimeError):
        await asyncio.wait_for(ws.close(), timeout=2.0)


async def _close_websockets(app: web.Application) -> None:
    """On shutdown tell every browser we are going (it reconnects with backoff)."""
    sockets = app[SOCKETS_KEY]
    closing: set[asyncio.Task[None]] = app[CLOSING_KEY]  # closes already started by failed writers
    await asyncio.gather(*(_close_quietly(ws) for ws in tuple(sockets)), *tuple(closing), return_exceptions=True)


async def _live_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the broadcast subscriber and the alert feed (web/alertfeed.py) for the app's lifetime."""
    stop = asyncio.Event()
    settings, hub = app[LIVE_SETTINGS_KEY], app[HUB_KEY]
    task = asyncio.create_task(subscribe_forever(settings, hub, stop), name="live-subscriber")
    alerts = asyncio.create_task(follow_alerts(settings, hub, stop), name="live-alerts")
    app[SUBSCRIBER_KEY] = task
    app[ALERT_FEED_KEY] = alerts
    yield
    stop.set()
    for t in (task, alerts):
        t.cancel()
    for t in (task, alerts):
        with contextlib.suppress(asyncio.CancelledError):
            await t


async def subscribe_forever(settings: WebSettings, hub: Hub, stop: asyncio.Event) -> None:
    """Feed ``hub`` from the broadcast channel until ``stop``; reconnect on any Redis failure."""
    try:
        found = await connect(settings.redis_url, cluster=settings.redis_cluster, stop=stop, max_connections=2)
    except ConfigError as exc:  # the web tier's handle logs and reports it too (/readyz)
        log.error("live_subscriber_not_started", error=str(exc))
        return
    if found is None:
        return
    client: Client = found
    channel = settings.keys.broadcast_channel()
    try:
        while not stop.is_set():
            if not await wait_until_up(client, stop):
                break
            try:
                await _listen(client, channel, hub, stop)
            except TRANSIENT as exc:
                log.warning("live_subscriber_disconnected", error=f"{type(exc).__name__}: {exc}")
                # Back off briefly before the wait_until_up loop takes over.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=0.2)
    finally:
        with contextlib.suppress(*TRANSIENT):
            await client.aclose()


async def _listen(client: Client, channel: str, hub: Hub, stop: asyncio.Event) -> None:
    """One subscription's life: deliver messages, PING when idle, raise when the link is dead."""
    pubsub = pubsub_of(client, ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(channel)
        log.info("live_subscribed", channel=channel)
        last_heard = time.monotonic()
        last_ping = last_heard
        while not stop.is_set():
            msg = await pubsub.get_message(timeout=1.0)
            now = time.monotonic()
            if msg is not None:
                last_heard = now
                if msg.get("type") == "message":
                    data = msg["data"]
                    hub.publish(data if isinstance(data, bytes) else str(data).encode())
                continue
            if now - last_heard > DEAD_AFTER_S:
                raise ConnectionError(f"no reply on the pub/sub connection for {DEAD_AFTER_S:.0f} s")
            if now - last_ping >= PING_INTERVAL_S:
                # In subscribed mode PING is answered with a "pong" message.
                await pubsub.ping()
                last_ping = now
    finally:
        with contextlib.suppress(*TRANSIENT, RuntimeError):
            await asyncio.wait_for(pubsub.aclose(), timeout=2.0)  # type: ignore[no-untyped-call]
