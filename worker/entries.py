"""What a batch is made of: stream entries as read, the stages' typed values, and the worker's counters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from binormal.common.keys import Scope
from binormal.common.schema import Event
from binormal.common.scoring import Snapshot
from binormal.common.scripts import Applied


class Ready(NamedTuple):
    """An applied entry with the population snapshot to score it against."""

    entry: Entry
    applied: Applied
    snapshot: Snapshot


class Scored(NamedTuple):
    """An applied entry, its score and explanation, ready to commit."""

    entry: Entry
    applied: Applied
    score: float
    explain: list[dict[str, object]]


@dataclass
class Entry:
    """A stream entry as read: where it came from and its raw fields."""

    stream: bytes
    shard: int
    id: bytes
    fields: dict[bytes, bytes]
    reason: str | None = None  # set when it must go to the dead-letter stream
    event: Event | None = None
    scope: Scope | None = None  # the event's scope, once validated
    kp: str = ""  # key prefix of the scope (keys.scope_prefix)
    ikey: str = ""  # the individual's counts hash (keys.individual)
    fp: bytes = b""  # fingerprint of (id, action): tells a reused event_id from a retry
    note: dict[str, Any] | None = None  # what its reply_to waiter is told instead of a result
    excluded: bool = False  # an exclude rule covers its individual: not learnt from (common/rules.py)


@dataclass
class Counters:
    """What a worker did, for logs, /metrics and the benchmark."""

    read: int = 0
    applied: int = 0
    already: int = 0
    duplicates: int = 0
    reused_ids: int = 0  # duplicates whose event_id was first used by a different event
    capped: int = 0  # entries refused by the distinct-action cap (dead-lettered)
    dominated: int = 0  # scopes flagged as dominated for the first time
    dead: int = 0
    published: int = 0
    batches: int = 0
    round_trips: int = 0
    lua_calls: int = 0
    snapshot_refreshes: int = 0
    stale_scores: int = 0  # scores skipped: a later state of the individual was committed first
    repaired: int = 0  # scores committed for entries whose worker died between apply and commit
    alert_checks: int = 0  # results sent to alert.lua (one per result of a scope some rule matches)
    alert_candidates: int = 0  # results among them that cross some rule (fire unless their state says no)

    def as_dict(self) -> dict[str, int]:
        """Plain dict copy."""
        return dict(self.__dict__)


def entry_ms(entry_id: bytes) -> int:
    """The millisecond part of a stream id (``<ms>-<seq>``): when it was added."""
    return int(entry_id.split(b"-", 1)[0])


def runs_of(entries: Sequence[Entry], size: int) -> list[list[Entry]]:
    """Split into runs of at most ``size`` consecutive entries of one stream."""
    runs: list[list[Entry]] = []
    for e in entries:
        if runs and runs[-1][0].stream == e.stream and len(runs[-1]) < size:
            runs[-1].append(e)
        else:
            runs.append([e])
    return runs


def runs_by_shard(scored: Sequence[Scored], size: int) -> list[list[Scored]]:
    """Group by shard (keeping their order within it), then split into runs of at most ``size``.

    Scores of different shards never share a call.
    """
    groups: dict[int, list[Scored]] = {}
    for s in scored:
        groups.setdefault(s.entry.shard, []).append(s)
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]
