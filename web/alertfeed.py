"""Alerts in the live view: the web tier follows the shards' alert streams and pushes each new alert
to the websocket clients allowed to see its org (docs/live.md, docs/alerts.md).

The workers XADD alerts to one stream per shard (``keys.alert_stream(s)``, alert.lua). One task per
web process, with a Redis client of its own (the live view also runs without the app's handle),
reads them every ``POLL_S``: one non-blocking ``XREAD COUNT`` per stream, each naming a single key,
sent as one non-transactional pipeline. On Redis Cluster the streams hash to different slots, so a
multi-stream XREAD would be refused (CROSSSLOT); redis-py's cluster pipeline sends each read to
the node of its slot. Cost: one round trip per ``POLL_S`` per web process while a viewer with
``stats=1`` is connected (nothing per browser), one per ``IDLE_POLL_S`` while none is; the first
viewer to connect wakes it at once (what fired meanwhile is pushed then: the page drops alerts it
already holds from ``/api/alerts``).

It starts at each stream's newest entry (what came before is ``GET /api/alerts``'s, which the page
reads on load), keeps its positions across a Redis outage (alerts fired meanwhile arrive late, at
most ``READ_COUNT`` per stream per poll) and hands each alert to :meth:`web.hub.Hub.publish_alert`
as the line ``{"type":"alert","alert":{...}}``: the alert as ``/api/alerts`` lists it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import structlog
from redis.exceptions import RedisError

from binormal.common.config import ConfigError
from binormal.common.connection import TRANSIENT, Client, connect, wait_until_up
from binormal.web.hub import Hub
from binormal.web.settings import WebSettings

log = structlog.get_logger("binormal.web.alertfeed")

POLL_S = 0.25  # how often the alert streams are read (an alert reaches the page within about this)
IDLE_POLL_S = 2.0  # ... while no viewer is connected (the positions still move on)
READ_COUNT = 100  # entries read per stream per poll (a burst is spread over the next polls)
START = b"0-0"  # position in a stream that has no entry yet: everything added later is new


def alert_of(entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> tuple[str, dict[str, Any]] | None:
    """``(org, alert)`` of one alert stream entry, ``alert_id`` and ``at`` (ms) added; None if unreadable."""
    try:
        alert = orjson.loads(fields.get(b"alert", b""))
        org, _source, _pop = alert["scope"].split("/")
        eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        ms, _, _seq = eid.partition("-")
        alert["alert_id"] = eid
        alert["at"] = int(ms)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
    return str(org), alert


async def newest_ids(client: Client, streams: Sequence[str]) -> list[bytes]:
    """The id of each stream's newest entry (``START`` for an empty or missing stream)."""
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.xrevrange(stream, "+", "-", count=1)
    return [entries[0][0] if entries else START for entries in await pipe.execute()]


async def poll_once(client: Client, streams: Sequence[str], positions: list[bytes], hub: Hub) -> int:
    """Read what each stream got after its position, push it to ``hub``; the number of alerts pushed."""
    pipe = client.pipeline(transaction=False)
    for stream, pos in zip(streams, positions):
        pipe.xread({stream: pos}, count=READ_COUNT)  # one key per command: one slot on a cluster
    pushed = 0
    for k, reply in enumerate(await pipe.execute()):
        for _name, entries in reply or ():  # RESP2: [[stream, [(id, fields), ...]]], or None
            for entry_id, fields in entries:
                positions[k] = entry_id
                got = alert_of(entry_id, fields)
                if got is None:
                    log.warning("alert_entry_unreadable", stream=streams[k], entry=str(entry_id)[:40])
                    continue
                org, alert = got
                hub.publish_alert(orjson.dumps({"type": "alert", "alert": alert}), org)
                pushed += 1
    return pushed


async def pause(stop: asyncio.Event, watched: asyncio.Event) -> None:
    """Wait ``POLL_S`` while someone watches, else ``IDLE_POLL_S`` or until a viewer connects; ``stop`` ends either."""
    waits = [asyncio.ensure_future(stop.wait())]
    if not watched.is_set():
        waits.append(asyncio.ensure_future(watched.wait()))
    try:
        await asyncio.wait(
            waits, timeout=POLL_S if len(waits) == 1 else IDLE_POLL_S, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for task in waits:
            task.cancel()


async def follow_alerts(settings: WebSettings, hub: Hub, stop: asyncio.Event) -> None:
    """Feed ``hub`` with new alerts until ``stop``; wait for Redis and carry on after any failure."""
    try:
        found = await connect(settings.redis_url, cluster=settings.redis_cluster, stop=stop, max_connections=2)
    except ConfigError as exc:  # the web tier's handle logs and reports it too (/readyz)
        log.error("alert_feed_not_started", error=str(exc))
        return
    if found is None:
        return
    client: Client = found
    streams = settings.keys.alert_streams()
    positions: list[bytes] | None = None
    try:
        while not stop.is_set():
            try:
                if positions is None:
                    positions = await newest_ids(client, streams)
                    log.info("alert_feed_started", streams=len(streams))
                await poll_once(client, streams, positions, hub)
                hub.alert_feed_up = True
            except TRANSIENT as exc:
                hub.alert_feed_up = False
                log.warning("alert_feed_disconnected", error=f"{type(exc).__name__}: {exc}")
                if not await wait_until_up(client, stop):
                    break
            except RedisError as exc:  # e.g. WRONGTYPE: another program's value under a stream's name
                log.warning("alert_feed_read_failed", error=str(exc)[:200])
            await pause(stop, hub.watched)
    finally:
        with contextlib.suppress(*TRANSIENT):
            await client.aclose()
