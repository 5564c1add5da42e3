"""A cache of rules kept in Redis, re-read only when their version counter moves.

:class:`RuleCache` (mutes and excludes, common/rules.py) and :class:`AlertCache` (alert rules,
common/alerts.py) are the same mechanism over different keys: :meth:`VersionedCache.refresh`
looks at the counter at most every ``interval_s`` (one GET), and when it moved reads the rules
(:meth:`VersionedCache.read`) and hands them to :meth:`VersionedCache.load`. A Redis error keeps
the rules as they were (logged); the next check tries again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from redis.exceptions import RedisError

from binormal.common.connection import Client
from binormal.common.keys import Keyspace


class VersionedCache:
    """The throttled, version-checked refresh both rule caches share; subclasses say what to read."""

    LOG_EVENT = "refresh_failed"  # logged (warning) when Redis cannot be read

    def __init__(self, keys: Keyspace, interval_s: float, log: Any) -> None:
        self.keys = keys
        self.interval_s = interval_s
        self.version: int | None = None
        self.next_check = 0.0
        self.reloads = 0
        self._log = log  # the subclass's module logger
        self._lock = asyncio.Lock()

    def version_key(self) -> str:
        """The counter that moves on every change of the rules."""
        raise NotImplementedError

    async def read(self, client: Client) -> Iterable[Any]:
        """Every rule, as :meth:`load` takes them (an iterable may decode lazily, in :meth:`load`)."""
        raise NotImplementedError

    def load(self, rules: Iterable[Any]) -> None:
        """Replace the cached rules."""
        raise NotImplementedError

    async def refresh(self, client: Client, force: bool = False) -> bool:
        """Re-read the rules if the version moved (checked at most every ``interval_s``); True when reloaded."""
        # One at a time: the worker's lanes refresh concurrently, and a lane that came while another's
        # read was in flight would go on with the rules as they were (none, at the start).
        async with self._lock:
            now = time.monotonic()
            if not force and now < self.next_check:
                return False
            self.next_check = now + self.interval_s
            try:
                version = int(await client.get(self.version_key()) or 0)
                if version == self.version:
                    return False
                rules = await self.read(client)
            except (RedisError, OSError, ValueError) as exc:
                self._log.warning(self.LOG_EVENT, error=str(exc))
                return False
            self.load(rules)
            self.version = version
            self.reloads += 1
            return True
