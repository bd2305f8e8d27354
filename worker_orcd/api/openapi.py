"""The OpenAPI document, made from the models and the parts no model declares.

    python -m worker_orcd.api.openapi --write   # specs/openapi.json and worker_orcd/http/openapi.json
    python -m worker_orcd.api.openapi --check   # exit 1 when a committed copy differs

`openapi_parts.json` holds the paths, responses, headers and the schemas no
declaration gives yet; each string `<worker_orcd.api.module.Name>` in it stands for
that declaration's schema (a pydantic model, or a TypedDict the worker answers
with, under components.schemas by the slot's name) or, in a list of parameters,
for the query parameters a model declares. The worker serves the packaged copy
(GET /openapi.json); tests/unit/test_openapi.py holds both copies to this.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter

PARTS = Path(__file__).with_name("openapi_parts.json")
PACKAGED = Path(__file__).parents[1] / "http" / "openapi.json"
SPEC = Path(__file__).parents[2] / "specs" / "openapi.json"  # in a source checkout
REF = "#/components/schemas/{model}"
NULL = {"type": "null"}
# OpenAI's rule, which JSON Schema says with if/then: stream_options only when streaming.
STREAM_OPTIONS_RULE = {
    "if": {"not": {"required": ["stream"], "properties": {"stream": {"const": True}}}},
    "then": {"properties": {"stream_options": {"type": "null"}}},
}
WITH_STREAM_RULE = ("OpenAIChatRequest", "OpenAICompletionRequest")


def _declared(marker: str) -> Any:
    module, _, name = marker.strip("<>").rpartition(".")
    return getattr(importlib.import_module(module), name)


def _model(marker: str) -> type[BaseModel]:
    model = _declared(marker)
    assert isinstance(model, type) and issubclass(model, BaseModel), marker
    return model


def _is_declaration(value: Any) -> bool:
    """A model, or a TypedDict (a record the worker answers with): each has a schema of its own."""
    return isinstance(value, type) and (issubclass(value, BaseModel) or hasattr(value, "__required_keys__"))


def _is_marker(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("<worker_orcd.")


def _allows_null(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return (
        kind == "null"
        or (isinstance(kind, list) and "null" in kind)
        or None in schema.get("enum", ())
        or any(_allows_null(s) for s in schema.get("oneOf", schema.get("anyOf", ())))
    )


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema`, or null, in the document's own way of saying so."""
    if _allows_null(schema):
        return schema
    kind = schema.get("type")
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        rest = {k: v for k, v in schema.items() if k not in ("type", "enum", "const")}
        return {"enum": [*values, None], **rest}
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    outer: dict[str, Any] = {k: schema[k] for k in ("description", "default") if k in schema}
    inner = {k: v for k, v in schema.items() if k not in outer}
    return {"oneOf": [NULL, inner], **outer}


def _tidy(node: Any, absent_is_null: bool = True) -> Any:
    """pydantic's JSON Schema as the document writes it: no titles, `null` folded into the type."""
    if isinstance(node, list):
        return [_tidy(item, absent_is_null) for item in node]
    if not isinstance(node, dict):
        return node
    node = {k: _tidy(v, absent_is_null) for k, v in node.items() if k != "title" or not isinstance(v, str)}
    if node.get("default", 0) is None:
        del node["default"]
    if isinstance(node.get("description"), str):
        node["description"] = " ".join(node["description"].split())
    options = node.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and NULL in options:
        (other,) = [o for o in options if o != NULL]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        node = _or_null({**other, **rest})
    if absent_is_null and node.get("type") == "object" and "properties" in node:
        # `null` for an optional field means its default (worker_orcd.api.requests).
        required = set(node.get("required", ()))
        node["properties"] = {
            name: prop if name in required else _or_null(prop) for name, prop in node["properties"].items()
        }
    return node


def _schemas(models: list[type], absent_is_null: bool = True) -> dict[str, Any]:
    """`absent_is_null`: a request body's optional field may be sent as null; a record's is
    left out, never null."""
    adapters: list[tuple[type, Literal["validation"], TypeAdapter[Any]]] = [
        (m, "validation", TypeAdapter(m)) for m in models
    ]
    _, top = TypeAdapter.json_schemas(adapters, ref_template=REF)
    out = {}
    for name, schema in top.get("$defs", {}).items():
        out[name] = _tidy(schema, absent_is_null)
        if name in WITH_STREAM_RULE:
            out[name].update(STREAM_OPTIONS_RULE)
    return out


def _renamed(schemas: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """The schemas under their slots' names, and every reference to them so too."""
    refs = {REF.format(model=old): REF.format(model=new) for old, new in names.items() if old != new}

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if isinstance(node, dict):
            return {k: refs.get(v, v) if k == "$ref" else walk(v) for k, v in node.items()}
        return node

    return {names.get(name, name): walk(schema) for name, schema in schemas.items()}


def _query_parameters(model: type[BaseModel], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    schema = schemas.pop(model.__name__)
    out = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        description = prop.pop("description", None)
        if "oneOf" in prop and NULL in prop["oneOf"]:  # a query has no null: absent is the default
            (prop,) = [o for o in prop["oneOf"] if o != NULL]
        elif isinstance(prop.get("type"), list):
            prop["type"] = next(t for t in prop["type"] if t != "null")
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": name in schema.get("required", ())}
        parameter["schema"] = prop
        if description:
            parameter["description"] = description
        out.append(parameter)
    return out


def document() -> dict[str, Any]:
    parts = json.loads(PARTS.read_text())
    parts.pop("x-generated", None)
    slots = parts["components"]["schemas"]
    queries = [
        _model(p)
        for path in parts["paths"].values()
        for operation in path.values()
        for p in operation.get("parameters", ())
        if _is_marker(p)
    ]
    # A type alias (JobId, …) has its schema made where a model uses it.
    declared = [_declared(marker) for marker in slots.values() if _is_marker(marker)]
    bodies = [m for m in declared if isinstance(m, type) and issubclass(m, BaseModel)]
    answers = [m for m in declared if _is_declaration(m) and m not in bodies]  # TypedDicts
    # A slot may name its declaration's schema otherwise (`Job` for JobRecord, …).
    names = {_declared(v).__name__: name for name, v in slots.items() if _is_marker(v)}
    generated = _renamed({**_schemas(answers, absent_is_null=False), **_schemas([*bodies, *queries])}, names)
    for path in parts["paths"].values():
        for operation in path.values():
            if "parameters" in operation:
                operation["parameters"] = [
                    q
                    for p in operation["parameters"]
                    for q in (_query_parameters(_model(p), generated) if _is_marker(p) else [p])
                ]
    schemas = {name: generated.pop(name) if _is_marker(value) else value for name, value in slots.items()}
    schemas.update(generated)  # the models' own parts (a health record's engine, …)
    parts["components"]["schemas"] = schemas
    return parts


def render() -> str:
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="write both committed copies")
    parser.add_argument("--check", action="store_true", help="exit 1 when a committed copy differs")
    args = parser.parse_args(argv)
    text = render()
    copies = [PACKAGED] + ([SPEC] if SPEC.parent.is_dir() else [])
    if args.write:
        for path in copies:
            path.write_text(text)
        return 0
    if args.check:
        stale = [str(p) for p in copies if p.read_text() != text]
        for name in stale:
            print(f"{name} differs from the models: python -m worker_orcd.api.openapi --write", file=sys.stderr)
        return 1 if stale else 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
