"""Key layout versions: the check every worker makes at start, and ``binormal migrate`` (layout 1 -> 2).

Layout 1 (before issue 12): an individual's counts under ``sc:<scope>:i:<id>`` by action name, a
per-scope ``ver`` hash (id -> event count of its committed score), uncommitted marks ``<entry id>``.
Layout 2 (:data:`~binormal.common.keys.LAYOUT`): counts under ``sc:<scope>:c:<id>`` by the scope's
action numbers (``an``/``na``), no ``ver``, marks ``<entry id> <L>``; about 240 instead of 560 bytes
per individual of 10 actions (docs/operations.md, Sizing). ``P:layout`` says which one the data is in.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from binormal.common.config import ConfigError
from binormal.common.connection import Client
from binormal.common.keys import LAYOUT, Keyspace, Scope
from binormal.common.scripts import Migrate, Scripts

CHUNK = 200  # individuals per migrate.lua call (one short atomic step each)


class LayoutError(ConfigError):
    """The data in Redis is in another key layout than this code's (run ``binormal migrate``)."""


PROBE = 16  # scopes per shard whose ver hash a worker looks for at start


async def has_layout1(client: Client, keys: Keyspace) -> bool:
    """True when some scope has a layout-1 ``ver`` hash (up to ``PROBE`` random scopes per shard looked at).

    Layout 1 wrote a scope's ``ver`` with the first committed score, so any scope with data has one.
    """
    pipe = client.pipeline(transaction=False)
    for shard in range(keys.shards):
        pipe.srandmember(keys.scopes(shard), PROBE)
    # A shard whose scopes key holds another type (bad state) is left to the worker's own checks.
    sampled: list[Any] = await pipe.execute(raise_on_error=False)
    probe = client.pipeline(transaction=False)
    for shard, tokens in enumerate(sampled):
        if isinstance(tokens, Exception):
            continue
        for token in tokens:
            probe.exists(keys.scope_key(Scope.from_token(token.decode("utf-8")), "ver", shard))
    return any(int(n) for n in await probe.execute())


async def check_layout(client: Client, keys: Keyspace) -> None:
    """Refuse data of another layout; data without ``P:layout`` and without layout-1 keys is marked :data:`LAYOUT`.

    Workers must not write layout 2 next to layout 1: its individuals would restart from zero
    while the population keeps their counts.
    """
    got = await client.get(keys.layout())
    if got is None:
        if await has_layout1(client, keys):
            raise LayoutError(
                f"Redis holds data in key layout 1 under prefix {keys.prefix!r} ({keys.layout()} is not set): "
                f"stop every worker, run `binormal migrate`, then start workers of this version"
            )
        await client.set(keys.layout(), LAYOUT, nx=True)
        got = await client.get(keys.layout())
    if int(got or 0) != LAYOUT:
        raise LayoutError(f"{keys.layout()} is {got!r}: this version reads and writes key layout {LAYOUT}")


def _glob(text: str) -> str:
    """``text`` with SCAN's glob characters escaped."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


async def migrate(client: Client, keys: Keyspace, scripts: Scripts | None = None) -> dict[str, int]:
    """Move every layout-1 individual to layout 2, delete the ``ver`` hashes, set ``P:layout``.

    Run with every worker stopped (the web tier may stay up: it only reads). Resumable: each
    individual moves in one atomic step, and a rerun skips those already moved.
    """
    scripts = scripts or Scripts()
    report = {"individuals": 0, "scopes": 0, "ver_keys_deleted": 0}
    found: dict[tuple[int, Scope], list[str]] = defaultdict(list)
    for shard in range(keys.shards):
        pattern = _glob(f"{keys.prefix}:{keys.tag(shard)}:sc:") + "*:i:*"
        async for raw in client.scan_iter(match=pattern, count=1000):
            key = raw.decode("utf-8")
            try:
                scope, ident = keys.individual_of(key, shard, kind="i")
            except ValueError:
                continue  # e.g. an id containing ':i:' of a layout-2 key cannot match: ids are encoded
            found[(shard, scope)].append(key)
    for (shard, scope), old_keys in found.items():
        head = (
            keys.uncommitted(shard),
            keys.scope_key(scope, "ver", shard),
            keys.scope_key(scope, "an", shard),
            keys.scope_key(scope, "na", shard),
        )
        for i in range(0, len(old_keys), CHUNK):
            items = []
            for key in old_keys[i : i + CHUNK]:
                ident = keys.individual_of(key, shard, kind="i")[1]
                items.append((key, keys.individual(scope, ident, shard), ident))
            ks, args = Migrate.pack(head, items)
            report["individuals"] += Migrate.decode(await scripts.run(client, Migrate.NAME, ks, args))
        report["scopes"] += 1
    for shard in range(keys.shards):
        tokens: set[bytes] = await client.smembers(keys.scopes(shard))  # type: ignore[assignment]
        for token in tokens:
            scope = Scope.from_token(token.decode("utf-8"))
            report["ver_keys_deleted"] += int(await client.delete(keys.scope_key(scope, "ver", shard)))
    await client.set(keys.layout(), LAYOUT)
    return report
