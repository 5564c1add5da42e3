"""``binormal evaluate --feedback OUT.csv``: the analysts' marks as a labels file.

Each ``mark`` rule (common/rules.py) becomes one ``id,label`` row, ``confirmed`` = 1 and
``benign`` = 0: the format ``binormal evaluate EVENTS LABELS`` reads. Rows come in scope order;
an id marked in several scopes gives one row per scope.
"""

from __future__ import annotations

import asyncio
import csv
import sys

from binormal.common.config import ServiceSettings, from_env
from binormal.common.connection import open_client
from binormal.common.keys import Keyspace
from binormal.common.rules import feedback_labels, list_rules


async def read_feedback(settings: ServiceSettings) -> list[tuple[str, int]]:
    """``(id, label)`` of every mark in the deployment ``settings`` name."""
    keys = Keyspace(prefix=settings.prefix, shards=settings.shards)
    client = await open_client(settings.redis_url, cluster=settings.redis_cluster)
    try:
        return feedback_labels(await list_rules(client, keys))
    finally:
        await client.aclose()


def export_feedback(path: str, settings: ServiceSettings | None = None) -> int:
    """Write the marks to ``path`` (``-``: stdout) as ``id,label``; returns the number of rows."""
    rows = asyncio.run(read_feedback(settings or from_env(ServiceSettings)))
    if path == "-":
        _write(sys.stdout, rows)
    else:
        with open(path, "w", newline="", encoding="utf-8") as fh:
            _write(fh, rows)
    return len(rows)


def _write(fh: object, rows: list[tuple[str, int]]) -> None:
    writer = csv.writer(fh, lineterminator="\n")  # type: ignore[arg-type]
    writer.writerow(("id", "label"))
    writer.writerows(rows)
