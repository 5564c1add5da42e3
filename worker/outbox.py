"""What a batch sends once its entries are scored, in the round trip in front of the next read.

:func:`queue_publish`: each result to the waiter of its request (``reply_to``, one NDJSON message
per web instance) with a stored copy, then the broadcast batch for the live view, and the newest
median and MAD of the scopes. :func:`queue_alerts`: one ``alert.lua`` call per shard (of
``CHECK_CHUNK`` results) deciding which alerts fire (docs/alerts.md). Both only append commands
to the pipeline the worker sends next (worker/batch.py).
"""

from __future__ import annotations

from typing import Any

import orjson

from binormal.common.alertcheck import CHECK_CHUNK, AlertPlanner, ScopePlan
from binormal.common.alerts import ALERT_MAXLEN, STATE_LEAST_TTL_MS, AlertCache
from binormal.common.keys import Keyspace, Scope
from binormal.common.scripts import Alert, AlertCheck, Scripts
from binormal.worker.commands import Commands
from binormal.worker.entries import Counters, Entry
from binormal.worker.robust import RobustCache

BROADCAST_CHUNK = 500  # results per broadcast message (NDJSON)


def queue_publish(
    pipe: Commands,
    results: list[tuple[Entry, dict[str, Any]]],
    keys: Keyspace,
    reply_ttl_s: int,
    robust: RobustCache,
    counters: Counters,
) -> None:
    """Replies to their waiters (with a stored copy), then the broadcast batch."""
    channel = keys.broadcast_channel()
    lines = [orjson.dumps(r) for _, r in results]

    # Replies for one web instance travel as one NDJSON message per batch:
    # one PUBLISH and one pub/sub message to parse instead of one per request.
    by_channel: dict[str, list[bytes]] = {}
    for (e, _), line in zip(results, lines):
        ev = e.event
        assert ev is not None
        if ev.reply_to is not None:
            # Stored copy for a waiter that missed the publish (pub/sub keeps
            # nothing) or retries with the same event id.
            stored = ev.event_id or ev.rid
            if stored is not None:
                assert e.scope is not None
                pipe.set(keys.reply(e.scope, stored, e.shard), line, ex=reply_ttl_s)
            # The result is a JSON object: splice "rid" in before its closing brace.
            reply = line if ev.rid is None else line[:-1] + b',"rid":' + orjson.dumps(ev.rid) + b"}"
            by_channel.setdefault(ev.reply_to, []).append(reply)
    for reply_to, replies in by_channel.items():
        pipe.publish(reply_to, b"\n".join(replies))
    for i in range(0, len(lines), BROADCAST_CHUNK):
        pipe.publish(channel, b"\n".join(lines[i : i + BROADCAST_CHUNK]))
    robust.write(pipe, keys)  # the newest median and MAD, for the query API
    counters.published += len(results)


def queue_alerts(
    pipe: Commands,
    results: list[tuple[Entry, dict[str, Any]]],
    keys: Keyspace,
    scripts: Scripts,
    alerts: AlertCache,
    planner: AlertPlanner,
    counters: Counters,
) -> None:
    """Append ``alert.lua`` calls, one per shard (of CHECK_CHUNK results): the atomic fire decisions.

    The thresholds are compared here (common/alertcheck.py): a check carries only the rules its
    result crosses, so a result that crosses none costs one key and one argument. It rides in
    the publishing round trip (the tail sent in front of the next XREADGROUP): no extra round
    trip, and none at all when no rule matches the batch's scopes.
    """
    by_shard: dict[int, list[AlertCheck | str]] = {}
    plans: dict[Scope, ScopePlan | None] = {}  # this batch's scopes
    check = planner.check
    candidates = 0
    for e, result in results:
        assert e.scope is not None and e.event is not None
        if e.scope in plans:
            plan = plans[e.scope]
        else:
            rules = alerts.for_scope(e.scope)  # the one rule lookup
            plan = plans[e.scope] = planner.plan(rules) if rules else None
        if plan is None:
            continue
        c = check(plan, e.kp, e.event.id, result, e.id)
        candidates += not isinstance(c, str)
        got = by_shard.get(e.shard)
        if got is None:
            got = by_shard[e.shard] = []
        got.append(c)
    sha = scripts.sha(Alert.NAME)
    for shard, checks in by_shard.items():
        for i in range(0, len(checks), CHECK_CHUNK):
            call_keys, args = Alert.pack(
                keys.alert_stream(shard), ALERT_MAXLEN, STATE_LEAST_TTL_MS, checks[i : i + CHECK_CHUNK]
            )
            pipe.evalsha(sha, len(call_keys), *call_keys, *args)
            counters.lua_calls += 1
        counters.alert_checks += len(checks)
    counters.alert_candidates += candidates
