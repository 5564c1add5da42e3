"""The worker's half of the alert decision: thresholds in Python, only what Redis must decide to alert.lua.

Most results cross no rule and most (rule, individual) pairs never fire. So the worker compares
each result with its scope's rules (:meth:`AlertPlanner.check`: one float compare against the
lowest ``min_zscore`` when nothing is close) and sends ``alert.lua`` one check per result: its
state key alone, or an :class:`AlertCheck` with the rules it crosses and their alert bodies. Redis keeps state only
for the pairs that fired, one hash per individual (``keys.alert_fired``, a field per rule), so a
result that crosses nothing costs one EXISTS there; whether to fire, and re-arming the rules the
result is below, stay one atomic script (many workers, redeliveries: one alert per crossing).

The first alert builds kept one hash per (rule, individual) (``keys.alert_state``);
:func:`move_alert_states` moves them into the per-individual hashes once (the first worker of
this version does it at start, before it reads).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import RedisError

from binormal.common.alerts import STATE_LEAST_TTL_MS, AlertRule, alert_body
from binormal.common.connection import Client
from binormal.common.keys import Keyspace, alert_fired_in
from binormal.common.scripts import AlertCheck, AlertFire

ALERT_LAYOUT = 2  # P:alerts:layout once the (rule, individual) hashes are moved
CHECK_CHUNK = 1_000  # checks per alert.lua call: most are one key and one argument, one EXISTS
MOVE_CHUNK = 200  # old state hashes moved per round trip
PLANS_LIMIT = 65_536  # rule tuples (one per scope seen) an AlertPlanner remembers


def state_field(rule: AlertRule) -> str:
    """The rule's field in an individual's state hash (unique among the rules of one scope: see
    :attr:`AlertRule.state_name`)."""
    return rule.state_name


@dataclass(frozen=True, slots=True)
class ScopePlan:
    """A scope's matching rules and the lowest thresholds among them (a quick "crosses none")."""

    rules: tuple[AlertRule, ...]
    min_zscore: float
    min_events: int

    @classmethod
    def of(cls, rules: tuple[AlertRule, ...]) -> ScopePlan:
        """The plan of ``rules`` (non-empty)."""
        return cls(rules, min(r.min_zscore for r in rules), min(r.min_events for r in rules))

    def quiet(self, result: Mapping[str, Any]) -> bool:
        """True when ``result`` can cross none of the rules (nearly every result: one compare)."""
        return (
            result["zscore"] < self.min_zscore
            or result["count"] < self.min_events
            or bool(result.get("learning") or result.get("muted"))
        )

    def crossed(self, result: Mapping[str, Any]) -> list[AlertRule]:
        """The rules ``result`` crosses (AlertRule.crosses: never when learning or muted)."""
        return [] if self.quiet(result) else [r for r in self.rules if r.crosses(result)]


class AlertPlanner:
    """Builds each result's check for ``alert.lua``; remembers each scope's :class:`ScopePlan`."""

    def __init__(self) -> None:
        # Keyed by the identity of AlertCache.for_scope's tuple (a new tuple after every reload);
        # the tuple is kept with its plan, so the id cannot be reused while remembered.
        self._plans: dict[int, ScopePlan] = {}

    def plan(self, rules: tuple[AlertRule, ...]) -> ScopePlan:
        """The plan of ``rules`` (as returned by ``AlertCache.for_scope``, non-empty)."""
        got = self._plans.get(id(rules))
        if got is None or got.rules is not rules:
            if len(self._plans) >= PLANS_LIMIT:
                self._plans.clear()
            got = self._plans[id(rules)] = ScopePlan.of(rules)
        return got

    @staticmethod
    def check(
        plan: ScopePlan, scope_prefix: str, ident: str, result: Mapping[str, Any], entry_id: bytes
    ) -> AlertCheck | str:
        """The check of one result (``scope_prefix``: its scope's ``Keyspace.scope_prefix``).

        A bare state key when it crosses no rule (``Alert.pack``: one key, one argument); else an
        :class:`AlertCheck` with the alert body of each rule it crosses.
        """
        state = alert_fired_in(scope_prefix, ident)
        if plan.quiet(result):
            return state
        crossed = [r for r in plan.rules if r.crosses(result)]
        if not crossed:
            return state
        eid = entry_id.decode()
        fires = tuple(
            AlertFire(state_field(r), r.cooldown_ms, orjson.dumps(alert_body(r, result, eid))) for r in crossed
        )
        return AlertCheck(state, entry_id, int(eid.split("-", 1)[0]), fires)


def _glob(text: str) -> str:
    """``text`` with SCAN's glob characters escaped."""
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)


async def move_alert_states(client: Client, keys: Keyspace) -> int:
    """Move every old (rule, individual) hash into its individual's ``alert_fired`` hash, once; how many moved.

    Looks no further once ``keys.alert_layout()`` says done, or when there is no alert rule (nothing
    old can matter then). A field already in the new hash wins (HSETNX: a worker of this version
    decided after the old one), so running it while new workers run, or twice, is safe. A worker
    of an older version still running meanwhile may write old hashes that are never moved: stop the
    old workers first, or accept one extra alert per such (rule, individual).
    """
    if int(await client.get(keys.alert_layout()) or 0) == ALERT_LAYOUT:
        return 0
    moved = 0
    if await client.hlen(keys.alert_rules()):
        # One SCAN over every shard's keys (not one per shard: each SCAN walks the whole keyspace).
        pattern = _glob(f"{keys.prefix}:{{{keys.prefix}.") + "*}:sc:*:al:*"
        head = len(f"{keys.prefix}:{{{keys.prefix}.")
        found: list[tuple[str, str, str]] = []
        async for raw in client.scan_iter(match=pattern, count=1000):
            text = raw.decode("utf-8")
            try:
                shard = int(text[head : text.index("}", head)])
                scope, rule, ident = keys.alert_state_of(text, shard)
            except ValueError:
                continue  # not an old state key (ids and rule names are encoded: no ':al:' inside)
            found.append((text, rule, keys.alert_fired(scope, ident, shard)))
            if len(found) >= MOVE_CHUNK:
                moved += await _move(client, found)
                found = []
        moved += await _move(client, found)
    await client.set(keys.alert_layout(), ALERT_LAYOUT)
    return moved


async def _move(client: Client, found: list[tuple[str, str, str]]) -> int:
    """Copy each old hash's ``at``/``entry``/``armed`` into its new field (lifetime kept), delete the old."""
    if not found:
        return 0
    pipe = client.pipeline(transaction=False)
    for old, _, new in found:
        pipe.hmget(old, ["at", "entry", "armed"])
        pipe.pttl(old)
        pipe.pttl(new)
    replies = await pipe.execute(raise_on_error=False)
    pipe = client.pipeline(transaction=False)
    moved = 0
    for i, (old, rule, new) in enumerate(found):
        got, old_ttl, new_ttl = replies[3 * i : 3 * i + 3]
        if isinstance(got, RedisError) or got[0] is None or got[1] is None:
            continue  # another type under the key (not ours), or gone meanwhile: left alone
        at, entry, armed = (x.decode() for x in (got[0], got[1], got[2] or b"0"))
        pipe.hsetnx(new, rule, f"{at} {entry} {'1' if armed == '1' else '0'}")
        ttl = old_ttl if isinstance(old_ttl, int) and old_ttl > 0 else STATE_LEAST_TTL_MS
        if not isinstance(new_ttl, int) or new_ttl < ttl:
            pipe.pexpire(new, ttl)
        pipe.delete(old)
        moved += 1
    await pipe.execute(raise_on_error=False)
    return moved
