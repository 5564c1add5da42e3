"""MemoryEngine (common/engine.py): counters, aggregates and results recomputed from scratch."""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter, defaultdict

import pytest

from binormal.common.engine import MemoryEngine, check_weight_cap, is_dominated
from binormal.common.keys import Scope
from binormal.common.schema import Event
from binormal.common.scoring import Snapshot, action_zscore, contribution, score_direct
from tests.support.events import engine_events, population_truth, raw_truth


def pstdev_z(value: float, values: list[float]) -> float:
    """(value - mean) / population std, 0 when the std is 0: the definition, from scratch."""
    sigma = statistics.pstdev(values)
    if sigma <= 1e-9 * max(1.0, abs(statistics.fmean(values))):
        return 0.0
    return (value - statistics.fmean(values)) / sigma


def test_counters_match_recount() -> None:
    events = engine_events(1, 3000)
    eng = MemoryEngine()
    eng.run(events)
    per_ind: dict[Scope, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for e in events:
        per_ind[e.scope][e.id][e.action] += 1
    assert set(eng.scopes) == set(per_ind)
    for scope, inds in per_ind.items():
        st = eng.scopes[scope]
        assert {i: dict(c) for i, c in inds.items()} == st.individuals
        pop: Counter[str] = Counter()
        for c in inds.values():
            pop.update(c)
        assert st.pop == dict(pop)
        for a in pop:
            assert st.sq[a] == sum(c[a] ** 2 for c in inds.values())
            assert st.k[a] == sum(1 for c in inds.values() if c[a] > 0)
    assert set(eng.individuals()) == {(scope, i) for scope in per_ind for i in per_ind[scope]}


def test_every_result_against_recomputation() -> None:
    """Per event: score = score_direct, zscore and actionzscore = definitions over current state."""
    events = engine_events(2, 1500)
    eng = MemoryEngine()
    for e in events:
        r = eng.process(e)
        st = eng.scopes[e.scope]
        counts = st.individuals[e.id]
        # score against the population including this event (staleness 0)
        exact = score_direct(counts, st.pop)
        assert abs(st.scores[e.id] - exact) <= 1e-9 * max(1.0, exact)
        assert r["score"] == round(st.scores[e.id], 3)
        assert r["count"] == sum(counts.values())
        assert r["thisActionCount"] == counts[e.action]
        # aggregates vs the current score of every individual, from scratch
        scores = list(st.scores.values())
        assert st.agg.n == len(scores)
        assert math.isclose(st.agg.total, math.fsum(scores), rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(st.agg.total_sq, math.fsum(s * s for s in scores), rel_tol=1e-9, abs_tol=1e-9)
        z = pstdev_z(st.scores[e.id], scores)
        assert abs(r["zscore"] - round(z, 3)) <= 0.0011, (r, z)
        # actionzscore over the individuals that did this action
        did = [c[e.action] for c in st.individuals.values() if c.get(e.action, 0) > 0]
        az = pstdev_z(counts[e.action], [float(v) for v in did])
        assert abs(r["actionzscore"] - round(az, 3)) <= 0.0011, (r, did)
        assert r["actionzscore"] == round(
            action_zscore(counts[e.action], sum(did), sum(v * v for v in did), len(did)), 3
        )
        assert r["timestamp"] == e.ts
        assert r["event_id"] == e.event_id
        assert (r["org"], r["source"], r["pop"], r["id"], r["action"]) == (e.org, e.source, e.pop, e.id, e.action)


def test_current_matches_last_result_and_from_scratch() -> None:
    events = engine_events(3, 2000)
    eng = MemoryEngine()
    last = {}
    for e in events:
        last[(e.scope, e.id)] = eng.process(e)
    for scope, st in eng.scopes.items():
        scores = list(st.scores.values())
        for ident in st.individuals:
            cur = eng.current(scope, ident)
            assert cur["score"] == last[(scope, ident)]["score"]
            assert cur["count"] == last[(scope, ident)]["count"]
            assert abs(cur["zscore"] - round(pstdev_z(st.scores[ident], scores), 3)) <= 0.0011


def test_planted_outlier_has_highest_zscore() -> None:
    eng = MemoryEngine()
    eng.run(engine_events(4, 4000))
    scope = Scope("acme", "web", "pop0")
    zs = {i: eng.current(scope, i)["zscore"] for i in eng.scopes[scope].individuals}
    top = max(zs, key=lambda i: zs[i])
    assert top == "evil"
    assert zs["evil"] > 3.0
    others = sorted(zs.values())[:-1]
    assert zs["evil"] > max(others) + 1.0
    # and the explanation names the rare actions as over-used
    r = eng.process(Event("acme", "web", "pop0", "evil", "GET /admin"))
    kinds = {i["action"]: i["kind"] for i in r["explain"]}
    assert kinds.get("GET /admin") == "over"
    assert kinds.get("GET /") == "missing"


def test_single_action_scope_scores_zero() -> None:
    eng = MemoryEngine()
    rng = random.Random(5)
    for i in range(300):
        r = eng.process(Event("o", "s", "solo", f"id{rng.randrange(20)}", "the only action", ts=i))
        assert r["score"] == 0.0 and r["zscore"] == 0.0 and math.isfinite(r["actionzscore"])
        assert r["explain"] == []
    st = eng.scopes[Scope("o", "s", "solo")]
    assert set(st.scores.values()) == {0.0}
    assert st.agg.n == len(st.individuals) and st.agg.total == 0.0


def test_first_event_of_a_scope() -> None:
    eng = MemoryEngine()
    r = eng.process(Event("o", "s", "p", "alice", "a"), timestamp=1234)
    assert r["score"] == 0.0 and r["zscore"] == 0.0 and r["actionzscore"] == 0.0
    assert r["count"] == 1 and r["thisActionCount"] == 1 and r["timestamp"] == 1234
    assert r["event_id"] is None
    r2 = eng.process(Event("o", "s", "p", "bob", "b"))
    assert r2["timestamp"] == 0 and r2["zscore"] == 0.0
    for _ in range(8):
        eng.process(Event("o", "s", "p", "alice", "a"))
    # p_b = 1/10 now: one event that is "b" carries surprise, one that is "a" none
    assert eng.process(Event("o", "s", "p", "carol", "b"))["score"] > 0
    assert eng.process(Event("o", "s", "p", "dave", "a"))["score"] == 0.0


@pytest.mark.parametrize("refresh_every", [1, 7, 50])
def test_refresh_every_reuses_a_stale_snapshot(refresh_every: int) -> None:
    events = engine_events(6, 1500, scopes=2)
    eng = MemoryEngine(refresh_every=refresh_every)
    fresh = MemoryEngine()
    history: dict[Scope, list[dict[str, int]]] = defaultdict(list)  # pop after each event of the scope
    refreshes = 0
    prev_snap: dict[Scope, Snapshot] = {}
    stale_seen = 0
    for e in events:
        r = eng.process(e)
        fresh.process(e)
        st = eng.scopes[e.scope]
        history[e.scope].append(dict(st.pop))
        snap = st.snapshot
        assert snap is not None
        if prev_snap.get(e.scope) is not snap:
            refreshes += 1
            prev_snap[e.scope] = snap
            assert snap.counts == st.pop  # a refresh reads the current population
        # the snapshot is the population as of one of the last refresh_every events of the scope
        recent = history[e.scope][-refresh_every:]
        assert snap.counts in recent
        assert snap.covers(st.individuals[e.id])  # a new action always forces a refresh
        assert math.isfinite(st.scores[e.id])
        assert st.scores[e.id] == snap.score(st.individuals[e.id])
        assert r["score"] == round(st.scores[e.id], 3)
        if snap.counts != st.pop:
            stale_seen += 1
    if refresh_every == 1:
        assert stale_seen == 0
        assert eng.scopes.keys() == fresh.scopes.keys()
        for scope in eng.scopes:
            assert eng.scopes[scope].scores == fresh.scopes[scope].scores
    else:
        assert stale_seen > 0
        assert refreshes < len(events) // 2
    # counters never depend on the snapshot
    for scope in eng.scopes:
        assert eng.scopes[scope].individuals == fresh.scopes[scope].individuals
        assert eng.scopes[scope].pop == fresh.scopes[scope].pop


def test_cap_normalises_long_histories() -> None:
    eng = MemoryEngine(cap=10)
    for i in range(30):
        eng.process(Event("o", "s", "p", "b", "x"))
        eng.process(Event("o", "s", "p", "a", "x" if i % 3 else "y"))
    st = eng.scopes[Scope("o", "s", "p")]
    assert st.scores["a"] == pytest.approx(score_direct(st.individuals["a"], st.pop, cap=10), abs=1e-12)
    assert st.scores["a"] != pytest.approx(score_direct(st.individuals["a"], st.pop, cap=100), abs=1e-6)


# ---------------------------------------------------------------- dominance guard


@pytest.mark.parametrize("weight_cap", [0, 100, 250])
def test_weight_cap_population_is_the_sum_of_contributions(weight_cap: int) -> None:
    """``pop`` = sum of each individual's c(x); actionzscore's s1 stays the raw sum; scores use the capped pop."""
    events = engine_events(2, 6000, individuals=12)  # ~170 events each: past W = 100 by far
    eng = MemoryEngine(weight_cap=weight_cap)
    results = eng.run(events)
    for st in eng.scopes.values():
        pop, sqs, ks = population_truth(st.individuals, weight_cap)
        assert (st.pop, st.sq, st.k) == (pop, sqs, ks)
        if weight_cap:
            assert st.raw == raw_truth(st.individuals)
        else:
            assert st.raw == {} and st.pop == raw_truth(st.individuals)
    last = results[-1]
    st = eng.scopes[events[-1].scope]
    # the last event was scored against its scope's final (capped) population
    assert st.scores[events[-1].id] == Snapshot(dict(st.pop)).score(st.individuals[events[-1].id])
    raw_sum = sum(c.get(events[-1].action, 0) for c in st.individuals.values())
    s2, kk = st.sq[events[-1].action], st.k[events[-1].action]
    x = st.individuals[events[-1].id][events[-1].action]
    assert last["actionzscore"] == round(action_zscore(x, raw_sum, s2, kk), 3)


def test_guard_caps_a_heavy_individuals_weight() -> None:
    light = [Event("o", "s", "p", f"u{i % 20}", "common" if i % 5 else "rare") for i in range(1000)]
    heavy = [Event("o", "s", "p", "heavy", "rare") for _ in range(3000)]
    on, off = MemoryEngine(weight_cap=100), MemoryEngine()
    on.run(light + heavy)
    off.run(light + heavy)
    scope = Scope("o", "s", "p")
    assert on.scopes[scope].pop == {"common": 800, "rare": 200 + 100}
    assert off.scopes[scope].pop == {"common": 800, "rare": 3200}
    assert contribution({"rare": 3000}, 100) == {"rare": 100}
    assert on.dominated(scope) == off.dominated(scope) == {"id": "heavy", "share": 0.75}


def test_weight_cap_below_the_normalisation_cap_is_refused() -> None:
    assert check_weight_cap(0, 100) == 0 and check_weight_cap(100, 100) == 100 and check_weight_cap(101, 100) == 101
    with pytest.raises(ValueError, match="at least the normalisation cap 100"):
        MemoryEngine(weight_cap=99)
    assert MemoryEngine(cap=50, weight_cap=None).weight_cap == 50 and MemoryEngine().weight_cap == 0  # None: W = N


def test_dominance_needs_enough_events_and_more_than_the_share() -> None:
    assert not is_dominated(200, 999, 0.2, 1000)  # a young scope is not flagged
    assert not is_dominated(200, 1000, 0.2, 1000)  # exactly the share: not more
    assert is_dominated(201, 1000, 0.2, 1000)
    assert not is_dominated(1000, 1000, 1.0, 1)  # share 1 never flags
    eng = MemoryEngine(dominance_min_events=10)
    eng.run([Event("o", "s", "p", f"u{i}", "a") for i in range(9)])
    assert eng.dominated(Scope("o", "s", "p")) is None
    eng.run([Event("o", "s", "p", "u0", "a") for i in range(3)])
    assert eng.dominated(Scope("o", "s", "p")) == {"id": "u0", "share": 0.333}


def test_an_excluded_id_is_scored_but_never_enters_the_population() -> None:
    events = engine_events(5, 2000)
    evil = (Scope("acme", "web", "pop0"), "evil")
    with_evil = MemoryEngine(excluded={evil})
    results = with_evil.run(events)
    without = MemoryEngine()
    without.run([e for e in events if (e.scope, e.id) != evil])
    for scope, st in without.scopes.items():
        mine = with_evil.scopes[scope]
        assert (mine.pop, mine.sq, mine.k) == (st.pop, st.sq, st.k)
        for ident, counts in st.individuals.items():
            assert mine.individuals[ident] == counts
    evil_results = [r for r in results if r["id"] == "evil"]
    assert with_evil.scopes[evil[0]].individuals["evil"] == dict(Counter(e.action for e in events if e.id == "evil"))
    # its rare actions are its own only: scored against the population plus them, never infinite
    assert evil_results and all(math.isfinite(r["score"]) and math.isfinite(r["zscore"]) for r in evil_results)
    assert evil_results[-1]["score"] > 0 and evil_results[-1]["muted"] is False
    # every other result is the one the run without it gives, except zscore (evil's score is in the aggregates)
    others = [r for r in results if r["id"] != "evil"]
    again = MemoryEngine().run([e for e in events if (e.scope, e.id) != evil])
    assert [(r["score"], r["explain"], r["actionzscore"]) for r in others] == [
        (r["score"], r["explain"], r["actionzscore"]) for r in again
    ]


def test_calibrated_fields_from_scratch() -> None:
    """pscore, rzscore, learning, novel and new_action of every result, recomputed from the engine's state."""
    events = engine_events(9, 2500, scopes=2, individuals=45)
    eng = MemoryEngine(min_events=10, min_individuals=30)
    seen: dict[Scope, set[str]] = defaultdict(set)
    done: dict[tuple[Scope, str], set[str]] = defaultdict(set)
    learning_seen = Counter()
    for e in events:
        r = eng.process(e)
        st = eng.scopes[e.scope]
        values = list(st.scores.values())
        mine = st.scores[e.id]
        below, ties = sum(v < mine for v in values), sum(v == mine for v in values)
        assert r["pscore"] == round((below + ties / 2) / len(values), 3)
        med = statistics.median(values)  # fewer than 1025 individuals: the sample is every score
        mad = statistics.median([abs(v - med) for v in values])
        assert r["rzscore"] == (0.0 if mad == 0 else round((mine - med) / (1.4826 * mad), 3))
        learning = sum(st.individuals[e.id].values()) < 10 or len(values) < 30
        assert r["learning"] is learning
        learning_seen[learning] += 1
        assert r["novel"] is (e.action not in done[(e.scope, e.id)])
        assert r["new_action"] is (e.action not in seen[e.scope])
        done[(e.scope, e.id)].add(e.action)
        seen[e.scope].add(e.action)
        cur = eng.current(e.scope, e.id)
        assert (cur["pscore"], cur["rzscore"], cur["learning"]) == (r["pscore"], r["rzscore"], r["learning"])
    assert learning_seen[True] > 50 and learning_seen[False] > 500


def test_rzscore_uses_the_median_and_mad_of_the_last_refresh() -> None:
    """Between snapshot refreshes the scope's median and MAD stay as sampled at the last refresh point."""
    events = engine_events(2, 800, scopes=1)
    eng = MemoryEngine(refresh_every=25)
    changed_without_refresh = 0
    prev: tuple[object, object] | None = None
    for e in events:
        st = eng.scopes.get(e.scope)
        before = (st.snapshot, st.robust) if st is not None else None
        eng.process(e)
        st = eng.scopes[e.scope]
        if before is not None and st.snapshot is before[0] and st.robust != before[1]:
            changed_without_refresh += 1
        if st.snapshot is not (before[0] if before else None):
            assert st.robust == st.ranked.robust()  # refreshed right after this event's commit
        prev = (st.snapshot, st.robust)
    assert prev is not None and changed_without_refresh == 0
