"""``/api/alerts/rules`` (admin) and ``/api/alerts`` (viewer): alert rules and recent alerts (docs/alerts.md).

A rule belongs to its pattern's org and its name is unique within that org only: another org's
rule of the same name is never shown, replaced or removed, and the answers do not tell it exists.

- ``GET /api/alerts/rules``: the alert rules of the caller's orgs (no secrets: ``has_secret``);
- ``POST /api/alerts/rules`` JSON ``{name, scope, min_zscore, min_pscore?, min_events?, cooldown?,
  webhook, secret?}``: add or replace the rule of that name of the pattern's org (``201`` new,
  ``200`` replaced); a pattern whose org is ``*`` needs a token of every org;
- ``DELETE /api/alerts/rules?name=[&org=]``: remove one (``404`` when the caller's orgs have none of
  that name; ``400`` naming ``org`` when several of them do and ``org`` is not given);
- ``POST /api/alerts/rules/test?name=[&org=]``: queue a test alert of one (``"test": true``, id
  ``binormal-test``) for the sender to deliver (``202``; found as for DELETE);
- ``GET /api/alerts[?scope=ORG/SOURCE/POP&rule=&rule_org=&since=<ms>&limit=]``: recent alerts, newest first,
  read from the shards' alert streams (each keeps ``ALERT_MAXLEN`` entries), of the caller's orgs.
"""

from __future__ import annotations

import heapq
from typing import Any

from aiohttp import web

from binormal.common.alerts import (
    AlertRule,
    add_alert_rule,
    find_alert_rules,
    get_alert_rule,
    list_alert_rules,
    parse_alert_rule,
    parse_scope,
    remove_alert_rule,
    send_test_alert,
)
from binormal.common.guard import principal_of, require_org
from binormal.common.http import ApiError, allowed_query, json_response, read_json_object
from binormal.common.keys import Scope
from binormal.common.redisapp import REDIS
from binormal.common.rules import RuleError
from binormal.web.alertfeed import alert_of

MAX_BODY = 8192
ALERTS_LIMIT = 1000  # most alerts one GET /api/alerts returns
DEFAULT_LIMIT = 100


def setup_alerts(app: web.Application) -> None:
    """Register ``/api/alerts/rules`` (GET, POST, DELETE) and ``/api/alerts`` (GET)."""
    app.router.add_get("/api/alerts/rules", get_rules)
    app.router.add_post("/api/alerts/rules", post_rule)
    app.router.add_delete("/api/alerts/rules", delete_rule)
    app.router.add_post("/api/alerts/rules/test", test_rule)
    app.router.add_get("/api/alerts", get_alerts)


def _orgs(request: web.Request) -> frozenset[str] | None:
    principal = principal_of(request)
    return principal.orgs if principal is not None else None


async def get_rules(request: web.Request) -> web.Response:
    """``GET /api/alerts/rules``: the rules of the caller's orgs."""
    allowed_query(request, ())
    handle = request.app[REDIS]
    rules = await list_alert_rules(handle.require(), handle.keys, _orgs(request))
    return json_response({"rules": [r.as_dict() for r in rules], "total": len(rules)})


async def post_rule(request: web.Request) -> web.Response:
    """``POST /api/alerts/rules``: add or replace an alert rule (201 new, 200 replaced)."""
    obj = await read_json_object(request, MAX_BODY)
    principal = principal_of(request)
    try:
        rule = parse_alert_rule(obj, by=principal.name if principal is not None else "anonymous")
    except RuleError as exc:
        raise ApiError(400, str(exc), exc.field) from None
    require_org(request, rule.org, "scope")  # 403 before anything is read or written
    handle = request.app[REDIS]
    client = handle.require()
    try:
        created = await add_alert_rule(client, handle.keys, rule)
    except RuleError as exc:
        raise ApiError(409, str(exc), exc.field) from None
    return json_response({**rule.as_dict(), "created": created}, status=201 if created else 200)


async def _rule_named(request: web.Request, q: dict[str, str]) -> AlertRule:
    """The rule ``name`` (of ``org`` when given) of the caller's orgs; 400/403/404 naming the field."""
    name = q.get("name")
    if not name:
        raise ApiError(400, "name: is missing", "name")
    handle = request.app[REDIS]
    client = handle.require()
    org = q.get("org")
    if org is not None:
        if not 1 <= len(org.encode("utf-8", "surrogatepass")) <= 256:
            raise ApiError(400, "org: must be 1 to 256 bytes", "org")
        require_org(request, org, "org")
        rule = await get_alert_rule(client, handle.keys, org, name)
    else:
        # Only the caller's orgs are looked at: another org's rule of this name is not there for it.
        found = await find_alert_rules(client, handle.keys, name, _orgs(request))
        if len(found) > 1:
            orgs = ", ".join(r.org for r in found)
            raise ApiError(400, f"org: is missing; alert rules called {name[:64]!r} exist in orgs {orgs[:512]}", "org")
        rule = found[0] if found else None
    if rule is None:
        raise ApiError(404, "name: no alert rule of that name in the token's orgs", "name")
    return rule


async def delete_rule(request: web.Request) -> web.Response:
    """``DELETE /api/alerts/rules?name=[&org=]``: remove one rule of the caller's orgs."""
    rule = await _rule_named(request, allowed_query(request, ("name", "org")))
    handle = request.app[REDIS]
    if not await remove_alert_rule(handle.require(), handle.keys, rule.org, rule.name):
        raise ApiError(404, "name: no alert rule of that name in the token's orgs", "name")  # removed meanwhile
    return json_response({"removed": True, "name": rule.name, "org": rule.org})


async def test_rule(request: web.Request) -> web.Response:
    """``POST /api/alerts/rules/test?name=[&org=]``: queue a test alert of one rule of the caller's orgs."""
    rule = await _rule_named(request, allowed_query(request, ("name", "org")))
    handle = request.app[REDIS]
    entry = await send_test_alert(handle.require(), handle.keys, rule.org, rule.name)
    if entry is None:
        raise ApiError(404, "name: no alert rule of that name in the token's orgs", "name")  # removed meanwhile
    return json_response({"queued": True, "alert_id": entry, "name": rule.name, "org": rule.org}, status=202)


def _int(q: dict[str, str], name: str, default: int, hi: int) -> int:
    if name not in q:
        return default
    text = q[name]
    if not text.isdigit() or not 0 <= int(text) <= hi:
        raise ApiError(400, f"{name}: must be a whole number from 0 to {hi}", name)
    return int(text)


async def get_alerts(request: web.Request) -> web.Response:
    """``GET /api/alerts``: recent alerts, newest first, filtered by scope pattern, rule and since (ms)."""
    q = allowed_query(request, ("scope", "rule", "rule_org", "since", "limit"))
    try:
        pattern: Scope | None = parse_scope(q["scope"]) if "scope" in q else None
    except RuleError as exc:
        raise ApiError(400, str(exc), exc.field) from None
    if pattern is not None and pattern.org != "*":
        require_org(request, pattern.org, "scope")
    since = _int(q, "since", 0, 2**53)
    limit = _int(q, "limit", DEFAULT_LIMIT, ALERTS_LIMIT)
    rule = q.get("rule")
    if rule is not None and not 1 <= len(rule.encode("utf-8", "surrogatepass")) <= 64:
        raise ApiError(400, "rule: must be 1 to 64 bytes", "rule")
    rule_org = q.get("rule_org")  # rule names are unique per org only: this picks one org's (or *'s)
    if rule_org is not None and not 1 <= len(rule_org.encode("utf-8", "surrogatepass")) <= 64:
        raise ApiError(400, "rule_org: must be 1 to 64 bytes", "rule_org")
    orgs = _orgs(request)
    handle = request.app[REDIS]
    client = handle.require()
    pipe = client.pipeline(transaction=False)
    for stream in handle.keys.alert_streams():
        # Newest first, from now back to `since`: more than `limit` when filters drop some.
        pipe.xrevrange(stream, "+", f"{since}-0", count=ALERTS_LIMIT)
    rows: list[tuple[int, int, dict[str, Any]]] = []
    for replies in await pipe.execute():
        for entry_id, fields in replies:
            got = alert_of(entry_id, fields)
            if got is None:
                continue
            org, alert = got
            _, source, pop = alert["scope"].split("/")
            if orgs is not None and org not in orgs:
                continue
            if rule is not None and alert.get("rule") != rule:
                continue
            if rule_org is not None and alert.get("rule_org") != rule_org:
                continue
            if pattern is not None and not all(p in ("*", s) for p, s in zip(pattern, (org, source, pop))):
                continue
            _, _, seq = alert["alert_id"].partition("-")
            rows.append((alert["at"], int(seq or 0), alert))
    newest = heapq.nlargest(limit, rows, key=lambda r: (r[0], r[1]))
    return json_response({"alerts": [r[2] for r in newest], "total": len(newest)})
