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
