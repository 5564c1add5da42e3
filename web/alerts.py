"""``/api/alerts/rules`` (admin) and ``/api/alerts`` (viewer): alert rules and recent alerts (docs/alerts.md).

- ``GET /api/alerts/rules``: the alert rules of the caller's orgs (no secrets: ``has_secret``);
- ``POST /api/alerts/rules`` JSON ``{name, scope, min_zscore, min_pscore?, min_events?, cooldown?,
  webhook, secret?}``: add or replace one (``201`` new, ``200`` replaced); a pattern whose org is
  ``*`` needs a token of every org;
- ``DELETE /api/alerts/rules?name=``: remove one (``404`` when absent);
- ``GET /api/alerts[?scope=ORG/SOURCE/POP&rule=&since=<ms>&limit=]``: recent alerts, newest first,
  read from the shards' alert streams (each keeps ``ALERT_MAXLEN`` entries), of the caller's orgs.
"""

from __future__ import annotations

import heapq
from typing import Any

from aiohttp import web

from binormal.common.alerts import (
    add_alert_rule,
    get_alert_rule,
    list_alert_rules,
    parse_alert_rule,
    parse_scope,
    remove_alert_rule,
)
from binormal.common.guard import principal_of, require_org
from binormal.common.http import ApiError, json_response, read_json_object
from binormal.common.keys import Scope
from binormal.common.redisapp import REDIS
from binormal.common.rules import RuleError
from binormal.web.alertfeed import alert_of
from binormal.web.rules import _query

MAX_BODY = 8192
ALERTS_LIMIT = 1000  # most alerts one GET /api/alerts returns
DEFAULT_LIMIT = 100


def setup_alerts(app: web.Application) -> None:
    """Register ``/api/alerts/rules`` (GET, POST, DELETE) and ``/api/alerts`` (GET)."""
    app.router.add_get("/api/alerts/rules", get_rules)
    app.router.add_post("/api/alerts/rules", post_rule)
    app.router.add_delete("/api/alerts/rules", delete_rule)
    app.router.add_get("/api/alerts", get_alerts)


def _orgs(request: web.Request) -> frozenset[str] | None:
    principal = principal_of(request)
    return principal.orgs if principal is not None else None


async def get_rules(request: web.Request) -> web.Response:
    """``GET /api/alerts/rules``: the rules of the caller's orgs."""
    _query(request, ())
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
    require_org(request, rule.scope.org, "scope")  # 403 before anything is read or written
    handle = request.app[REDIS]
    client = handle.require()
    old = await get_alert_rule(client, handle.keys, rule.name)
    if old is not None:
        require_org(request, old.scope.org, "name")  # another org's rule of that name is not replaced
    try:
        created = await add_alert_rule(client, handle.keys, rule)
    except RuleError as exc:
        raise ApiError(409, str(exc), exc.field) from None
    return json_response({**rule.as_dict(), "created": created}, status=201 if created else 200)


async def delete_rule(request: web.Request) -> web.Response:
    """``DELETE /api/alerts/rules?name=``: remove one rule."""
    q = _query(request, ("name",))
    name = q.get("name")
    if not name:
        raise ApiError(400, "name: is missing", "name")
    handle = request.app[REDIS]
    client = handle.require()
    old = await get_alert_rule(client, handle.keys, name)
    if old is not None:
        require_org(request, old.scope.org, "name")
    if old is None or not await remove_alert_rule(client, handle.keys, name):
        raise ApiError(404, "name: no alert rule of that name", "name")
    return json_response({"removed": True, "name": name})


def _int(q: dict[str, str], name: str, default: int, hi: int) -> int:
    if name not in q:
        return default
    text = q[name]
    if not text.isdigit() or not 0 <= int(text) <= hi:
        raise ApiError(400, f"{name}: must be a whole number from 0 to {hi}", name)
    return int(text)


async def get_alerts(request: web.Request) -> web.Response:
    """``GET /api/alerts``: recent alerts, newest first, filtered by scope pattern, rule and since (ms)."""
    q = _query(request, ("scope", "rule", "since", "limit"))
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
            if pattern is not None and not all(p in ("*", s) for p, s in zip(pattern, (org, source, pop))):
                continue
            _, _, seq = alert["alert_id"].partition("-")
            rows.append((alert["at"], int(seq or 0), alert))
    newest = heapq.nlargest(limit, rows, key=lambda r: (r[0], r[1]))
    return json_response({"alerts": [r[2] for r in newest], "total": len(newest)})
