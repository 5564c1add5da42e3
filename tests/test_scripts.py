"""The Lua scripts' typed twins (common/scripts.py) against their ``.lua`` headers.

Each twin's ``LAYOUT`` is the KEYS/ARGV contract; the header documents the same
layout in prose (``KEYS[1] ...``, ``then per entry i (base b = 4 + 5*(i-1))``,
``KEYS[b+1] ...``, ``ARGV[6..] ...``). These tests parse the header and fail
when the two disagree, so the contract cannot drift on one side only.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from binormal.common.calibration import Rank
from binormal.common.result import ActionStats, Aggregates
from binormal.common.scripts import (
    ALREADY,
    LUA_DIR,
    TWINS,
    Applied,
    Apply,
    ApplyItem,
    BadState,
    Capped,
    Commit,
    CommitBadState,
    Committed,
    Deadletter,
    Dominated,
    Duplicate,
    Expire,
    Expired,
    ExpireScope,
    Guard,
    Layout,
    Score,
    Scripts,
    lua_source,
)


@dataclass(frozen=True)
class Header:
    """What a script's leading comment block says about KEYS and ARGV."""

    keys: int  # fixed KEYS[1..n]
    item_keys: int  # KEYS[x+1..x+m] per item
    key_base: int | None  # n in 'base x = n + m*(i-1)'
    key_width: int | None  # m in the same
    args: int
    item_args: int
    arg_base: int | None
    arg_width: int | None
    rest_from: int | None  # ARGV[r..]


def header(name: str) -> Header:
    lines = []
    for line in (LUA_DIR / f"{name}.lua").read_text(encoding="utf-8").splitlines():
        if not line.startswith("--"):
            break
        lines.append(line)
    text = "\n".join(lines)

    def fixed(kind: str) -> int:
        found = {int(n) for n in re.findall(rf"\b{kind}\[(\d+)\]", text)}
        assert found == set(range(1, len(found) + 1)), f"{name}.lua: {kind} indexes {sorted(found)} have gaps"
        return len(found)

    def per_item(kind: str) -> int:
        found = {int(n) for n in re.findall(rf"\b{kind}\[[a-z]\+(\d+)\]", text)}
        assert found == set(range(1, len(found) + 1)), f"{name}.lua: per-item {kind} {sorted(found)} have gaps"
        return len(found)

    # 'then per entry i (base b = 4 + 5*(i-1))' or 'per score i (base a = 5*(i-1))': keys first, then args.
    bases = re.findall(r"base ([a-z]) = (?:(\d+) \+ )?(\d+)\*\(i-1\)", text)
    key_var = re.search(r"\bKEYS\[([a-z])\+1\]", text)
    arg_var = re.search(r"\bARGV\[([a-z])\+1\]", text)
    by_var = {v: (int(base or 0), int(width)) for v, base, width in bases}
    kb = by_var.get(key_var.group(1)) if key_var else None
    ab = by_var.get(arg_var.group(1)) if arg_var else None
    rest = re.search(r"\bARGV\[(\d+)\.\.\]", text)
    return Header(
        keys=fixed("KEYS"),
        item_keys=per_item("KEYS"),
        key_base=kb[0] if kb else None,
        key_width=kb[1] if kb else None,
        args=fixed("ARGV"),
        item_args=per_item("ARGV"),
        arg_base=ab[0] if ab else None,
        arg_width=ab[1] if ab else None,
        rest_from=int(rest.group(1)) if rest else None,
    )


def test_every_script_has_a_twin() -> None:
    assert set(TWINS) == set(Scripts.NAMES) == {p.stem for p in LUA_DIR.glob("*.lua")}


@pytest.mark.parametrize("name", sorted(TWINS))
def test_twin_layout_matches_the_lua_header(name: str) -> None:
    layout: Layout = TWINS[name].LAYOUT
    h = header(name)
    assert h.keys == len(layout.keys), f"{name}.lua documents {h.keys} fixed KEYS, the twin {layout.keys}"
    assert h.item_keys == len(layout.item_keys), f"{name}.lua: per-item KEYS vs {layout.item_keys}"
    assert h.item_args == len(layout.item_args), f"{name}.lua: per-item ARGV vs {layout.item_args}"
    if layout.rest_args is None:
        assert h.rest_from is None and h.args == len(layout.args), f"{name}.lua: fixed ARGV vs {layout.args}"
    else:
        assert h.rest_from == len(layout.args) + 1, f"{name}.lua: ARGV[{h.rest_from}..] vs {layout.args}"
    if layout.item_keys:
        assert (h.key_base, h.key_width) == (len(layout.keys), len(layout.item_keys))
    if layout.item_args:
        assert (h.arg_base, h.arg_width) == (len(layout.args), len(layout.item_args))


def test_a_header_that_disagrees_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parser really reads the header: one more fixed key in the twin fails the check."""
    layout = Apply.LAYOUT
    monkeypatch.setattr(
        Apply, "LAYOUT", Layout(("extra", *layout.keys), layout.item_keys, layout.args, layout.item_args)
    )
    with pytest.raises(AssertionError):
        test_twin_layout_matches_the_lua_header("apply")


def test_apply_packs_in_layout_order_and_decodes_every_status() -> None:
    item = ApplyItem(
        "p:pop", "p:sq", "p:k", "p:c:u1", "p:seen:e", "p:raw", "p:dom", "p:last", "p:an", "p:na", "p:rl:u1",
        "p:rw:u1", b"1-0", "GET /", "tok", 60, b"1-0 fp", "u1",
    )  # fmt: skip
    keys, args = Apply.pack((b"s", "scopes", "unc", "capped"), "g", True, 99, [item, item], Guard(150, 0.25, 500))
    assert keys == [b"s", "scopes", "unc", "capped", *item[:12], *item[:12]]
    assert args == ["g", "1", 99, 150, "0.25", 500, "0", 0, *item[12:], *item[12:]]
    assert Apply.pack((b"s", "scopes", "unc", "capped"), "g", True, 99, [item], retention=True)[1][6] == "1"
    assert Apply.pack((b"s", "scopes", "unc", "capped"), "g", True, 99, [item], recent_window=50)[1][7] == 50
    reply = [
        [1, 3, 5, 2, [b"GET /", b"2"], [b"GET /", b"3"], 3, 0],
        [1, 3, 5, 2, [b"GET /", b"2"], [], 1, [b"u1", 400, 1000]],
        [0],
        [2, b"1-0 fp"],
        [2, b"1-0"],
        [3, b"key x holds a list, not a hash"],
        [4, 7],
        [1, 3, 5, 2, [b"GET /", b"2"], [], 1, 0, [b"GET /", b"1"]],  # with a recent window: its counts
    ]
    assert Apply.decode(reply, want_pop=True) == [
        Applied(ActionStats(3, 5, 2), {"GET /": 2}, {"GET /": 3}, 3),
        Applied(ActionStats(3, 5, 2), {"GET /": 2}, {}, 1, Dominated("u1", 400, 1000)),
        ALREADY,
        Duplicate(b"1-0", b"fp"),
        Duplicate(b"1-0", None),
        BadState("key x holds a list, not a hash"),
        Capped(7),
        Applied(ActionStats(3, 5, 2), {"GET /": 2}, {}, 1, None, {"GET /": 1}),
    ]
    dup = Duplicate(b"1-0", b"fp")
    assert (dup.same_event(b"fp"), dup.same_event(b"other"), Duplicate(b"1-0", None).same_event(b"fp")) == (
        True,
        False,
        None,
    )


def test_commit_packs_and_decodes() -> None:
    keys, args = Commit.pack("unc", [Score("kp:", "u1", 0.25, 3, b"1-0", "kp:c:u1", 1025)])
    assert keys == ["unc", "kp:rank", "kp:agg", "kp:c:u1"]
    assert args == ["u1", "0.25", 3, b"1-0", 1025]
    assert Commit.pack("unc", [Score("kp:", "u1", 0.25, 3, b"1-0", "kp:c:u1")])[1][-1] == 0  # no sample by default
    reply = [2, b"0.5", b"0.125", 1, 1, 1, 2, [b"0", b"0.5"]]
    reply += [2, b"0.5", b"0.125", 0, 0, 2, 2, []]
    reply += [0, b"0", b"0", -1, 0, 0, 0, []]
    assert Commit.decode(reply) == [
        Committed(Aggregates(2, 0.5, 0.125), True, Rank(1, 1, 2), [0.0, 0.5]),
        Committed(Aggregates(2, 0.5, 0.125), False, Rank(0, 2, 2), None),
        CommitBadState(),
    ]


def test_expire_packs_the_scope_keys_then_three_keys_per_candidate() -> None:
    scope = ExpireScope.of("kp:")
    assert scope == ExpireScope("kp:last", "kp:pop", "kp:sq", "kp:k", "kp:raw", "kp:dom", "kp:rank", "kp:agg", "kp:na")
    keys, args = Expire.pack(
        ("unc", "exp"), scope, "tok", 1234, 5, 100, [("kp:c:a", "a", False), ("kp:c:b", "b", True)]
    )
    # K = 0: the counts hash in place of the window's keys; K > 0: its recent list and window hash
    assert keys == ["unc", "exp", *scope, *["kp:c:a"] * 3, *["kp:c:b"] * 3]
    windowed = Expire.pack(("unc", "exp"), scope, "tok", 1234, 5, 100, [("kp:c:a", "a", False)], recent_window=50)
    assert windowed[0] == ["unc", "exp", *scope, "kp:c:a", "kp:rl:a", "kp:rw:a"]
    assert args == ["tok", 1234, 5, 100, "a", "0", "b", "1"]
    assert Expire.decode([2, 1, 7]) == Expired(2, 1, 7)


def test_deadletter_packs_fields_flat() -> None:
    keys, args = Deadletter.pack(b"s", "dead", "g", b"1-0", "why", "c", 10, {b"a": b"1", b"b": b"2"})
    assert keys == [b"s", "dead"] and args == ["g", b"1-0", "why", "c", 10, b"a", b"1", b"b", b"2"]
    assert Deadletter.decode(1) is True and Deadletter.decode(0) is False


async def test_share_of_is_exact_integer_division(aredis: aioredis.Redis) -> None:
    """``share_of`` (Lua doubles) is Python's ``(2 x w + m) // (2 m)`` at rounding edges, m up to 4e13."""
    source = lua_source("apply")
    start = source.index("local function share_of")
    body = source[start : source.index("\nend\n", start) + 5]
    cases: list[tuple[int, int, int]] = [(1, 100, 101), (50, 100, 101), (0, 100, 500)]
    for m in (10**6 + 1, 2**40 + 3, 4 * 10**13):  # up to the documented bound (2x w + m < 2^53)
        for q in (1, 37, 99):
            # x just below / at / above the rounding edge x w / m = q - 1/2
            edge = ((2 * q - 1) * m) // (2 * 100)
            cases += [(edge + d, 100, m) for d in (-1, 0, 1, 2) if 0 <= edge + d <= m]
    call = "share_of(tonumber(ARGV[i]), tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]))"
    script = body + f"\nlocal out = {{}}\nfor i = 1, #ARGV, 3 do\n  out[#out + 1] = {call}\nend\nreturn out"
    args = [v for case in cases for v in case]
    got = await aredis.eval(script, 0, *args)
    assert got == [(2 * x * w + m) // (2 * m) for x, w, m in cases]


def test_shared_lua_functions_are_included_once_in_each_script_that_names_them() -> None:
    """Each ``--#include`` line is replaced by its lib file; the scripts send no include line to Redis."""
    lib = (LUA_DIR / "lib" / "share_of.lua").read_text(encoding="utf-8").rstrip("\n")
    for name in ("apply", "expire", "recompute"):
        raw = (LUA_DIR / f"{name}.lua").read_text(encoding="utf-8")
        assert "--#include share_of\n" in raw and "local function share_of" not in raw, name
        source = lua_source(name)
        assert source.count(lib) == 1 and "--#include" not in source, name
    assert Scripts().sha("apply") == hashlib.sha1(lua_source("apply").encode()).hexdigest()
