"""Lua scripts: loaded from the ``.lua`` files beside this module, run by EVALSHA.

Scripts are called inside pipelines, where redis-py's own Script helper would
send SCRIPT EXISTS on every execute. Instead we EVALSHA blindly and, if Redis
answers NOSCRIPT (restarted, or SCRIPT FLUSH), load every script and retry.

Functions several scripts share live once in ``lua/lib/<name>.lua``; a script names
one in a line ``--#include <name>``, replaced by that file when the script is loaded
(Redis has no modules for EVAL scripts, so the sent source, and its SHA-1, hold the copy).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from binormal.common.calibration import Rank
from binormal.common.cluster import load_scripts, primaries, register_script
from binormal.common.connection import Client
from binormal.common.keys import recent_of
from binormal.common.result import ActionStats, Aggregates

LUA_DIR = Path(__file__).with_name("lua")
INCLUDE = re.compile(r"^--#include (\w+)$", re.M)


def lua_source(name: str) -> str:
    """``lua/<name>.lua`` with each ``--#include lib`` line replaced by ``lua/lib/<lib>.lua``."""
    source = (LUA_DIR / f"{name}.lua").read_text(encoding="utf-8")
    return INCLUDE.sub(lambda m: (LUA_DIR / "lib" / f"{m[1]}.lua").read_text(encoding="utf-8").rstrip("\n"), source)


@dataclass(frozen=True)
class LuaScript:
    """One script's source and SHA-1."""

    name: str
    source: str
    sha: str

    @classmethod
    def load(cls, name: str) -> LuaScript:
        """Read ``common/lua/<name>.lua``."""
        source = lua_source(name)
        return cls(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest())


class Scripts:
    """All of Binormal's Lua scripts, by name."""

    NAMES = ("apply", "commit", "deadletter", "expire", "recompute", "replay", "migrate", "alert")

    def __init__(self) -> None:
        self.by_name = {n: LuaScript.load(n) for n in self.NAMES}
        for script in self.by_name.values():
            register_script(script.sha, script.source)

    def sha(self, name: str) -> str:
        """SHA-1 to EVALSHA for script ``name``."""
        return self.by_name[name].sha

    async def load_all(self, client: Client) -> None:
        """SCRIPT LOAD every script (after a NOSCRIPT, or at start); on a cluster on every master."""
        scripts = list(self.by_name.values())
        if isinstance(client, RedisCluster):
            for node in primaries(client):
                shas = await load_scripts(node, [s.source.encode() for s in scripts])
                self._check(scripts, [x.decode() if isinstance(x, bytes) else str(x) for x in shas])
            return
        self._check(scripts, [await client.script_load(s.source) for s in scripts])

    @staticmethod
    def _check(scripts: list[LuaScript], shas: list[str]) -> None:
        for script, sha in zip(scripts, shas):
            if sha != script.sha:
                raise RuntimeError(f"Redis hashed {script.name}.lua as {sha}, expected {script.sha}")

    async def run(self, client: Client, name: str, keys: Sequence[str], args: Sequence[Any] = ()) -> Any:
        """EVALSHA one script outside a pipeline; on NOSCRIPT load them all and run it again."""
        try:
            return await client.evalsha(self.sha(name), len(keys), *keys, *args)
        except NoScriptError:
            await self.load_all(client)
            return await client.evalsha(self.sha(name), len(keys), *keys, *args)


# ---------------------------------------------------------------- typed twins
#
# One class per script: it packs KEYS/ARGV in the order its ``.lua`` header
# documents and decodes the reply. ``LAYOUT`` is that contract, written once:
# tests/test_scripts.py parses each header and fails when the two disagree.


@dataclass(frozen=True)
class Layout:
    """KEYS/ARGV of a script: fixed names, then names repeated per item (or a variadic tail)."""

    keys: tuple[str, ...]
    item_keys: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    item_args: tuple[str, ...] = ()
    rest_args: str | None = None  # ARGV[len(args)+1..]: any number of values


def pairs_int(flat: Sequence[bytes]) -> dict[str, int]:
    """An HGETALL's flat [field, value, ...] reply as {str: int}."""
    return dict(zip(map(bytes.decode, flat[0::2]), map(int, flat[1::2])))


class ApplyItem(NamedTuple):
    """One entry of an ``apply.lua`` call: its 12 KEYS, then its 7 ARGV."""

    pop: str
    sq: str
    k: str
    individual: str
    marker: str
    raw: str  # the scope's raw per-action sums (written only with a weight cap)
    dom: str  # the scope's dominance hash
    last: str  # the scope's last-seen zset (written only with retention on)
    an: str  # the scope's action -> number hash
    na: str  # the scope's number -> action hash
    recent: str  # the individual's recent list (keys.recent_in) with a recent window K > 0, else ``individual``
    window: str  # the individual's window counts hash (the same); neither is touched with K = 0
    entry_id: bytes
    action: str
    token: str
    ttl: int  # seconds the event_id's marker lives; 0: no event_id (marker untouched)
    marker_value: bytes  # '<entry id> <fingerprint>'
    ident: str  # the individual's id
    exclude: int = 0  # 1: the individual is excluded from learning (common/rules.py), pop/raw/sq/k not moved


ITEM_KEYS = 12  # the KEYS of an ApplyItem; the rest are its ARGV


class Dominated(NamedTuple):
    """A scope flagged for the first time: its top individual, that one's raw events, the scope's."""

    ident: str
    events: int
    scope_events: int

    @property
    def share(self) -> float:
        """The top individual's share of the scope's raw events."""
        return self.events / self.scope_events


@dataclass(frozen=True, slots=True)
class Applied:
    """Counted and acked: the action's raw sums, the individual's counts, the pop hash (staleness 0).

    ``pop_count`` is the action's population count C_a (``stats.s1`` is its raw
    sum, which differs once the weight cap applies); ``dominated`` is set the
    first time the entry made its scope dominated; ``window`` the counts of the
    individual's recent window (its last ``min(K, n // 2)`` events) when the recent window K > 0.
    """

    stats: ActionStats
    counts: dict[str, int]
    pop: dict[str, int] | None
    pop_count: int = 0
    dominated: Dominated | None = None
    window: dict[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Already:
    """Acked before (another delivery counted it): nothing done."""


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Its event_id was seen: acked, not counted. ``fingerprint`` is None for an older worker's marker."""

    first_entry: bytes
    fingerprint: bytes | None

    def same_event(self, fp: bytes) -> bool | None:
        """True: a retry of the first event; False: another event reused its id; None: unknown."""
        return None if self.fingerprint is None else self.fingerprint == fp


@dataclass(frozen=True, slots=True)
class BadState:
    """A key it writes holds another type: nothing written, not acked."""

    reason: str


@dataclass(frozen=True, slots=True)
class Capped:
    """A new action past the scope's distinct-action cap: not counted, not acked."""

    actions: int  # the scope's distinct actions at the time


@dataclass(frozen=True, slots=True)
class Guard:
    """What apply.lua needs of the dominance guard (``BINORMAL_WEIGHT_CAP``, ``BINORMAL_DOMINANCE_*``)."""

    weight_cap: int = 100  # W; 0 = off
    dominance_share: float = 0.2
    dominance_min_events: int = 1000


ApplyReply = Applied | Already | Duplicate | BadState | Capped
ALREADY = Already()


class Apply:
    """``apply.lua``: count and ack a run of entries of one shard."""

    NAME = "apply"
    LAYOUT = Layout(
        keys=("stream", "scopes", "uncommitted", "capped"),
        item_keys=ApplyItem._fields[:ITEM_KEYS],
        args=(
            "group",
            "want_pop",
            "max_actions",
            "weight_cap",
            "dominance_share",
            "dominance_min_events",
            "retention",
            "recent_window",
        ),
        item_args=ApplyItem._fields[ITEM_KEYS:],
    )

    @staticmethod
    def pack(
        head: tuple[bytes, str, str, str],
        group: str,
        want_pop: bool,
        max_actions: int,
        items: Sequence[ApplyItem],
        guard: Guard | None = None,
        retention: bool = False,
        recent_window: int = 0,
    ) -> tuple[list[Any], list[Any]]:
        """KEYS and ARGV for ``items`` after the shard's ``head`` keys (stream, scopes, uncommitted, capped).

        With ``retention`` each applied entry stamps its individual in the scope's last-seen zset;
        with ``recent_window`` K > 0 it keeps the individual's recent window (its reply has ``window``).
        """
        g = guard or Guard()
        keys: list[Any] = list(head)
        args: list[Any] = [
            group,
            "1" if want_pop else "0",
            max_actions,
            g.weight_cap,
            repr(g.dominance_share),
            g.dominance_min_events,
            "1" if retention else "0",
            recent_window,
        ]
        for item in items:
            keys += item[:ITEM_KEYS]
            args += item[ITEM_KEYS:]
        return keys, args

    @staticmethod
    def decode(reply: Sequence[Any], want_pop: bool) -> list[ApplyReply]:
        """One typed reply per entry (status codes in the script's header)."""
        out: list[ApplyReply] = []
        for r in reply:
            status = int(r[0])
            if status == 1:
                pop = pairs_int(r[5]) if want_pop else None
                dom = r[7]
                flagged = None if dom == 0 else Dominated(dom[0].decode("utf-8"), int(dom[1]), int(dom[2]))
                stats = ActionStats(int(r[1]), int(r[2]), int(r[3]))
                window = pairs_int(r[8]) if len(r) > 8 else None  # only with a recent window K > 0
                out.append(Applied(stats, pairs_int(r[4]), pop, int(r[6]), flagged, window))
            elif status == 0:
                out.append(ALREADY)
            elif status == 2:
                # The marker is '<first entry id> <fingerprint>'; an older worker's is the entry id alone.
                first, _, fp = r[1].partition(b" ")
                out.append(Duplicate(first, fp or None))
            elif status == 3:
                out.append(BadState(r[1].decode("utf-8", "replace")))
            elif status == 4:
                out.append(Capped(int(r[1])))
            else:
                raise ValueError(f"apply.lua: unknown status {status}")
        return out


class Score(NamedTuple):
    """What ``commit.lua`` needs per score."""

    prefix: str  # the scope's key prefix (keys.scope_prefix)
    ident: str  # individual id
    score: float
    events: int  # the individual's event count the score was computed at (orders its states)
    entry_id: bytes | str  # the entry it is for
    ikey: str  # the individual's counts key (also its field in the uncommitted hash)
    sample: int = 0  # points of the rank zset's sample to read after this score (0: none)


@dataclass(frozen=True, slots=True)
class Committed:
    """A score committed (``newest``) or skipped as older than the committed one; the scope's aggregates after it.

    ``rank`` is where the score stands in the rank zset after it (pscore);
    ``sample`` the zset's scores at evenly spaced ranks, ascending, when asked for.
    """

    agg: Aggregates
    newest: bool
    rank: Rank = Rank()
    sample: list[float] | None = None


@dataclass(frozen=True, slots=True)
class CommitBadState:
    """A key of its scope holds another type: nothing of that scope was written."""


CommitReply = Committed | CommitBadState


class Commit:
    """``commit.lua``: commit a run of scores of one shard, newest state wins."""

    NAME = "commit"
    LAYOUT = Layout(
        keys=("uncommitted",),
        item_keys=("rank", "agg", "individual"),
        item_args=("ident", "score", "count", "entry_id", "sample"),
    )

    @staticmethod
    def pack(uncommitted: str, scores: Sequence[Score]) -> tuple[list[Any], list[Any]]:
        """KEYS and ARGV for ``scores`` (all of the shard of ``uncommitted``)."""
        keys: list[Any] = [uncommitted]
        args: list[Any] = []
        for kp, ident, score, count, entry_id, ikey, sample in scores:
            keys += (kp + "rank", kp + "agg", ikey)
            args += (ident, repr(score), count, entry_id, sample)
        return keys, args

    @staticmethod
    def decode(reply: Sequence[Any]) -> list[CommitReply]:
        """One typed reply per score: ``{n, sum, sumsq, committed, below, ties, card, sample}`` each."""
        out: list[CommitReply] = []
        for i in range(0, len(reply), 8):
            committed = reply[i + 3]
            if committed == -1:
                out.append(CommitBadState())
            else:
                raw = reply[i + 7]
                out.append(
                    Committed(
                        Aggregates(int(reply[i]), float(reply[i + 1]), float(reply[i + 2])),
                        bool(committed),
                        Rank(int(reply[i + 4]), int(reply[i + 5]), int(reply[i + 6])),
                        [float(v) for v in raw] if raw else None,
                    )
                )
        return out


class Deadletter:
    """``deadletter.lua``: move one entry to the dead-letter stream and ack it."""

    NAME = "deadletter"
    LAYOUT = Layout(
        keys=("stream", "dead"), args=("group", "entry_id", "reason", "consumer", "maxlen"), rest_args="fields"
    )

    @staticmethod
    def pack(
        stream: bytes,
        dead: str,
        group: str,
        entry_id: bytes,
        reason: str,
        consumer: str,
        maxlen: int,
        fields: dict[bytes, bytes],
    ) -> tuple[list[Any], list[Any]]:
        """KEYS and ARGV; the entry's fields go flat after the fixed ARGV."""
        args: list[Any] = [group, entry_id, reason, consumer, maxlen]
        for k, v in fields.items():
            args += (k, v)
        return [stream, dead], args

    @staticmethod
    def decode(reply: Any) -> bool:
        """True when written, False when the entry was already acknowledged."""
        return int(reply) == 1


class Recompute:
    """``recompute.lua``: rebuild one scope's aggregates from its rank zset (and its population, if asked)."""

    NAME = "recompute"
    LAYOUT = Layout(
        keys=("rank", "agg", "pop", "sq", "k", "raw", "dom", "na"),
        item_keys=("individual",),
        args=("rebuild", "weight_cap"),
        item_args=("excluded", "ident"),
    )

    @staticmethod
    def pack(
        rank: str,
        agg: str,
        population: tuple[str, str, str, str, str, str] | None = None,
        individuals: Sequence[tuple[str, str, bool]] = (),
        weight_cap: int = 0,
    ) -> tuple[list[Any], list[Any]]:
        """KEYS and ARGV; with ``population`` (pop, sq, k, raw, dom, na keys) those are rebuilt from ``individuals``.

        ``individuals`` are (counts hash key, id, excluded) triples: every individual of the scope;
        ``weight_cap`` is the guard's W the population is rebuilt under (0: raw counts).
        """
        if population is None:
            return [rank, agg, rank, rank, rank, rank, rank, rank], ["0", 0]
        keys: list[Any] = [rank, agg, *population]
        args: list[Any] = ["1", weight_cap]
        for key, ident, excluded in individuals:
            keys.append(key)
            args += ("1" if excluded else "0", ident)
        return keys, args

    @staticmethod
    def decode(reply: Sequence[Any]) -> Aggregates:
        """The aggregates as written."""
        return Aggregates(int(reply[0]), float(reply[1]), float(reply[2]))

    @staticmethod
    def rebuilt(reply: Sequence[Any]) -> tuple[int, int]:
        """(individuals learnt from, individuals left out) of a population rebuild; zeros without one."""
        return int(reply[3]), int(reply[4])


class ExpireScope(NamedTuple):
    """The keys of one scope ``expire.lua`` reads and writes (after the shard's uncommitted and expired hashes)."""

    last: str
    pop: str
    sq: str
    k: str
    raw: str
    dom: str
    rank: str
    agg: str
    na: str  # number -> action: the counts hashes are keyed by action number

    @classmethod
    def of(cls, kp: str) -> ExpireScope:
        """The keys under a scope's prefix (keys.scope_prefix)."""
        return cls(*(kp + kind for kind in cls._fields))


class Expired(NamedTuple):
    """What one ``expire.lua`` call did."""

    removed: int
    busy: int  # idle but skipped: an uncommitted mark (a commit in flight or a repair due)
    left: int  # individuals still in the scope's last-seen zset


class Expire:
    """``expire.lua``: remove idle (or over-cap) individuals of one scope with all they contributed."""

    NAME = "expire"
    LAYOUT = Layout(
        keys=("uncommitted", "expired", *ExpireScope._fields),
        item_keys=("individual", "recent", "window"),
        args=("token", "cutoff_ms", "max_individuals", "weight_cap"),
        item_args=("ident", "excluded"),
    )

    @staticmethod
    def pack(
        head: tuple[str, str],
        scope: ExpireScope,
        token: str,
        cutoff_ms: int,
        max_individuals: int,
        weight_cap: int,
        candidates: Sequence[tuple[str, str, bool]],
        recent_window: int = 0,
    ) -> tuple[list[Any], list[Any]]:
        """KEYS and ARGV; ``candidates`` are (counts hash key, id, excluded) of the oldest last-seen members.

        ``head`` is the shard's (uncommitted, expired) hashes; ``cutoff_ms`` -1 turns idle expiry off.
        With a recent window K > 0 each candidate's recent list and window hash (keys.recent_of its
        counts key) go with it; with K = 0 its counts key stands in for both (no new key).
        """
        keys: list[Any] = [*head, *scope]
        args: list[Any] = [token, cutoff_ms, max_individuals, weight_cap]
        for key, ident, excluded in candidates:
            keys += (key, *recent_of(key)) if recent_window else (key, key, key)
            args += (ident, "1" if excluded else "0")
        return keys, args

    @staticmethod
    def decode(reply: Sequence[Any]) -> Expired:
        """``{removed, busy, left}``."""
        return Expired(int(reply[0]), int(reply[1]), int(reply[2]))


class Replayed(NamedTuple):
    """A replay's outcome: the new entry id, or why nothing was replayed."""

    ok: bool
    detail: str


class Replay:
    """``replay.lua``: put one dead letter back into its stream and delete it."""

    NAME = "replay"
    LAYOUT = Layout(keys=("dead", "stream"), args=("dead_id",))

    @staticmethod
    def pack(dead: str, stream: str, dead_id: str) -> tuple[list[Any], list[Any]]:
        """KEYS and ARGV."""
        return [dead, stream], [dead_id]

    @staticmethod
    def decode(reply: Sequence[Any]) -> Replayed:
        """``{1, new id}`` or ``{0, reason}``."""
        return Replayed(bool(reply[0]), reply[1].decode("utf-8", "replace"))


class Migrate:
    """``migrate.lua``: move individuals of one scope from key layout 1 to 2 (common/migrate.py)."""

    NAME = "migrate"
    LAYOUT = Layout(keys=("uncommitted", "ver", "an", "na"), item_keys=("old", "new"), item_args=("ident",))

    @staticmethod
    def pack(
        head: tuple[str, str, str, str], individuals: Sequence[tuple[str, str, str]]
    ) -> tuple[list[Any], list[Any]]:
        """KEYS and ARGV: ``head`` (uncommitted, ver, an, na), then (old key, new key, id) per individual."""
        keys: list[Any] = list(head)
        args: list[Any] = []
        for old, new, ident in individuals:
            keys += (old, new)
            args.append(ident)
        return keys, args

    @staticmethod
    def decode(reply: Any) -> int:
        """Individuals moved."""
        return int(reply)


class AlertFire(NamedTuple):
    """A rule a result crosses: it fires unless the individual's state for it says otherwise."""

    rule: str  # the rule's field in the state hash (common/alertcheck.py: state_field)
    cooldown_ms: int
    body: bytes  # the alert's JSON


class AlertCheck(NamedTuple):
    """One result of an ``alert.lua`` call: the rules it crosses; every other field of the state is re-armed."""

    state: str  # keys.alert_fired of the individual
    entry_id: bytes | str
    entry_ms: int
    fires: tuple[AlertFire, ...] = ()  # empty: the result crosses no rule (one EXISTS in Redis)


class AlertItem(NamedTuple):
    """One (rule, result) decision, the one-rule form of :class:`AlertCheck` (tools and tests).

    Below the rule (``crossed`` false) it re-arms every field of ``state``, as any check does.
    """

    state: str  # the state hash (keys.alert_fired)
    crossed: bool
    cooldown_ms: int
    entry_id: bytes | str
    entry_ms: int
    body: bytes  # the alert's JSON (empty when below)
    rule: str = ""  # the rule's field in the state hash

    def check(self) -> AlertCheck:
        """The :class:`AlertCheck` of this one decision."""
        fires = (AlertFire(self.rule, self.cooldown_ms, self.body),) if self.crossed else ()
        return AlertCheck(self.state, self.entry_id, self.entry_ms, fires)


class Alert:
    """``alert.lua``: the atomic fire decision of the results (checks) of one shard, alerts XADDed."""

    NAME = "alert"
    LAYOUT = Layout(keys=("stream",), item_keys=("state",), args=("maxlen", "least_ttl_ms"), rest_args="checks")

    @staticmethod
    def pack(
        stream: str, maxlen: int, least_ttl_ms: int, items: Sequence[AlertCheck | AlertItem | str]
    ) -> tuple[list[Any], list[Any]]:
        """KEYS and ARGV for ``items`` of the shard of ``stream`` (a bare state key: a result crossing no rule)."""
        keys: list[Any] = [stream]
        args: list[Any] = [maxlen, least_ttl_ms]
        for item in items:
            if isinstance(item, str):
                keys.append(item)
                args.append(0)
                continue
            check = item.check() if isinstance(item, AlertItem) else item
            keys.append(check.state)
            if not check.fires:
                args.append(0)
                continue
            args += (len(check.fires), check.entry_id, check.entry_ms)
            for fire in check.fires:
                args += fire
        return keys, args

    @staticmethod
    def decode(reply: Sequence[Any]) -> list[list[bytes | None] | None]:
        """Per check: None when nothing fired, else per crossed rule its alert's stream id (None: did not fire)."""
        return [[x if isinstance(x, bytes) else None for x in r] if isinstance(r, list) else None for r in reply]


TWINS: dict[
    str,
    type[Apply]
    | type[Commit]
    | type[Deadletter]
    | type[Expire]
    | type[Recompute]
    | type[Replay]
    | type[Migrate]
    | type[Alert],
] = {t.NAME: t for t in (Apply, Commit, Deadletter, Expire, Recompute, Replay, Migrate, Alert)}
