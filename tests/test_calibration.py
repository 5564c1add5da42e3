"""Calibrated scores (common/calibration.py): pscore, learning, the median/MAD sample and its error bound.

The bound documented in docs/quality.md ("Calibrated scores") is checked against the
exact median and MAD of large scopes; ``commit.lua`` is checked to read the same
sample and ranks as the Python twin, bit for bit, on a real redis-server.
"""

from __future__ import annotations

import math
import random
import statistics

import aiohttp
import pytest
import redis.asyncio as aioredis

from binormal.common.calibration import (
    MAD_SCALE,
    SAMPLE_POINTS,
    Rank,
    Robust,
    SortedScores,
    is_learning,
    robust_of,
    sample_ranks,
    sample_sorted,
)
from binormal.common.keys import Keyspace, Scope
from binormal.common.scripts import Commit, Committed, Score, Scripts
from binormal.web.app import create_app
from tests.support.http import post_json, serving, web_settings
from tests.support.workers import running_worker, worker_settings

pytestmark = pytest.mark.timeout(60)


def test_pscore_counts_below_and_half_the_ties() -> None:
    assert Rank(0, 0, 0).pscore == 0.0  # empty scope
    assert Rank(0, 1, 1).pscore == 0.5  # alone: half of itself
    assert Rank(3, 1, 4).pscore == 0.875  # the top of four distinct scores
    assert Rank(0, 10, 10).pscore == 0.5  # everyone tied (all scores 0 at the start)


def test_learning_thresholds_are_strict_lower_bounds() -> None:
    assert is_learning(9, 30, 10, 30) and is_learning(10, 29, 10, 30)
    assert not is_learning(10, 30, 10, 30)
    assert not is_learning(0, 0, 0, 0)  # thresholds 0: never learning


def test_median_and_mad_by_hand() -> None:
    assert robust_of([]) == Robust(0.0, 0.0)
    assert robust_of([1.0, 2.0, 9.0]) == Robust(2.0, 1.0)  # deviations 1, 0, 7
    assert robust_of([1.0, 2.0, 4.0, 10.0]) == Robust(3.0, 1.5)  # deviations 2, 1, 1, 7 -> (1 + 2) / 2
    r = Robust(2.0, 1.0)
    assert r.z(5.0) == 3.0 / MAD_SCALE and r.z(2.0) == 0.0
    assert Robust(4.0, 0.0).z(100.0) == 0.0  # MAD 0 (half the scope tied): 0, not infinity


def test_sample_ranks_are_all_scores_then_evenly_spaced() -> None:
    assert sample_ranks(0) == [] and sample_ranks(5) == [0, 1, 2, 3, 4]
    assert sample_ranks(SAMPLE_POINTS) == list(range(SAMPLE_POINTS))
    for n in (SAMPLE_POINTS + 1, 2048, 10_001, 1_000_000):
        ranks = sample_ranks(n)
        assert len(ranks) == SAMPLE_POINTS and ranks[0] == 0 and ranks[-1] == n - 1
        gaps = {b - a for a, b in zip(ranks, ranks[1:])}
        assert gaps <= {(n - 1) // 1024, -(-(n - 1) // 1024)}, (n, gaps)
        assert ranks[512] == (n - 1) // 2  # the sample's median is the scope's (lower) median


def test_sorted_scores_is_the_rank_zset() -> None:
    """Replacing scores in any order keeps the list sorted; ranks equal a count by hand."""
    rng = random.Random(3)
    ranked = SortedScores()
    current: dict[int, float] = {}
    for _ in range(3000):
        ident = rng.randrange(200)
        new = float(rng.choice([0, 0, 1, 2.5, rng.random() * 10]))
        ranked.replace(current.get(ident), new)
        current[ident] = new
        assert len(ranked.values) == len(current)
        probe = current[rng.choice(list(current))]
        below = sum(1 for v in current.values() if v < probe)
        ties = sum(1 for v in current.values() if v == probe)
        assert ranked.rank(probe) == Rank(below, ties, len(current))
    assert ranked.values == sorted(current.values())


def test_small_scopes_get_the_exact_median_and_mad() -> None:
    rng = random.Random(5)
    for n in (1, 2, 3, 10, 101, 1000, SAMPLE_POINTS):
        values = sorted(rng.lognormvariate(2, 1) for _ in range(n))
        med = statistics.median(values)
        mad = statistics.median([abs(v - med) for v in values])
        assert robust_of(sample_sorted(values)) == Robust(med, mad), n


def populations(n: int, seed: int) -> dict[str, list[float]]:
    """Large scopes of several shapes: skewed, heavy-tailed, mostly tied, two clusters."""
    rng = random.Random(seed)
    return {
        "lognormal": sorted(rng.lognormvariate(3, 0.8) for _ in range(n)),
        "pareto": sorted(rng.paretovariate(1.2) for _ in range(n)),
        "ties": sorted(0.0 if rng.random() < 0.45 else float(rng.randrange(1, 40)) for _ in range(n)),
        "bimodal": sorted(rng.gauss(10, 1) if rng.random() < 0.7 else rng.gauss(60, 5) for _ in range(n)),
    }


@pytest.mark.parametrize("n", [1026, 50_000, 200_001])
def test_the_sampled_median_and_mad_are_within_the_documented_rank_bound(n: int) -> None:
    """docs/quality.md: the median is the scope's (lower) median; the MAD is off by at most (n-1)/1024 ranks.

    With m the sampled median and d the sampled MAD, of the scope's n scores at least
    (n-1)/2 lie within [m - d, m + d] and at most (n-1)/2 + (n-1)/1024 strictly inside.
    The exact MAD has n/2 on both sides of that count, so d is an exact MAD of the scope
    give or take (n-1)/1024 ranks of the deviations.
    """
    for name, values in populations(n, seed=n).items():
        got = robust_of(sample_sorted(values))
        assert got.median == values[(n - 1) // 2], name
        inside = sum(1 for v in values if abs(v - got.median) < got.mad)
        within = sum(1 for v in values if abs(v - got.median) <= got.mad)
        assert within >= (n - 1) / 2, (name, within)
        assert inside <= (n - 1) / 2 + (n - 1) / 1024, (name, inside)
        # and in value: the exact MAD's deviation rank brackets the sampled one
        med = statistics.median(values)
        devs = sorted(abs(v - got.median) for v in values)
        lo, hi = devs[math.floor((n - 1) / 2 - (n - 1) / 1024) - 1], devs[math.ceil((n - 1) / 2 + (n - 1) / 1024)]
        assert lo <= got.mad <= hi, (name, lo, got.mad, hi)
        if n % 2:
            assert got.median == med


@pytest.mark.timeout(120)
async def test_commit_lua_reads_the_same_sample_and_ranks(redis_url: str, prefix: str, aredis: aioredis.Redis) -> None:
    """commit.lua after a score: ZCOUNT/ZCARD equal SortedScores.rank, its sample equals sample_sorted bit for bit."""
    keys = Keyspace(prefix=prefix, shards=4)
    scope = Scope("acme", "web", "big")
    shard = keys.shard(scope)
    kp = keys.scope_prefix(scope, shard)
    rng = random.Random(11)
    scripts = Scripts()
    for n in (7, SAMPLE_POINTS, 4000):
        await aredis.delete(kp + "rank", kp + "agg", kp + "ver")
        ranked = SortedScores()
        members: dict[str, float] = {}
        for i in range(n - 1):
            v = rng.choice([0.0, 1.5, rng.lognormvariate(1, 1)])  # ties and doubles that need all 17 digits
            members[f"u{i}"] = v
            ranked.replace(None, v)
        await aredis.zadd(kp + "rank", {m: repr(v) for m, v in members.items()})
        new = 1.5
        ranked.replace(None, new)
        ks, args = Commit.pack(
            keys.uncommitted(shard), [Score(kp, "last", new, 1, "1-0", kp + "i:last", SAMPLE_POINTS)]
        )
        [reply] = Commit.decode(await scripts.run(aredis, Commit.NAME, ks, args))
        assert isinstance(reply, Committed) and reply.newest
        assert reply.rank == ranked.rank(new), n
        assert reply.sample == sample_sorted(ranked.values), n
        assert robust_of(reply.sample) == ranked.robust()


# ------------------------------------------------------------------ through the real service

MIN_EVENTS, MIN_INDIVIDUALS = 3, 4


def hand_rank(scores: dict[str, float], mine: float) -> float:
    """pscore by hand: (strictly below + half of the equal ones) / all, rounded like a response."""
    below = sum(1 for v in scores.values() if v < mine)
    ties = sum(1 for v in scores.values() if v == mine)
    return round((below + ties / 2) / len(scores), 3)


def hand_rzscore(scores: dict[str, float], mine: float) -> float:
    """rzscore by hand from the exact median and MAD (a small scope: the sample is every score)."""
    med = statistics.median(scores.values())
    mad = statistics.median([abs(v - med) for v in scores.values()])
    return 0.0 if mad == 0 else round((mine - med) / (MAD_SCALE * mad), 3)


async def rank_scores(client: aioredis.Redis, keys: Keyspace, scope: Scope) -> dict[str, float]:
    """The scope's committed scores, straight from its rank zset."""
    rows = await client.zrange(keys.scope_key(scope, "rank"), 0, -1, withscores=True)
    return {m.decode(): float(s) for m, s in rows}


@pytest.mark.timeout(120)
async def test_every_calibrated_field_through_the_service(redis_url: str, prefix: str, aredis: aioredis.Redis) -> None:
    """/discrete and /api/outliers against a hand count: learning at both thresholds, pscore, rzscore, novelty."""
    keys = Keyspace(prefix=prefix, shards=4)
    scope = Scope("acme", "web", "calib")
    # a..e do a common mix; e arrives late (the 5th individual); x does odd things
    rng = random.Random(2)
    plan = [(ident, rng.choice(["GET /", "GET /", "GET /a", "POST /b"])) for _ in range(6) for ident in "abcd"]
    plan += [
        ("e", "GET /"),
        ("x", "DELETE /all"),
        ("x", "DELETE /all"),
        ("e", "GET /a"),
        ("x", "GET /"),
        ("e", "GET /"),
    ]
    wset = worker_settings(
        redis_url, prefix, snapshot_max_age_ms=0, min_events=MIN_EVENTS, min_individuals=MIN_INDIVIDUALS
    )
    app = create_app(web_settings(redis_url, prefix, min_events=MIN_EVENTS, min_individuals=MIN_INDIVIDUALS))
    counts: dict[str, dict[str, int]] = {}
    seen_actions: set[str] = set()
    toggled = {"events": False, "individuals": False}
    async with running_worker(wset), serving(app) as base, aiohttp.ClientSession() as session:
        for i, (ident, action) in enumerate(plan):
            status, got = await post_json(
                session, f"{base}/discrete", {**scope._asdict(), "id": ident, "action": action}
            )
            assert status == 200, got
            mine = counts.setdefault(ident, {})
            novel = action not in mine
            new_action = action not in seen_actions
            mine[action] = mine.get(action, 0) + 1
            seen_actions.add(action)
            events, individuals = sum(mine.values()), len(counts)
            learning = events < MIN_EVENTS or individuals < MIN_INDIVIDUALS
            toggled["events"] |= individuals >= MIN_INDIVIDUALS and events == MIN_EVENTS
            toggled["individuals"] |= events >= MIN_EVENTS and individuals == MIN_INDIVIDUALS
            scores = await rank_scores(aredis, keys, scope)
            assert (got["novel"], got["new_action"], got["learning"]) == (novel, new_action, learning), (i, got)
            assert got["pscore"] == hand_rank(scores, scores[ident]), (i, got, scores)
            assert got["rzscore"] == hand_rzscore(scores, scores[ident]), (i, got, scores)
            assert got["bits_per_event"] == round(scores[ident] / min(events, 100), 3), (i, got)
        assert toggled == {"events": True, "individuals": True}
        assert got["id"] == "e" and got["novel"] is False and got["learning"] is False

        url = f"{base}/api/outliers?org=acme&source=web&pop=calib&limit=50"
        async with session.get(url) as resp:
            assert resp.status == 200
            body = await resp.json()
        scores = await rank_scores(aredis, keys, scope)
        rows = {r["id"]: r for r in body["outliers"]}
        assert set(rows) == set(counts)
        for ident, r in rows.items():
            assert r["pscore"] == hand_rank(scores, scores[ident]), r
            assert r["rzscore"] == hand_rzscore(scores, scores[ident]), r
            assert r["bits_per_event"] == round(scores[ident] / min(sum(counts[ident].values()), 100), 3), r
            assert r["learning"] == (sum(counts[ident].values()) < MIN_EVENTS), r
        assert rows["x"]["learning"] is False and rows["a"]["learning"] is False
        for flag, want in (("1", set(counts)), ("true", set(counts)), ("0", set(counts)), ("false", set(counts))):
            async with session.get(f"{url}&exclude_learning={flag}") as resp:
                assert resp.status == 200
                assert {r["id"] for r in (await resp.json())["outliers"]} == want
        # one more individual with a single event: learning, and left out on request
        status, got = await post_json(
            session, f"{base}/discrete", {**scope._asdict(), "id": "newbie", "action": "GET /"}
        )
        assert status == 200 and got["learning"] is True and got["novel"] is True and got["new_action"] is False
        async with session.get(f"{url}&exclude_learning=1") as resp:
            assert {r["id"] for r in (await resp.json())["outliers"]} == set(counts)
        async with session.get(url) as resp:
            assert {r["id"] for r in (await resp.json())["outliers"]} == set(counts) | {"newbie"}
        async with session.get(f"{base}/api/individual?org=acme&source=web&pop=calib&id=newbie") as resp:
            one = await resp.json()
        scores = await rank_scores(aredis, keys, scope)
        assert one["learning"] is True and one["pscore"] == hand_rank(scores, scores["newbie"])
        assert one["rzscore"] == hand_rzscore(scores, scores["newbie"])
        for bad in ("yes", "2", "", "TRUE"):
            async with session.get(f"{url}&exclude_learning={bad}") as resp:
                err = await resp.json()
                assert resp.status == 400 and err["field"] == "exclude_learning", err
        async with session.get(f"{url}&exclude_learning=1&exclude_learning=0") as resp:
            assert resp.status == 400 and (await resp.json())["field"] == "exclude_learning"


@pytest.mark.timeout(60)
async def test_a_scope_below_min_individuals_is_all_learning(redis_url: str, prefix: str) -> None:
    """With the defaults (10 events, 30 individuals) a young scope is learning, and excluding it leaves nothing."""
    app = create_app(web_settings(redis_url, prefix))
    async with running_worker(worker_settings(redis_url, prefix)), serving(app) as base, aiohttp.ClientSession() as s:
        for _ in range(12):
            status, got = await post_json(
                s, f"{base}/discrete", {"org": "o", "source": "s", "pop": "p", "id": "busy", "action": "A"}
            )
            assert status == 200 and got["learning"] is True, got  # 12 events but 1 individual < 30
        url = f"{base}/api/outliers?org=o&source=s&pop=p"
        async with s.get(url) as resp:
            assert [(r["id"], r["learning"]) for r in (await resp.json())["outliers"]] == [("busy", True)]
        async with s.get(url + "&exclude_learning=1") as resp:
            body = await resp.json()
            assert resp.status == 200 and body["outliers"] == [] and body["individuals"] == 1


def test_the_selection_gives_the_median_and_mad_a_sort_gives() -> None:
    """robust_of selects the MAD from two sorted runs; it must be the sorted deviations' median, bit for bit."""
    rng = random.Random(8)
    for trial in range(3000):
        m = rng.randrange(1, 60)
        kind = trial % 3
        if kind == 0:
            values = sorted(rng.random() * 100 for _ in range(m))
        elif kind == 1:
            values = sorted(float(rng.randrange(4)) for _ in range(m))  # many ties, MAD often 0
        else:
            values = sorted(rng.lognormvariate(0, 2) * 1e-3 for _ in range(m))  # values that round
        med = statistics.median(values)
        want = Robust(med, statistics.median(sorted(abs(v - med) for v in values)))
        assert robust_of(values) == want, values
        ranked = SortedScores()
        for v in values:
            ranked.replace(None, v)
        assert ranked.robust() == want
        assert ranked.robust(points=9) == robust_of(sample_sorted(values, 9))  # the sampled path
