"""Analyst rules and feedback per scope: mute, exclude from learning, mark (docs/operations.md: rules).

Kinds (each for one scope ``(org, source, pop)``):

- ``mute`` an ``id`` or an ``action``: still counted and scored, but its results carry
  ``"muted": true`` and it is left out of ``/api/outliers`` unless asked for (``muted=1``);
- ``exclude`` an ``id`` from learning: its events are counted in its own hash and scored, but
  do not enter the population's counts (``pop``, ``sq``, ``k``) from the rule's creation on;
  ``binormal recompute`` rebuilds the population without it;
- ``mark`` an ``id`` ``confirmed`` or ``benign``: feedback kept with the individual (who, when,
  note), shown in its profile and exported by ``binormal evaluate --feedback``.

Storage (common/keys.py): mutes and excludes in the per-shard hash ``keys.rules(shard)``
(field :func:`rule_field`), marks in ``keys.marks(shard)`` (field :func:`mark_field`), both under
their scope's shard tag. Every mute/exclude change raises ``keys.rules_version()``; the workers
and the web tier keep a :class:`RuleCache` that re-reads the rules hashes only when it moves
(checked at most every :data:`CHECK_INTERVAL_S`), so no event costs a Redis round trip.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from binormal.common.connection import Client
from binormal.common.keys import Keyspace, Scope, decode, encode
from binormal.common.schema import LIMITS
from binormal.common.versioned import VersionedCache

log = structlog.get_logger("binormal.rules")

KINDS = ("mute", "exclude", "mark")
LABELS = ("confirmed", "benign")
FIELDS = ("kind", "org", "source", "pop", "id", "action", "label", "note")
NOTE_LIMIT = 1000  # bytes of a rule's note
MAX_RULES_PER_SHARD = 10_000  # mutes and excludes per shard (what every cache holds at most)
MAX_MARKS_PER_SHARD = 1_000_000  # marks per shard
CHECK_INTERVAL_S = 0.5  # a RuleCache looks at the version counter at most this often


class RuleError(ValueError):
    """A rule that cannot be used; ``field`` names the field at fault."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: ``kind`` on ``target`` (``id`` or ``action``) = ``value`` in ``scope``."""

    kind: str
    scope: Scope
    target: str
    value: str
    label: str | None = None
    note: str = ""
    by: str = ""
    at: int = 0  # epoch milliseconds of its creation

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (the API's and ``binormal rules list``'s)."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "org": self.scope.org,
            "source": self.scope.source,
            "pop": self.scope.pop,
            self.target: self.value,
        }
        if self.label is not None:
            out["label"] = self.label
        out.update(note=self.note, by=self.by, at=self.at)
        return out


def _text(data: Mapping[str, Any], name: str, required: bool) -> str | None:
    if name not in data:
        if required:
            raise RuleError(f"{name}: is missing", name)
        return None
    value = data[name]
    if not isinstance(value, str):
        raise RuleError(f"{name}: must be a string", name)
    if value == "" and name != "note":
        raise RuleError(f"{name}: must not be empty", name)
    limit = NOTE_LIMIT if name == "note" else LIMITS.get(name, 64)
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise RuleError(f"{name}: is {size} bytes, over the limit of {limit}", name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RuleError(f"{name}: is not valid UTF-8 (lone surrogate)", name) from None
    return value


def check_text(name: str, value: str) -> str:
    """``value`` if it is a valid ``name`` field (non-empty, within its byte limit), else :class:`RuleError`."""
    return str(_text({name: value}, name, True))


def parse_target(data: Mapping[str, Any]) -> tuple[str, Scope, str, str]:
    """``(kind, scope, target, value)`` of a rule given as JSON-like fields; :class:`RuleError`."""
    kind = _text(data, "kind", True)
    if kind not in KINDS:
        raise RuleError(f"kind: must be one of {', '.join(KINDS)}", "kind")
    scope = Scope(*(str(_text(data, n, True)) for n in ("org", "source", "pop")))
    ident = _text(data, "id", False)
    action = _text(data, "action", False)
    if ident is not None and action is not None:
        raise RuleError("action: give id or action, not both", "action")
    if action is not None and kind != "mute":
        raise RuleError(f"action: only a mute rule may name an action ({kind} takes an id)", "action")
    if ident is None and action is None:
        raise RuleError("id: is missing" + (" (or give action)" if kind == "mute" else ""), "id")
    return (kind, scope, "id", ident) if ident is not None else (kind, scope, "action", str(action))


def parse_rule(data: Mapping[str, Any], by: str, at: int | None = None) -> Rule:
    """A :class:`Rule` from JSON-like fields (``FIELDS`` only), made by ``by``; :class:`RuleError`."""
    for name in data:
        if name not in FIELDS:
            raise RuleError(f"{str(name)[:64]}: unknown field (allowed: {', '.join(FIELDS)})", str(name)[:64])
    kind, scope, target, value = parse_target(data)
    label = _text(data, "label", kind == "mark")
    if kind == "mark" and label not in LABELS:
        raise RuleError(f"label: must be one of {', '.join(LABELS)}", "label")
    if kind != "mark" and label is not None:
        raise RuleError("label: only a mark rule takes a label", "label")
    note = _text(data, "note", False) or ""
    return Rule(kind, scope, target, value, label, note, by, int(time.time() * 1000) if at is None else at)


def rule_field(kind: str, scope: Scope, target: str, value: str) -> str:
    """Field of a mute/exclude in its shard's rules hash: ``<scope token>:<kind>:<target>:<enc(value)>``."""
    return f"{scope.token}:{kind}:{target}:{encode(value)}"


def mark_field(scope: Scope, ident: str) -> str:
    """Field of a mark in its shard's marks hash: ``<scope token>:<enc(id)>``."""
    return f"{scope.token}:{encode(ident)}"


def _meta(rule: Rule) -> bytes:
    meta: dict[str, Any] = {"note": rule.note, "by": rule.by, "at": rule.at}
    if rule.label is not None:
        meta["label"] = rule.label
    return orjson.dumps(meta)


def _decode_rule(field: bytes, value: bytes) -> Rule | None:
    parts = field.decode().split(":")
    try:
        meta = orjson.loads(value)
        if len(parts) == 6:
            org, source, pop, kind, target, enc = parts
        elif len(parts) == 4:
            org, source, pop, enc = parts
            kind, target = "mark", "id"
        else:
            return None
        scope = Scope(decode(org), decode(source), decode(pop))
        return Rule(kind, scope, target, decode(enc), meta.get("label"), meta["note"], meta["by"], int(meta["at"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        log.warning("rule_unreadable", field=field[:200].decode("utf-8", "replace"))
        return None


async def add_rule(client: Client, keys: Keyspace, rule: Rule) -> bool:
    """Store ``rule`` (replacing one on the same target); True when it is new.

    Raises :class:`RuleError` (field ``kind``) when the shard already holds its maximum of rules.
    """
    shard = keys.shard(rule.scope)
    if rule.kind == "mark":
        key, field, limit = keys.marks(shard), mark_field(rule.scope, rule.value), MAX_MARKS_PER_SHARD
    else:
        key, field, limit = (
            keys.rules(shard),
            rule_field(rule.kind, rule.scope, rule.target, rule.value),
            MAX_RULES_PER_SHARD,
        )
    pipe = client.pipeline(transaction=False)
    pipe.hlen(key)
    pipe.hexists(key, field)
    size, exists = await pipe.execute()
    if not exists and int(size) >= limit:
        raise RuleError(f"kind: this shard already holds {limit} {rule.kind} rules; remove some first", "kind")
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, field, _meta(rule))
    if rule.kind != "mark":
        pipe.incr(keys.rules_version())  # after the HSET: a cache that sees the new version reads the rule
    await pipe.execute()
    return not exists


async def remove_rule(client: Client, keys: Keyspace, kind: str, scope: Scope, target: str, value: str) -> bool:
    """Delete one rule; True when it existed."""
    shard = keys.shard(scope)
    if kind == "mark":
        return bool(await client.hdel(keys.marks(shard), mark_field(scope, value)))
    removed = bool(await client.hdel(keys.rules(shard), rule_field(kind, scope, target, value)))
    if removed:
        await client.incr(keys.rules_version())
    return removed


async def list_rules(
    client: Client, keys: Keyspace, orgs: frozenset[str] | None = None, scope: Scope | None = None
) -> list[Rule]:
    """Every rule (of ``orgs`` only unless None; of ``scope`` only if given), sorted by scope, kind, target."""
    shards = range(keys.shards) if scope is None else [keys.shard(scope)]
    pipe = client.pipeline(transaction=False)
    for shard in shards:
        pipe.hgetall(keys.rules(shard))
        pipe.hgetall(keys.marks(shard))
    out: list[Rule] = []
    for raw in await pipe.execute():
        for field, value in raw.items():
            rule = _decode_rule(field, value)
            if rule is None or (orgs is not None and rule.scope.org not in orgs):
                continue
            if scope is None or rule.scope == scope:
                out.append(rule)
    out.sort(key=lambda r: (r.scope, KINDS.index(r.kind) if r.kind in KINDS else 9, r.target, r.value))
    return out


async def read_mark(client: Client, keys: Keyspace, scope: Scope, ident: str) -> dict[str, Any] | None:
    """The feedback on one individual (``label``, ``by``, ``at``, ``note``), None when unmarked."""
    raw = await client.hget(keys.marks(keys.shard(scope)), mark_field(scope, ident))
    if raw is None:
        return None
    rule = _decode_rule(mark_field(scope, ident).encode(), raw if isinstance(raw, bytes) else str(raw).encode())
    if rule is None:
        return None
    return {"label": rule.label, "by": rule.by, "at": rule.at, "note": rule.note}


def feedback_labels(rules: Iterable[Rule]) -> list[tuple[str, int]]:
    """``(id, label)`` rows for ``binormal evaluate --feedback``: confirmed = 1, benign = 0."""
    return [(r.value, 1 if r.label == "confirmed" else 0) for r in rules if r.kind == "mark"]


# ---------------------------------------------------------------- the cache workers and web keep


class RuleCache(VersionedCache):
    """The deployment's mutes and excludes, re-read when ``keys.rules_version()`` moves.

    :meth:`refresh` looks at the counter at most every ``interval_s`` (one GET), and reads every
    shard's rules hash (one pipelined round trip, at most ``MAX_RULES_PER_SHARD`` each) only when
    it changed. Lookups are set membership: no Redis on the per-event path.
    """

    LOG_EVENT = "rules_refresh_failed"

    def __init__(self, keys: Keyspace, interval_s: float = CHECK_INTERVAL_S) -> None:
        super().__init__(keys, interval_s, log)
        self.muted_ids: frozenset[tuple[Scope, str]] = frozenset()
        self.muted_actions: frozenset[tuple[Scope, str]] = frozenset()
        self.excluded: frozenset[tuple[Scope, str]] = frozenset()

    def version_key(self) -> str:
        return self.keys.rules_version()

    async def read(self, client: Client) -> Iterable[Rule]:
        pipe = client.pipeline(transaction=False)
        for shard in range(self.keys.shards):
            pipe.hgetall(self.keys.rules(shard))
        hashes = await pipe.execute()
        return (r for h in hashes for f, v in h.items() if (r := _decode_rule(f, v)) is not None)

    def load(self, rules: Iterable[Rule]) -> None:
        """Replace the cached rules (marks are ignored)."""
        ids: set[tuple[Scope, str]] = set()
        actions: set[tuple[Scope, str]] = set()
        excluded: set[tuple[Scope, str]] = set()
        for r in rules:
            if r.kind == "mute":
                (ids if r.target == "id" else actions).add((r.scope, r.value))
            elif r.kind == "exclude":
                excluded.add((r.scope, r.value))
        self.muted_ids, self.muted_actions, self.excluded = frozenset(ids), frozenset(actions), frozenset(excluded)

    def is_excluded(self, scope: Scope, ident: str) -> bool:
        """Whether ``ident`` of ``scope`` is excluded from learning."""
        return bool(self.excluded) and (scope, ident) in self.excluded

    def is_muted(self, scope: Scope, ident: str, action: str | None = None) -> bool:
        """Whether an id (or an event of it with ``action``) is muted."""
        if not self.muted_ids and not self.muted_actions:
            return False  # no mute at all: no tuple hashed per result
        if (scope, ident) in self.muted_ids:
            return True
        return action is not None and (scope, action) in self.muted_actions

    def is_muted_action(self, scope: Scope, action: str) -> bool:
        """Whether ``action`` of ``scope`` is muted."""
        return (scope, action) in self.muted_actions

    def muted_in(self, scope: Scope) -> int:
        """Number of muted ids of ``scope`` (how many more rows ``/api/outliers`` reads to fill its limit)."""
        return sum(1 for s, _ in self.muted_ids if s == scope)
