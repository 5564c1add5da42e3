"""tests/support/openapi.py: PyYAML + jsonschema read docs/openapi.yaml and judge bodies by it."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from tests.support.openapi import check_response, load_openapi

DOC = load_openapi()


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_ref_of_the_document_resolves() -> None:
    resolver = Registry().with_resource("urn:doc", DRAFT202012.create_resource(DOC)).resolver(base_uri="urn:doc")
    refs = set(_refs(DOC))
    assert len(refs) > 20
    for ref in refs:
        assert resolver.lookup(ref).contents is not None, ref


def test_every_documented_json_response_can_be_checked() -> None:
    """Every (path, method, status) with a JSON body builds a validator whose $refs resolve."""
    checked = 0
    for path, ops in DOC["paths"].items():
        for method, op in ops.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            for status in op["responses"]:
                problems = check_response(DOC, path, method, int(status), object())
                if problems and "is not documented" in problems[0]:
                    continue  # no JSON body documented (HTML, text, websocket)
                assert problems, (path, method, status)  # object() fits no JSON schema
                checked += 1
    assert checked > 50


def test_a_conforming_body_passes() -> None:
    assert check_response(DOC, "/healthz", "get", 200, {"status": "alive"}) == []
    assert check_response(DOC, "/healthz", "GET", 200, {"status": "failing", "reason": "x"}) == []


def test_violations_are_reported_with_their_place() -> None:
    assert check_response(DOC, "/healthz", "get", 200, {"status": "ok"}) == [
        "$.status: 'ok' is not one of ['alive', 'failing']"
    ]
    missing = check_response(DOC, "/healthz", "get", 200, {})
    assert missing == ["$: 'status' is a required property"]
    assert check_response(DOC, "/healthz", "get", 200, {"status": "alive", "reason": 3}) == [
        "$.reason: 3 is not of type 'string'"
    ]


def test_an_undocumented_status_is_one_problem() -> None:
    got = check_response(DOC, "/healthz", "get", 299, {"status": "alive"})
    assert len(got) == 1 and "not documented" in got[0]
    assert "not documented" in check_response(DOC, "/nowhere", "get", 200, {})[0]


def test_refs_through_components_responses_are_followed() -> None:
    """A 4xx documented as ``$ref: '#/components/responses/...'`` checks its Error body."""
    assert check_response(DOC, "/readyz", "get", 414, {}) != []


def test_every_component_schema_is_valid_json_schema() -> None:
    """The checks can only be as good as the schemas: each one is valid Draft 2020-12."""
    schemas = DOC["components"]["schemas"]
    assert len(schemas) > 5
    for name, schema in schemas.items():
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise AssertionError(f"components/schemas/{name}: {exc.message}") from exc
