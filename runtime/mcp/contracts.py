"""Tool contracts at the node (DESIGN "Tool contracts"): a pinned tool is listed with the
definition its owners reviewed, not the upstream's live one; a live definition that drifted from
its pin is noticed, logged, counted and recorded once per change, and (``drift: refuse``) the tool
is hidden and refused; a call's arguments are checked against the pinned input schema before
policy reads them.

What a node knows of live definitions comes from every tools list it reads from an upstream: the
catalog's (the aggregate's lists, and a re-read of each pinned upstream every
``drift_recheck_s``, sooner when the upstream says its tools changed) and each per-server
``tools/list`` it relays. A pinned tool this node has not seen live yet is looked up before its
first call: under ``drift: refuse`` a tool is never called unchecked.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from gwc.runtime.audit.chain import utc_time
from gwc.runtime.audit.record import record_head
from gwc.runtime.bundle.format import PinnedTool, Server, Tool
from gwc.runtime.bundle.read import Bundle
from gwc.runtime.bundle.tool_definitions import argument_error, definition_digest, definition_of
from gwc.runtime.mcp.trail import Auditor
from gwc.runtime.metrics import Metrics
from gwc.runtime.protocol.errors import (
    ARGUMENTS_INVALID,
    TOOL_CHANGED,
    UPSTREAM_UNAVAILABLE,
    RpcError,
)
from gwc.runtime.upstream.catalog import GATEWAY, UpstreamCatalog

log = logging.getLogger("gwc.contracts")
RECHECK_BATCH = 32  # pinned upstreams re-read at once

ToolKey = tuple[str, str]  # (server, tool)


def with_manifest_annotations(tool: dict[str, Any], spec: Tool, name: str) -> dict[str, Any]:
    """A tool definition under ``name``, its hints set from the manifest: clients must not trust
    an upstream's own claims about what a tool does. Only the upstream's title is kept."""
    upstream = tool.get("annotations")
    annotations = ({"title": upstream["title"]}
                   if isinstance(upstream, dict) and "title" in upstream else {})
    annotations.update(readOnlyHint=spec.access == "read", destructiveHint=spec.access == "write")
    return {**tool, "name": name, "annotations": annotations}


def has_pins(server: Server) -> bool:
    return any(tool.pinned is not None for tool in server.tools.values())


def pinned_servers(bundle: Bundle) -> list[str]:
    return [name for name, server in bundle.payload.servers.items() if has_pins(server)]


class Contracts:
    def __init__(self, catalog: UpstreamCatalog, auditor: Auditor, metrics: Metrics,
                 active: Callable[[], Bundle | None]) -> None:
        self._catalog, self._auditor, self._metrics, self._active = catalog, auditor, metrics, active
        self._live: dict[ToolKey, str] = {}  # the digest of each pinned tool's live definition
        self._seen: set[str] = set()  # servers whose tools list this node has read
        self._recorded: dict[ToolKey, tuple[str, str]] = {}  # (pin, live) of each drift on record
        self._tasks: set[asyncio.Task[None]] = set()
        catalog.on_tools(self.observe, self._upstream_changed)

    # --- what clients are shown

    def view(self, server_name: str, server: Server, tool: dict[str, Any], name: str
             ) -> dict[str, Any] | None:
        """How a declared tool the caller may see is listed (under ``name``): the pinned
        definition when there is one, the upstream's otherwise; None to hide a drifted tool."""
        spec = server.tools[tool["name"]]
        pinned = spec.pinned
        if pinned is None:
            return with_manifest_annotations(tool, spec, name)
        if server.drift == "refuse" and self._drifted((server_name, tool["name"]), pinned):
            return None
        return with_manifest_annotations(pinned.definition, spec, name)

    def refusal(self, server_name: str, server: Server, tool: str, pinned: PinnedTool,
                arguments: Any) -> RpcError | None:
        """Why a call of a pinned tool may not go on (its definition drifted, or its arguments
        break the pinned input schema), None when it may. Call :meth:`ready` first."""
        if server.drift == "refuse" and self._drifted((server_name, tool), pinned):
            return RpcError(TOOL_CHANGED, f"{tool} on {server_name} is not available: its "
                            "definition changed since its owners reviewed it",
                            pinned_digest=pinned.digest, live_digest=self._live[server_name, tool])
        broken = argument_error(pinned.validator, arguments)
        if broken is None:
            return None
        where, problem = broken
        return RpcError(ARGUMENTS_INVALID, f"invalid arguments for {tool}: at "
                        f"{where or '/'}: {problem}", pointer=where)

    async def ready(self, bundle: Bundle, server_name: str, server: Server) -> RpcError | None:
        """Before the first call of a pinned tool on this node: read the upstream's tools list,
        so its drift is known. An upstream_unavailable error when the list cannot be read and
        the server refuses drifted tools (a tool is never called unchecked)."""
        if server_name in self._seen:
            return None
        await self._catalog.lists(bundle, [server_name], "tools")
        if server_name not in self._seen and server.drift == "refuse":
            return RpcError(UPSTREAM_UNAVAILABLE, f"the tools of {server_name} cannot be checked "
                            "against their pinned definitions: the upstream did not list them",
                            503)
        return None

    # --- what upstreams are seen to serve

    def observe(self, bundle: Bundle, server_name: str, tools: Any) -> None:
        """An upstream's tools list, as read under ``bundle``: compare each pinned tool in it."""
        server = bundle.payload.servers.get(server_name)
        if server is None or not isinstance(tools, (list, tuple)):
            return
        self._seen.add(server_name)
        for tool in tools:
            name = tool.get("name") if isinstance(tool, dict) else None
            if not isinstance(name, str):
                continue
            spec = server.tools.get(name)
            if spec is None or spec.pinned is None:
                continue
            key = (server_name, name)
            self._live[key] = definition_digest(definition_of(tool))
            self._judge(bundle, key, spec.pinned, server.drift)

    def bundle_changed(self, old: Bundle | None, new: Bundle) -> None:
        """New pins may match or miss what was seen live: judge again, and re-read the pinned
        upstreams now rather than at the next interval."""
        servers = new.payload.servers
        for key in list(self._live):
            spec = servers[key[0]].tools.get(key[1]) if key[0] in servers else None
            if spec is None or spec.pinned is None:
                del self._live[key]
                self._recorded.pop(key, None)
                self._metrics.tool_drifted.labels(*key).set(0)
            else:
                self._judge(new, key, spec.pinned, servers[key[0]].drift)
        self._spawn(self.recheck(new))

    def start(self) -> None:
        """Start re-reading pinned upstreams (stopped by :meth:`close`)."""
        self._spawn(self._run())

    async def _run(self) -> None:
        """Re-read every pinned upstream's tools every ``drift_recheck_s`` of the active bundle."""
        while True:
            bundle = self._active()
            await asyncio.sleep(bundle.payload.gateway.drift_recheck_s if bundle else 60)
            bundle = self._active()
            if bundle is not None:
                await self.recheck(bundle)

    async def recheck(self, bundle: Bundle) -> None:
        names = pinned_servers(bundle)
        for start in range(0, len(names), RECHECK_BATCH):
            await self._catalog.refresh(bundle, names[start:start + RECHECK_BATCH], "tools")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _drifted(self, key: ToolKey, pinned: PinnedTool) -> bool:
        live = self._live.get(key)
        return live is not None and live != pinned.digest

    def _upstream_changed(self, server_name: str) -> None:
        bundle = self._active()
        server = bundle.payload.servers.get(server_name) if bundle is not None else None
        if bundle is not None and server is not None and has_pins(server):
            self._spawn(self._catalog.refresh(bundle, [server_name], "tools"))

    def _judge(self, bundle: Bundle, key: ToolKey, pinned: PinnedTool, drift: str) -> None:
        """Log, count and record a change of drift: once per (pin, live) pair."""
        live = self._live[key]
        drifted = live != pinned.digest
        state = (pinned.digest, live)
        recorded = self._recorded.get(key)
        if recorded == state or (recorded is None and not drifted):
            return
        self._metrics.tool_drifted.labels(*key).set(1 if drifted else 0)
        if drifted:
            self._recorded[key] = state
            self._metrics.tool_drift.labels(*key).inc()
            log.warning("tool definition drifted from its pin", extra={
                "server": key[0], "tool": key[1], "pinned_digest": pinned.digest,
                "live_digest": live, "drift": drift})
        else:
            del self._recorded[key]
            log.info("tool definition matches its pin again", extra={
                "server": key[0], "tool": key[1], "pinned_digest": pinned.digest})
        self._spawn(self._record(bundle, key, "drifted" if drifted else "matches_pin",
                                 pinned.digest, live, drift))

    async def _record(self, bundle: Bundle, key: ToolKey, event: str, pinned: str, live: str,
                      drift: str) -> None:
        record = record_head("drift", utc_time(time.time()), f"drift-{secrets.token_hex(8)}",
                             None, self._auditor.node, bundle.digest, bundle.serial, GATEWAY)
        record.update(event=event, server=key[0], tool=key[1], pinned_digest=pinned,
                      live_digest=live, drift=drift)
        try:
            await self._auditor.write(record)
        except RpcError as exc:  # the trail is failing; the node logs that itself
            log.error("drift record not written", extra={"server": key[0], "tool": key[1],
                                                        "reason": exc.message})

    def _spawn(self, work: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:  # no loop (a bundle activated outside one): nothing to schedule
            work.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("tool contract check failed", exc_info=task.exception())

