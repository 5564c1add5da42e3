"""``binormal migrate``: convert the data in Redis from key layout 1 to layout 2 (issue 12, memory).

Layout 2 keys an individual's counts by the scope's action numbers and drops the per-scope
``ver`` hash (common/migrate.py). Stop every worker first; the web tier may stay up.
"""

from __future__ import annotations

import argparse

from binormal.commands import Subparsers


def register(sub: Subparsers) -> None:
    """Add ``migrate`` (REDIS_URL, BINORMAL_PREFIX, BINORMAL_SHARDS from the environment)."""
    sub.add_parser(
        "migrate",
        help="convert Redis data of key layout 1 to layout 2 (stop every worker first); resumable, idempotent",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``migrate.lua`` on every layout-1 individual; one JSON line on stdout (what was moved)."""
    import asyncio
    import sys

    import orjson

    from binormal.common.config import from_env
    from binormal.common.connection import open_client
    from binormal.common.keys import Keyspace
    from binormal.common.migrate import migrate
    from binormal.worker.settings import WorkerSettings

    settings = from_env(WorkerSettings)
    keys = Keyspace(prefix=settings.prefix, shards=settings.shards)

    async def go() -> dict[str, int]:
        client = await open_client(settings.redis_url, cluster=settings.redis_cluster)
        try:
            return await migrate(client, keys)
        finally:
            await client.aclose()

    sys.stdout.buffer.write(orjson.dumps(asyncio.run(go())) + b"\n")
    sys.stdout.flush()
    return 0
