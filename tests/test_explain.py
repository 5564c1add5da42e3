"""``explain`` (common/scoring.py: Snapshot.explain; the ``explain`` of every result) against a hand computation.

The expected rows come from tests/support/handcalc.py: the pmf from
``math.lgamma``, the mode by trying every count, normalisation and the weight
cap with exact fractions; nothing of the code under test. Checked: which
actions are listed and in what order (the largest bits), their raw count,
observed ``x'``, expected ``n' p_a``, bits and kind, including actions the
individual never did, an individual past the normalisation cap N, and a
population whose heavy individual's weight is capped (the dominance guard).
"""

from __future__ import annotations

import math

import pytest

from binormal.common.engine import MemoryEngine
from binormal.common.keys import Scope
from binormal.common.schema import Event
from binormal.common.scoring import Snapshot
from tests.support.handcalc import bits_by_hand, capped_population, explain_by_hand, scaled

pytestmark = pytest.mark.timeout(30)


def assert_matches(got: list[dict[str, object]], want: list[dict[str, object]]) -> None:
    """Same actions in the same order; numbers equal up to the result's 3-decimal rounding."""
    assert [g["action"] for g in got] == [w["action"] for w in want]
    for g, w in zip(got, want):
        assert (g["count"], g["observed"], g["kind"]) == (w["count"], w["observed"], w["kind"]), (g, w)
        assert g["expected"] == pytest.approx(w["expected"], abs=5e-4 + 1e-12), (g, w)
        assert g["bits"] == pytest.approx(w["bits"], abs=5e-4 + 1e-12), (g, w)


def test_a_small_case_worked_out_in_full() -> None:
    """p = (0.6, 0.3, 0.1); the individual did b 5 and c 5 of 10 events, never a."""
    pop = {"a": 60, "b": 30, "c": 10}
    got = Snapshot(pop).explain({"b": 5, "c": 5}, 5)
    # c: mode of Bin(10, 0.1) is 1; b: mode of Bin(10, 0.3) is 3; a: mode of Bin(10, 0.6) is 6.
    want = [
        {
            "action": "a",
            "count": 0,
            "observed": 0,
            "expected": 6.0,
            "bits": bits_by_hand(0, 10, 0.6),
            "kind": "missing",
        },
        {"action": "c", "count": 5, "observed": 5, "expected": 1.0, "bits": bits_by_hand(5, 10, 0.1), "kind": "over"},
        {"action": "b", "count": 5, "observed": 5, "expected": 3.0, "bits": bits_by_hand(5, 10, 0.3), "kind": "over"},
    ]
    assert bits_by_hand(0, 10, 0.6) > bits_by_hand(5, 10, 0.1) > bits_by_hand(5, 10, 0.3) > 0  # the order above
    assert_matches(got, want)
    # and once with no lgamma at all: log2(P(6) / P(0)) = log2(C(10,6) 0.6^6 0.4^4 / 0.4^10) = 11.224
    assert got[0]["bits"] == round(math.log2(math.comb(10, 6) * 0.6**6 * 0.4**4 / 0.4**10), 3) == 11.224


def test_absent_actions_rank_among_the_own_by_their_bits() -> None:
    """Twelve actions; the individual does two rare ones: the common ones it skips must lead, capped by ``limit``."""
    pop = {f"act{i:02d}": 2 ** (12 - i) for i in range(12)}
    counts = {"act10": 3, "act11": 2}
    snap = Snapshot(pop)
    for limit in (1, 3, 5, 20):
        want = explain_by_hand(counts, pop, 100, limit)
        assert_matches(snap.explain(counts, limit), want)
    listed = explain_by_hand(counts, pop, 100, 20)
    absent = [str(w["action"]) for w in listed if w["count"] == 0]
    assert absent and absent == sorted(absent)[: len(absent)] and absent[0] == "act00"  # the commonest ones it skips
    assert {w["action"] for w in listed if w["count"]} == {"act10", "act11"}


def test_an_individual_past_the_cap_is_explained_on_its_scaled_counts() -> None:
    """n = 300 > N = 100: observed is x' = round(x * 100 / 300), count stays raw, expected is 100 p_a."""
    pop = {"a": 500, "b": 300, "c": 150, "d": 50}
    counts = {"a": 150, "b": 50, "d": 100}
    n_norm, norm = scaled(counts, 100)
    assert (n_norm, norm) == (100, {"a": 50, "b": 17, "d": 33})
    got = Snapshot(pop, cap=100).explain(counts, 10)
    assert_matches(got, explain_by_hand(counts, pop, 100, 10))
    by_action = {g["action"]: g for g in got}
    assert by_action["d"]["count"] == 100 and by_action["d"]["observed"] == 33 and by_action["d"]["expected"] == 5.0
    assert by_action["c"]["observed"] == 0 and by_action["c"]["kind"] == "missing"  # never did c


@pytest.mark.parametrize("weight_cap", [100, 0])
def test_a_population_with_a_capped_heavy_individual(weight_cap: int) -> None:
    """The engine's result for a light individual explains against C_a with the heavy one scaled to W events."""
    scope = Scope("o", "s", "p")
    events = [Event("o", "s", "p", f"u{i}", ("home", "search", "cart")[j % 3]) for j in range(12) for i in range(30)]
    events += [Event("o", "s", "p", "heavy", "export" if j % 5 else "home") for j in range(1000)]
    last = Event("o", "s", "p", "u0", "export")
    engine = MemoryEngine(weight_cap=weight_cap)
    engine.run(events)
    result = engine.process(last)
    individuals = engine.scopes[scope].individuals
    pop = capped_population(individuals, weight_cap)
    assert engine.scopes[scope].pop == pop
    if weight_cap:  # the heavy one weighs 100 events (80 export, 20 home), not 1000
        assert pop == {"home": 120 + 20, "search": 120, "cart": 120, "export": 1 + 80}
    else:
        assert pop == {"home": 120 + 200, "search": 120, "cart": 120, "export": 1 + 800}
    assert_matches(result["explain"], explain_by_hand(individuals["u0"], pop, 100, 5))
    # the heavy individual itself: 1000 events scaled to N = 100
    assert_matches(
        Snapshot(dict(pop)).explain(individuals["heavy"], 5), explain_by_hand(individuals["heavy"], pop, 100, 5)
    )
