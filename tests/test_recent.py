"""``recent`` in the service (BINORMAL_RECENT_WINDOW, issue 11 item 3), through a real worker and real HTTP.

An individual that behaves like its population for 600 events and then switches to another
mix (an account takeover) gets a high ``recent`` in every result (/discrete, the websocket,
/api/outliers, /api/individual) while its zscore stays low; with K = 0 the field is nowhere
and no window key exists. With K = 0 the results are exactly the in-memory engine's (the
pre-window result objects, byte for byte), and K > 0 adds ``recent`` and changes nothing else.
Apply.lua's window against binormal/drift.py's ``window_step`` is in tests/test_worker.py
(the Redis-vs-memory equivalence at staleness 0, K = 50).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from binormal.common.config import ConfigError
from binormal.common.engine import MemoryEngine
from binormal.common.keys import Keyspace, Scope
from binormal.common.recent import recent_bits
from binormal.common.schema import Event
from binormal.common.scoring import Snapshot
from binormal.web.app import create_app
from binormal.web.settings import WebSettings
from binormal.worker import WorkerSettings
from tests.support.http import serving, web_settings
from tests.support.openapi import check_response, load_openapi
from tests.support.redis_state import Collector, drained, xadd_events
from tests.support.waiting import wait_for
from tests.support.workers import running_worker, worker_settings

DOC = load_openapi()
SCOPE = Scope("acme", "shop", "users")
ACTIONS = ["GET /", "GET /item", "POST /cart", "GET /search", "POST /login", "GET /admin", "POST /export"]
WEIGHTS = [40, 25, 10, 15, 8, 1, 1]
TAKEOVER = ["GET /admin", "POST /export"]  # actions of the scope, rare in it
VICTIM = "victim"
# The result keys before the recent window existed, in their order (common/result.py: make_result).
KEYS_BEFORE = [
    "score",
    "count",
    "zscore",
    "org",
    "source",
    "pop",
    "id",
    "action",
    "timestamp",
    "thisActionCount",
    "actionzscore",
    "event_id",
    "explain",
    "muted",
    "pscore",
    "rzscore",
    "bits_per_event",
    "learning",
    "novel",
    "new_action",
]


def population(seed: int = 5, individuals: int = 40) -> tuple[list[Event], list[Event]]:
    """40 individuals of 100-250 events and the victim's 600, all of one mix; then the victim's 12 others."""
    rng = random.Random(seed)
    lengths = {f"u{i}": rng.randint(100, 250) for i in range(individuals)}
    lengths[VICTIM] = 600
    order = [ident for ident, n in lengths.items() for _ in range(n)]
    rng.shuffle(order)
    normal = [Event(SCOPE.org, SCOPE.source, SCOPE.pop, i, rng.choices(ACTIONS, WEIGHTS)[0]) for i in order]
    takeover = [Event(SCOPE.org, SCOPE.source, SCOPE.pop, VICTIM, rng.choice(TAKEOVER)) for _ in range(12)]
    return normal, takeover


async def read_results(ws: aiohttp.ClientWebSocketResponse, ident: str, count: int) -> list[dict[str, Any]]:
    """Result lines of ``ident`` off the websocket until there are ``count`` of them."""
    got: list[dict[str, Any]] = []
    while len(got) < count:
        msg = await ws.receive(timeout=20.0)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        got += [o for o in map(json.loads, msg.data.splitlines()) if o.get("id") == ident]
    return got


async def live_subscribed(client: aioredis.Redis, channel: str) -> bool:
    """The web tier's live view listens on the broadcast channel (results published from now on reach it)."""
    got = await client.pubsub_numsub(channel)
    return bool(got) and int(got[0][1]) > 0


async def run_service(redis_url: str, prefix: str, aredis: aioredis.Redis, window: int) -> dict[str, Any]:
    """The population through the stream, the takeover through POST /discrete; what every surface answered."""
    normal, takeover = population()
    ws_settings = web_settings(redis_url, prefix, recent_window=window)
    keys = ws_settings.keys
    app = create_app(ws_settings)
    out: dict[str, Any] = {}
    wsettings = worker_settings(redis_url, prefix, snapshot_max_age_ms=0, recent_window=window)
    async with (
        running_worker(wsettings),
        serving(app) as base,
        aiohttp.ClientSession() as http,
    ):
        await xadd_events(aredis, keys, normal)
        await wait_for(lambda: drained(aredis, keys), timeout=60, what="drain")
        async with http.ws_connect(base + "/websocket") as ws:
            await wait_for(lambda: live_subscribed(aredis, keys.broadcast_channel()), what="live subscriber")
            replies = []
            for ev in takeover:
                body = {"org": ev.org, "source": ev.source, "pop": ev.pop, "id": ev.id, "action": ev.action}
                async with http.post(base + "/discrete", json=body) as r:
                    got = await r.json()
                    assert not check_response(DOC, "/discrete", "post", r.status, got)
                    assert r.status == 200, got
                    replies.append(got)
            out["ws"] = await read_results(ws, VICTIM, len(takeover))
        await wait_for(lambda: drained(aredis, keys), timeout=30, what="drain")
        scope = {"org": SCOPE.org, "source": SCOPE.source, "pop": SCOPE.pop}
        for path, params in (
            ("/api/outliers", {**scope, "limit": "100"}),
            ("/api/individual", {**scope, "id": VICTIM}),
        ):
            async with http.get(base + path, params=params) as r:
                body = await r.json()
                assert r.status == 200 and not check_response(DOC, path, "get", 200, body), body
                out[path] = body
    out["replies"] = replies
    out["window_keys"] = await aredis.keys(f"{prefix}:*:rl:*") + await aredis.keys(f"{prefix}:*:rw:*")
    return out


@pytest.mark.timeout(120)
async def test_a_takeover_gets_a_high_recent_while_its_zscore_stays_low(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    got = await run_service(redis_url, prefix, aredis, window=20)
    last = got["replies"][-1]
    # the last 20 events hold the 12 others: far more surprising than anyone's, the whole history is not
    assert last["recent"] > 40.0 and last["zscore"] < 1.0, last
    assert [r["recent"] for r in got["replies"]] == [r["recent"] for r in got["ws"]]  # websocket = /discrete
    assert got["replies"][0]["recent"] < last["recent"]  # it rises as the other mix fills the window
    rows = {o["id"]: o for o in got["/api/outliers"]["outliers"]}
    assert len(rows) == 41 and all("recent" in o for o in rows.values())
    others = max(o["recent"] for i, o in rows.items() if i != VICTIM)
    assert rows[VICTIM]["recent"] == last["recent"] > 3 * others  # /api: the current population, unchanged since
    assert max(rows.values(), key=lambda o: o["zscore"])["id"] != VICTIM  # zscore does not single it out
    individual = got["/api/individual"]
    assert individual["recent"] == last["recent"] and individual["zscore"] == rows[VICTIM]["zscore"]
    assert got["window_keys"]  # one list and one hash per individual
    assert len(got["window_keys"]) == 2 * 41


@pytest.mark.timeout(120)
async def test_with_the_window_off_no_result_has_recent_and_no_window_key_exists(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    got = await run_service(redis_url, prefix, aredis, window=0)
    results = [*got["replies"], *got["ws"], *got["/api/outliers"]["outliers"], got["/api/individual"]]
    assert results and not any("recent" in r for r in results)
    assert got["replies"][-1]["zscore"] < 1.0
    assert got["window_keys"] == []


@pytest.mark.timeout(120)
async def test_with_the_window_off_results_are_the_engines_byte_for_byte_and_on_only_adds_recent(
    redis_url: str, aredis: aioredis.Redis
) -> None:
    """K = 0: every published result is MemoryEngine's (no window) with the pre-window keys, in order.

    The same events under K = 50 give the same JSON bytes once ``recent`` is taken out: score, zscore
    and every other field are unchanged by the window.
    """
    normal, takeover = population(seed=9, individuals=15)
    events = [replace(e, ts=0) for e in normal[:1500] + takeover]  # a fixed timestamp: comparable byte for byte
    individuals = len({e.id for e in events})
    engine = MemoryEngine(cap=100, weight_cap=None)
    expected = [orjson.dumps(engine.process(e)) for e in events]
    published: dict[int, list[dict[str, Any]]] = {}
    for window, prefix in ((0, "roff"), (50, "ron")):
        keys = Keyspace(prefix=prefix, shards=4)
        settings = worker_settings(redis_url, prefix, snapshot_max_age_ms=0, recent_window=window)
        async with Collector(aredis, keys.broadcast_channel()) as col, running_worker(settings):
            await xadd_events(aredis, keys, events)
            published[window] = list(await col.wait_count(keys.broadcast_channel(), len(events), timeout=60))
            await wait_for(lambda k=keys: drained(aredis, k), what="drain")  # type: ignore[misc]
    off, on = published[0], published[50]
    assert [list(r) for r in off] == [KEYS_BEFORE] * len(events)
    assert [orjson.dumps(r) for r in off] == expected
    assert all(list(r)[-1] == "recent" for r in on)
    assert [orjson.dumps({k: v for k, v in r.items() if k != "recent"}) for r in on] == expected
    assert not await aredis.keys("roff:*:rl:*") and not await aredis.keys("roff:*:rw:*")
    assert len(await aredis.keys("ron:*:rl:*")) == len(await aredis.keys("ron:*:rw:*")) == individuals
    # the rest of the keyspace is the same under both
    assert {k.replace(b"roff", b"P") for k in await aredis.keys("roff:*")} == {
        k.replace(b"ron", b"P") for k in await aredis.keys("ron:*") if b":rl:" not in k and b":rw:" not in k
    }


def test_the_window_is_bounded_by_the_normalisation_cap() -> None:
    assert WorkerSettings.from_env({}).recent_window == 0 and WebSettings.from_env({}).recent_window == 0
    assert WorkerSettings.from_env({"BINORMAL_RECENT_WINDOW": "100"}).recent_window == 100
    assert WorkerSettings.from_env({"BINORMAL_RECENT_WINDOW": "20", "BINORMAL_CAP": "20"}).recent_window == 20
    for cls in (WorkerSettings, WebSettings):
        with pytest.raises(ConfigError, match="BINORMAL_RECENT_WINDOW"):
            cls.from_env({"BINORMAL_RECENT_WINDOW": "101"})
        with pytest.raises(ConfigError, match="BINORMAL_RECENT_WINDOW"):
            cls.from_env({"BINORMAL_RECENT_WINDOW": "-1"})
    with pytest.raises(ValueError, match="recent window"):
        MemoryEngine(cap=100, recent_window=101)


async def test_a_window_kept_while_k_was_0_restarts_and_a_smaller_k_shrinks_it_at_once(
    redis_url: str, prefix: str, aredis: aioredis.Redis
) -> None:
    """apply.lua's window is always the counts of the first k items of its list, whatever K did before.

    Events counted with K = 0 leave no window: the first event under K starts one (its 'n' did not
    match); from K = 10 to K = 4 the window drops to 4 events at the next event.
    """
    keys = Keyspace(prefix=prefix, shards=4)
    ev = [Event(SCOPE.org, SCOPE.source, SCOPE.pop, "u", ACTIONS[i % 3]) for i in range(60)]

    async def count(events: list[Event], window: int) -> None:
        async with running_worker(worker_settings(redis_url, prefix, recent_window=window)):
            await xadd_events(aredis, keys, events)
            await wait_for(lambda: drained(aredis, keys), what="drain")

    async def window_of() -> tuple[list[bytes], dict[bytes, bytes]]:
        return await aredis.lrange(keys.recent_list(SCOPE, "u"), 0, -1), await aredis.hgetall(
            keys.recent_window(SCOPE, "u")
        )

    await count(ev[:30], 0)
    assert await aredis.exists(keys.recent_list(SCOPE, "u"), keys.recent_window(SCOPE, "u")) == 0
    await count(ev[30:31], 10)
    kept, held = await window_of()
    assert len(kept) == 1 and held == {kept[0]: b"1", b"n": b"31"}  # k = min(10, 31 // 2, 1 kept)
    await count(ev[31:50], 10)
    kept, held = await window_of()
    assert len(kept) == 10 and sum(int(v) for f, v in held.items() if f != b"n") == 10 and held[b"n"] == b"50"
    await count(ev[50:51], 4)
    kept, held = await window_of()
    assert len(kept) == 4 and held[b"n"] == b"51"
    assert {f: int(v) for f, v in held.items() if f != b"n"} == {n: kept.count(n) for n in set(kept)}


def test_recent_is_the_score_of_the_window_and_finite_where_the_population_holds_no_weight() -> None:
    snap = Snapshot({"a": 90, "b": 10, "c": 0})  # c: known, its population count rounded to 0 (weight cap)
    assert recent_bits(snap, {}) == 0.0
    assert recent_bits(snap, {"a": 9, "b": 1}) == snap.assess({"a": 9, "b": 1}, 0)[0]
    for window in ({"a": 3, "c": 2}, {"a": 3, "d": 2}):  # a zero-weight action, an unknown one
        got = recent_bits(snap, window)
        own = Snapshot({"a": 90, "b": 10, **{a: c for a, c in window.items() if a != "a"}})
        assert math.isfinite(got) and got == own.assess(window, 0)[0]
    assert snap.counts == {"a": 90, "b": 10}  # the shared snapshot is left alone
