"""The health routes: ``GET /healthz``, ``GET /readyz``, ``GET /metrics``.

:func:`setup_health` registers them and the :func:`~binormal.common.http.observe`
middleware, once per application (idempotent, so ``binormal run`` can set up the
web tier and the ingest service on one app). :class:`Supervision` is what a
supervising process (``binormal run``) says about its embedded Redis.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from binormal.common import metrics
from binormal.common.connection import TRANSIENT
from binormal.common.http import json_response, observe
from binormal.common.redisapp import REDIS
from binormal.common.store import dead_lengths, groups_present, heartbeat_ages, stream_lag

log = structlog.get_logger("binormal.http")

PROBE_TIMEOUT_S = 1.0  # /readyz and /metrics never wait longer than this on Redis


@dataclass
class Supervision:
    """What a supervising process (``binormal run``) says about its embedded Redis.

    ``state``: ``running``, ``restarting`` (it died and is being started again:
    not ready, still alive) or ``failed`` (restarts keep failing: the process
    cannot heal itself, so liveness fails too). ``detail`` says why.
    """

    state: str = "running"
    detail: str = ""


SUPERVISION = web.AppKey("binormal_supervision", Supervision)
_HEALTH_READY_S = web.AppKey("binormal_ready_heartbeat_s", float)


def setup_health(app: web.Application, ready_heartbeat_s: float) -> None:
    """Register ``/healthz``, ``/readyz``, ``/metrics`` and the JSON/timing middleware; idempotent."""
    if _HEALTH_READY_S in app:
        return
    app[_HEALTH_READY_S] = ready_heartbeat_s
    app.middlewares.append(observe)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)


async def healthz(request: web.Request) -> web.Response:
    """The process is alive (no dependency is checked), unless its supervisor cannot heal its Redis."""
    sup = request.app.get(SUPERVISION)
    if sup is None:
        return json_response({"status": "alive"})
    if sup.state == "failed":
        return json_response({"status": "failing", "embedded_redis": sup.state, "reason": sup.detail}, 503)
    return json_response({"status": "alive", "embedded_redis": sup.state})


async def readyz(request: web.Request) -> web.Response:
    """Ready when Redis answers, every shard has the consumer group and a worker beat recently."""
    handle = request.app[REDIS]
    max_age_s = request.app[_HEALTH_READY_S]
    checks: dict[str, Any] = {"redis": False, "groups": False, "worker": False}
    reasons: list[str] = []
    sup = request.app.get(SUPERVISION)
    if sup is not None and sup.state != "running":
        reasons.append(sup.detail or f"embedded redis {sup.state}")
    if handle.error is not None:
        reasons.append(handle.error)
    elif not handle.up.is_set():
        reasons.append("redis not reached yet")
    else:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await handle.client.ping()
                checks["redis"] = True
                missing = await groups_present(handle.client, handle.keys)
                beats = await heartbeat_ages(handle.client, handle.keys)
        except TRANSIENT as exc:
            reasons.append(f"redis unreachable: {exc or type(exc).__name__}")
        else:
            checks["groups"] = not missing
            if missing:
                reasons.append(f"consumer group missing on shards {missing}")
            age_s = min(beats.values(), default=math.inf)  # judged by Redis TIME (store.heartbeat_ages)
            checks["worker"] = age_s <= max_age_s
            if not checks["worker"]:
                reasons.append("no worker heartbeat" if not beats else f"newest worker heartbeat is {age_s:.1f}s old")
    metrics.REDIS_UP.set(1 if checks["redis"] else 0)
    ready = all(checks.values()) and not (sup is not None and sup.state != "running")
    body = {"ready": ready, "checks": checks, "reasons": reasons}
    return json_response(body, 200 if ready else 503)


async def metrics_view(request: web.Request) -> web.Response:
    """Prometheus text format; the stream lag, dead-letter and heartbeat gauges are read from Redis now."""
    handle = request.app[REDIS]
    if handle.up.is_set():
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                lag = await stream_lag(handle.client, handle.keys)
                dead = await dead_lengths(handle.client, handle.keys)
                beats = await heartbeat_ages(handle.client, handle.keys)
                alert_stats = await handle.client.hgetall(handle.keys.alert_stats())
        except TRANSIENT as exc:
            metrics.REDIS_UP.set(0)
            log.warning("metrics_redis_error", error=str(exc) or type(exc).__name__)
        else:
            metrics.REDIS_UP.set(1)
            for shard, n in lag.items():
                metrics.STREAM_LAG.labels(str(shard)).set(n)
            for shard, n in dead.items():
                metrics.DEAD_LETTERED.labels(str(shard)).set(n)
            # Ages by Redis TIME (store.heartbeat_ages); +Inf without any worker, so "> N" alerts fire.
            metrics.WORKER_HEARTBEAT_AGE.set(min(beats.values(), default=math.inf))
            max_age_s = request.app[_HEALTH_READY_S]
            metrics.WORKERS_BEATING.set(sum(1 for age in beats.values() if age <= max_age_s))
            metrics.ALERTS.load(alert_stats)
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})
