"""A tool's definition, the part of an MCP ``Tool`` a model reads as instructions, and its digest.

``gwc pin`` writes definitions, ``gwc build`` puts them in the bundle with their digest, and a node
compares the digest of each live definition with the pinned one. Absent and null fields are the
same thing, so an upstream that starts sending ``"title": null`` has not changed its tool.
"""
from __future__ import annotations

import hashlib
from typing import Any

from gwc.runtime.bundle.canonical import canonical_json

# what a model is told about a tool besides its name (MCP Tool fields; icons and _meta are not
# instructions to the model and are not pinned)
DEFINITION_FIELDS = ("title", "description", "inputSchema", "outputSchema", "annotations")


def definition_of(tool: dict[str, Any]) -> dict[str, Any]:
    """The pinnable fields of an MCP tool (as listed by an upstream), nulls left out."""
    return {name: tool[name] for name in DEFINITION_FIELDS if tool.get(name) is not None}


def definition_digest(definition: dict[str, Any]) -> str:
    """``sha256:<hex>`` over the canonical JSON of a definition (:func:`definition_of`)."""
    return "sha256:" + hashlib.sha256(canonical_json(definition)).hexdigest()


def _no_remote(uri: str) -> Any:
    raise ValueError(f"a pinned schema may only refer inside itself, not to {uri}")


def input_validator(schema: Any) -> Any:
    """A compiled validator for a pinned input schema: JSON Schema 2020-12 unless the schema's
    ``$schema`` names another draft. Nothing is fetched: a remote ``$ref`` is refused. Raises
    ValueError for a schema that cannot be compiled."""
    if not isinstance(schema, dict):
        raise ValueError("a pinned definition needs an inputSchema object")
    import jsonschema_rs  # here, not at the top: a bundle without pins never pays its import

    try:
        return jsonschema_rs.validator_for(schema, retriever=_no_remote)
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError) as exc:
        raise ValueError(f"the pinned inputSchema cannot be compiled: {exc}") from None


def pointer(path: Any) -> str:
    """An instance path (as validators report it) as a JSON Pointer (RFC 6901)."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def argument_error(validator: Any, arguments: Any) -> tuple[str, str] | None:
    """(JSON Pointer, message) of the first way ``arguments`` break the schema; None when they
    keep it. The fast check comes first: valid arguments cost one call."""
    if validator.is_valid(arguments):
        return None
    for error in validator.iter_errors(arguments):
        return pointer(error.instance_path), error.message
    return None
