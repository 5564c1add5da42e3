"""``binormal dead``: look at the dead-letter streams, and replay dead letters once their cause is fixed.

Every shard has a dead-letter stream (``keys.dead(shard)``) holding entries a
worker could not count, each with its reason and the original fields (stored
as ``f.<name>``; docs/stream.md). ``list`` prints them; ``replay`` puts them
back into their shard's stream as new entries (``replay.lua``: XADD and XDEL
in one step, so a dead letter is replayed once even if two replays run).
A replayed entry is validated again: one that is still invalid comes back
with a fresh reason.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import orjson

from binormal.common.config import ServiceSettings, from_env
from binormal.common.connection import TRANSIENT, Client, open_client
from binormal.common.keys import Keyspace
from binormal.common.scripts import Replay, Scripts

PAGE = 500  # XRANGE COUNT per round trip


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter: where it is, why it is there, and the entry's own fields."""

    shard: int
    dead_id: str
    reason: str
    entry_id: str
    consumer: str
    fields: dict[str, str]

    def as_json(self) -> dict[str, Any]:
        """The JSON object ``binormal dead --json`` prints."""
        return {
            "shard": self.shard,
            "dead_id": self.dead_id,
            "entry_id": self.entry_id,
            "reason": self.reason,
            "consumer": self.consumer,
            "fields": self.fields,
        }


def _text(raw: bytes) -> str:
    # Non-UTF-8 values are a common reason to be here: show them, escaped.
    return raw.decode("utf-8", "backslashreplace")


def parse(shard: int, dead_id: bytes, flat: dict[bytes, bytes]) -> DeadLetter:
    """A dead letter from its XRANGE fields."""
    fields = {_text(k[2:]): _text(v) for k, v in flat.items() if k.startswith(b"f.")}
    return DeadLetter(
        shard=shard,
        dead_id=dead_id.decode(),
        reason=_text(flat.get(b"reason", b"")),
        entry_id=_text(flat.get(b"entry_id", b"")),
        consumer=_text(flat.get(b"consumer", b"")),
        fields=fields,
    )


async def dead_letters(client: Client, keys: Keyspace, shards: list[int]) -> AsyncIterator[DeadLetter]:
    """Every dead letter of ``shards``, oldest first per shard, read ``PAGE`` at a time."""
    for shard in shards:
        start = "-"
        while True:
            page = cast(
                list[tuple[bytes, dict[bytes, bytes]]], await client.xrange(keys.dead(shard), min=start, count=PAGE)
            )
            for dead_id, flat in page:
                yield parse(shard, dead_id, flat)
            if len(page) < PAGE:
                break
            # Exclusive start after the last id (Redis 6.2+: "(" prefix).
            start = "(" + page[-1][0].decode()


async def replay_one(client: Client, keys: Keyspace, scripts: Scripts, letter: DeadLetter) -> tuple[bool, str]:
    """Replay one dead letter; returns (replayed, new entry id or why not)."""
    ks, args = Replay.pack(keys.dead(letter.shard), keys.stream(letter.shard), letter.dead_id)
    return Replay.decode(await scripts.run(client, Replay.NAME, ks, args))


async def run(args: argparse.Namespace, keys: Keyspace, client: Client) -> int:
    """List or replay; prints to stdout, returns the exit code."""
    shards = list(range(keys.shards)) if args.shard is None else [args.shard]
    scripts = Scripts()
    out = sys.stdout
    reasons: Counter[str] = Counter()
    replayed = skipped = shown = 0
    async for letter in dead_letters(client, keys, shards):
        if args.reason is not None and args.reason not in letter.reason:
            continue
        if args.limit is not None and shown >= args.limit:
            break
        shown += 1
        reasons[letter.reason.split(":")[0]] += 1
        if args.action == "replay":
            ok, detail = await replay_one(client, keys, scripts, letter)
            replayed += ok
            skipped += not ok
            what = f"replayed as {detail}" if ok else f"skipped: {detail}"
            out.write(f"shard {letter.shard} {letter.dead_id}: {what}\n")
        elif args.json:
            out.write(orjson.dumps(letter.as_json()).decode() + "\n")
        else:
            fields = orjson.dumps(letter.fields).decode()
            out.write(f"shard {letter.shard} {letter.dead_id} (entry {letter.entry_id}): {letter.reason}\n  {fields}\n")
    if args.action == "replay":
        sys.stderr.write(f"replayed {replayed}, skipped {skipped}; a running worker counts the replayed entries\n")
    elif not args.json:
        summary = ", ".join(f"{n} {kind}" for kind, n in reasons.most_common()) or "none"
        sys.stderr.write(f"{shown} dead letters ({summary})\n")
    return 0


def add_dead_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``dead`` subcommand to the ``binormal`` subparsers."""
    d = sub.add_parser(
        "dead",
        help="list dead letters, or replay them into their streams once the cause is fixed",
        description="Dead letters of every shard (REDIS_URL, BINORMAL_PREFIX, BINORMAL_SHARDS), oldest first. "
        "'replay' XADDs each one's original fields back into its shard's stream and deletes it.",
    )
    d.add_argument("action", nargs="?", choices=("list", "replay"), default="list")
    d.add_argument("--shard", type=int, help="only this shard")
    d.add_argument("--reason", help="only dead letters whose reason contains this text")
    d.add_argument("--limit", type=int, help="at most this many")
    d.add_argument("--json", action="store_true", help="list: one JSON object per dead letter")
    return d  # type: ignore[no-any-return]


def main_dead(args: argparse.Namespace) -> int:
    """``binormal dead``: settings from the environment, then :func:`run`."""
    settings = from_env(ServiceSettings)
    keys = Keyspace(prefix=settings.prefix, shards=settings.shards)
    if args.shard is not None and not 0 <= args.shard < keys.shards:
        sys.stderr.write(f"binormal dead: --shard must be 0 to {keys.shards - 1}\n")
        return 2
    if args.limit is not None and args.limit < 1:
        sys.stderr.write("binormal dead: --limit must be at least 1\n")
        return 2

    async def go() -> int:
        client = await open_client(settings.redis_url, cluster=settings.redis_cluster)
        try:
            return await run(args, keys, client)
        finally:
            await client.aclose()

    try:
        return asyncio.run(go())
    except TRANSIENT as exc:
        sys.stderr.write(f"binormal dead: cannot reach Redis at {settings.redis_url}: {exc}\n")
        return 1
