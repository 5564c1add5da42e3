"""Lua scripts: loaded from the ``.lua`` files beside this module, run by EVALSHA.

Scripts are called inside pipelines, where redis-py's own Script helper would
send SCRIPT EXISTS on every execute. Instead we EVALSHA blindly and, if Redis
answers NOSCRIPT (restarted, or SCRIPT FLUSH), load every script and retry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

LUA_DIR = Path(__file__).with_name("lua")


@dataclass(frozen=True)
class LuaScript:
    """One script's source and SHA-1."""

    name: str
    source: str
    sha: str

    @classmethod
    def load(cls, name: str) -> LuaScript:
        """Read ``common/lua/<name>.lua``."""
        source = (LUA_DIR / f"{name}.lua").read_text(encoding="utf-8")
        return cls(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest())


class Scripts:
    """All of Binormal's Lua scripts, by name."""

    NAMES = ("apply", "commit", "deadletter", "recompute", "replay")

    def __init__(self) -> None:
        self.by_name = {n: LuaScript.load(n) for n in self.NAMES}

    def sha(self, name: str) -> str:
        """SHA-1 to EVALSHA for script ``name``."""
        return self.by_name[name].sha

    async def load_all(self, client: aioredis.Redis) -> None:
        """SCRIPT LOAD every script (after a NOSCRIPT, or at start)."""
        for script in self.by_name.values():
            sha = await client.script_load(script.source)
            if sha != script.sha:
                raise RuntimeError(f"Redis hashed {script.name}.lua as {sha}, expected {script.sha}")

    async def run(self, client: aioredis.Redis, name: str, keys: Sequence[str], args: Sequence[Any] = ()) -> Any:
        """EVALSHA one script outside a pipeline; on NOSCRIPT load them all and run it again."""
        try:
            return await client.evalsha(self.sha(name), len(keys), *keys, *args)
        except NoScriptError:
            await self.load_all(client)
            return await client.evalsha(self.sha(name), len(keys), *keys, *args)
