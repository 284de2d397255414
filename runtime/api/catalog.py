"""``GET /v1/catalog``: the servers and tools the caller may use, as JSON, for portals and CLIs.

Built from the active bundle alone (no upstream is asked), so it answers even when upstreams are
down, and it shows exactly what the gateway would let the caller do.
"""
from __future__ import annotations

from typing import Any

from gwc.runtime.bundle.read import Bundle
from gwc.runtime.policy.decide import Principal, entitlement_on, visible_server
from gwc.runtime.policy.names import aggregate_name


def catalog(bundle: Bundle, principal: Principal, public_url: str) -> dict[str, Any]:
    payload = bundle.payload
    servers = []
    for name in payload.servers:
        server = visible_server(payload, principal, name)
        if server is None:
            continue
        tools = []
        for tool_name, tool in server.tools.items():
            granted = entitlement_on(payload, server, principal, tool_name)
            if granted is None and tool.mode != "shadow":
                continue
            tools.append({"name": tool_name, "aggregate_name": aggregate_name(name, tool_name),
                          "access": tool.access, "entitlement": granted or "shadow",
                          "approval_required": tool.approval is not None, "mode": tool.mode})
        servers.append({"name": name, "description": server.description, "owner": server.owner,
                        "endpoint": f"{public_url}/servers/{name}/mcp", "tools": tools})
    return {"gateway": {"endpoint": f"{public_url}/mcp", "bundle_serial": bundle.serial,
                        "bundle_revision": payload.revision},
            "subject": principal.subject, "kind": principal.kind,
            "acting_for": principal.acting_for, "servers": servers}
