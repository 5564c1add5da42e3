"""``binormal recompute``: rebuild every scope's score aggregates from scratch (bounds float drift).

Scopes with an exclude rule (``binormal rules``) also get their population counts rebuilt
without the excluded ids; ``--population`` rebuilds those of every scope.
"""

from __future__ import annotations

import argparse

from binormal.commands import Subparsers


def register(sub: Subparsers) -> None:
    """Add ``recompute`` (REDIS_URL, BINORMAL_PREFIX, BINORMAL_SHARDS from the environment)."""
    p = sub.add_parser("recompute", help="rebuild every scope's score aggregates from scratch (bounds float drift)")
    p.add_argument(
        "--population",
        action="store_true",
        help="also rebuild every scope's population counts from its individuals (scopes with an exclude "
        "rule always are, without the excluded ids)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``recompute.lua`` on every scope; one JSON line per scope on stdout."""
    import asyncio
    import sys
    from typing import Any

    import orjson

    from binormal.common.config import from_env
    from binormal.common.connection import open_client
    from binormal.common.keys import Keyspace
    from binormal.common.migrate import check_layout
    from binormal.common.store import recompute_all
    from binormal.worker.settings import WorkerSettings

    # The workers' settings: the population is rebuilt under their BINORMAL_WEIGHT_CAP.
    settings = from_env(WorkerSettings)
    keys = Keyspace(prefix=settings.prefix, shards=settings.shards)

    async def go() -> list[dict[str, Any]]:
        client = await open_client(settings.redis_url, cluster=settings.redis_cluster)
        try:
            await check_layout(client, keys)  # layout 1 must be migrated first (binormal migrate)
            population = bool(getattr(args, "population", False))
            return await recompute_all(client, keys, population=population, weight_cap=settings.weight_cap)
        finally:
            await client.aclose()

    for report in asyncio.run(go()):
        sys.stdout.buffer.write(orjson.dumps(report) + b"\n")
    sys.stdout.flush()
    return 0
