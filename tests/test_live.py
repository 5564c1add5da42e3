"""web/live.py: /websocket streams the broadcast channel; the subscriber survives Redis
outages; a stalled websocket client does not slow /discrete."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from binormal.common.embedded import RedisServer, find_binary, free_port
from binormal.common.keys import Keyspace
from binormal.common.schema import Event
from binormal.web.live import HUB_KEY, SOCKETS_KEY, SUBSCRIBER_KEY, setup_live
from binormal.web.settings import WebSettings
from tests.support.backends import both_backends
from tests.support.http import serving, stalled_websocket
from tests.support.redis_state import xadd_events
from tests.support.waiting import wait_for
from tests.support.workers import running_worker, worker_settings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def live_app(settings: WebSettings) -> web.Application:
    """The live view alone (no /discrete): enough for the websocket tests."""
    app = web.Application()
    setup_live(app, settings)
    return app


async def subscribers(client: aioredis.Redis, channel: str) -> int:
    """PUBSUB NUMSUB of one channel (on a cluster summed over every node: each counts its own)."""
    if isinstance(client, aioredis.RedisCluster):
        await client.initialize()  # (idempotent) the node list is empty before the first command
        counts = [await client.execute_command("PUBSUB NUMSUB", channel, target_nodes=n) for n in client.get_nodes()]
        return sum(int(c[0][1]) for c in counts)
    got = await client.pubsub_numsub(channel)
    return int(got[0][1])


async def read_lines(ws: aiohttp.ClientWebSocketResponse, want: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Read frames until ``want`` result lines arrived; control lines included in the return."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while sum(1 for o in out if "type" not in o) < want:
        msg = await ws.receive(timeout=max(0.1, deadline - time.monotonic()))
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        out.extend(orjson.loads(line) for line in msg.data.split("\n"))
    return out


@both_backends
async def test_websocket_streams_worker_results_in_seed_format(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    settings = WebSettings(redis_url=redis_url, prefix=prefix, ws_max_fps=20.0)
    keys = settings.keys
    app = live_app(settings)
    async with serving(app, wait_redis=False, bounded=False) as base, aiohttp.ClientSession() as http:
        page = await http.get(base + "/")
        assert page.status == 200 and "text/html" in page.headers["Content-Type"]
        await wait_for(lambda: subscribers(aredis, keys.broadcast_channel()), what="live subscriber")
        async with http.ws_connect(base + "/websocket") as ws, running_worker(worker_settings(redis_url, prefix)):
            events = [Event("acme", "web", "users", f"u{i % 7}", f"GET /{i % 3}") for i in range(60)]
            await xadd_events(aredis, keys, events)
            objs = await read_lines(ws, 60)
    # Without ?stats=1 the stream is the seed's: result objects only, one per line.
    results = [o for o in objs if "type" not in o]
    assert len(results) == len(objs) == 60
    for r in results:
        # The seed's result keys (plus org, explain), one object per line.
        assert {"score", "count", "zscore", "id", "action", "pop", "source", "org", "explain"} <= set(r)
    assert sorted(r["id"] for r in results) == sorted(e.id for e in events)
    assert app[HUB_KEY].received >= 60


async def test_a_slow_client_is_told_how_many_results_it_lost(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    settings = WebSettings(redis_url=redis_url, prefix=prefix, ws_queue=10, ws_max_fps=2.0)
    channel = settings.keys.broadcast_channel()
    app = live_app(settings)
    async with serving(app, wait_redis=False, bounded=False) as base, aiohttp.ClientSession() as http:
        await wait_for(lambda: subscribers(aredis, channel), what="live subscriber")
        async with http.ws_connect(base + "/websocket?stats=1") as ws:
            hello = orjson.loads((await ws.receive(timeout=5)).data)
            assert hello == {"type": "hello", "queue": 10, "max_fps": 2.0}
            lines = [orjson.dumps({"id": f"i{n}", "zscore": 0.0, "action": "a", "n": n}) for n in range(100)]
            for k in range(0, 100, 20):  # 5 messages within one 500 ms frame slot
                await aredis.publish(channel, b"\n".join(lines[k : k + 20]))
            objs: list[dict[str, Any]] = []
            while not objs or objs[-1].get("n") != 99:
                objs += await read_lines(ws, 1)
            (client,) = app[HUB_KEY].clients
    stats = [o for o in objs if o.get("type") == "stats"]
    results = [o["n"] for o in objs if "type" not in o]
    # At most one frame per 500 ms: the queue (10) kept the newest results, oldest dropped.
    assert results[-10:] == list(range(90, 100)), results
    assert results == sorted(results) and len(results) <= 30, results
    assert stats and stats[-1]["dropped"] == client.dropped == 100 - len(results), (stats, client.dropped)
    assert stats[-1]["sent"] == len(results)


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_subscriber_waits_for_redis_and_resubscribes_after_a_restart(tmp_path: Path) -> None:
    try:
        binary = find_binary("path")
    except Exception as exc:  # noqa: BLE001 - no redis-server binary at all
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    port = free_port()
    settings = WebSettings(redis_url=f"redis://127.0.0.1:{port}/0", prefix="live")
    channel = settings.keys.broadcast_channel()
    app = live_app(settings)
    async with serving(app, wait_redis=False, bounded=False) as base, aiohttp.ClientSession() as http:
        # Redis is not up yet: the page and the websocket work regardless.
        assert (await http.get(base + "/")).status == 200
        async with http.ws_connect(base + "/websocket?stats=1") as ws:
            assert orjson.loads((await ws.receive(timeout=5)).data)["type"] == "hello"
            await asyncio.sleep(1.0)
            for round_no in range(2):
                server = RedisServer(tmp_path / f"r{round_no}", binary=binary, port=port).start()
                client = aioredis.Redis.from_url(server.url, protocol=2)
                try:
                    await wait_for(lambda: subscribers(client, channel), timeout=20, what="resubscribe")
                    # Pub/sub keeps nothing: a message published while the subscriber is
                    # between connections is lost, so publish until one gets through.
                    line = orjson.dumps({"id": f"after-start-{round_no}", "zscore": 1.0, "action": "a"})
                    got: list[dict[str, Any]] = []
                    deadline = time.monotonic() + 20
                    while not got and time.monotonic() < deadline:
                        await client.publish(channel, line)
                        with contextlib.suppress(asyncio.TimeoutError):
                            got = [o for o in await read_lines(ws, 1, timeout=0.5) if "type" not in o]
                    assert got and {o["id"] for o in got} == {f"after-start-{round_no}"}
                finally:
                    await client.aclose()
                    server.kill()  # abrupt: the subscription dies under the app
            assert not ws.closed
            assert not app[SUBSCRIBER_KEY].done()  # the subscriber never died


# ------------------------------------------------------------ stalled client vs /discrete


async def discrete_latencies(http: aiohttp.ClientSession, base: str, n: int, tag: str) -> list[float]:
    """Latency of ``n`` sequential POST /discrete calls (seconds)."""
    out: list[float] = []
    for i in range(n):
        body = {"org": "acme", "source": "web", "pop": "probe", "id": f"{tag}{i % 5}", "action": f"GET /{i % 4}"}
        t0 = time.perf_counter()
        async with http.post(base + "/discrete", json=body) as resp:
            assert resp.status == 200, await resp.text()
            got = await resp.json()
        out.append(time.perf_counter() - t0)
        assert got["id"] == body["id"]
    return out


async def flood(client: aioredis.Redis, keys: Keyspace, stop: asyncio.Event) -> int:
    """Publish broadcast messages (500 results each, like the workers) until ``stop``."""
    line = orjson.dumps(
        {
            "score": 3.2,
            "count": 9,
            "zscore": 0.4,
            "org": "acme",
            "source": "flood",
            "pop": "p",
            "id": "x" * 40,
            "action": "GET /a/b/c",
            "explain": [],
        }
    )
    message = b"\n".join([line] * 500)
    sent = 0
    while not stop.is_set():
        await client.publish(keys.broadcast_channel(), message)
        sent += 500
        await asyncio.sleep(0.025)  # ~20,000 results/s
    return sent


class Reader:
    """A healthy websocket client that reads everything and counts result lines."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.results = 0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            self.results += sum(1 for line in msg.data.split("\n") if not line.startswith('{"type"'))


@pytest.mark.timeout(120)
async def test_stalled_websocket_client_does_not_slow_discrete(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    app_module = pytest.importorskip("web.app")
    settings = WebSettings(redis_url=redis_url, prefix=prefix, ws_queue=2000, ws_heartbeat_s=60.0)
    keys = settings.keys
    app = app_module.create_app(settings)
    hub = app[HUB_KEY]
    async with (
        running_worker(worker_settings(redis_url, prefix)),
        serving(app, wait_redis=False, bounded=False) as base,
    ):
        port = int(base.rsplit(":", 1)[1])
        async with aiohttp.ClientSession() as http, http.ws_connect(base + "/websocket") as healthy_ws:
            healthy = Reader(healthy_ws)
            await wait_for(lambda: subscribers(aredis, keys.broadcast_channel()), what="live subscriber")
            await discrete_latencies(http, base, 10, "warm")
            stop = asyncio.Event()
            flooder = asyncio.create_task(flood(aredis, keys, stop))
            try:
                await asyncio.sleep(0.5)
                baseline = await discrete_latencies(http, base, 40, "base")
                stalled = [await stalled_websocket(port) for _ in range(3)]
                try:
                    # Let the stalled sockets' buffers fill so their writers block in send.
                    await asyncio.sleep(2.0)
                    assert len(hub.clients) == 4
                    got0, fed0, t0 = healthy.results, hub.received, time.monotonic()
                    with_stalled = await discrete_latencies(http, base, 40, "stall")
                    await asyncio.sleep(max(0.0, t0 + 2.0 - time.monotonic()))  # a 2 s window at least
                    healthy_got, fed = healthy.results - got0, hub.received - fed0
                    window = time.monotonic() - t0
                    stuck = [c for c in hub.clients if c.dropped > 0]
                    drops = [c.dropped for c in stuck]
                    queued = [len(c.queue) for c in stuck]
                finally:
                    for s in stalled:
                        s.close()
            finally:
                stop.set()
                published = await flooder
                healthy.task.cancel()
    base_med, stall_med = statistics.median(baseline), statistics.median(with_stalled)
    base_p90 = sorted(baseline)[35]
    stall_p90 = sorted(with_stalled)[35]
    print(
        f"\n/discrete median {base_med * 1000:.1f} ms -> {stall_med * 1000:.1f} ms with 3 stalled clients; "
        f"p90 {base_p90 * 1000:.1f} -> {stall_p90 * 1000:.1f} ms; flood {published} results; stalled drops {drops}; "
        f"healthy client got {healthy_got} of {fed} results in {window:.1f} s"
    )
    # The three stalled clients lost results and their queues stayed bounded ...
    assert len(stuck) == 3 and all(q <= settings.ws_queue for q in queued), (drops, queued)
    # ... a healthy client next to them got (nearly) everything ...
    assert fed > 5000 and healthy_got >= 0.9 * fed, (healthy_got, fed)
    # ... and /discrete answered about as fast as without them (generous bound: shared CI cores).
    assert stall_med <= 3 * base_med + 0.05, (base_med, stall_med)
    assert stall_p90 <= 3 * base_p90 + 0.1, (base_p90, stall_p90)


async def test_a_client_that_never_reads_is_evicted_by_the_heartbeat(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    settings = WebSettings(redis_url=redis_url, prefix=prefix, ws_queue=100, ws_heartbeat_s=1.0)
    keys = settings.keys
    app = live_app(settings)
    hub = app[HUB_KEY]
    async with serving(app, wait_redis=False, bounded=False) as base:
        await wait_for(lambda: subscribers(aredis, keys.broadcast_channel()), what="live subscriber")
        stop = asyncio.Event()
        flooder = asyncio.create_task(flood(aredis, keys, stop))
        sock = await stalled_websocket(int(base.rsplit(":", 1)[1]))
        try:
            await wait_for(lambda: len(hub.clients) == 1, timeout=5, what="client registered")
            (client,) = hub.clients
            await wait_for(lambda: client.dropped > 0, timeout=10, what="back pressure")
            t0 = time.monotonic()
            # No pong within half the heartbeat: the server closes it and forgets its queue.
            await wait_for(lambda: not hub.clients, timeout=10, what="eviction")
            evicted_after = time.monotonic() - t0
        finally:
            stop.set()
            await flooder
            sock.close()
    assert client.closed and evicted_after < 5.0, evicted_after


async def test_websockets_past_the_cap_get_503_before_the_upgrade(redis_url: str, prefix: str) -> None:
    from binormal.web.app import create_app
    from tests.support.http import web_settings

    cap = 3
    app = create_app(web_settings(redis_url, prefix, max_websockets=cap))
    async with serving(app) as base, aiohttp.ClientSession() as session:
        sockets = [await session.ws_connect(f"{base}/websocket") for _ in range(cap)]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{base}/websocket")
        assert refused.value.status == 503
        upgrade = {
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        }
        async with session.get(f"{base}/websocket", headers=upgrade) as r:
            assert r.status == 503 and r.headers["Retry-After"] == "1"
            assert await r.json() == {"error": f"too many websocket clients (limit {cap}); retry later", "field": None}
        # one leaves, a new one gets in
        await sockets.pop().close()
        await wait_for(lambda: len(app[SOCKETS_KEY]) < cap, timeout=5.0, what="a websocket slot freed")
        sockets.append(await session.ws_connect(f"{base}/websocket"))
        for ws in sockets:
            await ws.close()
