"""common/scoring.py held against scipy, numpy/statistics and the definitions of docs/scoring.md."""

from __future__ import annotations

import math
import random
import statistics
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from binormal.common.scoring import (
    Snapshot,
    action_bits,
    action_zscore,
    contribution,
    contribution_delta,
    count_event,
    log_pmf,
    mode,
    normalise,
    score_direct,
    zscore,
)

LN2 = math.log(2.0)
NS = [0, 1, 2, 3, 5, 10, 37, 100, 1000]
PS = [0.0, 1e-12, 1e-6, 0.001, 0.1, 0.3, 0.5, 0.66, 0.9, 0.999999, 1.0 - 1e-9, 1.0]


def xs_for(n: int) -> list[int]:
    """Every x for small n; for n = 1000 the edges, the middle and a stride."""
    if n <= 100:
        return list(range(n + 1))
    return sorted({0, 1, 2, n // 2 - 1, n // 2, n // 2 + 1, n - 2, n - 1, n, *range(0, n + 1, 37)})


def close(a: float, b: float, rel: float = 1e-9, abs_: float = 1e-9) -> bool:
    """Equal infinities, or finite values within tolerance."""
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= max(abs_, rel * max(abs(a), abs(b)))


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("p", PS)
def test_log_pmf_matches_scipy(n: int, p: float) -> None:
    xs = xs_for(n)
    ref = binom.logpmf(np.array(xs), n, p)
    for x, r in zip(xs, ref):
        got = log_pmf(x, n, p)
        assert close(got, float(r)), (x, n, p, got, float(r))


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("p", PS)
def test_mode_is_scipys_argmax(n: int, p: float) -> None:
    ref = binom.logpmf(np.arange(n + 1), n, p)
    m = mode(n, p)
    assert 0 <= m <= n
    # The mode maximises the pmf (ties, e.g. (n+1)p integral, may pick either).
    assert close(float(ref[m]), float(ref.max()))


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("p", PS)
def test_action_bits_matches_scipy(n: int, p: float) -> None:
    """bits = log2 P(scipy's own mode) - log2 P(x), from scipy's logpmf and pmf."""
    full = binom.logpmf(np.arange(n + 1), n, p)
    m_ref = int(np.argmax(full))
    pmf = binom.pmf(np.arange(n + 1), n, p)
    assert int(np.argmax(pmf)) == m_ref or math.isclose(pmf[m_ref], pmf.max())
    for x in xs_for(n):
        ref = float((full[m_ref] - full[x]) / LN2)
        got = action_bits(x, n, p)
        assert got >= 0.0
        assert close(got, ref, rel=1e-9, abs_=1e-8), (x, n, p, got, ref)
        if pmf[x] > 1e-300 and pmf[m_ref] > 0:
            # The same number through the pmf itself, where it does not underflow.
            assert close(got, math.log2(pmf[m_ref] / pmf[x]), rel=1e-7, abs_=1e-7)


def test_edges_are_exact() -> None:
    # p = 0: only x = 0 is possible; p = 1: only x = n.
    assert log_pmf(0, 7, 0.0) == 0.0 and log_pmf(1, 7, 0.0) == -math.inf
    assert log_pmf(7, 7, 1.0) == 0.0 and log_pmf(6, 7, 1.0) == -math.inf
    assert action_bits(7, 7, 1.0) == 0.0 and action_bits(0, 7, 1.0) == math.inf
    assert action_bits(0, 7, 0.0) == 0.0 and action_bits(3, 7, 0.0) == math.inf
    # n = 0: nothing happened, nothing is surprising.
    assert log_pmf(0, 0, 0.3) == 0.0 and action_bits(0, 0, 0.3) == 0.0
    # out of range
    assert log_pmf(-1, 5, 0.5) == -math.inf and log_pmf(6, 5, 0.5) == -math.inf
    # log space never underflows where the pmf itself would.
    assert binom.pmf(1000, 1000, 1e-6) == 0.0
    assert close(log_pmf(1000, 1000, 1e-6), 1000 * math.log(1e-6))


def test_seed_login_example() -> None:
    """TRYME's login example: p = 0.66; 0 of 4 is about 1.34 %, 10 of 10 about 1.57 %."""
    p0 = math.exp(log_pmf(0, 4, 0.66))
    p10 = math.exp(log_pmf(10, 10, 0.66))
    assert round(100 * p0, 2) == 1.34
    assert round(100 * p10, 2) == 1.57
    assert math.isclose(p0, binom.pmf(0, 4, 0.66), rel_tol=1e-12)
    assert math.isclose(p10, binom.pmf(10, 10, 0.66), rel_tol=1e-12)
    assert math.isclose(p0, 0.34**4, rel_tol=1e-12)
    assert math.isclose(p10, 0.66**10, rel_tol=1e-12)


# --- normalise -------------------------------------------------------------------------


def test_normalise_identity_under_cap() -> None:
    counts = {"a": 3, "b": 0, "c": 97}
    assert normalise(counts, 100) == (100, counts)
    assert normalise({}, 100) == (0, {})
    assert normalise({"a": 0}, 100) == (0, {"a": 0})


def test_normalise_rounds_half_up() -> None:
    # 1 * 100/200 = 0.5 -> 1 and 199 * 100/200 = 99.5 -> 100 (half up, not to even).
    assert normalise({"a": 1, "b": 199}, 100) == (100, {"a": 1, "b": 100})
    assert normalise({"a": 3, "b": 197}, 100) == (100, {"a": 2, "b": 99})
    # 5 * 10/20 = 2.5 -> 3, 15 * 10/20 = 7.5 -> 8; below one half rounds down.
    assert normalise({"a": 5, "b": 15}, 10) == (10, {"a": 3, "b": 8})
    assert normalise({"a": 1, "b": 299}, 100) == (100, {"a": 0, "b": 100})


def test_normalise_is_exact_integer_arithmetic() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        k = rng.randint(1, 6)
        big = rng.random() < 0.3
        counts = {f"a{i}": rng.randint(0, 10**18 if big else 5000) for i in range(k)}
        cap = rng.choice([1, 2, 10, 100, 1000])
        n = sum(counts.values())
        n_norm, norm = normalise(counts, cap)
        if n == 0:
            assert n_norm == 0
            continue
        assert n_norm == min(n, cap)
        for a, x in counts.items():
            exact = math.floor(Fraction(x * n_norm, n) + Fraction(1, 2))
            assert norm[a] == exact, (counts, cap, a)
            assert 0 <= norm[a] <= n_norm
    # Where float arithmetic would be wrong: x*n'/n = 0.5 - 1e-19 must round down.
    n = 10**19
    x = n // 200 - 1  # x * 100 / n = 0.5 - 1e-17
    assert math.floor(x * 100 / n + 0.5) == 1  # floats get it wrong
    assert normalise({"a": x, "b": n - x}, 100)[1]["a"] == 0


# --- zscore / action_zscore --------------------------------------------------------------

SCORE_LISTS = [
    [1.0, 2.0, 3.0, 4.0],
    [0.0, 0.0, 0.0, 10.0],
    [12.5, 3.25, 7.0, 7.0, 0.1, 99.0],
    [1e-3, 2e-3, 5e-3],
    [1234.5, 1234.75, 1236.0, 1240.0],
]


@pytest.mark.parametrize("values", SCORE_LISTS)
def test_zscore_against_statistics(values: list[float]) -> None:
    mu = statistics.fmean(values)
    sigma = statistics.pstdev(values)
    total = math.fsum(values)
    total_sq = math.fsum(v * v for v in values)
    for v in values:
        got = zscore(v, len(values), total, total_sq)
        assert math.isclose(got, (v - mu) / sigma, rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(got, (v - np.mean(values)) / np.std(values), rel_tol=1e-9, abs_tol=1e-9)


def test_zscore_zero_when_sigma_zero() -> None:
    assert zscore(3.0, 3, 9.0, 27.0) == 0.0
    assert zscore(5.0, 1, 5.0, 25.0) == 0.0
    assert zscore(1.0, 0, 0.0, 0.0) == 0.0
    # Equal large scores: E[x^2] - E[x]^2 leaves cancellation noise, still 0.
    vals = [1234.567891] * 7
    assert zscore(vals[0], 7, math.fsum(vals), math.fsum(v * v for v in vals)) == 0.0


ACTION_LISTS = [[1, 2, 5, 9], [3, 3, 4], [1, 1, 1, 1, 50], [7, 8], [100, 1, 1, 2, 3, 5, 8, 13]]


@pytest.mark.parametrize("counts", ACTION_LISTS)
def test_action_zscore_against_numpy(counts: list[int]) -> None:
    k, s1, s2 = len(counts), sum(counts), sum(c * c for c in counts)
    for x in counts:
        ref = (x - np.mean(counts)) / np.std(counts)
        assert math.isclose(action_zscore(x, s1, s2, k), ref, rel_tol=1e-12, abs_tol=1e-12)
        assert math.isclose(
            action_zscore(x, s1, s2, k), (x - statistics.mean(counts)) / statistics.pstdev(counts), rel_tol=1e-12
        )


def test_action_zscore_degenerate() -> None:
    assert action_zscore(4, 4, 16, 1) == 0.0  # one individual
    assert action_zscore(2, 6, 12, 3) == 0.0  # all equal
    assert action_zscore(0, 0, 0, 0) == 0.0  # nobody did it


# --- Snapshot: Z[n'] shortcut and explain -----------------------------------------------


def random_population(rng: random.Random) -> dict[str, int]:
    k = rng.randint(2, 30)
    pop = {f"act{i}": rng.choice([1, 2, rng.randint(1, 50), rng.randint(1, 10_000)]) for i in range(k)}
    if rng.random() < 0.3:
        pop["dominant"] = 10**7  # leaves the other p_a tiny
    return pop


def test_snapshot_score_equals_direct() -> None:
    rng = random.Random(2024)
    for _ in range(300):
        pop = random_population(rng)
        cap = rng.choice([5, 100, 100, 250])
        snap = Snapshot(dict(pop), cap=cap)
        actions = list(pop)
        for _ in range(5):
            chosen = rng.sample(actions, rng.randint(1, min(6, len(actions))))
            counts = {a: rng.randint(1, rng.choice([3, 40, 2000])) for a in chosen}
            got = snap.score(counts)
            ref = score_direct(counts, pop, cap)
            assert abs(got - ref) <= 1e-9 * max(1.0, ref), (pop, counts, got, ref)
            assert got >= 0.0


def test_snapshot_single_action_scores_zero() -> None:
    snap = Snapshot({"only": 42})
    assert snap.score({"only": 7}) == 0.0
    assert snap.score({"only": 700}) == 0.0
    assert snap.explain({"only": 7}) == []
    assert snap.score({}) == 0.0


def test_snapshot_bits0_is_z() -> None:
    pop = {"a": 60, "b": 30, "c": 10}
    snap = Snapshot(pop)
    for n in (1, 8, 100):
        assert snap.bits0(n) == math.fsum(action_bits(0, n, c / 100) for c in pop.values())
        assert snap.bits0(n) == score_direct({"never-seen": n}, pop)  # did nothing the population does


def test_explain_planted_outlier() -> None:
    pop = {"login": 880, "view": 100, "logout": 19, "admin": 1}
    counts = {"admin": 20, "view": 2}  # never logged in, lots of admin
    snap = Snapshot(dict(pop))
    items = snap.explain(counts, limit=10)
    assert [i["action"] for i in items][:2] == ["admin", "login"]
    by = {i["action"]: i for i in items}
    assert by["admin"]["kind"] == "over" and by["admin"]["observed"] == 20 and by["admin"]["count"] == 20
    assert by["login"]["kind"] == "missing" and by["login"]["observed"] == 0 and by["login"]["count"] == 0
    assert by["login"]["expected"] == round(22 * 0.88, 3)
    # view: 2 of 22 is its most likely count (floor(23 * 0.1)); logout: 0 is. No bits, not listed.
    assert "view" not in by and "logout" not in by
    bits = [float(str(i["bits"])) for i in items]
    assert bits == sorted(bits, reverse=True)
    for i, b in zip(items, bits):
        a = str(i["action"])
        assert b == round(action_bits(counts.get(a, 0), 22, pop[a] / 1000), 3)
        assert b > 0
    assert math.isclose(sum(bits), snap.score(counts), abs_tol=0.003)
    assert len(snap.explain(counts, limit=1)) == 1


# --- property tests ---------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=2000),
    frac=st.floats(min_value=0.0, max_value=1.0),
    p=st.one_of(
        st.floats(min_value=0.0, max_value=1.0),
        st.sampled_from([0.0, 1.0, 1e-12, 1e-300, 5e-324, 1 - 1e-16, 0.5]),
    ),
)
def test_bits_never_negative(n: int, frac: float, p: float) -> None:
    x = round(frac * n)
    b = action_bits(x, n, p)
    assert b >= 0.0
    assert not math.isnan(b)
    assert action_bits(mode(n, p), n, p) == 0.0


@st.composite
def modal_case(draw: st.DrawFn) -> tuple[dict[str, int], int, dict[str, int]]:
    """A population and n' whose modes sum to n' (only then can an individual have them all)."""
    k = draw(st.integers(min_value=2, max_value=5))
    pop = {f"a{i}": draw(st.integers(min_value=1, max_value=10**6)) for i in range(k)}
    n_norm = draw(st.integers(min_value=1, max_value=100))
    total = sum(pop.values())
    modes = {a: mode(n_norm, c / total) for a, c in pop.items()}
    assume(sum(modes.values()) == n_norm)
    return pop, n_norm, modes


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(case=modal_case(), mult=st.integers(min_value=1, max_value=50))
def test_modal_individual_scores_zero(case: tuple[dict[str, int], int, dict[str, int]], mult: int) -> None:
    pop, n_norm, modes = case
    snap = Snapshot(dict(pop), cap=100)
    # n' <= cap: normalisation is the identity.
    counts = {a: x for a, x in modes.items() if x}
    assert normalise(counts, 100) == (n_norm, counts)
    assert score_direct(counts, pop, 100) <= 1e-9
    assert snap.score(counts) <= 1e-9
    if n_norm == 100:
        # A long history whose normalised counts are the modes scores 0 as well.
        scaled = {a: mult * x for a, x in counts.items()}
        assert normalise(scaled, 100) == (100, counts)
        assert snap.score(scaled) <= 1e-9


@settings(max_examples=150, deadline=None)
@given(
    pop=st.dictionaries(st.text(min_size=1, max_size=3), st.integers(1, 10**5), min_size=1, max_size=12),
    data=st.data(),
)
def test_shortcut_equals_direct_property(pop: dict[str, int], data: st.DataObject) -> None:
    actions = sorted(pop)
    mine = data.draw(st.lists(st.sampled_from(actions), min_size=1, max_size=len(actions), unique=True))
    counts = {a: data.draw(st.integers(1, 500)) for a in mine}
    got = Snapshot(dict(pop)).score(counts)
    ref = score_direct(counts, pop)
    assert abs(got - ref) <= 1e-9 * max(1.0, ref)


def test_explain_equals_brute_force() -> None:
    """explain() ranks own actions and never-done ones; the top items equal a full sort."""
    rng = random.Random(99)
    for _ in range(300):
        pop = random_population(rng)
        snap = Snapshot(dict(pop), cap=rng.choice([10, 100]))
        chosen = rng.sample(list(pop), rng.randint(1, min(5, len(pop))))
        counts = {a: rng.randint(0, 300) for a in chosen}
        n_norm, norm = normalise(counts, snap.cap)
        full = sorted(
            ((action_bits(norm.get(a, 0), n_norm, pop[a] / snap.total), a) for a in pop),
            key=lambda t: (-t[0], t[1]),
        )
        for limit in (1, 3, 5, 50):
            ref = [(a, round(b, 3)) for b, a in full if b > 0.0][:limit]
            got = [(i["action"], i["bits"]) for i in snap.explain(counts, limit)]
            assert got == ref, (pop, counts, limit)


# --- docs/scoring.md worked example ----------------------------------------------------------


def test_docs_worked_example() -> None:
    """The numbers printed in docs/scoring.md section 7."""
    from pathlib import Path

    from binormal.common.engine import MemoryEngine
    from binormal.common.keys import Scope
    from binormal.common.schema import Event

    login, post, admin = "GET /login", "POST /login", "GET /admin"
    events = []
    for names, mix in (("alice bob carol dave erin frank grace heidi", (6, 3, 0)), ("ivan judy", (5, 3, 2))):
        for name in names.split():
            left = dict(zip((login, post, admin), mix))
            while any(left.values()):
                for a in left:
                    if left[a]:
                        events.append(Event("acme", "webserver", "auth_getpost", name, a))
                        left[a] -= 1
    for a in [login, admin, admin, login] + [admin] * 4:
        events.append(Event("acme", "webserver", "auth_getpost", "mallory", a))
    eng = MemoryEngine()
    r = eng.run(events)[-1]
    assert (r["score"], r["count"], r["zscore"], r["thisActionCount"], r["actionzscore"]) == (19.33, 8, 2.975, 6, 1.414)
    assert [(i["action"], i["observed"], i["expected"], i["bits"], i["kind"]) for i in r["explain"]] == [
        (admin, 6, 0.8, 14.212, "over"),
        (login, 2, 4.8, 2.755, "missing"),
        (post, 0, 2.4, 2.363, "missing"),
    ]
    st = eng.scopes[Scope("acme", "webserver", "auth_getpost")]
    pop = st.pop
    assert pop == {login: 60, post: 30, admin: 10}
    table = {
        login: (5, 0.278692, 2, 0.041288, 2.754888, 8.732167),
        post: (2, 0.296475, 0, 0.057648, 2.362570, 2.362570),
    }
    table[admin] = (0, 0.430467, 6, 0.00002268, 14.212195, 0.0)
    counts = st.individuals["mallory"]
    for a, (m, pm, x, px, bits, bits0) in table.items():
        p = pop[a] / 100
        assert mode(8, p) == m and counts.get(a, 0) == x
        assert round(math.exp(log_pmf(m, 8, p)), 6) == pm
        assert math.isclose(math.exp(log_pmf(x, 8, p)), px, rel_tol=1e-4)
        assert round(action_bits(x, 8, p), 6) == bits and round(action_bits(0, 8, p), 6) == bits0
    assert round(Snapshot(dict(pop)).bits0(8), 6) == 11.094738
    assert round(st.scores["mallory"], 6) == 19.329653
    assert {k: round(v, 6) for k, v in st.scores.items() if v} == {
        "ivan": 5.821493,
        "judy": 3.934494,
        "mallory": 19.329653,
    }
    assert (st.agg.n, round(st.agg.total, 6), round(st.agg.total_sq, 6)) == (11, 29.085639, 423.005492)
    scores = list(st.scores.values())
    assert (round(statistics.fmean(scores), 6), round(statistics.pstdev(scores), 6)) == (2.644149, 5.609235)
    assert round(score_direct({login: 5, post: 3, admin: 2}, pop), 6) == 1.321928
    assert normalise({login: 150, post: 75, admin: 25}) == (100, {login: 60, post: 30, admin: 10})
    assert Snapshot(dict(pop)).score({login: 150, post: 75, admin: 25}) == 0.0
    assert (round(action_bits(0, 4, 0.66), 3), mode(4, 0.66)) == (4.871, 3)
    assert (round(action_bits(10, 10, 0.66), 3), mode(10, 0.66)) == (4.036, 7)
    doc = (Path(__file__).resolve().parent.parent / "docs" / "scoring.md").read_text(encoding="utf-8")
    for text in (
        "0.00002268",
        "19.329653",
        "11.094738",
        "2.975",
        "1.414",
        "5.821493",
        "3.934494",
        "423.005492",
        "4.871",
        "4.036",
    ):
        assert text in doc


def _full_z(snap: Snapshot, n: int) -> float:
    """Z[n] by its definition: every action of the snapshot."""
    return math.fsum(snap.bits(a, 0, n) for a in snap.counts)


def _full_ranked(snap: Snapshot, n: int) -> list[tuple[float, str]]:
    """Every action with a non-zero bits(0; n), most surprising first, by brute force."""
    return sorted((-snap.bits(a, 0, n), a) for a in snap.counts if snap.bits(a, 0, n) > 0.0)


populations = st.dictionaries(
    st.text(alphabet="abcdefghij", min_size=1, max_size=4),
    st.one_of(st.integers(min_value=1, max_value=5), st.integers(min_value=1, max_value=100_000)),
    min_size=2,
    max_size=400,
)


@settings(max_examples=200, deadline=None)
@given(pop=populations, cap=st.sampled_from([1, 2, 5, 10, 100]))
def test_z_over_the_top_actions_equals_the_full_sum(pop: dict[str, int], cap: int) -> None:
    """Z[n'] and the ranking of absences from the top cap+1 actions equal the sums over all, bit for bit."""
    snap = Snapshot(dict(pop), cap=cap)
    ref = Snapshot(dict(pop), cap=cap)
    assert len(snap.absent_candidates()) == min(len(pop), cap + 1)
    for n in range(cap + 1):
        assert snap.bits0(n) == _full_z(ref, n)
        assert snap._ranked_zero(n) == _full_ranked(ref, n)
        # At most n+1 actions have a mode above 0: those are all the top holds.
        assert sum(1 for a in pop if mode(n, ref.p(a)) > 0) <= n + 1


def test_z_with_many_rare_actions_and_ties_at_the_boundary() -> None:
    # 24,000 actions: 30 frequent, the rest seen once (ties everywhere below the top).
    pop = {f"a{i}": (1000 - i if i < 30 else 1) for i in range(24_000)}
    snap, ref = Snapshot(dict(pop)), Snapshot(dict(pop))
    for n in (1, 2, 50, 99, 100):
        assert snap.bits0(n) == _full_z(ref, n)
        assert snap._ranked_zero(n) == _full_ranked(ref, n)
    # Every count equal: p = 1/A, the mode is 0 for every n' <= cap, so Z = 0.
    flat = Snapshot({f"a{i}": 7 for i in range(1000)})
    assert flat.bits0(100) == 0.0 == _full_z(Snapshot({f"a{i}": 7 for i in range(1000)}), 100)
    # cap + 1 equal actions: each has p = 1/(cap+1), mode 1 at n' = cap (P(0) = P(1) there: 0 bits);
    # cap equal actions: mode 1 and a positive bits(0), for every one of them.
    for k in (101, 100):
        edge = {f"a{i}": 3 for i in range(k)}
        assert Snapshot(dict(edge)).bits0(100) == _full_z(Snapshot(dict(edge)), 100)
    assert Snapshot({f"a{i}": 3 for i in range(100)}).bits0(100) > 0.0


@settings(max_examples=150, deadline=None)
@given(pop=populations, added=populations, data=st.data())
def test_add_actions_equals_a_fresh_snapshot(pop: dict[str, int], added: dict[str, int], data: st.DataObject) -> None:
    """A snapshot that got new actions added scores exactly as one built with them."""
    snap = Snapshot(dict(pop), cap=10)
    snap.bits0(10)
    snap.absent_candidates()  # caches filled before the change must not leak into it
    new = {a: c for a, c in added.items() if a not in pop}
    snap.add_actions(added)
    fresh = Snapshot({**pop, **new}, cap=10)
    assert snap.counts == fresh.counts and snap.total == fresh.total
    actions = sorted(fresh.counts)
    counts = data.draw(st.dictionaries(st.sampled_from(actions), st.integers(min_value=1, max_value=40), max_size=6))
    assert snap.assess(counts, 5) == fresh.assess(counts, 5)
    for n in range(11):
        assert snap.bits0(n) == _full_z(fresh, n)


def test_scoring_work_does_not_grow_with_the_number_of_actions() -> None:
    """Every n' of a 24,000-action scope costs O(cap) bits terms, not O(actions) (issue 9, defect 5)."""
    pop = {f"GET /r/{i}": 1 + (50_000 // (i + 1)) for i in range(24_000)}
    snap = Snapshot(dict(pop))
    for n in range(1, 101):
        counts = {f"GET /r/{i}": 1 for i in range(n)}
        snap.assess(counts, 5)
    # bits terms computed: the top cap+1 actions at each n', plus each individual's own actions.
    assert len(snap._bits) <= 101 * 100 + 2 * sum(range(1, 101))
    assert all(len(ranked) <= 101 for ranked in snap._zero_ranked.values())


# ---------------------------------------------------------------- dominance guard: contributions, zero counts


@given(st.dictionaries(st.sampled_from("abcdefg"), st.integers(0, 5000), min_size=1), st.sampled_from([0, 1, 7, 100]))
def test_contribution_is_raw_up_to_w_then_the_rounded_share(counts: dict[str, int], w: int) -> None:
    n = sum(counts.values())
    got = contribution(counts, w)
    assert set(got) == set(counts)
    if w == 0 or n <= w:
        assert got == counts
    else:  # floor(x W / n + 1/2), from exact fractions
        assert got == {a: math.floor(Fraction(x * w, n) + Fraction(1, 2)) for a, x in counts.items()}
        assert abs(sum(got.values()) - w) <= len(counts)


def test_contribution_deltas_telescope_to_the_final_contribution() -> None:
    rng = random.Random(4)
    for w in (0, 1, 100):
        counts: dict[str, int] = {}
        pop: dict[str, int] = {}
        mine: dict[str, int] = {}  # the same individual counted by count_event
        pop2: dict[str, int] = {}
        for i in range(700):
            before = dict(counts)
            a = rng.choices("abcde", [50, 20, 5, 1, 1])[0]
            counts[a] = counts.get(a, 0) + 1
            for action, d in contribution_delta(before, counts, w).items():
                pop[action] = pop.get(action, 0) + d
                assert pop[action] >= 0
            assert count_event(mine, pop2, a, w, i if i % 2 else None) == i + 1
            assert mine == counts and {x: c for x, c in pop2.items()} == pop
        assert pop == contribution(counts, w)


def test_zero_population_counts_score_as_if_absent() -> None:
    """A pop field at 0 (the guard) must not change anything; before the filter the
    single-action path was skipped and p = 1 gave bits(0) = inf - inf (seen failing first)."""
    for pop, counts in [
        ({"a": 5, "b": 0}, {"a": 3}),
        ({"a": 5, "b": 0}, {"a": 3, "b": 2}),
        ({"a": 5, "b": 3, "c": 0}, {"a": 3, "c": 1}),
        ({"a": 50, "b": 30, "c": 0, "d": 1}, {"a": 30, "b": 1, "d": 4}),
    ]:
        with_zero, without = Snapshot(dict(pop)), Snapshot({a: c for a, c in pop.items() if c})
        got, want = with_zero.assess(counts, 5), without.assess(counts, 5)
        assert got == want and not math.isnan(got[0]), (pop, counts)
        assert with_zero.covers(counts) and with_zero.counts == without.counts
        if all(pop[a] for a in counts):  # else inf either way (impossible with W >= N: C_a >= its own c_a)
            assert with_zero.score(counts) == pytest.approx(score_direct(counts, without.counts), rel=1e-12)


def test_add_actions_keeps_a_zero_count_known_but_out_of_p() -> None:
    snap = Snapshot({"a": 4, "b": 4})
    snap.add_actions({"c": 0})
    assert snap.covers({"c": 1}) and "c" not in snap.counts and snap.total == 8
    snap.add_actions({"c": 2})
    assert snap.counts["c"] == 2 and "c" not in snap.zeros and snap.total == 10
