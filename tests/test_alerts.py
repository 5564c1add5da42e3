"""Alert rules, the atomic fire decision (alert.lua), and the sender (worker/sender.py) against real parts.

The private redis-server, ``binormal worker`` children (one killed mid-stream), an in-process
sender and a real loopback webhook receiver (tests/support/receiver.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from binormal.common.alerts import (
    AlertCache,
    AlertRule,
    add_alert_rule,
    alert_body,
    list_alert_rules,
    parse_alert_rule,
    parse_duration,
    remove_alert_rule,
)
from binormal.common.auth import hash_token
from binormal.common.keys import Keyspace, Scope
from binormal.common.rules import RuleError
from binormal.common.schema import Event
from binormal.common.scripts import Alert, AlertItem, Scripts
from binormal.worker.sender import GROUP, SIGNATURE_HEADER, Sender, SenderSettings, list_failed, replay_failed
from tests.support.backends import both_backends
from tests.support.http import combined_app, ingest_settings, serving, web_settings
from tests.support.receiver import Receiver, receiving
from tests.support.redis_state import drained, no_uncommitted, xadd_events
from tests.support.waiting import wait_for
from tests.support.workers import WorkerProcess, binormal_command

pytestmark = pytest.mark.timeout(120)

SECRET = "s3cret-for-tests"
NORMAL = ["GET /"] * 6 + ["GET /item"] * 3 + ["POST /cart"]


def rule_of(url: str, **over: object) -> AlertRule:
    data: dict[str, object] = {
        "name": "scanners",
        "scope": "acme/web/*",
        "min_zscore": 3.0,
        "cooldown": "10m",
        "webhook": url,
        "secret": SECRET,
    }
    data.update(over)
    return parse_alert_rule(data, by="test")


def traffic(pop: str, normals: int, rounds: int) -> list[Event]:
    """``normals`` ordinary individuals interleaved with one scanner (the last ``rounds // 2`` rounds)."""
    rng = random.Random(pop)
    out: list[Event] = []
    for r in range(rounds):
        for i in range(normals):
            out.append(Event("acme", "web", pop, f"u{i}", rng.choice(NORMAL)))
        if r >= rounds // 2:
            out.append(Event("acme", "web", pop, "scanner", f"GET /probe/{r}"))
    return out


@contextlib.asynccontextmanager
async def sending(client: aioredis.Redis, keys: Keyspace, **over: object) -> AsyncIterator[Sender]:
    settings = SenderSettings(timeout_s=1.0, tries=4, backoff_s=0.05, backoff_max_s=0.2, block_ms=50, consumer="s1")
    for k, v in over.items():
        setattr(settings, k, v)
    sender = Sender(client, keys, settings)
    task = asyncio.create_task(sender.run())
    try:
        yield sender
    finally:
        sender.stop()
        await asyncio.wait_for(task, timeout=10)


def workers(n: int, redis_url: str, prefix: str, tmp_path: Path) -> list[WorkerProcess]:
    env = {"BINORMAL_MIN_EVENTS": "1", "BINORMAL_MIN_INDIVIDUALS": "1", "BINORMAL_CLAIM_IDLE_MS": "500"}
    return [WorkerProcess(redis_url, prefix, f"aw{i}", tmp_path / f"w{i}.log", env).start() for i in range(n)]


def stop_all(procs: list[WorkerProcess]) -> None:
    for w in procs:
        w.signal(signal.SIGTERM)
    for w in procs:
        w.wait()


# ---------------------------------------------------------------- rules


def test_parse_alert_rule_names_the_field_at_fault() -> None:
    good = {"name": "r1", "scope": "acme/*/*", "min_zscore": 3, "webhook": "http://127.0.0.1:1/h"}
    assert parse_alert_rule(good, by="t").cooldown_ms == 600_000
    bad = [
        ({**good, "scope": "acme/web"}, "scope"),
        ({**good, "scope": "acme//x"}, "scope"),
        ({**good, "name": "has space"}, "name"),
        ({**good, "min_zscore": "3"}, "min_zscore"),
        ({**good, "min_pscore": 1.5}, "min_pscore"),
        ({**good, "min_events": 2.5}, "min_events"),
        ({**good, "cooldown": "ten minutes"}, "cooldown"),
        ({**good, "webhook": "ftp://x"}, "webhook"),
        ({**good, "colour": "red"}, "colour"),
        ({k: v for k, v in good.items() if k != "webhook"}, "webhook"),
    ]
    for data, field in bad:
        with pytest.raises(RuleError) as exc:
            parse_alert_rule(data, by="t")
        assert exc.value.field == field, (data, str(exc.value))
    assert [parse_duration(t) for t in ("500ms", "30s", "10m", "2h", "1d", "5")] == [
        500,
        30_000,
        600_000,
        7_200_000,
        86_400_000,
        5_000,
    ]


def test_a_rule_is_named_by_its_org_and_a_rule_of_every_org_keeps_a_fire_state_of_its_own() -> None:
    mine, every = rule_of("http://x/h"), rule_of("http://x/h", scope="*/web/*")
    assert (mine.org, mine.ident, every.ident) == ("acme", "acme/scanners", "*/scanners")
    # The state key holds the result's scope: an org's rule keeps its (pre-upgrade) key by name alone,
    # a rule of every org matches that scope too and so needs a different one.
    keys, scope = Keyspace("bn", 4), Scope("acme", "web", "p")
    assert mine.state_name == "scanners"
    assert keys.alert_state(scope, mine.state_name, "u") != keys.alert_state(scope, every.state_name, "u")


def test_a_pattern_matches_per_part_and_learning_or_muted_never_crosses() -> None:
    rule = rule_of("http://x/h", scope="acme/*/login")
    assert rule.matches(Scope("acme", "web", "login")) and not rule.matches(Scope("acme", "web", "other"))
    assert not rule.matches(Scope("beta", "web", "login"))
    hot = {"zscore": 5.0, "pscore": 0.99, "count": 10, "learning": False, "muted": False}
    assert rule.crosses(hot)
    assert not rule.crosses({**hot, "learning": True}) and not rule.crosses({**hot, "muted": True})
    assert not rule.crosses({**hot, "zscore": 2.9})
    assert not rule_of("http://x/h", min_pscore=0.999).crosses(hot)
    assert not rule_of("http://x/h", min_events=11).crosses(hot)


async def test_rules_are_stored_listed_without_the_secret_and_the_cache_follows(
    aredis: aioredis.Redis, prefix: str
) -> None:
    keys = Keyspace(prefix=prefix, shards=4)
    cache = AlertCache(keys, interval_s=0)
    assert not await cache.refresh(aredis) or cache.rules == ()
    assert await add_alert_rule(aredis, keys, rule_of("http://127.0.0.1:1/h"))
    assert not await add_alert_rule(aredis, keys, rule_of("http://127.0.0.1:2/h"))  # replaced
    [listed] = await list_alert_rules(aredis, keys)
    shown = listed.as_dict()
    assert shown["has_secret"] is True and "secret" not in shown and shown["webhook"] == "http://127.0.0.1:2/h"
    assert await cache.refresh(aredis) and [r.name for r in cache.rules] == ["scanners"]
    assert cache.for_scope(Scope("acme", "web", "x")) and not cache.for_scope(Scope("beta", "web", "x"))
    assert await remove_alert_rule(aredis, keys, "acme", "scanners")
    assert not await remove_alert_rule(aredis, keys, "acme", "scanners")
    assert await cache.refresh(aredis) and cache.rules == ()


# ---------------------------------------------------------------- the fire decision


async def test_alert_lua_fires_once_per_crossing_then_needs_cooldown_and_a_new_crossing(
    aredis: aioredis.Redis, prefix: str
) -> None:
    keys = Keyspace(prefix=prefix, shards=4)
    scripts = Scripts()
    scope = Scope("acme", "web", "p")
    shard = keys.shard(scope)
    state = keys.alert_state(scope, "r", "u1", shard)
    stream = keys.alert_stream(shard)

    async def decide(*items: tuple[bool, str, int]) -> list[bool]:
        packed = [AlertItem(state, c, 1000, eid, ms, b'{"rule":"r"}' if c else b"") for c, eid, ms in items]
        k, a = Alert.pack(stream, 1000, 60_000, packed)
        return [x is not None for x in Alert.decode(await scripts.run(aredis, Alert.NAME, k, a))]

    assert await decide((True, "1-0", 1)) == [True]  # first crossing fires
    assert await decide((True, "1-0", 1)) == [False]  # the same entry again: nothing
    assert await decide((True, "2-0", 2000)) == [False]  # still above, cool-down passed: not a new crossing
    assert await decide((False, "3-0", 2100), (True, "4-0", 2200)) == [False, True]  # dropped, crossed: fires
    assert await decide((False, "5-0", 2300), (True, "6-0", 2400)) == [False, False]  # within the cool-down
    assert await decide((True, "7-0", 3300)) == [True]  # armed since 5-0, cool-down passed
    assert await aredis.xlen(stream) == 3
    assert 0 < await aredis.pttl(state) <= 60_000


# ---------------------------------------------------------------- end to end


@both_backends
async def test_exactly_one_signed_alert_per_crossing_while_workers_run_and_one_is_killed(
    aredis: aioredis.Redis, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    keys = Keyspace(prefix=prefix, shards=4)
    events = traffic("login", normals=60, rounds=30) + traffic("signup", normals=60, rounds=30)
    async with receiving(Receiver()) as rx:
        await add_alert_rule(aredis, keys, rule_of(rx.url, min_events=8, min_zscore=6.0))
        procs = workers(3, redis_url, prefix, tmp_path)
        try:
            await wait_for(lambda: aredis.hlen(keys.workers()), timeout=20, what="the workers' heartbeats")
            async with sending(aredis, keys) as sender:
                half = len(events) // 2
                await xadd_events(aredis, keys, events[:half], chunk=50)
                procs[0].kill()  # mid-stream: its pending entries are claimed by the others
                await xadd_events(aredis, keys, events[half:], chunk=50)
                await wait_for(lambda: drained(aredis, keys), timeout=60, what="the streams drained")
                await wait_for(lambda: no_uncommitted(aredis, keys), timeout=60, what="every score committed")
                await wait_for(
                    lambda: len({orjson.loads(r.body)["scope"] for r in rx.got if b'"id":"scanner"' in r.body}) == 2,
                    timeout=30,
                    what="both scanners' alerts",
                )
                await asyncio.sleep(0)  # let in-flight deliveries land before counting
                await wait_for(
                    lambda: sender.counters.read == sender.counters.delivered, timeout=10, what="all delivered"
                )
        finally:
            stop_all(procs)
    alerts = [orjson.loads(r.body) for r in rx.got]
    # One alert per (rule, individual): a 10 minute cool-down, so nobody fires twice in this test;
    # both scanners crossed (an ordinary individual may cross too at a stale moment, once).
    crossed = [(a["scope"], a["id"]) for a in alerts]
    assert len(crossed) == len(set(crossed)), crossed
    assert {("acme/web/login", "scanner"), ("acme/web/signup", "scanner")} <= set(crossed)
    for r, a in zip(rx.got, alerts):
        want = "sha256=" + hmac.new(SECRET.encode(), r.body, hashlib.sha256).hexdigest()
        assert r.headers[SIGNATURE_HEADER] == want
        assert a["rule"] == "scanners" and a["zscore"] >= 6.0 and a["count"] >= 1
        assert {"pscore", "score", "reasons", "event", "profile"} <= set(a)
        assert a["reasons"] and a["event"]["entry_id"]
        assert a["profile"].startswith("/api/individual?org=acme&source=web&pop=")
    total = sum([await aredis.xlen(s) for s in keys.alert_streams()])
    assert total == len(alerts)
    stats = await aredis.hgetall(keys.alert_stats())
    n = str(len(alerts)).encode()
    assert stats == {b"fired:acme/scanners": n, b"delivered:acme/scanners": n}


async def fire_one(aredis: aioredis.Redis, keys: Keyspace, url: str, legacy: bool = False) -> None:
    """Put one alert of acme's rule ``scanners`` on its stream, as alert.lua would.

    ``legacy``: as queued before rule names were per org (no ``rule_org``: found by name and scope).
    """
    await add_alert_rule(aredis, keys, rule_of(url))
    scope = Scope("acme", "web", "p")
    shard = keys.shard(scope)
    alert = {"rule": "scanners", "scope": "acme/web/p", "id": "x"} | ({} if legacy else {"rule_org": "acme"})
    state = keys.alert_state(scope, "scanners", "x", shard)
    k, a = Alert.pack(
        keys.alert_stream(shard), 1000, 60_000, [AlertItem(state, True, 0, "1-0", 1, orjson.dumps(alert))]
    )
    await Scripts().run(aredis, Alert.NAME, k, a)


@both_backends
async def test_a_receiver_answering_500_then_recovering_gets_the_alert_after_retries(
    aredis: aioredis.Redis, prefix: str
) -> None:
    keys = Keyspace(prefix=prefix, shards=4)
    async with receiving(Receiver(fail_first=2)) as rx:
        await fire_one(aredis, keys, rx.url)
        async with sending(aredis, keys) as sender:
            await wait_for(lambda: len(rx.got) == 1, timeout=20, what="the alert after retries")
            await wait_for(lambda: sender.counters.delivered == 1, timeout=5, what="counted delivered")
    assert rx.attempts == 3 and orjson.loads(rx.got[0].body)["id"] == "x"
    assert await list_failed(aredis, keys) == []


@both_backends
async def test_a_receiver_that_never_answers_ends_in_the_failed_list_and_replays(
    aredis: aioredis.Redis, prefix: str
) -> None:
    keys = Keyspace(prefix=prefix, shards=4)
    async with receiving(Receiver(hang=True)) as rx:
        await fire_one(aredis, keys, rx.url)
        async with sending(aredis, keys, timeout_s=0.2, tries=3) as sender:
            await wait_for(lambda: sender.counters.failed == 1, timeout=20, what="the alert given up")
        assert rx.attempts == 3
        [failed] = await list_failed(aredis, keys)
        assert failed["alert"]["id"] == "x" and "Timeout" in failed["error"]
        stats = await aredis.hgetall(keys.alert_stats())
        assert stats[b"failed:acme/scanners"] == b"1"
        rx.hang = False
        assert await replay_failed(aredis, keys) == 1 and await list_failed(aredis, keys) == []
        async with sending(aredis, keys):
            await wait_for(lambda: len(rx.got) == 1, timeout=20, what="the replayed alert delivered")


@both_backends
async def test_an_alert_a_dead_sender_left_pending_is_claimed_and_delivered_once(
    aredis: aioredis.Redis, prefix: str
) -> None:
    keys = Keyspace(prefix=prefix, shards=4)
    stream = keys.alert_stream(keys.shard(Scope("acme", "web", "p")))
    async with receiving(Receiver()) as rx:
        await fire_one(aredis, keys, rx.url, legacy=True)
        # A sender that read the alert and died before delivering it: pending under its name.
        await aredis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        [(_, [(entry_id, _)])] = await aredis.xreadgroup(GROUP, "dead", {stream: ">"}, count=10)
        async with sending(aredis, keys, claim_idle_ms=200) as sender:
            await wait_for(lambda: sender.counters.delivered == 1, timeout=20, what="the claimed alert delivered")
        assert [r.headers["X-Binormal-Alert-Id"] for r in rx.got] == [entry_id.decode()]
    assert (await aredis.xpending(stream, GROUP))["pending"] == 0


@both_backends
async def test_alerts_of_two_streams_with_the_same_entry_id_are_both_delivered_at_once(
    aredis: aioredis.Redis, prefix: str
) -> None:
    """Alert streams are separate id spaces: alerts XADDed in one millisecond to two shards share an id."""
    keys = Keyspace(prefix=prefix, shards=4)
    async with receiving(Receiver()) as rx:
        await add_alert_rule(aredis, keys, rule_of(rx.url, scope="acme/*/*"))
        for shard in (1, 2):
            alert = {"rule": "scanners", "rule_org": "acme", "scope": "acme/web/p", "id": f"u{shard}"}
            await aredis.xadd(keys.alert_stream(shard), {"alert": orjson.dumps(alert)}, id="5-0")
        async with sending(aredis, keys) as sender:  # claims only after 60 s: a skipped alert would wait
            await wait_for(lambda: sender.counters.delivered == 2, timeout=10, what="both alerts delivered")
    assert sorted(orjson.loads(r.body)["id"] for r in rx.got) == ["u1", "u2"]


@both_backends
async def test_alerts_command_adds_lists_removes_and_never_prints_the_secret(
    aredis: aioredis.Redis, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_url, "BINORMAL_PREFIX": prefix, "BINORMAL_SHARDS": "4", "PATH": "/usr/bin:/bin"}
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    cli = binormal_command()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, "alerts", *args], env=env, capture_output=True, text=True, timeout=30)

    add = run(
        "add", "r1", "--scope", "acme/*/*", "--min-zscore", "3", "--cooldown", "5m",
        "--webhook", "http://127.0.0.1:9/h", "--secret-file", str(secret),
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    assert SECRET not in add.stdout and json.loads(add.stdout)["has_secret"] is True
    listed = run("list")
    assert listed.returncode == 0 and SECRET not in listed.stdout
    assert json.loads(listed.stdout)["cooldown_ms"] == 300_000
    bad = run("add", "r2", "--scope", "acme", "--min-zscore", "3", "--webhook", "http://x/h")
    assert bad.returncode == 2 and "scope" in bad.stderr
    tested = run("test", "r1")
    assert tested.returncode == 0, tested.stderr
    [(_, [(_, fields)])] = await aredis.xread({Keyspace(prefix=prefix, shards=4).alert_stream(0): "0"})
    assert orjson.loads(fields[b"alert"])["test"] is True
    assert run("test", "nope").returncode == 1
    # Another org's rule of the same name: a rule of its own, and the CLI then wants --org.
    assert run("add", "r1", "--scope", "beta/*/*", "--min-zscore", "3", "--webhook", "http://x/h").returncode == 0
    assert sorted(json.loads(line)["org"] for line in run("list").stdout.splitlines()) == ["acme", "beta"]
    ambiguous = run("remove", "r1")
    assert ambiguous.returncode == 2 and "--org" in ambiguous.stderr and "beta" in ambiguous.stderr
    assert run("remove", "r1", "--org", "beta").returncode == 0
    assert run("remove", "r1").returncode == 0 and run("remove", "r1").returncode == 1
    assert run("failed").returncode == 0
    record = {"stream": Keyspace(prefix=prefix, shards=4).alert_stream(3), "entry_id": "1-0", "error": "HTTP 500"}
    await aredis.lpush(Keyspace(prefix=prefix, shards=4).alert_failed(), orjson.dumps({**record, "alert": {"id": "x"}}))
    listed = run("failed")
    assert listed.returncode == 0 and json.loads(listed.stdout)["error"] == "HTTP 500"
    replayed = run("failed", "--replay")
    assert replayed.returncode == 0 and "replayed 1 " in replayed.stdout, replayed.stderr
    assert await aredis.xlen(record["stream"]) == 1 and run("failed").stdout == ""


async def test_metrics_export_the_alert_counters_per_rule(aredis: aioredis.Redis, redis_url: str, prefix: str) -> None:
    ws, ins = web_settings(redis_url, prefix), ingest_settings(redis_url, prefix)
    counts = {"fired:acme/r1": 3, "delivered:acme/r1": 2, "failed:acme/r1": 1, "fired:beta/r1": 5, "fired:r0": 7}
    await aredis.hset(ws.keys.alert_stats(), mapping=counts)
    async with serving(combined_app(ws, ins)) as base, aiohttp.ClientSession() as http:
        async with http.get(base + "/metrics") as resp:
            text = await resp.text()
    for line in (
        'binormal_alerts_fired_total{org="acme",rule="r1"} 3.0',
        'binormal_alerts_delivered_total{org="acme",rule="r1"} 2.0',
        'binormal_alerts_failed_total{org="acme",rule="r1"} 1.0',
        'binormal_alerts_fired_total{org="beta",rule="r1"} 5.0',
        'binormal_alerts_fired_total{org="",rule="r0"} 7.0',  # counted before names were per org
    ):
        assert line in text, text[-2000:]


@both_backends
async def test_api_alert_rules_are_admin_and_org_scoped_and_api_alerts_filters(
    aredis: aioredis.Redis, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    people = {"admin": ("admin", "acme"), "root": ("admin", "*"), "analyst": ("analyst", "acme")}
    tokens.write_text("".join(f"{n} {r} {o} sha256:{hash_token('tok-' + n).hex()}\n" for n, (r, o) in people.items()))
    ws = web_settings(redis_url, prefix, tokens_file=str(tokens))
    ins = ingest_settings(redis_url, prefix, tokens_file=str(tokens))
    keys = ws.keys
    body = {"name": "r1", "scope": "acme/web/*", "min_zscore": 4, "webhook": "http://127.0.0.1:9/h", "secret": SECRET}
    async with serving(combined_app(ws, ins)) as base, aiohttp.ClientSession() as http:

        async def call(method: str, path: str, who: str, **kw: Any) -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer tok-{who}"}
            async with http.request(method, base + path, headers=headers, **kw) as r:
                return r.status, await r.json(content_type=None)

        assert (await call("POST", "/api/alerts/rules", "analyst", json=body))[0] == 403  # admin only
        status, made = await call("POST", "/api/alerts/rules", "admin", json=body)
        assert status == 201 and made["has_secret"] is True and SECRET not in json.dumps(made)
        assert (await call("POST", "/api/alerts/rules", "admin", json=body))[0] == 200
        status, err = await call("POST", "/api/alerts/rules", "admin", json={**body, "scope": "beta/*/*"})
        assert status == 403 and err["field"] == "scope"
        assert (await call("POST", "/api/alerts/rules", "admin", json={**body, "scope": "*/web/*"}))[0] == 403
        status, err = await call("POST", "/api/alerts/rules", "admin", json={**body, "min_zscore": "x"})
        assert status == 400 and err["field"] == "min_zscore"
        assert (await call("POST", "/api/alerts/rules", "root", json={**body, "name": "all", "scope": "*/*/*"}))[
            0
        ] == 201
        status, listed = await call("GET", "/api/alerts/rules", "admin")
        assert status == 200 and [r["name"] for r in listed["rules"]] == ["r1"]
        assert SECRET not in json.dumps(listed)
        status, listed = await call("GET", "/api/alerts/rules", "root")
        assert [r["name"] for r in listed["rules"]] == ["all", "r1"]
        assert (await call("DELETE", "/api/alerts/rules?name=all", "admin"))[0] == 404  # not there for it
        assert (await call("DELETE", "/api/alerts/rules?name=all&org=*", "admin"))[0] == 403
        # Two alerts on the streams: one of acme, one of beta.
        for scope, rule, rule_org in (("acme/web/login", "r1", "acme"), ("beta/web/login", "all", "*")):
            org, source, pop = scope.split("/")
            shard = keys.shard(Scope(org, source, pop))
            alert = {"rule": rule, "rule_org": rule_org, "scope": scope, "id": "u1"}
            await aredis.xadd(keys.alert_stream(shard), {"alert": orjson.dumps(alert)})
        status, got = await call("GET", "/api/alerts", "analyst")
        assert status == 200 and [a["scope"] for a in got["alerts"]] == ["acme/web/login"]
        status, got = await call("GET", "/api/alerts?rule=all&scope=*/web/*", "root")
        assert [a["scope"] for a in got["alerts"]] == ["beta/web/login"]
        status, got = await call("GET", "/api/alerts?rule=all&rule_org=*", "root")
        assert [a["scope"] for a in got["alerts"]] == ["beta/web/login"]
        status, got = await call("GET", "/api/alerts?rule=all&rule_org=beta", "root")
        assert status == 200 and got["alerts"] == []  # beta has no rule "all": the * rule's alert is not it
        status, err = await call("GET", "/api/alerts?rule_org=", "root")
        assert status == 400 and err["field"] == "rule_org"
        status, got = await call("GET", "/api/alerts?since=99999999999999", "root")
        assert status == 200 and got["alerts"] == []
        assert (await call("GET", "/api/alerts?limit=x", "root"))[0] == 400
        assert (await call("GET", "/api/alerts?scope=beta/web/login", "analyst"))[0] == 403
        assert (await call("DELETE", "/api/alerts/rules?name=r1", "admin"))[0] == 200
        assert (await call("DELETE", "/api/alerts/rules?name=r1", "admin"))[0] == 404


def test_an_alert_calls_keys_share_their_shards_slot() -> None:
    """alert.lua's KEYS (the shard's alert stream, each state) hash to one slot: it runs on Redis Cluster."""
    from redis.crc import key_slot

    keys = Keyspace("bn", 64)
    for shard in range(keys.shards):
        scope = next(s for i in range(10_000) if keys.shard(s := Scope("acme", "web", f"p{i}")) == shard)
        slots = {key_slot(k.encode()) for k in (keys.alert_stream(shard), keys.alert_state(scope, "r{1}", "u:1"))}
        assert len(slots) == 1, shard


# ---------------------------------------------------------------- rule names are per org


def two_org_tokens(tmp_path: Path) -> Path:
    """A tokens file: an admin of acme, an admin of beta, an admin of both, an admin of every org."""
    tokens = tmp_path / "tokens"
    people = {"a": ("admin", "acme"), "b": ("admin", "beta"), "ab": ("admin", "acme,beta"), "root": ("admin", "*")}
    tokens.write_text("".join(f"{n} {r} {o} sha256:{hash_token('tok-' + n).hex()}\n" for n, (r, o) in people.items()))
    return tokens


@both_backends
async def test_two_orgs_have_alert_rules_of_one_name_and_never_see_or_touch_each_others(
    aredis: aioredis.Redis, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    tokens = two_org_tokens(tmp_path)
    ws = web_settings(redis_url, prefix, tokens_file=str(tokens))
    ins = ingest_settings(redis_url, prefix, tokens_file=str(tokens))
    a = {"name": "r1", "scope": "acme/web/*", "min_zscore": 4, "webhook": "http://127.0.0.1:9/a"}
    b = {**a, "scope": "beta/web/*", "webhook": "http://127.0.0.1:9/b"}
    async with serving(combined_app(ws, ins)) as base, aiohttp.ClientSession() as http:

        async def call(method: str, path: str, who: str, **kw: Any) -> tuple[int, Any]:
            async with http.request(method, base + path, headers={"Authorization": f"Bearer tok-{who}"}, **kw) as r:
                return r.status, await r.json(content_type=None)

        async def hooks(who: str) -> list[tuple[str, str]]:
            status, listed = await call("GET", "/api/alerts/rules", who)
            assert status == 200, listed
            return [(r["scope"], r["webhook"]) for r in listed["rules"]]

        assert (await call("POST", "/api/alerts/rules", "a", json=a))[0] == 201
        status, made = await call("POST", "/api/alerts/rules", "b", json=b)
        assert status == 201 and made["org"] == "beta", made  # a name of its own org, not acme's
        assert await hooks("a") == [("acme/web/*", "http://127.0.0.1:9/a")]
        assert await hooks("b") == [("beta/web/*", "http://127.0.0.1:9/b")]
        # A token of both orgs writing beta's r1 replaces beta's, never acme's.
        status, made = await call("POST", "/api/alerts/rules", "ab", json={**b, "webhook": "http://127.0.0.1:9/b2"})
        assert status == 200 and made["created"] is False
        assert await hooks("a") == [("acme/web/*", "http://127.0.0.1:9/a")]
        assert sorted(await hooks("ab")) == [
            ("acme/web/*", "http://127.0.0.1:9/a"),
            ("beta/web/*", "http://127.0.0.1:9/b2"),
        ]
        # A test alert: of the caller's own rule only, found like a removal.
        assert (await call("POST", "/api/alerts/rules/test?name=r1&org=acme", "b"))[0] == 403
        assert (await call("POST", "/api/alerts/rules/test?name=r1", "ab"))[1]["field"] == "org"
        status, queued = await call("POST", "/api/alerts/rules/test?name=r1", "b")
        assert status == 202 and queued["org"] == "beta", queued
        [(_, [(_, fields)])] = await aredis.xread({ws.keys.alert_stream(0): "0"})
        test_alert = orjson.loads(fields[b"alert"])
        assert (test_alert["test"], test_alert["rule_org"], test_alert["scope"]) == (True, "beta", "beta/web/*")
        # Removing: b removes its own r1 only; "ab" must say which org; nobody removes another org's.
        status, err = await call("DELETE", "/api/alerts/rules?name=r1", "ab")
        assert status == 400 and err["field"] == "org" and "acme" in err["error"] and "beta" in err["error"]
        assert (await call("DELETE", "/api/alerts/rules?name=r1&org=acme", "b"))[0] == 403
        assert (await call("DELETE", "/api/alerts/rules?name=r1", "b"))[0] == 200
        assert (await call("DELETE", "/api/alerts/rules?name=r1", "b"))[0] == 404
        assert await hooks("a") == [("acme/web/*", "http://127.0.0.1:9/a")]
        assert (await call("DELETE", "/api/alerts/rules?name=r1&org=acme", "ab"))[0] == 200
        assert await hooks("root") == []
        assert (await call("POST", "/api/alerts/rules/test?name=r1", "a"))[0] == 404


async def test_a_rule_stored_before_names_were_per_org_is_read_as_its_orgs_and_rewritten_on_change(
    aredis: aioredis.Redis, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    keys = Keyspace(prefix=prefix, shards=4)
    legacy = rule_of("http://127.0.0.1:9/old", name="old")
    await aredis.hset(keys.alert_rules(), "old", legacy.stored())  # the earlier layout: field = bare name
    [got] = await list_alert_rules(aredis, keys)
    assert (got.org, got.name, got.webhook) == ("acme", "old", "http://127.0.0.1:9/old")
    assert await list_alert_rules(aredis, keys, frozenset({"beta"})) == []
    assert not await add_alert_rule(aredis, keys, rule_of("http://127.0.0.1:9/new", name="old"))  # replaced
    assert await aredis.hkeys(keys.alert_rules()) == [b"acme/old"]
    await aredis.hset(keys.alert_rules(), "old2", rule_of("http://127.0.0.1:9/x", name="old2").stored())
    assert await remove_alert_rule(aredis, keys, "acme", "old2") and await aredis.hkeys(keys.alert_rules()) == [
        b"acme/old"
    ]


@both_backends
async def test_alerts_of_two_orgs_rules_of_one_name_go_to_each_orgs_webhook_and_count_per_org(
    aredis: aioredis.Redis, prefix: str
) -> None:
    keys = Keyspace(prefix=prefix, shards=4)
    async with receiving(Receiver()) as rx_a, receiving(Receiver()) as rx_b:
        rules = {
            "acme": rule_of(rx_a.url, scope="acme/web/*"),
            "beta": rule_of(rx_b.url, scope="beta/web/*", secret="b"),
        }
        for rule in rules.values():
            await add_alert_rule(aredis, keys, rule)
        for org, rule in rules.items():
            scope = Scope(org, "web", "p")
            shard = keys.shard(scope)
            result = {"org": org, "source": "web", "pop": "p", "id": "x", "action": "GET /", "timestamp": 1}
            result |= {"zscore": 9.0, "pscore": 1.0, "score": 9.0, "count": 9}
            body = orjson.dumps(alert_body(rule, result, "1-0"))
            item = AlertItem(keys.alert_state(scope, rule.state_name, "x", shard), True, 0, "1-0", 1, body)
            await Scripts().run(aredis, Alert.NAME, *Alert.pack(keys.alert_stream(shard), 1000, 60_000, [item]))
        async with sending(aredis, keys) as sender:
            await wait_for(lambda: sender.counters.delivered == 2, timeout=20, what="both alerts delivered")
    assert [orjson.loads(r.body)["scope"] for r in rx_a.got] == ["acme/web/p"]
    assert [orjson.loads(r.body)["scope"] for r in rx_b.got] == ["beta/web/p"]
    assert (
        rx_b.got[0].headers[SIGNATURE_HEADER]
        == "sha256=" + hmac.new(b"b", rx_b.got[0].body, hashlib.sha256).hexdigest()
    )
    stats = await aredis.hgetall(keys.alert_stats())
    assert stats == {
        b"fired:acme/scanners": b"1",
        b"delivered:acme/scanners": b"1",
        b"fired:beta/scanners": b"1",
        b"delivered:beta/scanners": b"1",
    }


async def test_claim_rounds_reach_idle_alerts_behind_many_fresh_ones(aredis: aioredis.Redis, prefix: str) -> None:
    """An XAUTOCLAIM looks at no more than 10 x COUNT pending entries: later rounds carry on from its cursor."""
    keys = Keyspace(prefix=prefix, shards=4)
    stream = keys.alert_stream(0)
    await aredis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    pipe = aredis.pipeline(transaction=False)
    for i in range(1105):
        pipe.xadd(stream, {"alert": b"{}"}, id=f"{i + 1}-0")
    await pipe.execute()
    await aredis.xreadgroup(GROUP, "alive", {stream: ">"}, count=2000)  # all pending, just delivered
    idle = [f"{i}-0".encode() for i in range(1101, 1106)]
    await aredis.xclaim(stream, GROUP, "dead", 0, idle, idle=600_000, justid=True)  # its sender died long ago
    sender = Sender(aredis, keys, SenderSettings(claim_idle_ms=60_000, consumer="me"))
    claimed: list[bytes] = []
    for _round in range(20):
        claimed += [entry_id for _, entry_id, _ in await sender._claim([stream])]
        if claimed:
            break
    assert sorted(claimed) == idle
