"""Query API: scopes, a scope's top outliers, one individual's action profile.

Read-only views of what the workers stored (docs/openapi.yaml documents them):

- ``GET /api/scopes``: every scope with its number of individuals and actions, and
  ``dominated`` (``{id, share}`` while one individual has more than
  ``BINORMAL_DOMINANCE_SHARE`` of its events, else null; kept by apply.lua) and ``expired``
  (individuals removed by retention, counted by expire.lua).
- ``GET /api/outliers?org=&source=&pop=&limit=[&muted=1][&exclude_learning=1]``: the
  highest current scores of a scope (ZREVRANGE of its rank zset). Within a scope zscore
  is an increasing function of score (same mean and sigma for everyone), so the top
  scores are the top zscores. Each comes with its top reasons (``Snapshot.explain``),
  ``muted`` and the calibrated fields; muted rows (a mute rule on the id, or on the
  action of its top reason: web/rules.py) are left out unless ``muted=1``,
  ``exclude_learning=1`` leaves out ``learning`` ones; the scope's ``dominated`` flag
  as in ``/api/scopes``.
- ``GET /api/individual?org=&source=&pop=&id=``: per action of the scope, the
  individual's count, the normalised count ``x'``, the expected count
  ``n' * p_a`` and the bits it contributes; plus score, zscore and count, whether
  it is ``muted`` or ``excluded`` from learning, and the analysts' ``feedback``.

The score is the one the worker last committed; zscore is computed from the
scope's current aggregates, and reasons from the current population counts,
so they can differ slightly from the last ``/discrete`` answer for that id.
Every individual row also has ``pscore`` (exact, from the rank zset),
``rzscore`` (the median and MAD a worker last sampled) and ``learning``
(common/calibration.py); with ``BINORMAL_RECENT_WINDOW`` K > 0 also ``recent``, the bits of
its recent window (its last ``min(K, n // 2)`` events, kept by apply.lua) against the current
population counts, as the reasons are (common/recent.py).
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from binormal.common.calibration import Rank, Robust, bits_per_event, is_learning
from binormal.common.guard import principal_of, require_org
from binormal.common.http import ApiError, json_response, single_query
from binormal.common.keys import Scope
from binormal.common.recent import recent_bits
from binormal.common.redisapp import REDIS
from binormal.common.result import r3
from binormal.common.rules import read_mark
from binormal.common.schema import LIMITS
from binormal.common.scoring import Snapshot, normalise, zscore
from binormal.common.store import (
    ranks_of,
    read_individual,
    read_robust,
    read_scope,
    read_windows,
    scope_summaries,
    top_individuals,
)
from binormal.web.alerts import setup_alerts
from binormal.web.rules import rules_of, setup_rules
from binormal.web.settings import WebSettings

_QUERY_SETTINGS = web.AppKey("binormal_query_settings", WebSettings)

SCOPES_LIMIT = (1000, 10_000)  # default, maximum
OUTLIERS_LIMIT = (10, 500)
ACTIONS_LIMIT = (100, 1000)
REASONS = 3


def setup_query(app: web.Application, settings: WebSettings) -> None:
    """Register ``/api/scopes``, ``/api/outliers`` and ``/api/individual`` (Redis set up by the caller)."""
    app[_QUERY_SETTINGS] = settings
    app.router.add_get("/api/scopes", scopes)
    app.router.add_get("/api/outliers", outliers)
    app.router.add_get("/api/individual", individual)
    setup_rules(app, settings.keys)
    setup_alerts(app)


def _text(request: web.Request, name: str) -> str:
    value = single_query(request, name)
    if value is None:
        raise ApiError(400, f"{name}: is missing", name)
    if value == "":
        raise ApiError(400, f"{name}: must not be empty", name)
    size = len(value.encode("utf-8", "surrogateescape"))
    if size > LIMITS[name]:
        raise ApiError(400, f"{name}: is {size} bytes, over the limit of {LIMITS[name]}", name)
    return value


def _limit(request: web.Request, bounds: tuple[int, int]) -> int:
    default, maximum = bounds
    raw = single_query(request, "limit")
    if raw is None:
        return default
    # The length check comes first: int() of thousands of digits is slow, and refused past 4,300 (a 500).
    digits = raw.lstrip("0") or "0"
    if not (raw.isascii() and raw.isdigit()) or len(digits) > len(str(maximum)) or not 1 <= int(digits) <= maximum:
        raise ApiError(400, f"limit: must be an integer from 1 to {maximum}", "limit")
    return int(digits)


_FLAGS = {"1": True, "true": True, "0": False, "false": False}


def _flag(request: web.Request, name: str) -> bool:
    """A boolean query parameter (``1``/``true``/``0``/``false``), False when absent; ``400`` naming it otherwise."""
    raw = single_query(request, name)
    if raw is None:
        return False
    value = _FLAGS.get(raw)
    if value is None:
        raise ApiError(400, f"{name}: must be 1, true, 0 or false", name)
    return value


def _calibrated(
    settings: WebSettings, score: float, events: int, individuals: int, rank: Rank, robust: Robust
) -> dict[str, Any]:
    """The calibrated fields of one individual row (as in a worker's result)."""
    return {
        "pscore": r3(rank.pscore),
        "rzscore": r3(robust.z(score)),
        "learning": is_learning(events, individuals, settings.min_events, settings.min_individuals),
        "bits_per_event": r3(bits_per_event(score, events, settings.cap)),
    }


async def _recents(
    request: web.Request, scope: Scope, snap: Snapshot, rows: list[tuple[str, dict[str, int]]]
) -> list[dict[str, float]]:
    """Per (id, counts) row ``{"recent": bits}`` with a recent window K > 0, else ``{}`` (the field left out)."""
    if not request.app[_QUERY_SETTINGS].recent_window:
        return [{} for _ in rows]
    handle = request.app[REDIS]
    individuals = [(ident, sum(counts.values())) for ident, counts in rows]
    windows = await read_windows(handle.require(), handle.keys, scope, individuals)
    return [{"recent": r3(recent_bits(snap, window))} for window in windows]


def _scope(request: web.Request) -> Scope:
    org = _text(request, "org")
    require_org(request, org)  # 403 before anything is read
    return Scope(org, _text(request, "source"), _text(request, "pop"))


def _unknown_scope(scope: Scope) -> ApiError:
    return ApiError(
        404,
        "no event was counted in this scope (org, source, pop)",
        "pop",
        org=scope.org,
        source=scope.source,
        pop=scope.pop,
    )


def _scope_dict(scope: Scope) -> dict[str, str]:
    return {"org": scope.org, "source": scope.source, "pop": scope.pop}


async def scopes(request: web.Request) -> web.Response:
    """``GET /api/scopes``: every scope with its number of individuals and actions."""
    limit = _limit(request, SCOPES_LIMIT)
    handle = request.app[REDIS]
    principal = principal_of(request)
    orgs = principal.orgs if principal is not None else None  # a tenant sees its own orgs only
    items, total = await scope_summaries(handle.require(), handle.keys, limit, orgs)
    return json_response({"scopes": items, "total": total, "truncated": total > len(items)})


async def outliers(request: web.Request) -> web.Response:
    """``GET /api/outliers``: the scope's top individuals by current score, with reasons."""
    scope = _scope(request)
    limit = _limit(request, OUTLIERS_LIMIT)
    exclude_learning = _flag(request, "exclude_learning")
    handle = request.app[REDIS]
    client = handle.require()
    view = await read_scope(client, handle.keys, scope)
    if view is None:
        raise _unknown_scope(scope)
    show_muted = _flag(request, "muted")
    rules = await rules_of(request)
    settings = request.app[_QUERY_SETTINGS]
    snap = Snapshot(view.pop, cap=settings.cap)
    agg = view.agg
    # Muted ids are read and dropped: read that many more so the limit is still filled.
    extra = 0 if show_muted else rules.muted_in(scope) + (limit if rules.muted_actions else 0)
    if exclude_learning and agg.n < settings.min_individuals:
        rows = []  # the whole scope is still learning
    else:
        min_events = max(settings.min_events, 1) if exclude_learning else 0
        rows = await top_individuals(client, handle.keys, scope, limit + extra, min_events)
    kept: list[tuple[str, float, dict[str, int], list[dict[str, object]], bool]] = []
    for ident, score, counts in rows:
        reasons = snap.explain(counts, REASONS)
        top = str(reasons[0]["action"]) if reasons else None
        muted = rules.is_muted(scope, ident) or (top is not None and rules.is_muted_action(scope, top))
        if muted and not show_muted:
            continue
        kept.append((ident, score, counts, reasons, muted))
        if len(kept) >= limit:
            break
    ranks = await ranks_of(client, handle.keys, scope, [score for _, score, _, _, _ in kept])
    robust = await read_robust(client, handle.keys, scope)
    recents = await _recents(request, scope, snap, [(ident, counts) for ident, _, counts, _, _ in kept])
    items = [
        {
            "id": ident,
            "score": r3(score),
            "count": sum(counts.values()),
            "zscore": r3(zscore(score, agg.n, agg.total, agg.total_sq)),
            **_calibrated(settings, score, sum(counts.values()), agg.n, rank, robust),
            **recent,
            "reasons": reasons,
            "muted": muted,
        }
        for (ident, score, counts, reasons, muted), rank, recent in zip(kept, ranks, recents)
    ]
    mean, std = _mean_std(agg.n, agg.total, agg.total_sq)
    return json_response(
        {
            **_scope_dict(scope),
            "individuals": agg.n,
            "mean": r3(mean),
            "std": r3(std),
            "dominated": view.dominated,
            "outliers": items,
        }
    )


async def individual(request: web.Request) -> web.Response:
    """``GET /api/individual``: one individual's counts vs expected per action, bits, score, zscore."""
    scope = _scope(request)
    ident = _text(request, "id")
    limit = _limit(request, ACTIONS_LIMIT)
    handle = request.app[REDIS]
    client = handle.require()
    view = await read_scope(client, handle.keys, scope)
    if view is None:
        raise _unknown_scope(scope)
    counts, committed = await read_individual(client, handle.keys, scope, ident)
    if not counts:
        raise ApiError(
            404,
            "id: no event was counted for this individual in this scope",
            "id",
            org=scope.org,
            source=scope.source,
            pop=scope.pop,
            id=ident,
        )
    settings = request.app[_QUERY_SETTINGS]
    snap = Snapshot(view.pop, cap=settings.cap)
    score = committed if committed is not None else snap.score(counts)
    [rank] = await ranks_of(client, handle.keys, scope, [score])
    robust = await read_robust(client, handle.keys, scope)
    n_norm, norm = normalise(counts, snap.cap)
    rows: list[dict[str, Any]] = []
    for action in snap.counts:
        observed = norm.get(action, 0)
        expected = n_norm * snap.p(action)
        bits = snap.bits(action, observed, n_norm)
        kind = "typical" if bits == 0.0 else ("over" if observed > expected else "missing")
        rows.append(
            {
                "action": action,
                "count": counts.get(action, 0),
                "observed": observed,
                "expected": r3(expected),
                "p": r3(snap.p(action)),
                "bits": r3(bits),
                "kind": kind,
            }
        )
    rows.sort(key=lambda r: (-r["bits"], r["action"]))
    agg = view.agg
    rules = await rules_of(request)
    [recent] = await _recents(request, scope, snap, [(ident, counts)])
    return json_response(
        {
            **_scope_dict(scope),
            "id": ident,
            "muted": rules.is_muted(scope, ident),
            "excluded": rules.is_excluded(scope, ident),
            "feedback": await read_mark(client, handle.keys, scope, ident),
            "count": sum(counts.values()),
            "normalised_count": n_norm,
            "score": r3(score),
            "zscore": r3(zscore(score, agg.n, agg.total, agg.total_sq)),
            **_calibrated(settings, score, sum(counts.values()), agg.n, rank, robust),
            **recent,
            "actions": rows[:limit],
            "actions_total": len(rows),
            "truncated": len(rows) > limit,
        }
    )


def _mean_std(n: int, total: float, total_sq: float) -> tuple[float, float]:
    if n <= 0:
        return 0.0, 0.0
    mean = total / n
    return mean, math.sqrt(max(total_sq / n - mean * mean, 0.0))
