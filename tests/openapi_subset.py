"""Just enough YAML and JSON Schema to check live responses against docs/openapi.yaml.

No YAML library is installed, and none is needed: the OpenAPI file is written
in a small block-style subset (mappings, ``- `` sequences, plain/quoted
scalars, ``[a, b]`` flow lists of scalars, ``{}``), which :func:`load_yaml`
parses and rejects anything else loudly. :func:`validate` checks the schema
keywords the file uses: ``$ref`` (local), ``type`` (a name or a list),
``required``, ``properties``, ``additionalProperties``, ``items``, ``enum``,
``minimum``, ``maximum``, ``minLength``, ``maxLength``, ``anyOf``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

OPENAPI = Path(__file__).resolve().parents[1] / "docs" / "openapi.yaml"


class YamlSubsetError(ValueError):
    """The text uses YAML this loader does not support."""


def _strip_comment(line: str) -> str:
    quote: str | None = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def _scalar(text: str) -> Any:
    text = text.strip()
    if text == "{}":
        return {}
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [_scalar(part) for part in inner.split(",")] if inner else []
    if text.startswith('"'):
        return json.loads(text)
    if text.startswith("'"):
        if not text.endswith("'"):
            raise YamlSubsetError(f"unterminated quote: {text}")
        return text[1:-1].replace("''", "'")
    if text in ("true", "false"):
        return text == "true"
    if text in ("null", "~"):
        return None
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"-?\d+\.\d*(e-?\d+)?", text):
        return float(text)
    if text[:1] in "|>&*!%@`{":
        raise YamlSubsetError(f"unsupported YAML: {text}")
    return text


def _split_key(text: str) -> tuple[str, str] | None:
    """``key: value`` / ``key:`` -> (key, value text); None when ``text`` is not a mapping entry."""
    if text[:1] in "'\"":
        end = text.index(text[0], 1)
        key, rest = _scalar(text[: end + 1]), text[end + 1 :]
        if rest == ":" or rest.startswith(": "):
            return str(key), rest[1:].strip()
        return None
    m = re.match(r"^([^\s:'\"][^:]*?):(\s+(.*))?$", text)
    if m is None:
        return None
    return m.group(1), (m.group(3) or "").strip()


class _Parser:
    def __init__(self, text: str) -> None:
        self.lines: list[tuple[int, str]] = []
        for raw in text.splitlines():
            if "\t" in raw[: len(raw) - len(raw.lstrip())]:
                raise YamlSubsetError("tabs in indentation")
            line = _strip_comment(raw)
            if line.strip():
                self.lines.append((len(line) - len(line.lstrip(" ")), line.strip()))
        self.i = 0

    def block(self, indent: int) -> Any:
        ind, text = self.lines[self.i]
        if ind != indent:
            raise YamlSubsetError(f"bad indentation at {text!r}")
        if text == "-" or text.startswith("- "):
            return self.sequence(indent)
        return self.mapping(indent)

    def value_after(self, indent: int, inline: str) -> Any:
        """The value of a key or item whose inline text is ``inline`` (maybe a nested block)."""
        if inline in (">", ">-", "|", "|-"):
            # block scalar: the more-indented lines that follow, folded (>) or kept (|)
            parts: list[str] = []
            while self.i < len(self.lines) and self.lines[self.i][0] > indent:
                parts.append(self.lines[self.i][1])
                self.i += 1
            return (" " if inline.startswith(">") else "\n").join(parts)
        if inline != "":
            return _scalar(inline)
        if self.i < len(self.lines):
            ind, text = self.lines[self.i]
            if ind > indent or (ind == indent and (text == "-" or text.startswith("- "))):
                return self.block(ind)
        return None

    def mapping(self, indent: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while self.i < len(self.lines):
            ind, text = self.lines[self.i]
            if ind < indent:
                break
            if ind > indent:
                raise YamlSubsetError(f"unexpected indentation at {text!r}")
            if text.startswith("- "):
                break
            kv = _split_key(text)
            if kv is None:
                raise YamlSubsetError(f"expected 'key: value' at {text!r}")
            key, inline = kv
            if key in out:
                raise YamlSubsetError(f"duplicate key {key!r}")
            self.i += 1
            out[key] = self.value_after(indent, inline)
        return out

    def sequence(self, indent: int) -> list[Any]:
        out: list[Any] = []
        while self.i < len(self.lines):
            ind, text = self.lines[self.i]
            if ind != indent or not (text == "-" or text.startswith("- ")):
                if ind > indent:
                    raise YamlSubsetError(f"unexpected indentation at {text!r}")
                break
            rest = text[1:].strip()
            kv = _split_key(rest) if rest else None
            if kv is not None:
                # "- key: value" starts a mapping whose other keys sit at indent + 2
                self.lines[self.i] = (indent + 2, rest)
                out.append(self.mapping(indent + 2))
            else:
                self.i += 1
                out.append(self.value_after(indent, rest))
        return out


def load_yaml(text: str) -> Any:
    """Parse the supported YAML subset."""
    parser = _Parser(text)
    if not parser.lines:
        return None
    value = parser.block(parser.lines[0][0])
    if parser.i != len(parser.lines):
        raise YamlSubsetError(f"trailing content at {parser.lines[parser.i][1]!r}")
    return value


def load_openapi(path: Path = OPENAPI) -> dict[str, Any]:
    """docs/openapi.yaml as a dict."""
    doc = load_yaml(path.read_text(encoding="utf-8"))
    assert isinstance(doc, dict) and str(doc.get("openapi", "")).startswith("3."), "not an OpenAPI 3 document"
    return doc


# ---------------------------------------------------------------- schema checking

_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
_KNOWN = {
    "$ref",
    "type",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "anyOf",
    "description",
    "example",
    "format",
    "title",
}


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Follow local ``$ref`` chains."""
    while "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"only local $ref supported: {ref}")
        node: Any = doc
        for part in ref[2:].split("/"):
            node = node[part]
        schema = node
    return schema


def validate(doc: dict[str, Any], schema: dict[str, Any], value: Any, path: str = "$") -> list[str]:
    """Every violation of ``schema`` by ``value`` (empty list: valid)."""
    schema = resolve(doc, schema)
    unknown = set(schema) - _KNOWN
    if unknown:
        return [f"{path}: schema uses unsupported keywords {sorted(unknown)}"]
    errors: list[str] = []
    if "anyOf" in schema:
        branches = [validate(doc, branch, value, path) for branch in schema["anyOf"]]
        if all(branches):
            return [f"{path}: matches no anyOf branch: {branches}"]
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(_TYPES[t](value) for t in names):
            return [f"{path}: {value!r:.80} is not of type {types}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r:.80} not in {schema['enum']}")
    if "minimum" in schema and _TYPES["number"](value) and value < schema["minimum"]:
        errors.append(f"{path}: {value} < minimum {schema['minimum']}")
    if "maximum" in schema and _TYPES["number"](value) and value > schema["maximum"]:
        errors.append(f"{path}: {value} > maximum {schema['maximum']}")
    if "minLength" in schema and isinstance(value, str) and len(value) < schema["minLength"]:
        errors.append(f"{path}: shorter than minLength {schema['minLength']}")
    if "maxLength" in schema and isinstance(value, str) and len(value) > schema["maxLength"]:
        errors.append(f"{path}: longer than maxLength {schema['maxLength']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}: missing required {name!r}")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in props:
                errors += validate(doc, props[name], item, f"{path}.{name}")
            elif extra is False:
                errors.append(f"{path}: unexpected property {name!r}")
            elif isinstance(extra, dict):
                errors += validate(doc, extra, item, f"{path}.{name}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += validate(doc, schema["items"], item, f"{path}[{i}]")
    return errors


def response_schema(doc: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any]:
    """The documented JSON schema of one response (KeyError when undocumented)."""
    op = doc["paths"][path][method.lower()]
    resp = resolve(doc, op["responses"][str(status)])
    return dict(resp["content"]["application/json"]["schema"])


def check_response(doc: dict[str, Any], path: str, method: str, status: int, body: Any) -> list[str]:
    """Violations of the documented schema by a live response (undocumented status: one error)."""
    try:
        schema = response_schema(doc, path, method, status)
    except KeyError as exc:
        return [f"{method} {path} -> {status} is not documented ({exc})"]
    return validate(doc, schema, body)
