"""The aggregate endpoint's view for one caller: every entitled tool of every server, plus the
resources and prompts of every visible server, under namespaced names (``policy/names.py``).

Lists are built from the upstream catalog (fetched by the gateway, cached per upstream) filtered by
the caller's entitlement under the active bundle; names are resolved back to (server, upstream
name) through the bundle's tool index, or the catalog for prompts.
"""
from __future__ import annotations

import asyncio
from typing import Any

from gwc.runtime.bundle.read import Bundle
from gwc.runtime.mcp.contracts import Contracts
from gwc.runtime.policy.decide import Principal, listed_everywhere, visible_server
from gwc.runtime.policy.names import (
    SEPARATOR,
    ToolRef,
    aggregate_name,
    resource_uri,
    split_resource_uri,
    tool_names,
)
from gwc.runtime.protocol.wire import LIST_METHODS, ListKind
from gwc.runtime.upstream.catalog import UpstreamCatalog

URI_FIELDS = {"resources": "uri", "resourceTemplates": "uriTemplate"}


class Aggregate:
    def __init__(self, catalog: UpstreamCatalog, contracts: Contracts) -> None:
        self._catalog, self._contracts = catalog, contracts
        # the active bundle's declared tools by aggregate name, and the names by tool: built once
        # per bundle, so a list or a call does not recompute names
        self._names: tuple[Bundle | None, dict[str, ToolRef], dict[ToolRef, str]] = (None, {}, {})

    def _tool_names(self, bundle: Bundle) -> tuple[dict[str, ToolRef], dict[ToolRef, str]]:
        indexed, by_name, by_tool = self._names
        if indexed is not bundle:
            by_tool = tool_names(bundle.payload, by_tool)
            by_name = {name: tool for tool, name in by_tool.items()}
            self._names = (bundle, by_name, by_tool)
        return by_name, by_tool

    async def listing(self, bundle: Bundle, principal: Principal, method: str
                      ) -> dict[str, list[dict[str, Any]]]:
        """The result of a list method on the aggregate: what this caller may see of it."""
        kind = LIST_METHODS[method]
        if kind == "tools":
            items = await self.tools(bundle, principal)
        elif kind == "prompts":
            items = await self.prompts(bundle, principal)
        else:
            items = await self.resources(bundle, principal, kind)
        return {kind: items}

    def entitled(self, bundle: Bundle, principal: Principal) -> dict[str, list[str]]:
        """Server -> the tools the caller sees there, for every server where it sees any."""
        return dict(listed_everywhere(bundle.payload, principal))

    async def tools(self, bundle: Bundle, principal: Principal) -> list[dict[str, Any]]:
        entitled = self.entitled(bundle, principal)
        lists = await self._catalog.lists(bundle, list(entitled), "tools")
        names = self._tool_names(bundle)[1]
        out = []
        for server, upstream_tools in lists.items():
            spec = bundle.payload.servers[server]
            wanted = set(entitled[server])
            for tool in upstream_tools:
                name = tool.get("name")
                if name in wanted:
                    shown = self._contracts.view(server, spec, tool, names[server, name])
                    if shown is not None:
                        out.append(shown)
        return out

    async def offering(self, bundle: Bundle, principal: Principal, capability: str) -> list[str]:
        """The visible servers whose upstreams announced ``capability`` (``logging``...)."""
        names = self.visible(bundle, principal)
        found = await asyncio.gather(*(self._catalog.capabilities(bundle, n) for n in names))
        return [name for name, offered in zip(names, found, strict=True)
                if offered is not None and isinstance(offered.get(capability), dict)]

    def visible(self, bundle: Bundle, principal: Principal) -> list[str]:
        return [name for name in bundle.payload.servers
                if visible_server(bundle.payload, principal, name) is not None]

    async def resources(self, bundle: Bundle, principal: Principal, kind: ListKind
                        ) -> list[dict[str, Any]]:
        """Resources or resource templates of every visible server, URIs prefixed."""
        field = URI_FIELDS[kind]
        lists = await self._catalog.lists(bundle, self.visible(bundle, principal), kind)
        return [{**item, field: resource_uri(server, str(item.get(field, ""))),
                 "name": f"{server}{SEPARATOR}{item.get('name', '')}"}
                for server, items in lists.items() for item in items]

    async def prompts(self, bundle: Bundle, principal: Principal) -> list[dict[str, Any]]:
        lists = await self._catalog.lists(bundle, self.visible(bundle, principal), "prompts")
        return [{**item, "name": aggregate_name(server, str(item.get("name", "")))}
                for server, items in lists.items() for item in items]

    def resolve_tool(self, bundle: Bundle, name: str) -> tuple[str, str] | None:
        """(server, tool) behind an aggregate tool name (visibility is the caller's to check)."""
        return self._tool_names(bundle)[0].get(name)

    async def resolve_prompt(self, bundle: Bundle, principal: Principal, name: str
                             ) -> tuple[str, str] | None:
        """(server, prompt) behind an aggregate prompt name, from the upstreams' prompt lists
        (fetched now if this node has not listed them yet)."""
        prefix = name.partition(SEPARATOR)[0]
        if prefix in bundle.payload.servers:  # the plain form names its server
            visible = visible_server(bundle.payload, principal, prefix) is not None
            candidates = [prefix] if visible else []
        else:  # a shortened, hashed name: any visible server's
            candidates = self.visible(bundle, principal)
        lists = await self._catalog.lists(bundle, candidates, "prompts")
        for server, prompts in lists.items():
            for prompt in prompts:
                if aggregate_name(server, str(prompt.get("name", ""))) == name:
                    return server, str(prompt["name"])
        return None

    @staticmethod
    def resolve_resource(bundle: Bundle, principal: Principal, uri: str) -> tuple[str, str] | None:
        split = split_resource_uri(uri)
        if split is None or visible_server(bundle.payload, principal, split[0]) is None:
            return None
        return split
