"""One module per ``binormal`` subcommand, each with ``register(subparsers)`` and ``run(args) -> int``.

The modules import nothing heavy at module level (asyncio, aiohttp, redis and the services are
imported inside ``run``), so building the parser stays cheap; :mod:`binormal.cli` lists them.
"""

from __future__ import annotations

import argparse
from typing import TypeAlias

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
