"""common/keys.py: no user string escapes its key or its slot; different scopes never share a key."""

from __future__ import annotations

import itertools
import zlib

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from binormal.common.keys import Keyspace, Scope, decode, encode, recent_in, recent_of, shard_of

TRICKY = [
    "a",
    "a:b",
    "a:",
    ":",
    "{",
    "}",
    "{x}",
    "}{",
    "{}",
    "has space",
    " ",
    "line\nbreak",
    "\r\n\t",
    "\x00nul",
    "100%",
    "%3A",
    "%",
    "%%25",
    "ünïcødé",
    "日本語",
    "emoji 🎉",
    "x" * 512,
    ("é{:}" * 128)[:512],
    "a%3Ab",
    "sc",
    "i",
    "c",
    "pop",
    "rank",
    "an",
]
KINDS = ("pop", "sq", "k", "raw", "dom", "rank", "agg", "an", "na")


# --- Redis Cluster key slots, our own implementation of the spec ---------------------------


def crc16_xmodem(data: bytes) -> int:
    """CRC16-CCITT (XMODEM): poly 0x1021, init 0, no reflection; what Redis Cluster uses."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def hash_tag(key: bytes) -> bytes:
    """The part of a key Redis Cluster hashes: the first non-empty ``{...}``, else the key."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def key_slot(key: str) -> int:
    return crc16_xmodem(hash_tag(key.encode("utf-8"))) % 16384


def test_crc16_reference_values() -> None:
    # Test vector from the Redis Cluster specification, and a few known slots.
    assert crc16_xmodem(b"123456789") == 0x31C3
    assert key_slot("foo") == 12182
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers")
    assert key_slot("foo{}{bar}") == crc16_xmodem(b"foo{}{bar}") % 16384  # empty first tag: whole key
    assert key_slot("foo{{bar}}zap") == crc16_xmodem(b"{bar") % 16384


# --- every key of a scope in one slot ------------------------------------------------------


def scope_keys(ks: Keyspace, scope: Scope, ids: list[str]) -> dict[str, tuple[object, ...]]:
    """Every key a scope's writes touch, mapped to what it stands for."""
    shard = ks.shard(scope)
    out: dict[str, tuple[object, ...]] = {}
    for kind in KINDS:
        out[ks.scope_key(scope, kind)] = (scope, kind)
    for ident in ids:
        out[ks.individual(scope, ident)] = (scope, "i", ident)
    out[ks.stream(shard)] = ("stream", shard)
    out[ks.dead(shard)] = ("dead", shard)
    out[ks.scopes(shard)] = ("scopes", shard)
    out[ks.uncommitted(shard)] = ("uncommitted", shard)
    out[ks.capped(shard)] = ("capped", shard)
    for ident in ids:
        out[ks.seen(scope, ident)] = (scope, "seen", ident)
        out[ks.reply(scope, ident)] = (scope, "reply", ident)
        out[ks.recent_list(scope, ident)] = (scope, "recent", ident)
        out[ks.recent_window(scope, ident)] = (scope, "window", ident)
    return out


def tricky_scopes() -> list[Scope]:
    picks = ["a", "a:b", "{", "}", "line\nbreak", "100%", "日本語", "x" * 512, "b:c", "c"]
    scopes = [Scope(o, s, p) for o, s, p in itertools.product(picks[:5], picks[3:7], picks[5:])]
    scopes += [Scope(v, v, v) for v in TRICKY]
    # Pairs that a naive "org:source:pop" join would merge.
    scopes += [Scope("a:b", "c", "d"), Scope("a", "b:c", "d"), Scope("a", "b", "c:d"), Scope("a:b:c", "", "d")]
    scopes += [Scope("a%3Ab", "c", "d"), Scope("a}", "{b", "c"), Scope("a", "}{b", "c")]
    return list(dict.fromkeys(scopes))


def test_all_keys_of_a_scope_share_the_stream_slot() -> None:
    for shards in (1, 4, 16):
        ks = Keyspace(prefix="bn", shards=shards)
        for scope in tricky_scopes():
            shard = ks.shard(scope)
            keys = scope_keys(ks, scope, TRICKY)
            tag = ks.tag(shard)
            slot = key_slot(ks.stream(shard))
            for key in keys:
                # exactly one brace pair, and it is the shard's tag
                assert key.count("{") == 1 and key.count("}") == 1, key
                assert key.index(tag) == len("bn:"), key
                assert hash_tag(key.encode()) == tag[1:-1].encode()
                assert key_slot(key) == slot
            # no raw user byte that matters survives encoding
            for key in keys:
                assert "\n" not in key and " " not in key


def test_shards_spread_over_different_slots() -> None:
    ks = Keyspace(prefix="bn", shards=16)
    assert len({key_slot(s) for s in ks.streams()}) > 1
    assert len(set(ks.streams())) == 16
    for s in range(16):
        assert ks.shard_of_stream(ks.stream(s)) == s


def test_shard_of_is_the_documented_crc32() -> None:
    for scope in tricky_scopes():
        raw = "\x00".join((scope.org, scope.source, scope.pop)).encode("utf-8")
        assert shard_of(scope.org, scope.source, scope.pop, 7) == zlib.crc32(raw) % 7
        assert Keyspace(shards=7).shard(scope) == zlib.crc32(raw) % 7


# --- no sharing between scopes, ids and kinds ----------------------------------------------


def test_no_two_things_share_a_key() -> None:
    ks = Keyspace(prefix="bn", shards=4)
    owner: dict[str, tuple[object, ...]] = {}
    for scope in tricky_scopes():
        for key, what in scope_keys(ks, scope, TRICKY).items():
            if what[0] in ("stream", "dead", "scopes", "uncommitted", "capped"):
                # shard-level keys are shared by every scope of the shard, by design
                assert owner.setdefault(key, what) == what
                continue
            prev = owner.setdefault(key, what)
            assert prev == what, f"{key!r} is both {prev!r} and {what!r}"
    per_scope = [k for k, w in owner.items() if isinstance(w[0], Scope)]
    # per scope: its kinds, and per id an individual, a marker, a stored reply, a recent list and window
    assert len(per_scope) == len(tricky_scopes()) * (len(KINDS) + 5 * len(TRICKY))


def test_the_classic_collisions() -> None:
    ks = Keyspace(shards=1)
    a, b = Scope("a:b", "c", "d"), Scope("a", "b:c", "d")
    keys_a = set(scope_keys(ks, a, ["x"]))
    keys_b = set(scope_keys(ks, b, ["x"]))
    shared = keys_a & keys_b
    assert all(":sc:" not in k for k in shared)  # only the shard's stream/dead/scopes/uncommitted/capped
    # markers and stored replies are per scope: the same event id in two scopes is two keys
    assert ks.seen(a, "x") != ks.seen(b, "x") and ks.reply(a, "x") != ks.reply(b, "x")
    assert ks.seen(a, "x") != ks.reply(a, "x") and ks.seen(a, "x") != ks.individual(a, "x")
    assert ks.seen(Scope("o", "s", "p"), "x") != ks.individual(Scope("o", "s", "p"), "seen:x")
    # an id cannot name another kind of key, or another id
    s = Scope("o", "s", "p")
    assert ks.individual(s, "rank") != ks.scope_key(s, "rank")
    assert ks.individual(s, "x:rank") != ks.scope_key(s, "rank")
    assert ks.individual(s, "a:b") != ks.individual(s, "a%3Ab")
    assert ks.individual(s, "}") != ks.individual(s, "%7D")
    assert ks.individual(Scope("o", "s", "p:i"), "x") != ks.individual(s, "p:i:x")
    assert ks.scope_key(Scope("o", "s", "p:i"), "pop") != ks.individual(s, "pop")


def test_key_structure_parses_back() -> None:
    ks = Keyspace(prefix="bn", shards=4)
    for scope in tricky_scopes()[:60]:
        for ident in TRICKY:
            parts = ks.individual(scope, ident).split(":")
            assert len(parts) == 8
            assert parts[2] == "sc" and parts[6] == "c"
            assert Scope.from_token(":".join(parts[3:6])) == scope
            assert decode(parts[7]) == ident


def test_individual_of_inverts_individual() -> None:
    for prefix in ("bn", "my:app"):
        ks = Keyspace(prefix=prefix, shards=4)
        for scope in tricky_scopes()[:60]:
            shard = ks.shard(scope)
            for ident in TRICKY:
                key = ks.individual(scope, ident)
                assert ks.individual_of(key, shard) == (scope, ident)
                assert ks.individual_of(key.encode(), shard) == (scope, ident)
    ks = Keyspace(prefix="bn", shards=4)
    scope = Scope("a", "b", "c")
    shard = ks.shard(scope)
    for wrong in (
        ks.scope_key(scope, "pop"),
        ks.individual(scope, "x") + ":y",
        ks.stream(shard),
        "junk",
        ks.seen(scope, "x"),
        ks.reply(scope, "x"),
    ):
        with pytest.raises(ValueError, match="not an individual key"):
            ks.individual_of(wrong, shard)
    with pytest.raises(ValueError, match="not an individual key"):
        ks.individual_of(ks.individual(scope, "x"), (shard + 1) % 4)


def test_recent_of_derives_the_window_keys_from_the_individual_key() -> None:
    for prefix in ("bn", "my:app"):
        ks = Keyspace(prefix=prefix, shards=4)
        # a scope named c and ids made of c:, so the last ":c:" must be the one before the id
        for scope in [*tricky_scopes()[:40], Scope("c", "c", "c"), Scope("c:", ":c:", "c")]:
            for ident in [*TRICKY, "c", ":c:", "c:c"]:
                want = (ks.recent_list(scope, ident), ks.recent_window(scope, ident))
                assert recent_of(ks.individual(scope, ident)) == want
                assert recent_in(ks.scope_prefix(scope), ident) == want
    for wrong in ("junk", "bn:{bn.0}:sc:a:b:c:c:", ":c:x"):
        with pytest.raises(ValueError, match="not an individual key"):
            recent_of(wrong)


def test_encode_is_key_safe() -> None:
    for v in TRICKY:
        e = encode(v)
        assert not set(e) & set(":{} \n\r\t\x00")
        assert e.isascii()
        assert decode(e) == v


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text(), st.text())
def test_token_round_trips(org: str, source: str, pop: str) -> None:
    scope = Scope(org, source, pop)
    token = scope.token
    assert token.count(":") == 2
    assert not set(token) & set("{} \n")
    assert Scope.from_token(token) == scope


@settings(max_examples=300, deadline=None)
@given(st.tuples(st.text(), st.text(), st.text()), st.tuples(st.text(), st.text(), st.text()))
def test_different_scopes_different_tokens(a: tuple[str, str, str], b: tuple[str, str, str]) -> None:
    if a != b:
        assert Scope(*a).token != Scope(*b).token


# --- the tricky keys are real Redis keys ---------------------------------------------------


def test_tricky_keys_round_trip_in_redis(sredis: redis.Redis, prefix: str) -> None:
    ks = Keyspace(prefix=prefix, shards=4)
    scopes = [Scope(v, "src", v) for v in TRICKY] + [Scope("a:b", "c", "d"), Scope("a", "b:c", "d")]
    expected: dict[str, tuple[str, str]] = {}
    with sredis.pipeline(transaction=False) as pipe:
        for scope in scopes:
            for ident in TRICKY:
                key = ks.individual(scope, ident)
                # user strings as hash fields (actions) are stored raw, binary-safe
                pipe.hset(key, mapping={ident: 1, "value": f"{scope.token}|{ident}"})
                expected[key] = ("hash", f"{scope.token}|{ident}")
            for kind in KINDS:
                key = ks.scope_key(scope, kind)
                pipe.set(key, f"{scope.token}|{kind}")
                expected[key] = ("string", f"{scope.token}|{kind}")
        pipe.execute()
    # nothing overwrote anything: one key per thing written
    assert sredis.dbsize() == len(expected) == len(scopes) * (len(TRICKY) + len(KINDS))
    with sredis.pipeline(transaction=False) as pipe:
        for key, (kind, _) in expected.items():
            if kind == "hash":
                pipe.hget(key, "value")
            else:
                pipe.get(key)
        got = pipe.execute()
    assert [g.decode("utf-8") for g in got] == [v for _, v in expected.values()]
    # hash fields with raw tricky strings come back byte for byte
    key = ks.individual(scopes[0], "x")
    for action in TRICKY:
        sredis.hincrby(key, action, 1)
    fields: list[bytes] = sredis.hkeys(key)  # type: ignore[assignment]
    assert {k.decode("utf-8") for k in fields} == set(TRICKY)
    # a SCAN on one scope's pattern finds only that scope (no glob metacharacters leak)
    s = Scope("a:b", "c", "d")
    pattern = ks.scope_key(s, "c") + ":*"
    found = {k.decode() for k in sredis.scan_iter(match=pattern, count=1000)}
    assert found == {ks.individual(s, i) for i in TRICKY}


def test_marker_fingerprint_is_the_documented_blake2b() -> None:
    import hashlib

    from binormal.common.keys import fingerprint

    assert fingerprint("u1", "GET /") == hashlib.blake2b(b"u1\x00GET /", digest_size=8).hexdigest().encode()
    assert fingerprint("ü", "a\nb") == hashlib.blake2b("ü\0a\nb".encode(), digest_size=8).hexdigest().encode()
    # id NUL action: moving bytes between the two changes the fingerprint
    assert fingerprint("a", "bc") != fingerprint("ab", "c")
    assert len(fingerprint("x", "y")) == 16
    assert fingerprint("individual1", "GET /user/login") == b"6ecc47efba45a353"  # the example in docs/stream.md
