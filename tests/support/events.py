"""Event generators and the ground truth they imply (scope -> individual -> action -> count)."""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from binormal.common.keys import Scope
from binormal.common.schema import Event
from binormal.common.scoring import DEFAULT_CAP, contribution

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


def numbered_event(i: int, **changes: Any) -> dict[str, Any]:
    """Event ``i`` of a small round-robin population as a JSON object (3 pops, 11 ids, 5 actions)."""
    obj: dict[str, Any] = {
        "org": "acme",
        "source": "web",
        "pop": f"p{i % 3}",
        "id": f"u{i % 11}",
        "action": f"a{i % 5}",
    }
    obj.update(changes)
    return obj


def ndjson(objs: Iterable[Any]) -> bytes:
    """Objects as NDJSON, one line each, every line ending in a newline."""
    return b"".join(orjson.dumps(o) + b"\n" for o in objs)


def counts_from_events(events: Iterable[Event]) -> dict[Scope, dict[str, dict[str, int]]]:
    """Ground truth: scope -> individual -> action -> count."""
    truth: dict[Scope, dict[str, dict[str, int]]] = {}
    for ev in events:
        ind = truth.setdefault(ev.scope, {}).setdefault(ev.id, {})
        ind[ev.action] = ind.get(ev.action, 0) + 1
    return truth


def population_truth(
    individuals: Mapping[str, Mapping[str, int]], weight_cap: int = DEFAULT_CAP
) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """(C_a, S2_a, K_a) of one scope from its individuals' counts.

    C_a is the sum of each individual's contribution under the weight cap
    (``scoring.contribution``; 0 = raw counts), zero fields included.
    """
    pop: dict[str, int] = {}
    sq: dict[str, int] = {}
    k: dict[str, int] = {}
    for counts in individuals.values():
        for a, c in contribution(counts, weight_cap).items():
            pop[a] = pop.get(a, 0) + c
        for a, x in counts.items():
            sq[a] = sq.get(a, 0) + x * x
            k[a] = k.get(a, 0) + 1
    return pop, sq, k


def raw_truth(individuals: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """The raw per-action sums s1 of one scope (its ``raw`` hash when a weight cap is on)."""
    out: dict[str, int] = {}
    for counts in individuals.values():
        for a, x in counts.items():
            out[a] = out.get(a, 0) + x
    return out


def with_heavy(events: list[Event], scope: Scope, ident: str, n: int, seed: int) -> list[Event]:
    """``events`` with ``n`` more events of one heavy individual spread among them (a skewed mix of ACTIONS)."""
    rng = random.Random(seed)
    out = list(events)
    for i in range(n):
        action = rng.choices(ACTIONS, [1, 1, 1, 30, 1, 1, 1, 1])[0]
        ev = Event(scope.org, scope.source, scope.pop, ident, action, ts=TS0 + 10_000_000 + i, event_id=f"h{seed}-{i}")
        out.insert(rng.randrange(len(out) + 1), ev)
    return out


# ---------------------------------------------------------------- the other suites' populations
# Each keeps its own draw order: the tests' seeds pin the events they assert on.

ENGINE_ACTIONS = ["GET /", "GET /login", "POST /login", "GET /profile", "POST /logout", "GET /admin"]
ENGINE_WEIGHTS = [40, 25, 20, 10, 4, 1]


def engine_events(seed: int, n_events: int, scopes: int = 3, individuals: int = 40) -> list[Event]:
    """Skewed action mix over a few scopes; individual ``evil`` in scope 0 hammers rare actions."""
    rng = random.Random(seed)
    out: list[Event] = []
    for i in range(n_events):
        s = rng.randrange(scopes)
        if s == 0 and i % 25 == 0:
            out.append(Event("acme", "web", "pop0", "evil", rng.choice(["GET /admin", "POST /logout"]), ts=i))
            continue
        ident = f"u{rng.randrange(individuals)}"
        action = rng.choices(ENGINE_ACTIONS, ENGINE_WEIGHTS)[0]
        out.append(Event("acme", "web", f"pop{s}", ident, action, ts=i, event_id=f"e{i}"))
    return out


FAULT_SCOPES = [
    Scope("acme", "webserver", "auth_getpost"),
    Scope("acme", "webserver", "admins"),
    Scope("acme", "api", "service accounts"),
    Scope("org:{x}", "src\n}", "pop 🚀"),
    Scope("beta", "ci", "workers"),
    Scope("beta", "ci", "runners:{a}"),
]
FAULT_ACTIONS = [f"action-{i}" for i in range(12)]
FAULT_WEIGHTS = [30, 20, 12, 10, 8, 6, 5, 3, 2, 2, 1, 1]


def fault_events(rng: random.Random, n: int, start: int) -> list[Event]:
    """``n`` events: 6 scopes x 150 individuals, skewed action mix; every 3rd has an event_id."""
    out = []
    for i in range(start, start + n):
        scope = rng.choice(FAULT_SCOPES)
        ident = f"id-{rng.randrange(150)}"
        action = rng.choices(FAULT_ACTIONS, FAULT_WEIGHTS)[0]
        eid = f"f-{i}" if i % 3 == 0 else None  # unique ids: idempotency must not drop any
        out.append(Event(scope.org, scope.source, scope.pop, ident, action, event_id=eid))
    return out


FEED_ACTIONS = [f"GET /page/{i}" for i in range(12)] + ["POST /login", "POST /logout", "GET /admin"]


def feed_events(n: int, seed: int = 1, individuals: int = 200) -> list[Event]:
    """``n`` events over 3 pops of one org/source; a few individuals favour odd actions."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        ident = f"user{rnd.randrange(individuals)}"
        weights = [8 if (zlib.crc32(ident.encode()) + i) % 7 == 0 else 1 for i in range(len(FEED_ACTIONS))]
        action = rnd.choices(FEED_ACTIONS, weights)[0]
        out.append(Event("acme", "web", f"pop{rnd.randrange(3)}", ident, action))
    return out


QUERY_SCOPES = [Scope("acme", "web", "users"), Scope("acme", "web", "admins"), Scope("Beta Co", "api:v2", "{bots}")]


def query_events(n: int, seed: int = 7) -> list[Event]:
    """A skewed population per scope, with two odd individuals in the first scope."""
    rng = random.Random(seed)
    actions = [f"GET /page/{i}" for i in range(12)]
    weights = [2.0**-i for i in range(12)]
    out = []
    for i in range(n):
        scope = QUERY_SCOPES[i % 3]
        ident = f"user{rng.randrange(25)}"
        action = rng.choices(actions, weights)[0]
        if scope == QUERY_SCOPES[0] and ident == "user3":
            action = "DELETE /admin"  # only this one does it
        elif scope == QUERY_SCOPES[0] and ident == "user4":
            action = actions[-1]  # always the rarest page
        out.append(Event(scope.org, scope.source, scope.pop, ident, action, ts=TS0 + i))
    return out


# ---------------------------------------------------------------- the dominance scenario (test_dominance, browser)

DOMINANCE_ACTIONS = [f"a{i}" for i in range(8)]
DOMINANCE_WEIGHTS = [30, 20, 15, 10, 8, 7, 6, 4]
FLOODER = "flooder"


def light_rounds(scope: Scope, rounds: int, individuals: int, seed: int, start: int = 0) -> list[Event]:
    """``rounds`` rounds of one event per light individual ``u0..``: a skewed mix, the same for one seed."""
    rng = random.Random(seed)
    out = []
    for r in range(start, start + rounds):
        for i in range(individuals):
            action = rng.choices(DOMINANCE_ACTIONS, DOMINANCE_WEIGHTS)[0]
            out.append(Event(scope.org, scope.source, scope.pop, f"u{i}", action, ts=TS0 + 1000 * r + i))
    return out


def flooder_events(scope: Scope, first: int, last: int) -> list[Event]:
    """Events ``first..last-1`` of the flooder: the rare a7 three times in four, then a6.

    Its proportions are the same at every multiple of 4 events, so once past the
    weight cap its normalised contribution (75 a7, 25 a6 at W = 100) no longer moves.
    """
    return [
        Event(scope.org, scope.source, scope.pop, FLOODER, "a7" if j % 4 else "a6", ts=TS0 + 10**8 + j)
        for j in range(first, last)
    ]


def event_dict(e: Event) -> dict[str, Any]:
    """An event as the JSON object ``POST /events`` takes."""
    return {"org": e.org, "source": e.source, "pop": e.pop, "id": e.id, "action": e.action}


def crossing_events(scope: Scope, outlier: str, normals: int = 12, rounds: int = 6, probes: int = 8) -> list[Event]:
    """``normals`` individuals with one same mix, then ``outlier`` probing ``probes`` new paths.

    With the learning thresholds at 1, the outlier's results cross a zscore of 2.5 (an alert rule's
    line) and nobody else's do: every ordinary individual has exactly the same counts.
    """
    mix = ["GET /", "GET /", "GET /item", "POST /cart"]
    history = [Event(*scope, f"u{i}", mix[(i + r) % len(mix)]) for r in range(rounds) for i in range(normals)]
    return history + [Event(*scope, outlier, f"GET /probe/{k}") for k in range(probes)]
