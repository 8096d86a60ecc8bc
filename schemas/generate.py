"""Write the published JSON Schema files (``schemas/json/*.json``) from the msgspec models.

    python -m schemas.generate            # rewrite the files
    python -m schemas.generate --check    # exit 1 and name the stale files (CI: tests/unit/schemas)

The models in :mod:`schemas.models` are the one declaration of every contract: msgspec derives
each field's schema (types, lengths, bounds, enums, required fields), ``WireType`` fields add
their own fragment, and a model's ``__schema__`` adds its description and cross-field rules.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from schemas import models

JSON_DIR = Path(__file__).resolve().parent / "json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _hook(tp: Any) -> dict[str, Any]:
    if isinstance(tp, type) and issubclass(tp, models.WireType):
        return tp.json_schema()
    raise NotImplementedError(f"no JSON Schema for {tp!r}")


def _tidy(node: Any) -> Any:
    """Drop what msgspec adds but the contract does not mean: ``default: null`` of optional
    fields (null is never valid on the wire) and per-struct titles."""
    if isinstance(node, dict):
        return {k: _tidy(v) for k, v in node.items() if not (k == "default" and v is None)}
    if isinstance(node, list):
        return [_tidy(v) for v in node]
    return node


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _struct_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    (ref,), components = msgspec.json.schema_components([cls], schema_hook=_hook, ref_template="#/$defs/{name}")
    components = {name: _tidy(schema) for name, schema in components.items()}
    for name, schema in components.items():
        struct = getattr(models, name, None)
        if struct is not None and struct.__struct_config__.forbid_unknown_fields:
            schema["additionalProperties"] = False
        schema.pop("title", None)  # the class name; the contract's title is set once at the top
        schema.pop("description", None)  # docstrings are Python documentation; __schema__ says it for the wire
        _merge(schema, getattr(struct, "__schema__", {}))
    root = components.pop(cls.__name__)
    defs.update(components)
    return root


def struct_schema(cls: type) -> dict[str, Any]:
    """The JSON Schema of one struct, nested structs inlined (for a WireType's fragment)."""
    defs: dict[str, Any] = {}
    root = _struct_schema(cls, defs)
    text = json.dumps(root)
    for name, schema in defs.items():
        text = text.replace(json.dumps({"$ref": f"#/$defs/{name}"}), json.dumps(schema))
    return json.loads(text)


def contract_schema(name: str) -> dict[str, Any]:
    """The published JSON Schema of contract ``name`` (a key of ``models.CONTRACTS``)."""
    cls = models.CONTRACTS[name]
    defs: dict[str, Any] = {}
    root = _struct_schema(cls, defs)
    out = {
        "$schema": DIALECT,
        "$id": f"urn:streamrec:schema:{name}:v{models.SCHEMA_VERSION}",
        "title": cls.__name__,
        **root,
    }
    if defs:
        out["$defs"] = defs
    return out


def render(name: str) -> str:
    return json.dumps(contract_schema(name), indent=2, ensure_ascii=False) + "\n"


def stale_files() -> list[str]:
    """Checked-in schema files that differ from what the models generate."""
    out = []
    for name, filename in models.JSON_SCHEMA_FILES.items():
        path = JSON_DIR / filename
        if not path.is_file() or path.read_text(encoding="utf-8") != render(name):
            out.append(filename)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generate schemas/json/*.json from the msgspec models.")
    ap.add_argument("--check", action="store_true", help="only report stale files (exit 1 if any)")
    args = ap.parse_args(argv)
    if args.check:
        stale = stale_files()
        for filename in stale:
            print(f"schemas/json/{filename} is stale: run python -m schemas.generate", file=sys.stderr)
        return 1 if stale else 0
    for name, filename in models.JSON_SCHEMA_FILES.items():
        (JSON_DIR / filename).write_text(render(name), encoding="utf-8")
        print(f"wrote schemas/json/{filename}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
