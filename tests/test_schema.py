"""common/schema.py: every kind of bad input names its field; good input round-trips."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from binormal.common.schema import LIMITS, REQUIRED, Event, InvalidEvent, parse_entry, parse_json

GOOD: dict[str, Any] = {
    "org": "acme",
    "source": "webserver",
    "pop": "auth_getpost",
    "id": "individual1",
    "action": "GET /user/login",
}


def entry(**over: Any) -> dict[bytes, bytes]:
    """A raw stream entry (bytes -> bytes) from GOOD with fields replaced (None removes)."""
    fields: dict[str, Any] = {**GOOD, **over}
    out: dict[bytes, bytes] = {}
    for k, v in fields.items():
        if v is None:
            continue
        out[k.encode()] = v if isinstance(v, bytes) else str(v).encode("utf-8")
    return out


def body(**over: Any) -> dict[str, Any]:
    """A JSON object from GOOD with fields replaced (a ``...`` value removes the field)."""
    obj: dict[str, Any] = {**GOOD, **over}
    return {k: v for k, v in obj.items() if v is not ...}


def bad_entry(field: str, **over: Any) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse_entry(entry(**over))
    assert info.value.field == field, info.value
    return info.value


def bad_json(field: str, obj: Any) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse_json(obj)
    assert info.value.field == field, info.value
    return info.value


def test_good_inputs() -> None:
    ev = parse_json(dict(GOOD))
    assert ev == Event(**GOOD)
    assert parse_entry(entry()) == ev
    assert parse_entry(entry(ts="1700000000000", event_id="e-1", v="1")) == Event(
        **GOOD, ts=1700000000000, event_id="e-1"
    )
    assert parse_json(body(ts=0, event_id="k")).ts == 0


@pytest.mark.parametrize("name", REQUIRED)
def test_missing_and_empty(name: str) -> None:
    assert "missing" in str(bad_entry(name, **{name: None}))
    assert "empty" in str(bad_entry(name, **{name: ""}))
    assert "missing" in str(bad_json(name, body(**{name: ...})))
    assert "empty" in str(bad_json(name, body(**{name: ""})))


@pytest.mark.parametrize("name", REQUIRED + ("event_id",))
def test_limits_are_utf8_bytes(name: str) -> None:
    limit = LIMITS[name]
    assert limit == {"org": 256, "source": 256, "pop": 256, "id": 1024, "action": 1024, "event_id": 256}[name]
    # exactly at the limit is fine, in ASCII and in two-byte characters
    at = "é" * (limit // 2)
    assert len(at.encode()) == limit
    assert getattr(parse_json(body(**{name: at})), name) == at
    assert getattr(parse_entry(entry(**{name: at})), name) == at
    assert getattr(parse_json(body(**{name: "x" * limit})), name) == "x" * limit
    # one byte over, and far fewer characters than the limit but more bytes
    over = "x" * (limit + 1)
    assert "over the limit" in str(bad_json(name, body(**{name: over})))
    assert "over the limit" in str(bad_entry(name, **{name: over}))
    wide = "€" * (limit // 3 + 1)  # 3 bytes each: len(wide) < limit, bytes > limit
    assert len(wide) < limit < len(wide.encode())
    assert f"is {len(wide.encode())} bytes" in str(bad_json(name, body(**{name: wide})))
    assert "over the limit" in str(bad_entry(name, **{name: wide}))


@pytest.mark.parametrize("name", REQUIRED)
def test_non_utf8(name: str) -> None:
    assert "UTF-8" in str(bad_entry(name, **{name: b"caf\xe9"}))
    assert "UTF-8" in str(bad_entry(name, **{name: b"\xff\xfe"}))
    assert "UTF-8" in str(bad_entry(name, **{name: b"\xed\xa0\x80"}))  # encoded surrogate
    # json.loads (not orjson) lets a lone surrogate through as a str
    assert "UTF-8" in str(bad_json(name, body(**{name: "x\ud800"})))


def test_non_utf8_field_name() -> None:
    fields = entry()
    fields[b"\xff"] = b"1"
    with pytest.raises(InvalidEvent) as info:
        parse_entry(fields)
    assert "\\xff" in info.value.field and "UTF-8" in info.value.problem


def test_unknown_fields() -> None:
    assert "unknown" in str(bad_entry("acton", acton="x"))
    assert "unknown" in str(bad_json("acton", body(acton="x")))
    # the web tier alone sets reply_to and rid: a JSON producer may not
    bad_json("reply_to", body(reply_to="chan"))
    bad_json("rid", body(rid="r"))
    bad_json("v", body(v="1"))
    # but a direct stream writer may send them
    ev = parse_entry(entry(reply_to="chan", rid="r1"))
    assert (ev.reply_to, ev.rid) == ("chan", "r1")


@pytest.mark.parametrize(
    "value,kind",
    [
        (7, "a number"),
        (1.5, "a number"),
        (None, "null"),
        (["a"], "a list"),
        (True, "a boolean"),
        ({"a": 1}, "an object"),
    ],
)
@pytest.mark.parametrize("name", REQUIRED + ("event_id",))
def test_wrong_json_types(name: str, value: Any, kind: str) -> None:
    err = bad_json(name, body(**{name: value}))
    assert "must be a string" in err.problem and kind in err.problem


@pytest.mark.parametrize(
    "obj,kind", [([], "a list"), ("x", "a string"), (None, "null"), (3, "a number"), (True, "a boolean")]
)
def test_body_not_an_object(obj: Any, kind: str) -> None:
    assert kind in bad_json("body", obj).problem


@pytest.mark.parametrize(
    "value", ["abc", "1.5", "1e3", "", " 7", "7 ", "1_000", "+5", "0x10", "١٢٣", str(2**63), "9" * 32]
)
def test_entry_ts_not_an_integer(value: str) -> None:
    bad_entry("ts", ts=value)


def test_entry_ts_negative_and_bounds() -> None:
    assert "negative" in str(bad_entry("ts", ts="-5"))
    assert parse_entry(entry(ts=str(2**63 - 1))).ts == 2**63 - 1
    assert parse_entry(entry(ts="0")).ts == 0
    assert "over the limit" in str(bad_entry("ts", ts="1" * 33))


@pytest.mark.parametrize("value", ["123", 1.5, 1.0, True, False, None, [1], {"ms": 1}, -1, 2**63, 10**40])
def test_json_ts_not_a_valid_integer(value: Any) -> None:
    bad_json("ts", body(ts=value))


def test_entry_schema_version() -> None:
    assert parse_entry(entry(v="1")) == Event(**GOOD)
    assert "version" in str(bad_entry("v", v="2"))


def test_entry_id_ttl() -> None:
    ev = parse_entry(entry(event_id="e-1", id_ttl="600"))
    assert ev.id_ttl == 600 and ev.to_fields()["id_ttl"] == "600"
    for value in ("0", "-5", "1.5", "abc", " 60", "١٢"):
        assert "positive integer" in str(bad_entry("id_ttl", event_id="e-1", id_ttl=value)), value
    assert "over the limit" in str(bad_entry("id_ttl", event_id="e-1", id_ttl="1" * 11))
    assert "needs an event_id" in str(bad_entry("id_ttl", id_ttl="600"))
    # JSON producers may send it too, as an integer, with their event_id
    ev = parse_json(body(event_id="e", id_ttl=600))
    assert ev.id_ttl == 600 and parse_entry(as_entry(ev)) == ev
    for value in (0, -1, 10**10, True, "600", 1.5, None):
        bad_json("id_ttl", body(event_id="e", id_ttl=value))
    assert parse_json(body(event_id="e", id_ttl=10**10 - 1)).id_ttl == 10**10 - 1
    assert "needs an event_id" in str(bad_json("id_ttl", body(id_ttl=600)))


def test_invalid_event_is_a_value_error() -> None:
    err = bad_json("org", body(org=""))
    assert isinstance(err, ValueError)
    assert str(err) == "org: must not be empty" and err.problem == "must not be empty"


# --- round trips -----------------------------------------------------------------------


def as_entry(ev: Event) -> dict[bytes, bytes]:
    return {k.encode(): v.encode("utf-8") for k, v in ev.to_fields().items()}


def test_to_fields_round_trip_examples() -> None:
    evs = [
        Event(**GOOD),
        Event(**GOOD, ts=1, event_id="e"),
        Event(**GOOD, ts=0, event_id="e", rid="r", reply_to="bn:reply:web-1"),
        Event(**GOOD, event_id="e", rid="r", reply_to="bn:reply:web-1", id_ttl=600),
        Event("a:b", "{c}", "d e", "line\nbreak", "日本語 🎉", ts=2**63 - 1),
    ]
    for ev in evs:
        fields = ev.to_fields()
        assert all(isinstance(v, str) for v in fields.values())
        assert parse_entry(as_entry(ev)) == ev
    assert Event(**GOOD).to_fields() == GOOD  # optional fields only when set


def text(limit: int) -> st.SearchStrategy[str]:
    return st.text(min_size=1, max_size=40).filter(lambda s: len(s.encode()) <= limit) | st.just("x" * limit)


@settings(max_examples=200, deadline=None)
@given(
    org=text(256),
    source=text(256),
    pop=text(256),
    ident=text(1024),
    action=text(1024),
    ts=st.none() | st.integers(0, 2**63 - 1),
    event_id=st.none() | text(256),
)
def test_json_to_entry_round_trip(
    org: str, source: str, pop: str, ident: str, action: str, ts: int | None, event_id: str | None
) -> None:
    obj: dict[str, Any] = {"org": org, "source": source, "pop": pop, "id": ident, "action": action}
    if ts is not None:
        obj["ts"] = ts
    if event_id is not None:
        obj["event_id"] = event_id
    # through real JSON bytes, the way an HTTP body arrives
    ev = parse_json(orjson.loads(orjson.dumps(obj)))
    assert (ev.org, ev.source, ev.pop, ev.id, ev.action, ev.ts, ev.event_id) == (
        org,
        source,
        pop,
        ident,
        action,
        ts,
        event_id,
    )
    assert parse_entry(as_entry(ev)) == ev


# ---------------------------------------------------------------- duplicate keys (loads_json)

from binormal.common.schema import DuplicateKeys, loads_json  # noqa: E402

DUPLICATES = [
    (b'{"org":"a","org":"b","source":"s","pop":"p","id":"i","action":"x"}', "org"),
    (b'{"org" : "a", "source":"s","pop":"p","id":"i","action":"x",  "org":"a"}', "org"),
    (b'{"org":"a","source":"s","pop":"p","id":"i","action":"x","\\u006frg":"b"}', "org"),  # escaped spelling
    (b'{"org":"org","source":"s","pop":"p","id":"i","action":"x","action":"y"}', "action"),
    (b'{"x":1,"x":2}', "x"),
]


@pytest.mark.parametrize("raw,field", DUPLICATES)
def test_duplicate_keys_are_rejected_naming_the_key(raw: bytes, field: str) -> None:
    obj = loads_json(raw)
    assert isinstance(obj, DuplicateKeys) and obj.duplicate == field
    with pytest.raises(InvalidEvent) as info:
        parse_json(obj)
    assert info.value.field == field and "more than once" in info.value.problem


def test_duplicates_inside_an_array_mark_only_their_item() -> None:
    items = loads_json(b'[{"org":"a"},{"org":"a","org":"b"},{"id":"\\"org\\""}]')
    assert [type(i) is DuplicateKeys for i in items] == [False, True, False]
    assert items[0] == {"org": "a"} and items[2] == {"id": '"org"'}


@pytest.mark.parametrize(
    "raw",
    [b"not json", b'{"org": "a",', b'{"org":"\xff"}', b"[1,", b'{"a":NaN}', b'"\\ud800"'],
)
def test_loads_json_refuses_what_orjson_refuses(raw: bytes) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        loads_json(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=5),
    max_leaves=20,
)


def _dump_with_pairs(pairs: list[tuple[str, Any]], escape: bool) -> bytes:
    """A JSON object written pair by pair (so keys may repeat), keys optionally \\u-escaped."""
    parts = []
    for key, value in pairs:
        k = "".join(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else c for c in key) if escape else None
        kb = f'"{k}"'.encode() if k is not None else orjson.dumps(key)
        parts.append(kb + b":" + orjson.dumps(value))
    return b"{" + b",".join(parts) + b"}"


@settings(max_examples=300, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(st.sampled_from(["org", "source", "pop", "id", "action", "x", "é"]), json_values), max_size=8
    ),
    escape=st.booleans(),
)
def test_loads_json_flags_exactly_the_objects_with_a_repeated_key(pairs: list[tuple[str, Any]], escape: bool) -> None:
    raw = _dump_with_pairs(pairs, escape)
    obj = loads_json(raw)
    keys = [k for k, _ in pairs]
    repeated = len(set(keys)) < len(keys)
    assert isinstance(obj, DuplicateKeys) == repeated
    assert dict(obj) == orjson.loads(raw)  # same values as orjson (last key wins)
    if repeated:
        assert keys.count(obj.duplicate) > 1


@settings(max_examples=200, deadline=None)
@given(value=json_values)
def test_loads_json_equals_orjson_on_any_json(value: Any) -> None:
    raw = orjson.dumps(value)
    assert loads_json(raw) == orjson.loads(raw)


from binormal.common.schema import parse_json_lines  # noqa: E402


def _line_by_line(raws: list[bytes]) -> tuple[list[tuple[int, Event]], list[tuple[int, str, str]]]:
    """The reference: loads_json and parse_json on each line alone."""
    events, errors = [], []
    for number, raw in enumerate(raws, 1):
        line = raw.strip()
        if not line:
            continue
        try:
            events.append((number, parse_json(loads_json(line))))
        except orjson.JSONDecodeError:
            errors.append((number, "line is not valid UTF-8" if b"\xff" in line else "line is not valid JSON", "body"))
        except InvalidEvent as exc:
            errors.append((number, str(exc), exc.field))
    return events, errors


event_pairs = st.lists(
    st.tuples(
        st.sampled_from(["org", "source", "pop", "id", "action", "event_id", "ts", "x"]),
        st.one_of(st.text(min_size=1, max_size=6), st.integers(0, 10**6)),
    ),
    min_size=4,
    max_size=9,
)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(
        st.one_of(
            st.tuples(event_pairs, st.booleans()),
            st.just(GOOD),
            st.sampled_from([b"", b"   ", b"not json", b'{"org":', b"\xff", b"[1]"]),
        ),
        max_size=12,
    )
)
def test_parse_json_lines_is_line_by_line_parsing(lines: list[Any]) -> None:
    raws = []
    for line in lines:
        if isinstance(line, tuple):
            raws.append(_dump_with_pairs(*line))
        elif isinstance(line, dict):
            raws.append(orjson.dumps(line))
        else:
            raws.append(line)
    events, errors = parse_json_lines(b"\n".join(raws))
    want_events, want_errors = _line_by_line(raws)
    assert events == want_events
    assert [(n, f) for n, _, f in errors] == [(n, f) for n, _, f in want_errors]
    assert [e.split(" (")[0] for _, e, _ in errors] == [e.split(" (")[0] for _, e, _ in want_errors]


def test_parse_json_lines_finds_a_repeated_key_among_good_lines() -> None:
    good = orjson.dumps(GOOD)
    dup = b'{"org":"acme","org":"beta","source":"s","pop":"p","id":"i","action":"a"}'
    for body in (good + b"\n" + dup + b"\n" + good, good + b"\n" + dup + b"\n" + b'{"id":"a\\"b"}'):
        events, errors = parse_json_lines(body)
        assert [n for n, _ in events] == [1, 3] or [n for n, _ in events] == [1]
        assert errors[0] == (2, "org: appears more than once", "org")


# ---------------------------------------------------------------- validators never fail otherwise

field_names = st.sampled_from(sorted(LIMITS) + ["x", "", "é"])


@settings(max_examples=500, deadline=None)
@given(obj=st.one_of(json_values, st.dictionaries(field_names, json_values, max_size=10)))
def test_parse_json_accepts_or_names_a_field_for_any_json(obj: Any) -> None:
    try:
        event = parse_json(obj)
    except InvalidEvent as exc:
        assert exc.field and exc.problem
    else:
        assert parse_entry({k.encode(): v.encode() for k, v in event.to_fields().items()}) == event


@settings(max_examples=500, deadline=None)
@given(
    fields=st.dictionaries(
        st.one_of(field_names.map(str.encode), st.binary(max_size=8)),
        st.one_of(st.binary(max_size=40), st.text(max_size=40).map(str.encode)),
        max_size=12,
    )
)
def test_parse_entry_accepts_or_names_a_field_for_any_bytes(fields: dict[bytes, bytes]) -> None:
    try:
        event = parse_entry(fields)
    except InvalidEvent as exc:
        assert exc.field and exc.problem
    else:
        assert all(len(getattr(event, name).encode()) <= LIMITS[name] for name in REQUIRED)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200))
def test_json_decoders_refuse_garbage_only_with_a_decode_error(raw: bytes) -> None:
    try:
        loads_json(raw)
    except orjson.JSONDecodeError:
        pass
    events, errors = parse_json_lines(raw)
    assert {n for n, _ in events}.isdisjoint(n for n, _, _ in errors)
