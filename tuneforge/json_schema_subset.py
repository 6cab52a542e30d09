"""The JSON Schema keywords constrained decoding supports; torch-free, so the API refuses the rest up front.

    problems = unsupported_keywords(schema)    # ["properties.when.format: 'date-time'", "not", ...]

What is supported is what tuneforge/constrained.py enforces token by token (with llguidance) and what
tests/unit/test_constrained.py checks on random schemas: objects with properties and `required`,
`additionalProperties` false or true, arrays with `items` and item counts, strings (lengths, `pattern`),
integers and numbers (bounds), booleans, null, `enum`, `const`, `anyOf`, and local `$ref` into `$defs`.
Keywords that only annotate (title, description, examples, default) are accepted. Anything else is named
in a 400 rather than silently left unenforced: an answer that "mostly" follows the schema is the bug
constrained decoding exists to prevent.
"""

from __future__ import annotations

from typing import Any

ANNOTATIONS = {"title", "description", "examples", "default", "$comment", "$schema", "$id"}
STRUCTURE = {"type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf", "$ref"}
BOUNDS = {"minItems", "maxItems", "minLength", "maxLength", "pattern", "minimum", "maximum"}
BOUNDS |= {"exclusiveMinimum", "exclusiveMaximum"}
DEFINITIONS = {"$defs", "definitions"}
SUPPORTED = ANNOTATIONS | STRUCTURE | BOUNDS | DEFINITIONS
TYPES = {"object", "array", "string", "integer", "number", "boolean", "null"}
MAX_SCHEMA_DEPTH = 32


def unsupported_keywords(schema: Any, path: str = "") -> list[str]:
    """Every place in `schema` that constrained decoding cannot enforce, as 'path: what'."""
    where = path or "schema"
    if isinstance(schema, bool):
        return []
    if not isinstance(schema, dict):
        return [f"{where}: a schema must be an object"]
    if path.count(".") > MAX_SCHEMA_DEPTH:
        return [f"{where}: nested deeper than {MAX_SCHEMA_DEPTH} levels"]
    problems = [f"{path + '.' if path else ''}{key}" for key in schema if key not in SUPPORTED]
    types = schema.get("type")
    for name in types if isinstance(types, list) else [types] if types is not None else []:
        if name not in TYPES:
            problems.append(f"{where}.type: {name!r}")
    ref = schema.get("$ref")
    if ref is not None and not (isinstance(ref, str) and ref.startswith(("#/$defs/", "#/definitions/", "#"))):
        problems.append(f"{where}.$ref: {ref!r} (only local references)")
    prefix = path + "." if path else ""
    for name, sub in (schema.get("properties") or {}).items() if isinstance(schema.get("properties"), dict) else ():
        problems += unsupported_keywords(sub, f"{prefix}properties.{name}")
    if isinstance(schema.get("items"), list):
        problems.append(f"{prefix}items: a list (tuple validation)")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            problems += unsupported_keywords(schema[key], f"{prefix}{key}")
    for index, sub in enumerate(schema.get("anyOf") or []):
        problems += unsupported_keywords(sub, f"{prefix}anyOf[{index}]")
    for key in DEFINITIONS:
        for name, sub in (schema.get(key) or {}).items() if isinstance(schema.get(key), dict) else ():
            problems += unsupported_keywords(sub, f"{prefix}{key}.{name}")
    return problems
