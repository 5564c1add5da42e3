"""common/versioned.py: the refresh shared by the rule and alert caches, against the private redis-server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from binormal.common.alerts import AlertCache, add_alert_rule, parse_alert_rule
from binormal.common.keys import Keyspace, Scope
from binormal.common.rules import Rule, RuleCache, add_rule
from binormal.common.versioned import VersionedCache

pytestmark = pytest.mark.timeout(30)
SCOPE = Scope("acme", "web", "pop0")


async def alert_rules(client: aioredis.Redis, keys: Keyspace) -> tuple[VersionedCache, Any, Any]:
    fields = {"name": "scanners", "scope": "acme/web/*", "min_zscore": 3.0, "webhook": "http://127.0.0.1:1/h"}
    rule = parse_alert_rule(fields, by="test")
    assert await add_alert_rule(client, keys, rule)
    cache = AlertCache(keys)
    return cache, lambda: tuple(r.name for r in cache.rules), ("scanners",)


async def excludes(client: aioredis.Redis, keys: Keyspace) -> tuple[VersionedCache, Any, Any]:
    await add_rule(client, keys, Rule("exclude", SCOPE, "id", "evil", by="test"))
    cache = RuleCache(keys)
    return cache, lambda: cache.excluded, frozenset({(SCOPE, "evil")})


@pytest.mark.parametrize("setup", [alert_rules, excludes])
async def test_lanes_that_refresh_a_cache_at_once_all_see_its_rules(
    aredis: aioredis.Redis, prefix: str, setup: Any
) -> None:
    """The worker's lanes refresh one cache concurrently: a lane that comes while another lane's first
    read is in flight waits for it instead of going on with no rules (its results would be checked
    against no alert rule, an excluded id would enter its population, a muted one be reported)."""
    keys = Keyspace(prefix=prefix, shards=4)
    cache, seen, want = await setup(aredis, keys)

    async def lane() -> Any:
        await cache.refresh(aredis)
        return seen()

    assert await asyncio.gather(lane(), lane(), lane()) == [want] * 3
    assert cache.reloads == 1  # one read of the rules among the three
