"""The JSON Schemas (draft 2020-12) of the input files, generated from the pydantic models.

The generated files ship in ``compiler/schemas/`` for editors (``$schema`` in a manifest, or the YAML
language server's ``# yaml-language-server: $schema=...`` comment); a test keeps them in step.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).parent / "schemas"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
BASE_ID = "https://gwc.dev/schemas/"


def _sources() -> dict[str, tuple[str, Any]]:
    """File name -> (title, model). Built on demand: ``SCHEMA_DIR`` is the default of a ``gwc``
    option, and importing this module must not build the models' validators."""
    from pydantic import TypeAdapter

    from gwc.compiler.build.models import GatewayConfig, PolicyRule, ServerManifest

    return {
        "manifest.schema.json": ("A gwc server manifest (registry/*.yaml|json)", ServerManifest),
        "policy.schema.json": ("A gwc policy file (policies/**/*.yaml): a list of rules",
                               TypeAdapter(list[PolicyRule])),
        "gateway.schema.json": ("gwc gateway-wide settings (gateway.yaml)", GatewayConfig),
    }


def generate() -> dict[str, str]:
    """File name -> schema text."""
    from pydantic import TypeAdapter

    out = {}
    for name, (title, model) in _sources().items():
        schema = (model.json_schema(by_alias=True) if isinstance(model, TypeAdapter)
                  else model.model_json_schema(by_alias=True))
        doc = {"$schema": DRAFT, "$id": BASE_ID + name, "title": title, **schema}
        out[name] = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    return out


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in generate().items():
        (directory / name).write_text(text)
        written.append(directory / name)
    return written
