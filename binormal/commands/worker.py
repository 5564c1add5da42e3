"""``binormal worker``: one scorer worker against ``REDIS_URL``."""

from __future__ import annotations

import argparse

from binormal.commands import Subparsers


def register(sub: Subparsers) -> None:
    """Add ``worker`` (no options: it reads its settings from the environment)."""
    sub.add_parser("worker", help="run one scorer worker against REDIS_URL")


def run(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT, then finish the batch in hand (``BINORMAL_GRACE_S``)."""
    import asyncio

    from binormal.common.runtime import tune_gc
    from binormal.worker import Worker, WorkerSettings

    tune_gc()

    async def main() -> None:
        w = Worker(WorkerSettings.from_env())
        w.install_signal_handlers()
        await w.run()

    asyncio.run(main())
    return 0
