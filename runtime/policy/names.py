"""Names on the aggregate endpoint ``/mcp``: ``{server}__{tool}``, within ``^[A-Za-z0-9_-]{1,64}$``.

The rule, stable across bundles and nodes:
- ``{server}__{name}`` as is when it fits the pattern (server names never contain ``_``, so the
  first ``__`` always ends the server name);
- otherwise (a ``.`` or another character outside the pattern, or longer than 64): characters
  outside the pattern become ``-``, the result is cut to 53 characters, and ``_`` plus the first 10
  hex digits of SHA-256 over ``server/name`` are appended. Two different tools get the same name only
  by a SHA-256 prefix collision or a tool named to look like another's hashed form; ``gwc validate``
  refuses registries where that happens, so within a bundle the mapping is one to one.

Resources keep their URIs, prefixed as ``gwc://{server}/{uri}``.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # an annotation only: gwc validate need not build the bundle's models
    from gwc.runtime.bundle.format import BundlePayload

AGGREGATE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_OUTSIDE = re.compile(r"[^A-Za-z0-9_-]")
SEPARATOR = "__"
HASH_HEX = 10
RESOURCE_PREFIX = "gwc://"
ToolRef = tuple[str, str]  # (server, tool)


def aggregate_name(server: str, name: str) -> str:
    plain = f"{server}{SEPARATOR}{name}"
    if AGGREGATE_NAME.fullmatch(plain):
        return plain
    digest = hashlib.sha256(f"{server}/{name}".encode()).hexdigest()[:HASH_HEX]
    return f"{_OUTSIDE.sub('-', plain)[:64 - HASH_HEX - 1]}_{digest}"


def tool_names(payload: BundlePayload, known: Mapping[ToolRef, str] | None = None
               ) -> dict[ToolRef, str]:
    """(server, tool) -> aggregate name for every declared tool of a bundle. Names in ``known``
    (the last bundle's) are taken as they are: a swap to a bundle of 40,000 tools then computes
    only the new ones, instead of hashing them all again on the event loop."""
    known = known or {}
    return {(server, tool): known.get((server, tool)) or aggregate_name(server, tool)
            for server, spec in payload.servers.items() for tool in spec.tools}


def collisions(tools: Iterable[ToolRef]) -> list[tuple[str, ToolRef, ToolRef]]:
    """(aggregate name, first tool, later tool) for every name a later tool would share with an
    earlier one: the rule ``gwc validate`` refuses registries by."""
    seen: dict[str, ToolRef] = {}
    clashes = []
    for server, tool in tools:
        name = aggregate_name(server, tool)
        first = seen.setdefault(name, (server, tool))
        if first != (server, tool):
            clashes.append((name, first, (server, tool)))
    return clashes


def resource_uri(server: str, uri: str) -> str:
    return f"{RESOURCE_PREFIX}{server}/{uri}"


def split_resource_uri(uri: str) -> tuple[str, str] | None:
    """(server, upstream uri) of an aggregate resource URI, or None if it is not one."""
    if not uri.startswith(RESOURCE_PREFIX):
        return None
    server, slash, original = uri[len(RESOURCE_PREFIX):].partition("/")
    return (server, original) if slash and server and original else None
