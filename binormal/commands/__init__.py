"""One module per ``binormal`` subcommand, each with ``register(subparsers)`` and ``run(args) -> int``.

The modules import nothing heavy at module level (asyncio, aiohttp, redis and the services are
imported inside ``run``), so building the parser stays cheap; :mod:`binormal.cli` lists them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from typing import Any, TypeAlias

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def run_on_redis(go: Callable[[], Coroutine[Any, Any, int]], command: str, subcommand: str) -> int:
    """``asyncio.run(go())`` for a subcommand that talks to Redis: its exit code, ``2`` for a bad
    rule (the message on stderr), ``3`` when Redis cannot be reached."""
    import asyncio
    import sys

    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from binormal.common.rules import RuleError

    try:
        code = asyncio.run(go())
    except RuleError as exc:
        sys.stderr.write(f"binormal {command} {subcommand}: {exc}\n")
        return 2
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        sys.stderr.write(f"binormal {command}: cannot reach Redis at REDIS_URL: {exc}\n")
        return 3
    sys.stdout.flush()
    return code
