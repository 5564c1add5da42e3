"""``/api/rules``: list, add and remove analyst rules and feedback (common/rules.py).

- ``GET /api/rules[?org=&source=&pop=]``: the rules of the caller's orgs (of one org, or one scope);
- ``POST /api/rules`` JSON ``{kind, org, source, pop, id | action, label?, note?}``: add or
  replace one (``201`` new, ``200`` replaced); ``by`` is the token's name (``anonymous`` with auth off);
- ``DELETE /api/rules?kind=&org=&source=&pop=&id= | &action=``: remove one (``404`` when absent).

Role ``analyst`` (or ``admin``): the guard's route table (common/guard.py). Every rule names its
org, checked against the token's orgs (``403``) before anything is read or written. The app also
keeps a :class:`~binormal.common.rules.RuleCache` (``app[RULES]``) the query API filters muted
individuals with.
"""

from __future__ import annotations

from aiohttp import web

from binormal.common.guard import principal_of, require_org
from binormal.common.http import ApiError, allowed_query, json_response, read_json_object
from binormal.common.keys import Keyspace, Scope
from binormal.common.redisapp import REDIS
from binormal.common.rules import (
    RuleCache,
    RuleError,
    add_rule,
    check_text,
    list_rules,
    parse_rule,
    parse_target,
    remove_rule,
)

RULES = web.AppKey("binormal_rules", RuleCache)
MAX_BODY = 8192
TARGET_FIELDS = ("kind", "org", "source", "pop", "id", "action")


def setup_rules(app: web.Application, keys: Keyspace) -> None:
    """Register ``/api/rules`` (GET, POST, DELETE) and the app's rule cache (Redis set up by the caller)."""
    app[RULES] = RuleCache(keys)
    app.router.add_get("/api/rules", get_rules)
    app.router.add_post("/api/rules", post_rule)
    app.router.add_delete("/api/rules", delete_rule)


async def rules_of(request: web.Request) -> RuleCache:
    """The app's rule cache, refreshed if its version moved (checked at most every 0.5 s)."""
    cache = request.app[RULES]
    await cache.refresh(request.app[REDIS].require())
    return cache


async def get_rules(request: web.Request) -> web.Response:
    """``GET /api/rules``: the rules the caller may see, optionally of one org or one scope."""
    q = allowed_query(request, ("org", "source", "pop"))
    try:
        for name, value in q.items():
            check_text(name, value)
    except RuleError as exc:
        raise ApiError(400, str(exc), exc.field) from None
    principal = principal_of(request)
    orgs = principal.orgs if principal is not None else None
    scope = None
    if "source" in q or "pop" in q:
        missing = [n for n in ("org", "source", "pop") if not q.get(n)]
        if missing:
            raise ApiError(400, f"{missing[0]}: is missing (give org, source and pop to list one scope)", missing[0])
        scope = Scope(q["org"], q["source"], q["pop"])
    if "org" in q:
        require_org(request, q["org"])
        orgs = frozenset({q["org"]})
    handle = request.app[REDIS]
    rules = await list_rules(handle.require(), handle.keys, orgs, scope)
    return json_response({"rules": [r.as_dict() for r in rules], "total": len(rules)})


async def post_rule(request: web.Request) -> web.Response:
    """``POST /api/rules``: add or replace a rule (201 new, 200 replaced)."""
    obj = await read_json_object(request, MAX_BODY)
    principal = principal_of(request)
    try:
        rule = parse_rule(obj, by=principal.name if principal is not None else "anonymous")
    except RuleError as exc:
        raise ApiError(400, str(exc), exc.field) from None
    require_org(request, rule.scope.org)  # 403 before anything is written
    handle = request.app[REDIS]
    try:
        created = await add_rule(handle.require(), handle.keys, rule)
    except RuleError as exc:
        raise ApiError(409, str(exc), exc.field) from None
    request.app[RULES].next_check = 0.0  # this instance sees its own change at once (others within 0.5 s)
    return json_response({**rule.as_dict(), "created": created}, status=201 if created else 200)


async def delete_rule(request: web.Request) -> web.Response:
    """``DELETE /api/rules?kind=&org=&source=&pop=&id=|action=``: remove one rule."""
    q = allowed_query(request, TARGET_FIELDS)
    try:
        kind, scope, target, value = parse_target(q)
    except RuleError as exc:
        raise ApiError(400, str(exc), exc.field) from None
    require_org(request, scope.org)
    handle = request.app[REDIS]
    if not await remove_rule(handle.require(), handle.keys, kind, scope, target, value):
        raise ApiError(404, f"{target}: no {kind} rule on it in this scope", target)
    request.app[RULES].next_check = 0.0
    return json_response(
        {"removed": True, "kind": kind, "org": scope.org, "source": scope.source, "pop": scope.pop, target: value}
    )
