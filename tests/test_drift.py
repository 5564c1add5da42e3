"""binormal/drift.py: the ``recent`` and ``drift`` scores of ``binormal evaluate`` against hand computations."""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path

import pytest

from binormal.drift import drift_bits, window_counts, window_size
from binormal.evaluate import replay
from binormal.offline import Options
from tests.support.handcalc import drift_by_hand, recent_by_hand

pytestmark = pytest.mark.timeout(60)


def test_window_is_the_recent_half_at_most_k() -> None:
    assert [window_size(n, 50) for n in (0, 1, 2, 7, 99, 100, 101, 300)] == [0, 0, 1, 3, 49, 50, 50, 50]
    assert window_counts(list("aabbbc"), 6, 50) == {"b": 2, "c": 1}
    assert window_counts(list("abcb"), 9, 3) == {"b": 2, "c": 1}  # the last 3 of 9 (only the last 4 kept)
    with pytest.raises(ValueError, match="only 2 kept"):
        window_counts(list("ab"), 9, 3)


def test_drift_worked_example() -> None:
    """a a a b | b b b c: earlier (3/4, 1/4), window (3/4 b, 1/4 c), together (3/8, 4/8, 1/8).

    L1 = (3/4)^3 (1/4) (3/4)^3 (1/4) = 3^6 / 4^8, L0 = (3/8)^3 (1/2)^4 (1/8) = 3^3 / 2^16: ratio 27.
    """
    seq = list("aaabbbbc")
    got = drift_bits({"a": 3, "b": 4, "c": 1}, window_counts(seq, len(seq), 50))
    assert got == pytest.approx(math.log2(27), rel=1e-12)
    assert drift_by_hand(seq, 50) == pytest.approx(math.log2(27), rel=1e-12)


def test_drift_edges() -> None:
    assert drift_bits({"a": 2, "b": 2}, {"a": 1, "b": 1}) == 0.0  # the window has the rest's mix
    assert drift_bits({"a": 1}, {}) == 0.0  # one event: no window
    assert drift_bits({"a": 5}, {"a": 2}) == 0.0  # one action: nothing can change
    # a complete change: at most n H(k/n) bits (the window is fully told apart from the rest)
    assert drift_bits({"a": 6, "b": 6}, {"b": 6}) == pytest.approx(12.0, rel=1e-12)
    with pytest.raises(ValueError, match="outside"):
        drift_bits({"a": 1, "b": 3}, {"a": 2})
    with pytest.raises(ValueError, match="not in the counts"):
        drift_bits({"a": 4}, {"a": 1, "z": 1})


def test_drift_matches_hand_on_random_sequences() -> None:
    rng = random.Random(5)
    for _ in range(200):
        n = rng.randint(1, 160)
        seq = rng.choices("abcdef", weights=[5, 3, 2, 1, 1, 0.5], k=n)
        window = rng.choice([1, 3, 25, 50])
        counts = {a: seq.count(a) for a in set(seq)}
        got = drift_bits(counts, window_counts(seq[-window:], n, window))
        assert got == pytest.approx(drift_by_hand(seq, window), rel=1e-9, abs=1e-9), (seq, window)


def test_replay_scores_match_hand(tmp_path: Path) -> None:
    """Through the engine of ``binormal evaluate``: the window of a long history, and the population at the end."""
    rng = random.Random(8)
    people = {f"u{i}": rng.choices("abcde", weights=[6, 4, 2, 1, 1], k=rng.randint(20, 60)) for i in range(12)}
    people["turn"] = ["a"] * 70 + rng.choices("de", k=60)  # past 2K: the window is the last 50 of 130 events
    people["short"] = list("abacde")  # window = the last 3
    lines = [(i, a) for i, acts in people.items() if i != "turn" for a in acts]
    rng.shuffle(lines)
    lines += [("turn", a) for a in people["turn"]]  # last: its snapshot is the final population
    people = {i: [a for j, a in lines if j == i] for i in people}  # each history in file order
    path = tmp_path / "events.ndjson"
    path.write_text(
        "".join(json.dumps({"org": "o", "source": "s", "pop": "p", "id": i, "action": a}) + "\n" for i, a in lines)
    )
    pop: dict[str, int] = {}
    for acts in people.values():
        for a in acts:
            pop[a] = pop.get(a, 0) + 1
    rows = {r["id"]: r for r in replay(str(path), Options(100, 1, 0, window=50), io.StringIO())}
    for ident, acts in people.items():
        assert rows[ident]["drift"] == pytest.approx(drift_by_hand(acts, 50), rel=1e-9, abs=1e-9), ident
    assert rows["turn"]["recent"] == pytest.approx(recent_by_hand(people["turn"], 50, pop), rel=1e-9)
    assert rows["turn"]["drift"] > 50  # the window is all d and e, the first 70 events all a
    # the other scores do not depend on the window, bit for bit
    plain = {r["id"]: r for r in replay(str(path), Options(100, 1, 0), io.StringIO())}
    for ident, row in rows.items():
        same = ("score", "zscore", "pscore", "rzscore", "bits_per_event", "count", "learning")
        assert {k: row[k] for k in same} == {k: plain[ident][k] for k in same}
        assert plain[ident]["recent"] == plain[ident]["drift"] == 0.0  # window 0: not kept


def test_window_must_fit_the_cap(tmp_path: Path) -> None:
    """The window is scored unnormalised, so K <= N; the engine refuses more."""
    path = tmp_path / "e.ndjson"
    path.write_text('{"org": "o", "source": "s", "pop": "p", "id": "u", "action": "a"}\n')
    with pytest.raises(ValueError, match="window must be 0 \\(off\\) or 1..cap 10, got 11"):
        replay(str(path), Options(10, 1, 0, window=11), io.StringIO())
    assert replay(str(path), Options(10, 1, 0, window=10), io.StringIO())[0]["recent"] == 0.0  # n = 1: k = 0


def test_window_step_keeps_the_window_exactly() -> None:
    """The per-event rule a Redis script would run equals the window recounted after every event."""
    from collections import deque

    from binormal.drift import window_step

    rng = random.Random(3)
    for size in (1, 2, 5, 50):
        kept: deque[str] = deque()
        window: dict[str, int] = {}
        seq: list[str] = []
        for n in range(300):
            action = rng.choice("abcd")
            left = window_step(kept, window, n, action, size)
            seq.append(action)
            assert window == window_counts(seq, n + 1, size), (size, n)
            assert list(kept) == seq[::-1][:size]
            # an action leaves exactly when k does not grow: n even before the event, or k already K
            assert (left is not None) == (n % 2 == 0 or n // 2 >= size), (size, n)


def test_score_json_carries_recent_with_a_window(tmp_path: Path) -> None:
    """``binormal score --json --window K`` (or $BINORMAL_RECENT_WINDOW) adds ``recent``, the value of
    :func:`replay`'s, in one process or shared; without a window the rows are as before."""
    import os
    import subprocess
    import sys

    rng = random.Random(21)
    lines = []
    for n in range(3000):
        ident = f"u{rng.randrange(40)}"
        acts = "abcde" if ident != "u7" or n < 1500 else "e"  # u7 is taken over halfway: only e from then on
        action = rng.choices(acts, weights=[6, 4, 2, 1, 1][: len(acts)])[0]
        lines.append(json.dumps({"org": "o", "source": "s", "pop": f"p{n % 3}", "id": ident, "action": action}))
    path = tmp_path / "events.ndjson"
    path.write_text("\n".join(lines) + "\n")

    def score(*args: str, **env: str) -> list[dict[str, object]]:
        proc = subprocess.run(
            [sys.executable, "-P", "-m", "binormal", "score", str(path), "--json", *args],
            capture_output=True,
            timeout=60,
            check=True,
            env={**os.environ, **env},
        )
        return [json.loads(r) for r in proc.stdout.splitlines()]

    with_window = score("--window", "20", "--jobs", "1")
    assert with_window == score("--jobs", "3", BINORMAL_RECENT_WINDOW="20")
    expected = replay(str(path), Options(100, 1000, 100, window=20), io.StringIO())
    assert [(r["id"], r["recent"]) for r in with_window] == [(r["id"], round(r["recent"], 3)) for r in expected]
    plain = score()
    assert [{k: v for k, v in r.items() if k != "recent"} for r in with_window] == plain
    assert all("recent" not in r for r in plain)
    taken = [r for r in with_window if r["id"] == "u7"]
    others = [r["recent"] for r in with_window if r["id"] != "u7" and isinstance(r["recent"], float)]
    assert all(isinstance(r["recent"], float) and r["recent"] > max(others) for r in taken)
    refused = subprocess.run(
        [sys.executable, "-P", "-m", "binormal", "score", str(path), "--window", "101"], capture_output=True, timeout=60
    )
    assert (
        refused.returncode == 2
        and b"--window must be at most the normalisation cap --cap 100, got 101" in refused.stderr
    )
