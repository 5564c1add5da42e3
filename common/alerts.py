"""Alert rules: who is told when an individual crosses a line (docs/alerts.md).

A rule has a name, a scope pattern ``ORG/SOURCE/POP`` (each part a literal or ``*``), thresholds
(``min_zscore``, optionally ``min_pscore`` and ``min_events``), a cool-down and a webhook with an
optional HMAC secret. A rule belongs to the org of its pattern (``*`` for a pattern of every org)
and its name is unique within that org only: rules live in one hash (``keys.alert_rules()``, field
``ORG/NAME`` -> JSON; neither part can hold a ``/``). A field without a ``/`` is a rule stored before
names were per org: it is read as a rule of its pattern's org and rewritten under ``ORG/NAME`` by
the next add or remove of that rule. Every change raises ``keys.alert_rules_version()``, and the
workers keep an :class:`AlertCache` that re-reads the hash only when it moves. The fire decision
itself is ``alert.lua`` (common/scripts.py ``Alert``): atomic per (rule, individual), so many
workers and redeliveries fire one alert per crossing.

The secret is stored with the rule (the sender signs with it) but never logged and never returned:
:meth:`AlertRule.as_dict` says ``has_secret``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
import structlog

from binormal.common.connection import Client
from binormal.common.keys import Keyspace, Scope
from binormal.common.rules import RuleError, check_text
from binormal.common.versioned import VersionedCache

log = structlog.get_logger("binormal.alerts")

MAX_RULES = 1_000  # alert rules per deployment (what every worker's cache holds at most)
NAME_LIMIT = 64  # bytes of a rule name
WEBHOOK_LIMIT = 2_000  # bytes of a webhook URL
SECRET_LIMIT = 1_000  # bytes of a signing secret
DEFAULT_COOLDOWN_MS = 10 * 60_000
MAX_COOLDOWN_MS = 30 * 86_400_000
ALERT_MAXLEN = 100_000  # entries an alert stream keeps (approximate MAXLEN)
STATE_LEAST_TTL_MS = 7 * 86_400_000  # a (rule, individual) fire state lives at least this long
CHECK_INTERVAL_S = 0.5  # an AlertCache looks at the version counter at most this often
FIELDS = ("name", "scope", "min_zscore", "min_pscore", "min_events", "cooldown", "webhook", "secret")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)?$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration(text: str) -> int:
    """Milliseconds of ``10m``, ``30s``, ``2h``, ``1d``, ``500ms`` (a bare number is seconds); ValueError."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise ValueError(f"{text[:40]!r} is not a duration like 30s, 10m, 2h or 1d")
    return int(m.group(1)) * _UNIT_MS[m.group(2) or "s"]


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One alert rule; ``scope`` is a pattern, each part a literal or ``*``."""

    name: str
    scope: Scope
    min_zscore: float
    webhook: str
    min_pscore: float | None = None
    min_events: int = 0
    cooldown_ms: int = DEFAULT_COOLDOWN_MS
    secret: str | None = None
    by: str = ""
    at: int = 0

    @property
    def org(self) -> str:
        """The org the rule belongs to: its pattern's (``*``: every org's, only a token of every org sees it)."""
        return self.scope.org

    @property
    def ident(self) -> str:
        """``ORG/NAME``: the rule's field in the rules hash, its counters' key, unique in the deployment."""
        return f"{self.org}/{self.name}"

    @property
    def state_name(self) -> str:
        """The rule part of its (rule, individual) fire-state keys (``keys.alert_state``).

        The state key already holds the result's scope, so a rule of one org is told apart by its
        name (the keys of rules stored before names were per org stay valid); a rule of every org
        (``*``) shares each org with that org's rules, so its part is ``*/NAME``.
        """
        return self.ident if self.org == "*" else self.name

    @property
    def pattern(self) -> str:
        """The scope pattern as ``ORG/SOURCE/POP``."""
        return "/".join(self.scope)

    def matches(self, scope: Scope) -> bool:
        """Whether ``scope`` falls under the rule's pattern."""
        return all(p in ("*", s) for p, s in zip(self.scope, scope))

    def crosses(self, result: Mapping[str, Any]) -> bool:
        """Whether a scored result crosses the rule; ``learning`` and muted results never do."""
        if result.get("learning") or result.get("muted"):
            return False
        if float(result["zscore"]) < self.min_zscore or int(result["count"]) < self.min_events:
            return False
        return self.min_pscore is None or float(result["pscore"]) >= self.min_pscore

    def as_dict(self) -> dict[str, Any]:
        """The public JSON form (API, ``binormal alerts list``): no secret, ``has_secret`` instead."""
        return {
            "name": self.name,
            "org": self.org,
            "scope": self.pattern,
            "min_zscore": self.min_zscore,
            "min_pscore": self.min_pscore,
            "min_events": self.min_events,
            "cooldown_ms": self.cooldown_ms,
            "webhook": self.webhook,
            "has_secret": self.secret is not None,
            "by": self.by,
            "at": self.at,
        }

    def stored(self) -> bytes:
        """The stored JSON form (with the secret)."""
        return orjson.dumps({**self.as_dict(), "secret": self.secret})

    def matches_name(self, org: str | None, name: str) -> bool:
        """Whether this is the rule ``name`` of ``org`` (of any org when ``org`` is None)."""
        return self.name == name and (org is None or self.org == org)


def parse_scope(text: str) -> Scope:
    """A scope pattern ``ORG/SOURCE/POP`` (each part non-empty; ``*`` matches any); :class:`RuleError`."""
    parts = text.split("/") if isinstance(text, str) else []
    if len(parts) != 3:
        raise RuleError("scope: must be ORG/SOURCE/POP (each part may be *)", "scope")
    for name, part in zip(("org", "source", "pop"), parts):
        if part != "*":
            try:
                check_text(name, part)
            except RuleError as exc:
                raise RuleError(f"scope: {exc}", "scope") from None
    return Scope(*parts)


def _number(data: Mapping[str, Any], name: str, lo: float, hi: float) -> float | None:
    if name not in data:
        return None
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise RuleError(f"{name}: must be a number from {lo} to {hi}", name)
    return float(value)


def _bounded(data: Mapping[str, Any], name: str, limit: int, pattern: re.Pattern[str] | None = None) -> str | None:
    if name not in data:
        return None
    value = data[name]
    if not isinstance(value, str) or value == "":
        raise RuleError(f"{name}: must be a non-empty string", name)
    if len(value.encode("utf-8", "surrogatepass")) > limit:
        raise RuleError(f"{name}: is over the limit of {limit} bytes", name)
    if pattern is not None and not pattern.match(value):
        raise RuleError(f"{name}: may hold only letters, digits, '_', '.' and '-'", name)
    return value


def parse_alert_rule(data: Mapping[str, Any], by: str, at: int | None = None) -> AlertRule:
    """An :class:`AlertRule` from JSON-like fields (``FIELDS`` only); :class:`RuleError` naming the field."""
    for key in data:
        if key not in FIELDS:
            raise RuleError(f"{str(key)[:64]}: unknown field (allowed: {', '.join(FIELDS)})", str(key)[:64])
    name = _bounded(data, "name", NAME_LIMIT, _NAME)
    if name is None:
        raise RuleError("name: is missing", "name")
    if "scope" not in data:
        raise RuleError("scope: is missing", "scope")
    scope = parse_scope(data["scope"])
    min_z = _number(data, "min_zscore", -1e6, 1e6)
    if min_z is None:
        raise RuleError("min_zscore: is missing", "min_zscore")
    min_p = _number(data, "min_pscore", 0.0, 1.0)
    events = _number(data, "min_events", 0, 1e12)
    if events is not None and events != int(events):
        raise RuleError("min_events: must be a whole number", "min_events")
    cooldown = data.get("cooldown", DEFAULT_COOLDOWN_MS)
    if isinstance(cooldown, str):
        try:
            cooldown = parse_duration(cooldown)
        except ValueError as exc:
            raise RuleError(f"cooldown: {exc}", "cooldown") from None
    if isinstance(cooldown, bool) or not isinstance(cooldown, int) or not 0 <= cooldown <= MAX_COOLDOWN_MS:
        raise RuleError(f"cooldown: must be milliseconds from 0 to {MAX_COOLDOWN_MS} or a duration", "cooldown")
    webhook = _bounded(data, "webhook", WEBHOOK_LIMIT)
    if webhook is None:
        raise RuleError("webhook: is missing", "webhook")
    if not webhook.startswith(("http://", "https://")):
        raise RuleError("webhook: must be an http:// or https:// URL", "webhook")
    secret = _bounded(data, "secret", SECRET_LIMIT)
    stamp = int(time.time() * 1000) if at is None else at
    return AlertRule(name, scope, min_z, webhook, min_p, int(events or 0), cooldown, secret, by, stamp)


def _decode(field: bytes | str, raw: bytes | str) -> AlertRule | None:
    try:
        d = orjson.loads(raw)
        org, source, pop = d["scope"].split("/")
        return AlertRule(
            d["name"],
            Scope(org, source, pop),
            float(d["min_zscore"]),
            d["webhook"],
            None if d.get("min_pscore") is None else float(d["min_pscore"]),
            int(d.get("min_events") or 0),
            int(d["cooldown_ms"]),
            d.get("secret"),
            d.get("by", ""),
            int(d.get("at", 0)),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        log.warning("alert_rule_unreadable", field=str(field)[:80])
        return None


def _legacy(raw: bytes | str | None, field: str, org: str) -> AlertRule | None:
    """The rule stored under the bare name ``field`` (before names were per org) when it is ``org``'s."""
    rule = None if raw is None else _decode(field, raw)
    return rule if rule is not None and rule.org == org else None


async def add_alert_rule(client: Client, keys: Keyspace, rule: AlertRule) -> bool:
    """Store ``rule`` (replacing its org's rule of that name); True when it is new. :class:`RuleError` when full."""
    key = keys.alert_rules()
    pipe = client.pipeline(transaction=False)
    pipe.hlen(key)
    pipe.hexists(key, rule.ident)
    pipe.hget(key, rule.name)
    size, exists, raw = await pipe.execute()
    legacy = _legacy(raw, rule.name, rule.org) is not None
    if not exists and not legacy and int(size) >= MAX_RULES:
        raise RuleError(f"name: the deployment already holds {MAX_RULES} alert rules; remove some first", "name")
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, rule.ident, rule.stored())
    if legacy:
        pipe.hdel(key, rule.name)  # the same rule under its old field: rewritten, not kept twice
    pipe.incr(keys.alert_rules_version())  # after the HSET: a cache that sees the new version reads the rule
    await pipe.execute()
    return not exists and not legacy


async def get_alert_rule(client: Client, keys: Keyspace, org: str, name: str) -> AlertRule | None:
    """The rule ``name`` of ``org`` (``*``: the rule of every org), None when there is none."""
    new, old = await client.hmget(keys.alert_rules(), [f"{org}/{name}", name])
    if new is not None:
        return _decode(f"{org}/{name}", new)
    return _legacy(old, name, org)


async def remove_alert_rule(client: Client, keys: Keyspace, org: str, name: str) -> bool:
    """Delete the rule ``name`` of ``org``; True when it existed."""
    key = keys.alert_rules()
    fields = [f"{org}/{name}"]
    if _legacy(await client.hget(key, name), name, org) is not None:
        fields.append(name)
    removed = bool(await client.hdel(key, *fields))
    if removed:
        await client.incr(keys.alert_rules_version())
    return removed


async def list_alert_rules(client: Client, keys: Keyspace, orgs: frozenset[str] | None = None) -> list[AlertRule]:
    """Every rule (whose org is in ``orgs`` unless None), by org and name; a rule under both fields once."""
    raw = await client.hgetall(keys.alert_rules())
    found: dict[str, AlertRule] = {}
    for field, value in raw.items():
        rule = _decode(field, value)
        if rule is None:
            continue
        text = field.decode("utf-8", "replace") if isinstance(field, bytes) else field
        if "/" in text or rule.ident not in found:  # the ORG/NAME field wins over a bare-name one
            found[rule.ident] = rule
    return sorted((r for r in found.values() if orgs is None or r.org in orgs), key=lambda r: (r.org, r.name))


async def find_alert_rules(
    client: Client, keys: Keyspace, name: str, orgs: frozenset[str] | None = None
) -> list[AlertRule]:
    """The rules called ``name`` of ``orgs`` (every org when None), one per org."""
    return [r for r in await list_alert_rules(client, keys, orgs) if r.name == name]


class AlertCache(VersionedCache):
    """The deployment's alert rules, re-read when ``keys.alert_rules_version()`` moves.

    :meth:`refresh` costs one GET at most every ``interval_s``; :meth:`for_scope` memoises which
    rules match a scope, so the per-result cost with no rule is one empty-dict check.
    """

    LOG_EVENT = "alert_rules_refresh_failed"

    def __init__(self, keys: Keyspace, interval_s: float = CHECK_INTERVAL_S) -> None:
        super().__init__(keys, interval_s, log)
        self.rules: tuple[AlertRule, ...] = ()
        self._by_scope: dict[Scope, tuple[AlertRule, ...]] = {}

    def version_key(self) -> str:
        return self.keys.alert_rules_version()

    async def read(self, client: Client) -> Iterable[AlertRule]:
        return await list_alert_rules(client, self.keys)

    def load(self, rules: Iterable[AlertRule]) -> None:
        """Replace the cached rules."""
        self.rules = tuple(rules)
        self._by_scope = {}

    def for_scope(self, scope: Scope) -> tuple[AlertRule, ...]:
        """The rules whose pattern matches ``scope`` (memoised, bounded by the scopes seen)."""
        got = self._by_scope.get(scope)
        if got is None:
            if len(self._by_scope) >= 65_536:
                self._by_scope.clear()
            got = self._by_scope[scope] = tuple(r for r in self.rules if r.matches(scope))
        return got


async def send_test_alert(client: Client, keys: Keyspace, org: str, name: str) -> str | None:
    """XADD a test alert (``"test": true``, id ``binormal-test``) of ``org``'s rule ``name`` to shard 0's alert stream.

    The sender delivers it like any alert (and counts it as fired); returns its stream id, None
    when there is no such rule.
    """
    rule = await get_alert_rule(client, keys, org, name)
    if rule is None:
        return None
    body = {
        "rule": rule.name,
        "rule_org": rule.org,
        "scope": rule.pattern,
        "id": "binormal-test",
        "zscore": rule.min_zscore,
        "pscore": rule.min_pscore,
        "score": 0.0,
        "count": rule.min_events,
        "reasons": [],
        "event": None,
        "profile": "",
        "test": True,
    }
    entry = await client.xadd(
        keys.alert_stream(0), {"alert": orjson.dumps(body)}, maxlen=ALERT_MAXLEN, approximate=True
    )
    return entry.decode() if isinstance(entry, bytes) else str(entry)


def alert_body(rule: AlertRule, result: Mapping[str, Any], entry_id: str, profile_base: str = "") -> dict[str, Any]:
    """The alert as stored in the alert stream and POSTed to the webhook (docs/alerts.md)."""
    scope = "/".join((result["org"], result["source"], result["pop"]))
    return {
        "rule": rule.name,
        "rule_org": rule.org,  # with `rule`, which rule it is: names are unique per org only
        "scope": scope,
        "id": result["id"],
        "zscore": result["zscore"],
        "pscore": result["pscore"],
        "score": result["score"],
        "count": result["count"],
        "reasons": list(result.get("explain") or [])[:5],
        "event": {
            "action": result["action"],
            "timestamp": result["timestamp"],
            "event_id": result.get("event_id"),
            "entry_id": entry_id,
        },
        "profile": profile_base
        + "/api/individual?"
        + urlencode({"org": result["org"], "source": result["source"], "pop": result["pop"], "id": result["id"]}),
    }
