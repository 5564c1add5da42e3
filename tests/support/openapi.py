"""Check live responses against docs/openapi.yaml with maintained libraries.

PyYAML reads the document; jsonschema (Draft 2020-12, the dialect of OpenAPI 3.1)
validates a body against the documented schema, with every ``$ref`` resolved by
``referencing`` against the whole document registered under one URI.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, cast

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
_URI = "urn:binormal:openapi"  # the base every "#/components/..." reference resolves against


def load_openapi(path: Path = OPENAPI) -> dict[str, Any]:
    """docs/openapi.yaml as a dict."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(doc, dict) and str(doc.get("openapi", "")).startswith("3."), "not an OpenAPI 3 document"
    return doc


def _registry(doc: dict[str, Any]) -> Registry[Any]:
    return cast("Registry[Any]", Registry().with_resource(_URI, DRAFT202012.create_resource(doc)))


def _escape(part: str) -> str:
    """One JSON Pointer segment (RFC 6901: ``~`` -> ``~0``, ``/`` -> ``~1``)."""
    return part.replace("~", "~0").replace("/", "~1")


def _schema_pointer(doc: dict[str, Any], path: str, method: str, status: int) -> str:
    """JSON Pointer of one response's JSON schema (KeyError when undocumented)."""
    pointer = f"/paths/{_escape(path)}/{method.lower()}/responses/{status}"
    resp = doc["paths"][path][method.lower()]["responses"][str(status)]
    resolver = _registry(doc).resolver(base_uri=_URI)
    while "$ref" in resp:  # a response object: followed here, it is not a JSON schema
        pointer = resp["$ref"].removeprefix("#")
        resp = resolver.lookup(resp["$ref"]).contents
    resp["content"]["application/json"]["schema"]  # noqa: B018 - KeyError when not documented as JSON
    return f"{pointer}/content/{_escape('application/json')}/schema"


def response_schema(doc: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any]:
    """The documented JSON schema of one response, as a ``$ref`` into the document (KeyError when undocumented)."""
    return {"$ref": f"{_URI}#{_schema_pointer(doc, path, method, status)}"}


def check_response(doc: dict[str, Any], path: str, method: str, status: int, body: Any) -> list[str]:
    """Violations of the documented schema by a live response (undocumented status: one error)."""
    try:
        schema = response_schema(doc, path, method, status)
    except KeyError as exc:
        return [f"{method} {path} -> {status} is not documented ({exc})"]
    validator = Draft202012Validator(schema, registry=_registry(doc))
    return [
        f"${''.join(f'.{p}' for p in err.absolute_path)}: {err.message:.300}"
        for err in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path)))
    ]


@functools.cache
def _spec() -> dict[str, Any]:
    return load_openapi()


def assert_documented(path: str, method: str, status: int, body: Any) -> None:
    """Fail the test unless docs/openapi.yaml documents this live response (status and body)."""
    problems = check_response(_spec(), path, method, status, body)
    assert not problems, problems
