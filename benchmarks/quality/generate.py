"""Synthetic populations with planted anomalies, for ``binormal evaluate``.

    python benchmarks/quality/generate.py OUT_DIR [--seed 11] [--scopes 4] [--normals 150] [--per-kind 2]

Writes ``OUT_DIR/events.ndjson`` (every event in time order, all scopes interleaved) and
``OUT_DIR/labels.csv`` (``id,label,kind``: 1 = planted anomaly, with its kind; 0 = normal, no kind).
The same seed gives the same files. Each scope ``pop-<i>`` has its own mix over the same actions
(a Zipf law over a scope-specific order); normal individuals draw 40-200 events from their scope's
mix with a personal jitter. Planted per scope, ``--per-kind`` of each kind (ids ``<kind>-<pop>-<n>``):

- ``skip``: a bot that never does the scope's 3 most common actions (which everyone does);
- ``repeat``: a bot whose events are 95 % one action;
- ``odd``: only normal actions, in inverted proportions (the rarest most often);
- ``lowslow``: 3-6 events from the scope's 5 rarest actions;
- ``takeover``: normal for the first half of its history, then another scope's mix;
- ``masquerade``: its whole history from another scope's mix;
- ``heavy`` (one per scope): a uniform mix over all actions with a quarter of the scope's events.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ACTIONS = 20
KINDS = ("skip", "repeat", "odd", "lowslow", "takeover", "masquerade", "heavy")


def scope_mix(rng: random.Random) -> list[float]:
    """Zipf(1.1) weights over the actions in a random order: index = action number."""
    order = list(range(ACTIONS))
    rng.shuffle(order)
    weights = [0.0] * ACTIONS
    for rank, action in enumerate(order, start=1):
        weights[action] = 1 / rank**1.1
    return weights


def jitter(rng: random.Random, weights: list[float]) -> list[float]:
    """One normal individual's own mix: each weight times a log-normal factor."""
    return [w * rng.lognormvariate(0, 0.3) for w in weights]


def draw(rng: random.Random, weights: list[float], n: int) -> list[int]:
    """``n`` actions drawn from ``weights``."""
    return rng.choices(range(ACTIONS), weights=weights, k=n)


def ranked(weights: list[float]) -> list[int]:
    """Actions from the most to the least common."""
    return sorted(range(ACTIONS), key=lambda a: -weights[a])


def planted(kind: str, rng: random.Random, mix: list[float], other: list[float], heavy_n: int) -> list[int]:
    """One planted individual's actions, in order."""
    n = rng.randint(40, 200)
    top = ranked(mix)
    if kind == "skip":
        return draw(rng, [0.0 if a in top[:3] else w for a, w in enumerate(mix)], n)
    if kind == "repeat":
        one = rng.choice(top[3:10])
        return [one if rng.random() < 0.95 else a for a in draw(rng, mix, n)]
    if kind == "odd":
        inverted = [0.0] * ACTIONS
        for a, b in zip(top, reversed(top), strict=True):
            inverted[a] = mix[b]
        return draw(rng, inverted, n)
    if kind == "lowslow":
        return draw(rng, [w if a in top[-5:] else 0.0 for a, w in enumerate(mix)], rng.randint(3, 6))
    if kind == "takeover":
        return draw(rng, jitter(rng, mix), n // 2) + draw(rng, other, n - n // 2)
    if kind == "masquerade":
        return draw(rng, other, n)
    if kind == "heavy":
        return draw(rng, [1.0] * ACTIONS, heavy_n)
    raise ValueError(kind)


def generate(
    seed: int, scopes: int, normals: int, per_kind: int
) -> tuple[list[dict[str, object]], list[tuple[str, int, str]]]:
    """The events (time order) and the labels."""
    rng = random.Random(seed)
    mixes = [scope_mix(rng) for _ in range(scopes)]
    people: list[tuple[str, str, list[int]]] = []  # (pop, id, actions)
    labels: list[tuple[str, int, str]] = []
    for s, mix in enumerate(mixes):
        pop = f"pop-{s}"
        other = mixes[(s + 1) % scopes]
        total = 0
        for i in range(normals):
            acts = draw(rng, jitter(rng, mix), rng.randint(40, 200))
            people.append((pop, f"user-{pop}-{i}", acts))
            labels.append((f"user-{pop}-{i}", 0, ""))
            total += len(acts)
        for kind in KINDS:
            for i in range(1 if kind == "heavy" else per_kind):
                ident = f"{kind}-{pop}-{i}"
                people.append((pop, ident, planted(kind, rng, mix, other, total // 3)))
                labels.append((ident, 1, kind))
    events: list[tuple[float, dict[str, object]]] = []
    horizon = 86_400
    for pop, ident, acts in people:
        stamps = sorted(rng.uniform(0, horizon) for _ in acts)
        for t, a in zip(stamps, acts, strict=True):
            event = {"org": "synthetic", "source": "app", "pop": pop, "id": ident, "action": f"a{a:02d}"}
            events.append((t, event))
    events.sort(key=lambda te: te[0])
    return [dict(e, ts=1_700_000_000 + int(t)) for t, e in events], labels


def main() -> None:
    """Write events.ndjson and labels.csv."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--scopes", type=int, default=4)
    p.add_argument("--normals", type=int, default=150, help="normal individuals per scope")
    p.add_argument("--per-kind", type=int, default=2, help="planted individuals of each kind per scope (heavy: 1)")
    a = p.parse_args()
    events, labels = generate(a.seed, a.scopes, a.normals, a.per_kind)
    a.out.mkdir(parents=True, exist_ok=True)
    with open(a.out / "events.ndjson", "w", encoding="utf-8") as f:
        for e in events:
            f.write(json.dumps(e, separators=(",", ":")) + "\n")
    with open(a.out / "labels.csv", "w", encoding="utf-8") as f:
        f.write("id,label,kind\n")
        for ident, label, kind in labels:
            f.write(f"{ident},{label},{kind}\n")
    print(f"{len(events)} events, {len(labels)} labelled ids ({sum(x[1] for x in labels)} anomalous) in {a.out}")


if __name__ == "__main__":
    main()
