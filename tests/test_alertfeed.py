"""web/alertfeed.py: alerts pushed to the websocket clients of their org, each alert stream read on its own.

The real web tier (tokens file: viewers limited to one org) on a real socket, websockets over real
HTTP, the private redis-server and the private 3-master cluster (the shards' alert streams live in
different slots there), and a real worker firing an alert through alert.lua.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from binormal.common.alerts import add_alert_rule, parse_alert_rule
from binormal.common.auth import hash_token
from binormal.common.embedded import RedisServer, find_binary, free_port
from binormal.common.keys import Keyspace, Scope
from binormal.web.app import create_app
from binormal.web.hub import ALERT_QUEUE, Hub
from binormal.web.live import ALERT_FEED_KEY, HUB_KEY, setup_live
from binormal.web.settings import WebSettings
from tests.support.backends import both_backends
from tests.support.events import crossing_events
from tests.support.http import serving, web_settings
from tests.support.redis_state import xadd_events
from tests.support.waiting import wait_for
from tests.support.workers import running_worker, worker_settings

pytestmark = pytest.mark.timeout(120)

VIEWERS = {"acme-viewer": "acme", "beta-viewer": "beta", "root": "*"}


def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text("".join(f"{n} viewer {o} sha256:{hash_token('tok-' + n).hex()}\n" for n, o in VIEWERS.items()))
    return path


@contextlib.asynccontextmanager
async def web_tier(redis_url: str, prefix: str, tmp_path: Path) -> AsyncIterator[tuple[str, web.Application]]:
    """The web tier with the viewers' tokens, served until the alert feed knows where each stream ends."""
    app = create_app(web_settings(redis_url, prefix, tokens_file=str(tokens_file(tmp_path))))
    async with serving(app) as base:
        await wait_for(lambda: app[HUB_KEY].alert_feed_up, what="alert feed")
        yield base, app


class Watcher:
    """One websocket client of the live view, collecting the alert lines it gets."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.alerts: list[dict[str, Any]] = []
        self.results = 0

    async def until(self, pred: Any, timeout: float = 15.0) -> None:
        """Read frames until ``pred(self.alerts)``."""
        deadline = time.monotonic() + timeout
        while not pred(self.alerts):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"after {timeout}s the client has these alerts only: {self.alerts}")
            msg = await asyncio.wait_for(self.ws.receive(), left)
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            for line in msg.data.split("\n"):
                obj = orjson.loads(line)
                if obj.get("type") == "alert":
                    self.alerts.append(obj["alert"])
                elif "type" not in obj:
                    self.results += 1


@contextlib.asynccontextmanager
async def watching(
    http: aiohttp.ClientSession, base: str, who: str | None, stats: bool = True
) -> AsyncIterator[Watcher]:
    headers = {"Authorization": f"Bearer tok-{who}"} if who else {}
    async with http.ws_connect(base + ("/websocket?stats=1" if stats else "/websocket"), headers=headers) as ws:
        if stats:  # the hello line: the hub has registered the client
            hello = orjson.loads((await ws.receive(timeout=10)).data)
            assert hello["type"] == "hello", hello
        yield Watcher(ws)


def scope_in_shard(keys: Keyspace, org: str, shard: int) -> Scope:
    return next(s for i in range(10_000) if keys.shard(s := Scope(org, "web", f"p{i}")) == shard)


async def xadd_alert(client: aioredis.Redis, keys: Keyspace, scope: Scope, ident: str, rule: str = "r1") -> str:
    """An alert as alert.lua writes it (common.alerts.alert_body's shape) on the scope's shard stream."""
    body = {"rule": rule, "scope": "/".join(scope), "id": ident, "zscore": 5.0, "pscore": 0.99, "score": 50.0}
    body.update(count=30, reasons=[{"action": "GET /.env", "kind": "over", "bits": 9.0}], event=None, profile="")
    entry = await client.xadd(keys.alert_stream(keys.shard(scope)), {"alert": orjson.dumps(body)})
    return entry.decode() if isinstance(entry, bytes) else str(entry)


@both_backends
async def test_each_alert_reaches_the_viewers_of_its_org_and_no_one_else(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    keys = web_settings(redis_url, prefix).keys
    async with web_tier(redis_url, prefix, tmp_path) as (base, app), aiohttp.ClientSession() as http:
        async with (
            watching(http, base, "acme-viewer") as acme,
            watching(http, base, "beta-viewer") as beta,
            watching(http, base, "root") as root,
            watching(http, base, "root", stats=False) as seed,
        ):
            # One acme alert in every shard's stream (different slots on the cluster), each followed by a
            # beta alert in the same stream: read in stream order, so a beta viewer that got its beta alert
            # of a stream would have had the acme one before it, had it been sent to it.
            ids: dict[str, list[str]] = {"acme": [], "beta": []}
            for shard in range(keys.shards):
                for org in ("acme", "beta"):
                    ids[org].append(await xadd_alert(aredis, keys, scope_in_shard(keys, org, shard), f"{org}-{shard}"))
            await acme.until(lambda a: len(a) >= keys.shards)
            await beta.until(lambda a: len(a) >= keys.shards)
            await root.until(lambda a: len(a) >= 2 * keys.shards)
            # The seed's stream (no ?stats=1) holds results only: a result line ends its wait.
            await aredis.publish(keys.broadcast_channel(), orjson.dumps({"zscore": 0.0, "id": "x", "org": "acme"}))
            await wait_for(lambda: app[HUB_KEY].received >= 1, what="result published")
            await seed.until(lambda _: seed.results >= 1)
    assert sorted(a["alert_id"] for a in acme.alerts) == sorted(ids["acme"])
    assert sorted(a["alert_id"] for a in beta.alerts) == sorted(ids["beta"])
    assert {a["id"].split("-")[0] for a in acme.alerts} == {"acme"}
    assert {a["scope"].split("/")[0] for a in beta.alerts} == {"beta"}
    assert sorted(a["alert_id"] for a in root.alerts) == sorted(ids["acme"] + ids["beta"])
    assert seed.alerts == []
    first = next(a for a in acme.alerts if a["id"] == "acme-0")
    assert first["rule"] == "r1" and first["zscore"] == 5.0 and first["reasons"][0]["action"] == "GET /.env"
    assert first["at"] == int(first["alert_id"].split("-")[0])


async def test_an_alert_the_worker_fires_reaches_the_websocket_as_it_fires(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    keys = web_settings(redis_url, prefix).keys
    rule = parse_alert_rule(
        {
            "name": "scanners",
            "scope": "acme/web/*",
            "min_zscore": 2.5,
            "min_events": 7,
            "webhook": "http://127.0.0.1:9/h",
        },
        by="test",
    )
    await add_alert_rule(aredis, keys, rule)
    ws = worker_settings(redis_url, prefix, min_events=1, min_individuals=1, snapshot_max_age_ms=0)
    async with web_tier(redis_url, prefix, tmp_path) as (base, _), aiohttp.ClientSession() as http:
        async with watching(http, base, "acme-viewer") as acme, running_worker(ws):
            await xadd_events(aredis, keys, crossing_events(Scope("acme", "web", "shop"), "scanner"))
            await acme.until(lambda a: any(x["id"] == "scanner" for x in a))
    assert [a["id"] for a in acme.alerts] == ["scanner"]  # min_events 7: the others have 6 events
    alert = next(a for a in acme.alerts if a["id"] == "scanner")
    assert alert["rule"] == "scanners" and alert["scope"] == "acme/web/shop" and alert["zscore"] >= 2.5
    assert any(r["action"].startswith("GET /probe/") for r in alert["reasons"]), alert["reasons"]
    assert alert["profile"].startswith("/api/individual?org=acme&source=web&pop=shop&id=scanner")
    assert alert["event"]["action"].startswith("GET /probe/")


async def xread_calls(client: aioredis.Redis) -> int:
    """XREAD commands the private server has run (only the alert feed reads with plain XREAD)."""
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_xread", {}).get("calls", 0))


async def test_the_feed_reads_slowly_while_no_viewer_watches(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    """No stats=1 viewer: one read of the streams per IDLE_POLL_S; the first viewer is served at once."""
    from binormal.web.alertfeed import IDLE_POLL_S, POLL_S

    keys = web_settings(redis_url, prefix).keys
    async with web_tier(redis_url, prefix, tmp_path) as (base, app), aiohttp.ClientSession() as http:
        async with watching(http, base, "root", stats=False):  # the seed's page: not a watcher
            before, started = await xread_calls(aredis), time.monotonic()
            await asyncio.sleep(IDLE_POLL_S)  # what the feed does over a while with nobody watching
            idle = await xread_calls(aredis) - before
            polls = (time.monotonic() - started) / IDLE_POLL_S + 1
        assert idle <= keys.shards * polls, (idle, keys.shards)  # at POLL_S: IDLE_POLL_S / POLL_S = 8x as many
        assert app[HUB_KEY].watchers == 0 and not app[HUB_KEY].watched.is_set()
        async with watching(http, base, "root") as root:
            assert app[HUB_KEY].watchers == 1
            alert_id = await xadd_alert(aredis, keys, scope_in_shard(keys, "acme", 0), "late")
            await root.until(lambda a: [x["alert_id"] for x in a] == [alert_id])
            # Three polls more well before three idle pauses could pass: the watched pace again.
            fast, deadline = await xread_calls(aredis), time.monotonic() + 1.75 * IDLE_POLL_S
            while await xread_calls(aredis) - fast < 3 * keys.shards:
                assert time.monotonic() < deadline, "the feed did not resume its watched pace"
                await asyncio.sleep(POLL_S / 5)
        assert app[HUB_KEY].watchers == 0


@pytest.mark.slow
async def test_the_feed_keeps_its_place_across_a_redis_outage(tmp_path: Path) -> None:
    """An alert that fired while the feed was cut off arrives once it is back; none arrives twice.

    Redis is killed; the same data (AOF) is opened on another port, an alert is added there and
    that Redis stopped, then the data is served on the first port again: when the feed reconnects
    the alert is already in the stream, so a feed that started over from the stream's end would
    never send it.
    """
    port = free_port()
    settings = WebSettings(redis_url=f"redis://127.0.0.1:{port}/0", prefix="feed")
    keys = settings.keys
    app = web.Application()
    setup_live(app, settings)
    scope = Scope("acme", "web", "p")
    data = tmp_path / "r"

    def redis_on(at: int) -> RedisServer:
        return RedisServer(data, binary=find_binary("path"), port=at, aof=True, fsync="always").start()

    server = redis_on(port)
    try:
        async with serving(app, wait_redis=False, bounded=False) as base, aiohttp.ClientSession() as http:
            await wait_for(lambda: app[HUB_KEY].alert_feed_up, timeout=20, what="alert feed")
            async with watching(http, base, None) as page:
                async with aioredis.Redis.from_url(server.url, protocol=2) as client:
                    await xadd_alert(client, keys, scope, "before")
                await page.until(lambda a: len(a) >= 1)
                server.kill()  # abrupt: the feed's connection dies under it
                await wait_for(lambda: not app[HUB_KEY].alert_feed_up, timeout=20, what="the feed sees the outage")
                aside = redis_on(free_port())
                async with aioredis.Redis.from_url(aside.url, protocol=2) as client:
                    await xadd_alert(client, keys, scope, "meanwhile")
                aside.stop()
                server = redis_on(port)
                await page.until(lambda a: len(a) >= 2, timeout=30)
                async with aioredis.Redis.from_url(server.url, protocol=2) as client:
                    await xadd_alert(client, keys, scope, "later")
                await page.until(lambda a: len(a) >= 3, timeout=30)
            assert not app[ALERT_FEED_KEY].done() and app[HUB_KEY].alert_feed_up  # the feed never died
    finally:
        server.kill()
    assert [a["id"] for a in page.alerts] == ["before", "meanwhile", "later"]


def test_a_clients_alert_queue_keeps_the_newest_and_survives_a_full_result_queue() -> None:
    hub = Hub(queue_size=3, max_fps=10.0)
    page = hub.register(control=True, orgs=frozenset({"acme"}))
    for n in range(ALERT_QUEUE + 10):
        hub.publish_alert(orjson.dumps({"type": "alert", "alert": {"n": n}}), "acme")
    assert hub.publish_alert(b'{"type":"alert","alert":{"n":-1}}', "beta") == 0
    hub.publish(b"\n".join(orjson.dumps({"id": f"u{i}", "zscore": 0.0, "org": "acme"}) for i in range(100)))
    frame = hub.frame(page)
    assert frame is not None
    lines = [orjson.loads(line) for line in frame.split("\n")]
    alerts = [o["alert"]["n"] for o in lines if o.get("type") == "alert"]
    assert alerts == list(range(10, ALERT_QUEUE + 10))  # the newest ALERT_QUEUE, in order, none of beta's
    assert [o["id"] for o in lines if "type" not in o] == ["u97", "u98", "u99"]
