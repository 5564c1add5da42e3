"""Event generators and the ground truth they imply (scope -> individual -> action -> count)."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

from binormal.common.keys import Scope
from binormal.common.schema import Event

TS0 = 1_700_000_000_000

TRICKY_SCOPES = [
    Scope("acme", "webserver", "auth_getpost"),
    Scope("acme", "webserver", "admins"),
    Scope("a:b{c}", "src }{ :", "pop with spaces\nand a newline"),
    Scope("ünïcødé 組織", "source/🚀", "p%2F:x%00"),
    Scope("é" * 128, "s" * 256, "{bn.0}:events"),  # at the byte limits; looks like a key
]
ACTIONS = ["GET /login", "POST /login", "GET /", "POST /x:{y}", "ação", "a\nb", "🚀 launch", "DELETE /admin"]
WEIGHTS = [40, 20, 15, 8, 6, 5, 4, 2]


def generate(n: int, seed: int, scopes: list[Scope] = TRICKY_SCOPES, ids: int = 40) -> list[Event]:
    """``n`` events over ``scopes`` with a skewed action mix and a few odd individuals."""
    rng = random.Random(seed)
    idents = [f"user:{i}" for i in range(ids - 3)] + ["{id}", "id with space\n", "x" * 1024]
    out: list[Event] = []
    for i in range(n):
        scope = rng.choice(scopes)
        ident = rng.choice(idents)
        if ident.startswith("user:1") and rng.random() < 0.5:
            action = rng.choice(ACTIONS[-3:])  # outliers
        else:
            action = rng.choices(ACTIONS, WEIGHTS)[0]
        eid = f"e{seed}-{i}" if i % 2 == 0 else None
        out.append(Event(scope.org, scope.source, scope.pop, ident, action, ts=TS0 + i, event_id=eid))
    return out


def counts_from_events(events: Iterable[Event]) -> dict[Scope, dict[str, dict[str, int]]]:
    """Ground truth: scope -> individual -> action -> count."""
    truth: dict[Scope, dict[str, dict[str, int]]] = {}
    for ev in events:
        ind = truth.setdefault(ev.scope, {}).setdefault(ev.id, {})
        ind[ev.action] = ind.get(ev.action, 0) + 1
    return truth


def population_truth(
    individuals: Mapping[str, Mapping[str, int]],
) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """(C_a, S2_a, K_a) of one scope from its individuals' counts."""
    pop: dict[str, int] = {}
    sq: dict[str, int] = {}
    k: dict[str, int] = {}
    for counts in individuals.values():
        for a, x in counts.items():
            pop[a] = pop.get(a, 0) + x
            sq[a] = sq.get(a, 0) + x * x
            k[a] = k.get(a, 0) + 1
    return pop, sq, k
