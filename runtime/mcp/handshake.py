"""What the gateway answers itself, as the MCP server its clients talk to: ``initialize`` (which
issues a sealed session id, ``sealed_sessions.py``), ``ping`` and ``server/discover``, and the
caching terms of results it builds."""
from __future__ import annotations

import secrets
import time
from typing import Any

from aiohttp import web
from mcp_types.version import SUPPORTED_PROTOCOL_VERSIONS

from gwc.runtime.mcp.recording import Recording
from gwc.runtime.mcp.routes import Call
from gwc.runtime.mcp.sealed_sessions import Session, SessionSealer, SessionTooLarge
from gwc.runtime.protocol.errors import INVALID_PARAMS, RpcError
from gwc.runtime.protocol.wire import result_response
from gwc.runtime.upstream.catalog import UpstreamCatalog

# What the aggregate endpoint serves itself: tools (it says when they change), resources,
# prompts and completions from every upstream, with their change notifications and resource
# subscriptions (fanned in from every visible upstream, screened by entitlement: fan_in.py), and
# logging (a level set on every upstream that offers logging). A per-server endpoint has tools
# always (it says when the bundle changes them) and, of the rest, what its upstream announced:
# completions, logging, resources and prompts, with the features of theirs the gateway relays.
AGGREGATE_CAPABILITIES = {"tools": {"listChanged": True},
                          "resources": {"subscribe": True, "listChanged": True},
                          "prompts": {"listChanged": True}, "completions": {}, "logging": {}}
RELAYED_CAPABILITIES = ("completions", "logging", "prompts", "resources")
RELAYED_FEATURES = {"resources": ("subscribe", "listChanged"), "prompts": ("listChanged",)}
SERVER_INFO_META = "io.modelcontextprotocol/serverInfo"
SESSION_HEADER = "Mcp-Session-Id"
CACHE_TTL_MS = 30_000  # how long a 2026-07-28 client may reuse a list: about one bundle poll
AGGREGATE_INSTRUCTIONS = ("One gateway for every MCP server you are entitled to: tools are named "
                          "{server}__{tool}.")


def built_result(call: Call, result: dict[str, Any]) -> web.Response:
    """A list or discovery result the gateway builds. 2026-07-28 results say they are complete
    and how long a client may cache them: privately, as they differ per caller."""
    if call.session is None:
        result.update(resultType="complete", cacheScope="private", ttlMs=CACHE_TTL_MS)
    return result_response(call.id, result)


def server_capabilities(upstream: dict[str, Any] | None) -> dict[str, Any]:
    """A per-server endpoint's capabilities from its upstream's (None: not known)."""
    capabilities: dict[str, Any] = {"tools": {"listChanged": True}}
    for name in RELAYED_CAPABILITIES:
        offered = upstream.get(name) if upstream is not None else None
        if isinstance(offered, dict):
            capabilities[name] = {feature: True for feature in RELAYED_FEATURES.get(name, ())
                                  if offered.get(feature) is True}
    return capabilities


class Handshake:
    def __init__(self, sealer: SessionSealer, recording: Recording,
                 catalog: UpstreamCatalog) -> None:
        self._sealer, self._recording, self._catalog = sealer, recording, catalog

    async def answer(self, call: Call, version: str) -> web.Response | None:
        """The gateway's own answer to ``call``, or None when the call is not one it answers."""
        if call.method == "initialize":
            return self._initialize(call, version, await self._capabilities(call))
        if call.method == "ping":
            return result_response(call.id, {})
        if call.method == "server/discover":
            return built_result(call, self._discover(call, await self._capabilities(call)))
        return None

    async def _capabilities(self, call: Call) -> dict[str, Any]:
        """What this endpoint offers: exactly what it can serve (an upstream that cannot be
        reached in time gets tools only, which every upstream has)."""
        if not call.endpoint:
            return AGGREGATE_CAPABILITIES
        return server_capabilities(await self._catalog.capabilities(call.bundle, call.endpoint))

    def _initialize(self, call: Call, version: str, offered: dict[str, Any]) -> web.Response:
        principal, params = call.principal, call.params
        # What upstream sessions are opened with: the client's capabilities, so an upstream
        # knows whether it may ask (elicitation, sampling, roots); its requests reach the client
        # and the answers go back to it, on either kind of endpoint (relay.py)
        capabilities = params.get("capabilities")
        info = params.get("clientInfo")
        client_info = ({k: info[k] for k in ("name", "version") if isinstance(info.get(k), str)}
                       if isinstance(info, dict) else {})
        session = Session(principal.subject, principal.kind, principal.acting_for, call.endpoint,
                          version, capabilities if isinstance(capabilities, dict) else {},
                          client_info, int(time.time()), secrets.token_hex(8))
        try:
            sealed = self._sealer.seal(session)
        except SessionTooLarge as exc:
            raise RpcError(INVALID_PARAMS, str(exc), 400) from None
        result = {"protocolVersion": version, "capabilities": offered,
                  "serverInfo": _server_info(call)}
        instructions = _instructions(call)
        if instructions:
            result["instructions"] = instructions
        self._recording.count(call.endpoint, "", "allow", "initialize")
        return result_response(call.id, result, {SESSION_HEADER: sealed})

    @staticmethod
    def _discover(call: Call, offered: dict[str, Any]) -> dict[str, Any]:
        result = {"supportedVersions": list(SUPPORTED_PROTOCOL_VERSIONS),
                  "capabilities": offered,
                  "_meta": {SERVER_INFO_META: _server_info(call)}}
        instructions = _instructions(call)
        if instructions:
            result["instructions"] = instructions
        return result


def _server_info(call: Call) -> dict[str, Any]:
    return {"name": call.endpoint or "gwc", "version": call.bundle.payload.revision}


def _instructions(call: Call) -> str | None:
    if call.endpoint:
        return call.bundle.payload.servers[call.endpoint].description or None
    return AGGREGATE_INSTRUCTIONS

