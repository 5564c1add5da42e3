"""The dominance guard through the real service: redis-server, a ``binormal worker`` process, HTTP.

Two scopes get the same light individuals (30 ids, 41 events each, one mix) and
the same 200 events of one flooder; only ``flooded`` then gets 1,800 more of it
(62 % of its events). After the flood every light individual does one more
event in both scopes, and their zscores are compared scope against scope:
with the weight cap W = N (default) they are equal, the flooder's contribution
having stopped at 100 events; with W = 0 they drift by more than one standard
deviation, and the flooder itself, the outlier at z 5.47 with the cap, looks
ordinary (z -0.11) without it. ``flooded`` is flagged in /api/scopes and /api/outliers (the other is
not), and the worker logs ``scope_dominated`` once, also across a restart.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from binormal.common.keys import Keyspace, Scope
from binormal.common.schema import Event
from tests.support.events import FLOODER, counts_from_events, event_dict, flooder_events, light_rounds, ndjson
from tests.support.handcalc import capped_population, explain_by_hand
from tests.support.http import Served, post_raw, wait_ready
from tests.support.openapi import check_response, load_openapi
from tests.support.redis_state import drained, no_uncommitted
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess

DOC = load_openapi()
FLOODED = Scope("acme", "web", "flooded")
CONTROL = Scope("acme", "web", "control")
LIGHT = 30


async def send(svc: Served, events: list[Event], aredis: aioredis.Redis) -> None:
    """POST /events in batches of 1,000, then wait until every event is applied and committed."""
    for i in range(0, len(events), 1000):
        body = ndjson(event_dict(e) for e in events[i : i + 1000])
        status, got, _ = await post_raw(svc.session, f"{svc.base}/events", body, "application/x-ndjson")
        assert status == 202 and got["rejected"] == 0, got
    await wait_for(lambda: drained(aredis, svc.keys), timeout=60.0, what="the worker to drain")
    await wait_for(lambda: no_uncommitted(aredis, svc.keys), timeout=10.0, what="every score committed")


async def get(svc: Served, path: str, **params: str) -> dict[str, Any]:
    async with svc.session.get(f"{svc.base}{path}", params=params) as r:
        body = await r.json()
        assert r.status == 200, body
        assert not check_response(DOC, path, "get", 200, body)
        return dict(body)


async def light_zscores(svc: Served, scope: Scope) -> dict[str, float]:
    got = await get(svc, "/api/outliers", org=scope.org, source=scope.source, pop=scope.pop, limit="500")
    return {o["id"]: o["zscore"] for o in got["outliers"] if o["id"] != FLOODER}


def dominated_logs(worker: WorkerProcess) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in worker.log_lines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "scope_dominated"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("weight_cap", [100, 0], ids=["cap-N", "cap-off"])
async def test_a_flood_moves_the_light_zscores_only_without_the_cap(
    redis_url: str, prefix: str, aredis: aioredis.Redis, combined: Served, tmp_path: Path, weight_cap: int
) -> None:
    env = {"BINORMAL_SNAPSHOT_MAX_AGE_MS": "0", "BINORMAL_WEIGHT_CAP": str(weight_cap)}
    log = tmp_path / "worker.log"
    worker = WorkerProcess(redis_url, prefix, "w1", log, extra_env=env).start()
    try:
        await wait_ready(combined.session, combined.base, timeout=30.0)  # a worker heartbeat: its groups exist
        base = [
            e
            for scope in (FLOODED, CONTROL)
            for e in light_rounds(scope, 40, LIGHT, seed=5) + flooder_events(scope, 0, 200)
        ]
        await send(combined, base, aredis)
        scopes = {(s["pop"]): s for s in (await get(combined, "/api/scopes"))["scopes"]}
        assert scopes["flooded"]["dominated"] is None and scopes["control"]["dominated"] is None  # 200 of 1,400

        await send(combined, flooder_events(FLOODED, 200, 2000), aredis)
        last = [e for s in (FLOODED, CONTROL) for e in light_rounds(s, 1, LIGHT, seed=9, start=40)]
        await send(combined, last, aredis)
        flooded, control = await light_zscores(combined, FLOODED), await light_zscores(combined, CONTROL)
        assert len(flooded) == len(control) == LIGHT
        drift = max(abs(flooded[i] - control[i]) for i in control)
        if weight_cap:
            assert drift <= 0.001, drift  # the flooder's weight stopped at W = 100 events
        else:
            assert drift >= 1.0, drift  # its 2,000 raw events pulled p_a towards itself

        share = round(2000 / (2000 + 41 * LIGHT), 3)
        scopes = {(s["pop"]): s for s in (await get(combined, "/api/scopes"))["scopes"]}
        assert scopes["flooded"]["dominated"] == {"id": FLOODER, "share": share}
        assert scopes["control"]["dominated"] is None
        out = await get(combined, "/api/outliers", org="acme", source="web", pop="flooded", limit="3")
        assert out["dominated"] == {"id": FLOODER, "share": share}
        top = out["outliers"][0]
        # Its reasons against the population worked out by hand (the flooder scaled to W events, or raw).
        individuals = counts_from_events(base + flooder_events(FLOODED, 200, 2000) + last)[FLOODED]
        pop = capped_population(individuals, weight_cap)
        for o in out["outliers"]:
            want = explain_by_hand(individuals[o["id"]], pop, 100, 3)
            assert [r["action"] for r in o["reasons"]] == [w["action"] for w in want]
            for r, w in zip(o["reasons"], want):
                assert (r["count"], r["observed"], r["kind"]) == (w["count"], w["observed"], w["kind"])
                assert r["expected"] == pytest.approx(w["expected"], abs=5e-4)
                assert r["bits"] == pytest.approx(w["bits"], abs=5e-4)
        if weight_cap:  # still the outlier it is (z 5.47)
            assert top["id"] == FLOODER and top["zscore"] > 3.0, top
        else:  # it made itself the norm (z -0.11): the light ones now look odd
            assert top["id"] != FLOODER, top
        await wait_for(lambda: dominated_logs(worker), timeout=5.0, what="the scope_dominated log line")
        [line] = dominated_logs(worker)
        assert (line["pop"], line["id"], line["level"]) == ("flooded", FLOODER, "warning")

        # A restarted worker does not log it again (the mark is in the scope's dom hash).
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0
        worker = WorkerProcess(redis_url, prefix, "w1", log, extra_env=env).start()
        await send(combined, flooder_events(FLOODED, 2000, 2100), aredis)
        assert len(dominated_logs(worker)) == 1
        keys = Keyspace(prefix=prefix, shards=4)
        dom = await aredis.hgetall(keys.scope_key(FLOODED, "dom"))
        assert dom[b"flag"] == dom[b"top"] == dom[b"logged"] == FLOODER.encode()
        assert int(dom[b"events"]) == 2100 + 41 * LIGHT and int(dom[b"top_n"]) == 2100
    finally:
        worker.kill()
