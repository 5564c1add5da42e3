"""Every Redis key, hash tag and channel name Binormal uses, built in one place.

Layout (``P`` is the prefix, default ``bn``; ``s`` the shard number)::

    P:{P.s}:events                      stream shard s (the public entry schema)
    P:{P.s}:dead                        dead-letter stream of shard s
    P:{P.s}:scopes                      set of scope tokens living in shard s
    P:{P.s}:sc:<scope>:pop              hash action -> population count C_a
    P:{P.s}:sc:<scope>:sq               hash action -> sum of squared counts S2_a
    P:{P.s}:sc:<scope>:k                hash action -> individuals that did it K_a
    P:{P.s}:sc:<scope>:raw              hash action -> raw sum s1 (only with a weight cap; else pop is it)
    P:{P.s}:sc:<scope>:dom              hash events / top / top_n / flag / logged: the dominance flag
    P:{P.s}:sc:<scope>:an               hash action -> its number in the scope (1, 2, ...; never reused)
    P:{P.s}:sc:<scope>:na               hash number -> action (the inverse of an)
    P:{P.s}:sc:<scope>:c:<id>           hash action number -> this individual's count x_a
    P:{P.s}:sc:<scope>:rl:<id>          list of its last K action numbers, newest first (BINORMAL_RECENT_WINDOW > 0)
    P:{P.s}:sc:<scope>:rw:<id>          hash action number -> count in its recent window, and n (its events then)
    P:{P.s}:sc:<scope>:rank             zset id -> current score (bits)
    P:{P.s}:sc:<scope>:agg              hash n / sum / sumsq of current scores
    P:{P.s}:sc:<scope>:last             zset id -> last seen (Redis ms; only with retention on)
    P:{P.s}:sc:<scope>:seen:<event_id>  idempotency marker of an event id in this scope (expires)
    P:{P.s}:sc:<scope>:reply:<key>      stored copy of a result, key = event_id else rid (expires)
    P:{P.s}:uncommitted                 hash individual key -> '<entry id> <L>': the entry applied last,
                                        its score not committed yet; L the event count the committed score is from
    P:{P.s}:capped                      hash scope token -> events refused by the distinct-action cap
    P:{P.s}:expired                     hash scope token -> individuals removed by retention (expire.lua)
    P:{P.s}:rules                       hash rule field -> rule JSON (mute/exclude of scopes in shard s)
    P:{P.s}:marks                       hash scope token:enc(id) -> feedback JSON (mark confirmed/benign)
    P:rules:version                     integer, raised on every mute/exclude change (caches re-read)
    P:{P.s}:alerts                      alert stream of shard s (alert.lua; docs/stream.md, docs/alerts.md)
    P:{P.s}:sc:<scope>:fired:<id>       hash rule -> '<at> <entry> <armed>': the rules that fired for <id> (expires)
    P:{P.s}:sc:<scope>:al:<rule>:<id>   hash at / entry / armed: the first alert builds' state (read once: alert_layout)
    P:alerts:rules                      hash ORG/NAME -> alert rule JSON (names unique per org; common/alerts.py)
    P:alerts:version                    integer, raised on every alert rule change (caches re-read)
    P:alerts:stats                      hash fired|delivered|failed:<org>/<rule> -> count (/metrics)
    P:alerts:failed                     list of alerts the sender gave up on (binormal alerts failed)
    P:alerts:layout                     integer 2 once the (rule, individual) states were moved to fired:<id>
    P:layout                            integer, the layout of the keys above (LAYOUT; binormal migrate)
    P:workers                           hash consumer -> last heartbeat (ms)
    channels: P:scored (broadcast), P:reply:<instance> (request-reply)

User strings are percent-encoded (every byte but ``A-Za-z0-9_.-~``), so they
can never contain ``:``, ``{`` or ``}``: a scope token has exactly three
components and cannot spill into another scope's keys or change the hash tag.
Every key of a scope carries its shard's tag ``{P.s}``, the same tag as the
shard's stream, so one Lua script may touch the stream and the scope at once
(and would on Redis Cluster: one tag, one slot).

An individual costs one small hash (its counts, keyed by the scope's action
numbers, so a long action name is stored once per scope, not once per
individual) and one rank member: docs/operations.md, Sizing. With
``BINORMAL_RECENT_WINDOW`` K > 0 it also has a list of its last K action
numbers and a small hash of its window's counts (docs/design.md, Recent
window). Layout 1 (before the action numbers) keyed ``i:<id>`` by action
name and kept a ``ver`` hash; ``binormal migrate`` converts it (common/migrate.py).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import quote, unquote

DEFAULT_PREFIX = "bn"
GROUP = "scorers"
LAYOUT = 2  # the key layout this code reads and writes (P:layout)


@lru_cache(maxsize=65_536)
def encode(value: str) -> str:
    """Percent-encode a user string so it holds no ``:``, ``{``, ``}`` or spaces.

    Cached: the same scopes, ids and actions come back in every batch.
    """
    return quote(value, safe="")


def decode(token: str) -> str:
    """Inverse of :func:`encode`."""
    return unquote(token)


class Scope(NamedTuple):
    """The (org, source, pop) triple every counter lives under.

    A NamedTuple rather than a dataclass: scopes are dict keys on the worker's
    hot path, and tuple hashing runs in C.
    """

    org: str
    source: str
    pop: str

    @property
    def token(self) -> str:
        """Injective, key-safe text form: ``enc(org):enc(source):enc(pop)``."""
        return f"{encode(self.org)}:{encode(self.source)}:{encode(self.pop)}"

    @classmethod
    def from_token(cls, token: str) -> Scope:
        """Parse a token made by :attr:`token`."""
        org, source, pop = token.split(":")
        return cls(decode(org), decode(source), decode(pop))


@lru_cache(maxsize=16_384)  # per event in the worker and ingest: a CRC of three strings each time was ~1 us
def shard_of(org: str, source: str, pop: str, shards: int) -> int:
    """Shard of a scope: CRC-32 of ``org NUL source NUL pop`` (UTF-8) mod ``shards``.

    Direct stream writers compute the same to pick the stream key (docs/stream.md).
    """
    raw = b"\x00".join(s.encode("utf-8") for s in (org, source, pop))
    return zlib.crc32(raw) % shards


def fingerprint(ident: str, action: str) -> bytes:
    """What an idempotency marker remembers of its event, beside the entry id (docs/stream.md).

    16 hex digits of BLAKE2b over ``id NUL action``; the marker's key already
    fixes the scope. It tells a retry of the event from another event reusing its id.
    """
    import hashlib  # here: OpenSSL's loading is ~5 ms of every command's start-up (binormal score's too)

    return hashlib.blake2b(f"{ident}\0{action}".encode(), digest_size=8).hexdigest().encode()


def mark_entry(mark: bytes | str) -> str:
    """The entry id of an uncommitted mark (``<entry id> <L>``; layout 1 had the id alone)."""
    text = mark.decode("utf-8") if isinstance(mark, bytes) else mark
    return text.partition(" ")[0]


@lru_cache(maxsize=16_384)
def _scope_prefix(prefix: str, shard: int, scope: Scope) -> str:
    return f"{prefix}:{{{prefix}.{shard}}}:sc:{scope.token}:"


def recent_in(scope_prefix: str, ident: str) -> tuple[str, str]:
    """:meth:`Keyspace.recent_list` and :meth:`Keyspace.recent_window` from the scope's prefix (hot path)."""
    enc = encode(ident)
    return f"{scope_prefix}rl:{enc}", f"{scope_prefix}rw:{enc}"


def recent_of(individual_key: str) -> tuple[str, str]:
    """The recent list and window keys of the individual whose counts key (:meth:`Keyspace.individual`) is given.

    An encoded id holds no ``:``, so the last ``:c:`` of the key is the one before the id.
    """
    head, sep, enc = individual_key.rpartition(":c:")
    if not sep or not head or not enc:
        raise ValueError(f"not an individual key: {individual_key[:200]!r}")
    return f"{head}:rl:{enc}", f"{head}:rw:{enc}"


def alert_fired_in(scope_prefix: str, ident: str) -> str:
    """:meth:`Keyspace.alert_fired` from the scope's prefix (``Keyspace.scope_prefix``): the worker's hot path."""
    return f"{scope_prefix}fired:{encode(ident)}"


@dataclass(frozen=True)
class Keyspace:
    """Key builder for one deployment (prefix + number of stream shards)."""

    prefix: str = DEFAULT_PREFIX
    shards: int = 4
    group: str = GROUP

    def tag(self, shard: int) -> str:
        """Hash tag shared by a shard's stream and all its scopes' keys."""
        return f"{{{self.prefix}.{shard}}}"

    def _base(self, shard: int) -> str:
        return f"{self.prefix}:{self.tag(shard)}"

    def stream(self, shard: int) -> str:
        """Stream key of ``shard``."""
        return f"{self._base(shard)}:events"

    def streams(self) -> list[str]:
        """All stream keys, shard order."""
        return [self.stream(s) for s in range(self.shards)]

    def shard_of_stream(self, stream: str) -> int:
        """Shard number of a stream key made by :meth:`stream`."""
        for s in range(self.shards):
            if self.stream(s) == stream:
                return s
        raise KeyError(stream)

    def dead(self, shard: int) -> str:
        """Dead-letter stream of ``shard``."""
        return f"{self._base(shard)}:dead"

    def scopes(self, shard: int) -> str:
        """Set of scope tokens that live in ``shard``."""
        return f"{self._base(shard)}:scopes"

    def shard(self, scope: Scope) -> int:
        """Shard of ``scope``."""
        return shard_of(scope.org, scope.source, scope.pop, self.shards)

    def scope_prefix(self, scope: Scope, shard: int | None = None) -> str:
        """``P:{P.s}:sc:<scope>:``, the common start of every key of ``scope``."""
        s = self.shard(scope) if shard is None else shard
        return _scope_prefix(self.prefix, s, scope)

    def scope_key(self, scope: Scope, kind: str, shard: int | None = None) -> str:
        """A per-scope key (``pop``, ``sq``, ``k``, ``raw``, ``dom``, ``rank``, ``agg``, ``an``, ``na``, ``last``)."""
        return self.scope_prefix(scope, shard) + kind

    def robust(self, scope: Scope, shard: int | None = None) -> str:
        """Hash of the scope's median and MAD of scores (``rzscore``), as the worker last sampled them."""
        return self.scope_key(scope, "robust", shard)

    def individual(self, scope: Scope, ident: str, shard: int | None = None) -> str:
        """Hash of one individual's action counts, keyed by the scope's action numbers (``an``/``na``)."""
        return f"{self.scope_prefix(scope, shard)}c:{encode(ident)}"

    def recent_list(self, scope: Scope, ident: str, shard: int | None = None) -> str:
        """List of the individual's last K action numbers, newest first (``BINORMAL_RECENT_WINDOW``; apply.lua)."""
        return recent_in(self.scope_prefix(scope, shard), ident)[0]

    def recent_window(self, scope: Scope, ident: str, shard: int | None = None) -> str:
        """Hash action number -> count among its last ``min(K, n // 2)`` events, plus ``n`` (apply.lua)."""
        return recent_in(self.scope_prefix(scope, shard), ident)[1]

    def individual_of(self, key: str | bytes, shard: int, kind: str = "c") -> tuple[Scope, str]:
        """Scope and id of an individual's key made by :meth:`individual` for ``shard``.

        ``kind`` ``"i"`` parses a key of layout 1 (``binormal migrate``).
        """
        text = key.decode("utf-8") if isinstance(key, bytes) else key
        head = f"{self._base(shard)}:sc:"
        parts = text[len(head) :].split(":") if text.startswith(head) else []
        if len(parts) != 5 or parts[3] != kind:
            raise ValueError(f"not an individual key of shard {shard}: {text[:200]!r}")
        org, source, pop, _, ident = parts
        return Scope(decode(org), decode(source), decode(pop)), decode(ident)

    def uncommitted(self, shard: int) -> str:
        """Hash individual key -> ``<entry id> <L>``: its last applied entry, whose score is not committed yet.

        L is the event count of the score in the rank zset (commit.lua keeps the newest); see :func:`mark_entry`.
        """
        return f"{self._base(shard)}:uncommitted"

    def seen(self, scope: Scope, event_id: str, shard: int | None = None) -> str:
        """Idempotency marker of an event id, per scope: one tenant's ids never touch another's."""
        return f"{self.scope_prefix(scope, shard)}seen:{encode(event_id)}"

    def reply(self, scope: Scope, key: str, shard: int | None = None) -> str:
        """Short-lived stored copy of a result of ``scope`` under its event id (else its rid)."""
        return f"{self.scope_prefix(scope, shard)}reply:{encode(key)}"

    def capped(self, shard: int) -> str:
        """Hash scope token -> events refused because the scope has BINORMAL_MAX_ACTIONS actions."""
        return f"{self._base(shard)}:capped"

    def expired(self, shard: int) -> str:
        """Hash scope token -> individuals removed by idle expiry or the per-scope cap (expire.lua)."""
        return f"{self._base(shard)}:expired"

    def rules(self, shard: int) -> str:
        """Hash rule field (common/rules.py: rule_field) -> rule JSON, for the scopes of ``shard``."""
        return f"{self._base(shard)}:rules"

    def marks(self, shard: int) -> str:
        """Hash ``<scope token>:<enc(id)>`` -> feedback JSON (label, by, at, note), for the scopes of ``shard``."""
        return f"{self._base(shard)}:marks"

    def alert_stream(self, shard: int) -> str:
        """Alert stream of ``shard``: one entry (field ``alert``, JSON) per crossing (alert.lua)."""
        return f"{self._base(shard)}:alerts"

    def alert_streams(self) -> list[str]:
        """All alert streams, shard order."""
        return [self.alert_stream(s) for s in range(self.shards)]

    def alert_fired(self, scope: Scope, ident: str, shard: int | None = None) -> str:
        """Hash rule -> ``<at> <entry> <armed>``: the alert rules that fired for an individual (alert.lua)."""
        return alert_fired_in(self.scope_prefix(scope, shard), ident)

    def alert_state(self, scope: Scope, rule: str, ident: str, shard: int | None = None) -> str:
        """The first alert builds' hash ``at``/``entry``/``armed`` of (rule, individual); moved by alertcheck.py."""
        return f"{self.scope_prefix(scope, shard)}al:{encode(rule)}:{encode(ident)}"

    def alert_state_of(self, key: str | bytes, shard: int) -> tuple[Scope, str, str]:
        """Scope, rule and id of an :meth:`alert_state` key of ``shard``; ValueError for any other key."""
        text = key.decode("utf-8") if isinstance(key, bytes) else key
        head = f"{self._base(shard)}:sc:"
        parts = text[len(head) :].split(":") if text.startswith(head) else []
        if len(parts) != 6 or parts[3] != "al":
            raise ValueError(f"not an alert state key of shard {shard}: {text[:200]!r}")
        org, source, pop, _, rule, ident = parts
        return Scope(decode(org), decode(source), decode(pop)), decode(rule), decode(ident)

    def alert_layout(self) -> str:
        """Integer 2 once every ``alert_state`` hash was moved into ``alert_fired`` (common/alertcheck.py)."""
        return f"{self.prefix}:alerts:layout"

    def alert_rules(self) -> str:
        """Hash ``ORG/NAME`` -> alert rule JSON (a bare-name field: stored before names were per org)."""
        return f"{self.prefix}:alerts:rules"

    def alert_rules_version(self) -> str:
        """Counter raised on every alert rule change: the workers' caches re-read the rules when it moves."""
        return f"{self.prefix}:alerts:version"

    def alert_failed(self) -> str:
        """List of alerts (JSON with the last error) the sender could not deliver: ``binormal alerts failed``."""
        return f"{self.prefix}:alerts:failed"

    def alert_stats(self) -> str:
        """Hash ``fired|delivered|failed:<org>/<rule>`` -> count (the sender's; /metrics exports them)."""
        return f"{self.prefix}:alerts:stats"

    def layout(self) -> str:
        """Integer: the key layout the data is in (``LAYOUT``); written by the first worker or ``binormal migrate``."""
        return f"{self.prefix}:layout"

    def rules_version(self) -> str:
        """Counter raised on every rule change: workers and web re-read the rules hashes when it moves."""
        return f"{self.prefix}:rules:version"

    def workers(self) -> str:
        """Hash consumer name -> last heartbeat in ms (read by /readyz)."""
        return f"{self.prefix}:workers"

    def broadcast_channel(self) -> str:
        """Pub/sub channel every scored batch is published to (NDJSON)."""
        return f"{self.prefix}:scored"

    def reply_channel(self, instance: str) -> str:
        """Pub/sub channel of one web instance waiting for request-reply answers."""
        return f"{self.prefix}:reply:{encode(instance)}"
