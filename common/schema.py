"""The event: its fields, limits and validation (stream entries and JSON alike).

This is the public contract of docs/stream.md. Validation never guesses: each
failure raises :class:`InvalidEvent` naming the field and the problem.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from binormal.common.keys import Scope

SCHEMA_VERSION = "1"
LIMITS: dict[str, int] = {
    "org": 256,
    "source": 256,
    "pop": 256,
    "id": 1024,
    "action": 1024,
    # optional fields
    "event_id": 256,
    "rid": 256,
    "reply_to": 256,
    "ts": 32,
    "id_ttl": 10,
    "v": 8,
}
REQUIRED = ("org", "source", "pop", "id", "action")
OPTIONAL = ("event_id", "id_ttl", "rid", "reply_to", "ts", "v")
# Fields a JSON producer may send (reply_to/rid are set by the web tier only).
JSON_FIELDS = frozenset(REQUIRED + ("event_id", "id_ttl", "ts"))
ID_TTL_MAX = 10 ** LIMITS["id_ttl"] - 1


def action_cap_reason(actions: int) -> str:
    """Why an event with an action new to a full scope is refused (dead letter and HTTP error alike)."""
    return f"action cap: scope already has {actions} distinct actions (BINORMAL_MAX_ACTIONS)"


class InvalidEvent(ValueError):
    """An event that cannot be counted; ``field`` names the culprit."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Event:
    """One validated discrete event."""

    org: str
    source: str
    pop: str
    id: str
    action: str
    ts: int | None = None
    event_id: str | None = None
    rid: str | None = None
    reply_to: str | None = None
    id_ttl: int | None = None  # seconds the event_id must be remembered (capped by the worker)

    @property
    def scope(self) -> Scope:
        """The (org, source, pop) scope of the event."""
        return Scope(self.org, self.source, self.pop)

    def to_fields(self) -> dict[str, str]:
        """Stream entry fields (only the optional ones that are set)."""
        out = {"org": self.org, "source": self.source, "pop": self.pop, "id": self.id, "action": self.action}
        if self.ts is not None:
            out["ts"] = str(self.ts)
        for name in ("event_id", "rid", "reply_to"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.id_ttl is not None:
            out["id_ttl"] = str(self.id_ttl)
        return out


def _check_text(name: str, value: str) -> str:
    if value == "":
        raise InvalidEvent(name, "must not be empty")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        # A lone surrogate (json.loads accepts "\ud800") has no UTF-8 form.
        raise InvalidEvent(name, "is not valid UTF-8 (lone surrogate)") from None
    if size > LIMITS[name]:
        raise InvalidEvent(name, f"is {size} bytes, over the limit of {LIMITS[name]}")
    return value


TS_MAX = 2**63 - 1  # results carry ts as a JSON integer; orjson stops at 64 bits


def _parse_ts(raw: str) -> int:
    # Plain ASCII digits only: int() would also take " 7", "1_000" or "١٢".
    if raw.startswith("-") and raw[1:].isascii() and raw[1:].isdigit():
        raise InvalidEvent("ts", "must not be negative")
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidEvent("ts", "must be an integer (milliseconds since the Unix epoch)")
    ts = int(raw)
    if ts > TS_MAX:
        raise InvalidEvent("ts", f"must be at most {TS_MAX}")
    return ts


def parse_entry(fields: Mapping[bytes, bytes]) -> Event:
    """Validate a raw stream entry (bytes field names and values).

    Sizes are checked on the raw bytes, before decoding, so an oversized value
    costs nothing more than its length.
    """
    values: dict[str, str] = {}
    for raw_name, raw_value in fields.items():
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidEvent(repr(raw_name)[:80], "field name is not valid UTF-8") from None
        limit = LIMITS.get(name)
        if limit is None:
            raise InvalidEvent(name[:80] or '""', "unknown field")
        size = len(raw_value)
        if size == 0:
            raise InvalidEvent(name, "must not be empty")
        if size > limit:
            raise InvalidEvent(name, f"is {size} bytes, over the limit of {limit}")
        try:
            values[name] = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidEvent(name, "is not valid UTF-8") from None
    for name in REQUIRED:
        if name not in values:
            raise InvalidEvent(name, "is missing")
    if "v" in values and values["v"] != SCHEMA_VERSION:
        raise InvalidEvent("v", f"unsupported schema version (this worker speaks {SCHEMA_VERSION})")
    ts = _parse_ts(values["ts"]) if "ts" in values else None
    id_ttl = _parse_id_ttl(values["id_ttl"], "event_id" in values) if "id_ttl" in values else None
    return Event(
        org=values["org"],
        source=values["source"],
        pop=values["pop"],
        id=values["id"],
        action=values["action"],
        ts=ts,
        event_id=values.get("event_id"),
        rid=values.get("rid"),
        reply_to=values.get("reply_to"),
        id_ttl=id_ttl,
    )


def _parse_id_ttl(raw: str, has_event_id: bool) -> int:
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidEvent("id_ttl", f"must be a positive integer (seconds) up to {ID_TTL_MAX}")
    return _check_id_ttl(int(raw), has_event_id)


def _check_id_ttl(seconds: int, has_event_id: bool) -> int:
    """The rule both entry and JSON ``id_ttl`` follow: 1..ID_TTL_MAX, and only with an event_id."""
    if not 1 <= seconds <= ID_TTL_MAX:
        raise InvalidEvent("id_ttl", f"must be a positive integer (seconds) up to {ID_TTL_MAX}")
    if not has_event_id:
        raise InvalidEvent("id_ttl", "needs an event_id (it says how long that id is remembered)")
    return seconds


class DuplicateKeys(dict[str, Any]):
    """A JSON object in which the key ``duplicate`` appeared more than once (values: the last, like orjson)."""

    duplicate: str = ""


def loads_json(raw: bytes) -> Any:
    """``orjson.loads(raw)``, except that an object with a repeated key comes back as :class:`DuplicateKeys`.

    orjson silently keeps the last of repeated keys; :func:`_no_repeats` proves
    cheaply that there was none, and only when it cannot does the exact,
    slower parse with ``object_pairs_hook`` run. Raises
    ``orjson.JSONDecodeError`` for what orjson refuses.
    """
    obj = orjson.loads(raw)
    return obj if _no_repeats(raw, obj) else _loads_exact(raw)


def parse_json_lines(body: bytes) -> tuple[list[tuple[int, Event]], list[tuple[int, str, str]]]:
    """NDJSON events: ``([(line, Event)], [(line, error, field)])``, blank lines skipped but numbered.

    Each line is decoded with orjson and validated with :func:`parse_json`;
    a line that is not JSON is an error of field ``body``, and so is a line
    with a repeated key (field: that key). The repeat check costs O(1) per
    line: a valid event object written without escapes holds 2 ``"`` per key
    and per string value, i.e. ``4 * keys - 2 * integer fields``; when the
    body has no backslash, its ``"`` minus those of the refused lines must
    add up to exactly that over the accepted lines, and a repeated key (whose
    pair the parse dropped) would leave more. Only when the sum is off, or
    the body has a backslash, is each accepted line checked on its own.
    """
    events: list[tuple[int, Event]] = []
    errors: list[tuple[int, str, str]] = []
    expected = 0
    refused_quotes = 0
    for number, raw in enumerate(body.split(b"\n"), 1):
        line = raw.strip()
        if not line:
            continue
        try:
            obj = orjson.loads(line)
            events.append((number, parse_json(obj)))
        except orjson.JSONDecodeError:
            errors.append((number, _not_json(line), "body"))
            refused_quotes += line.count(b'"')
            continue
        except InvalidEvent as exc:
            problem = exc
            if not _no_repeats(line, obj):  # a repeated key is the error to report, as /discrete does
                exact = _loads_exact(line)
                if isinstance(exact, DuplicateKeys):
                    problem = _repeated(exact)
            errors.append((number, str(problem), problem.field))
            refused_quotes += line.count(b'"')
            continue
        expected += 4 * len(obj) - 2 * (("ts" in obj) + ("id_ttl" in obj))
    if b"\\" in body or body.count(b'"') - refused_quotes != expected:
        events, errors = _recheck_lines(body, events, errors)
    return events, errors


def _recheck_lines(
    body: bytes, events: list[tuple[int, Event]], errors: list[tuple[int, str, str]]
) -> tuple[list[tuple[int, Event]], list[tuple[int, str, str]]]:
    """Each accepted line checked exactly for repeated keys; errors back in line order."""
    lines = body.split(b"\n")
    kept: list[tuple[int, Event]] = []
    for number, event in events:
        line = lines[number - 1].strip()
        obj = orjson.loads(line)
        if not _no_repeats(line, obj):
            obj = _loads_exact(line)
            if isinstance(obj, DuplicateKeys):
                exc = _repeated(obj)
                errors.append((number, str(exc), exc.field))
                continue
        kept.append((number, event))
    errors.sort(key=lambda e: e[0])
    return kept, errors


def _repeated(obj: DuplicateKeys) -> InvalidEvent:
    return InvalidEvent(obj.duplicate[:80] or '""', "appears more than once")


def _not_json(line: bytes) -> str:
    """Why orjson refused a line: not UTF-8, or not JSON."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"line is not valid UTF-8 (byte {exc.start})"
    return "line is not valid JSON"


def _no_repeats(raw: bytes, value: Any) -> bool:
    """True when ``raw``, which orjson decoded to ``value``, cannot have held a repeated key.

    Each JSON string (key or value) is written between two ``"``, and a quote
    inside a string as ``\\"`` (orjson's spelling too) unless ``raw`` uses a
    ``\\u`` escape. So without ``\\u``, ``raw`` holds exactly as many ``"`` as
    ``value`` re-encoded, unless the parse dropped a repeated key (and its
    value), which leaves ``raw`` with more. False means "maybe": check exactly.
    """
    if type(value) is not dict and type(value) is not list:
        return True
    return b"\\u" not in raw and raw.count(b'"') == orjson.dumps(value).count(b'"')


def _loads_exact(raw: bytes) -> Any:
    try:
        return json.loads(raw, object_pairs_hook=_pairs)
    except RecursionError:  # orjson takes up to 1024 levels, json fewer
        raise orjson.JSONDecodeError("JSON nested too deeply", "", 0) from None


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    out = DuplicateKeys(obj)
    for key, _ in pairs:
        if key in seen:
            out.duplicate = key
            break
        seen.add(key)
    return out


def parse_json(obj: Any, *, header_event_id: bool = False) -> Event:
    """Validate a decoded JSON event from an HTTP producer (decode with :func:`loads_json`).

    Unknown fields are rejected (a typo such as ``acton`` must not pass silently),
    and so are repeated keys (``{"org": "a", "org": "b"}``). ``header_event_id``:
    the request carries its event id in a header (``Idempotency-Key``), so an
    ``id_ttl`` without a body ``event_id`` is fine.
    """
    if not isinstance(obj, dict):
        raise InvalidEvent("body", f"must be a JSON object, not {_json_type(obj)}")
    if isinstance(obj, DuplicateKeys):
        raise _repeated(obj)
    for name in obj:
        if name not in JSON_FIELDS:
            raise InvalidEvent(str(name)[:80] or '""', "unknown field")
    values: dict[str, str] = {}
    for name in REQUIRED + ("event_id",):
        if name not in obj:
            if name in REQUIRED:
                raise InvalidEvent(name, "is missing")
            continue
        value = obj[name]
        if not isinstance(value, str):
            raise InvalidEvent(name, f"must be a string, not {_json_type(value)}")
        values[name] = _check_text(name, value)
    ts: int | None = None
    if "ts" in obj:
        raw = obj["ts"]
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise InvalidEvent("ts", f"must be an integer, not {_json_type(raw)}")
        ts = _parse_ts(str(raw))
    id_ttl: int | None = None
    if "id_ttl" in obj:
        raw = obj["id_ttl"]
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise InvalidEvent("id_ttl", f"must be an integer, not {_json_type(raw)}")
        id_ttl = _check_id_ttl(raw, header_event_id or "event_id" in values)
    return Event(
        org=values["org"],
        source=values["source"],
        pop=values["pop"],
        id=values["id"],
        action=values["action"],
        ts=ts,
        event_id=values.get("event_id"),
        id_ttl=id_ttl,
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "a string" if isinstance(value, str) else type(value).__name__
