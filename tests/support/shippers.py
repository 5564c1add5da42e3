"""The request bodies of log shippers' HTTP outputs, built byte for byte as docs/integrations.md describes.

Each builder takes the records a shipper holds after the transform of
docs/integrations.md (Vector ``remap``, Fluent Bit ``record_modifier``,
Logstash ``mutate``/``uuid``) and returns what that shipper's HTTP output
puts on the wire: the framing of its format option, its Content-Type and,
when it compresses, the gzip body with ``Content-Encoding: gzip``.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

JSON = "application/json"
NDJSON = "application/x-ndjson"


@dataclass(frozen=True)
class Shipped:
    """One request as a shipper sends it."""

    shipper: str
    body: bytes  # on the wire (compressed when the shipper compresses)
    headers: dict[str, str]


def _dump(record: dict[str, Any], sort: bool = False) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS if sort else 0)


def _ship(shipper: str, raw: bytes, ctype: str, compress: bool, **extra: str) -> Shipped:
    headers = {"Content-Type": ctype, **extra}
    if compress:
        headers["Content-Encoding"] = "gzip"
        raw = gzip.compress(raw)
    return Shipped(shipper, raw, headers)


def vector_json(records: Sequence[dict[str, Any]], compress: bool = True) -> Shipped:
    """Vector ``http`` sink, ``encoding.codec = "json"`` (default framing): ``[r1,r2]``, application/json.

    Vector serialises a log event with its keys sorted (its map is ordered).
    """
    raw = b"[" + b",".join(_dump(r, sort=True) for r in records) + b"]"
    return _ship("vector json", raw, JSON, compress)


def vector_ndjson(records: Sequence[dict[str, Any]], compress: bool = True) -> Shipped:
    """Vector ``http`` sink, codec json with ``framing.method = "newline_delimited"``: no final newline."""
    raw = b"\n".join(_dump(r, sort=True) for r in records)  # Vector drops the trailing newline
    return _ship("vector ndjson", raw, NDJSON, compress)


def fluentbit_json(records: Sequence[dict[str, Any]], compress: bool = True) -> Shipped:
    """Fluent Bit ``http`` output, ``format json``: one JSON array, application/json."""
    raw = b"[" + b",".join(_dump(r) for r in records) + b"]"
    return _ship("fluent-bit json", raw, JSON, compress, **{"User-Agent": "Fluent-Bit"})


def fluentbit_json_lines(records: Sequence[dict[str, Any]], compress: bool = True) -> Shipped:
    """Fluent Bit ``http`` output, ``format json_lines``: a newline after every record, application/x-ndjson."""
    raw = b"".join(_dump(r) + b"\n" for r in records)
    return _ship("fluent-bit json_lines", raw, NDJSON, compress, **{"User-Agent": "Fluent-Bit"})


def logstash_json_batch(records: Sequence[dict[str, Any]], compress: bool = True) -> Shipped:
    """Logstash ``http`` output, ``format => "json_batch"`` (``http_compression => true``): one JSON array."""
    raw = b"[" + b",".join(_dump(r) for r in records) + b"]"
    return _ship("logstash json_batch", raw, JSON, compress)


SHIPPERS: dict[str, Callable[..., Shipped]] = {
    "vector-json": vector_json,
    "vector-ndjson": vector_ndjson,
    "fluentbit-json": fluentbit_json,
    "fluentbit-json_lines": fluentbit_json_lines,
    "logstash-json_batch": logstash_json_batch,
}


def access_records(shipper: str, n: int, event_id: bool = True) -> list[dict[str, Any]]:
    """``n`` records of a web access log after the shipper's transform ({org, source, pop, id, action} + event_id)."""
    out = []
    for i in range(n):
        rec: dict[str, Any] = {
            "org": "acme",
            "source": shipper,
            "pop": "login" if i % 3 else "api",
            "id": f"10.0.0.{i % 7}",
            "action": f"{'GET' if i % 2 else 'POST'} /p{i % 4}",
        }
        if event_id:
            rec["event_id"] = f"{shipper}-{i:08d}-0000-4000-8000-000000000000"
        if shipper.startswith("vector"):
            rec["ts"] = 1_764_547_200_000 + i  # the remap's to_unix_timestamp(..., unit: "milliseconds")
        out.append(rec)
    return out
