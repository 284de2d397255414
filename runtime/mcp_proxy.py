"""MCP over Streamable HTTP on the two kinds of endpoint: one per server, ``/servers/{name}/mcp``,
and the aggregate ``/mcp`` with every entitled tool as ``{server}__{tool}``.

Per request: authenticate; on a per-server endpoint apply the visibility wall (an invisible server
answers exactly like one that does not exist); settle the protocol era and the session; check the
2026-07-28 routing headers against the body; decide policy before anything reaches an upstream; then
send the request upstream with the gateway's own credential (``upstream_client.py``) and relay the
answer, rewritten only where it must be (filtered lists, restored ids, namespaced URIs).

The gateway is the MCP server its clients talk to: it answers ``initialize``, ``ping`` and
``server/discover`` itself and issues sealed session ids (``sessions.py``), so any node serves any
request. Client notifications end here (202); nothing of a client's session reaches an upstream.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
from aiohttp import web
from mcp_types.version import SUPPORTED_PROTOCOL_VERSIONS

from runtime.aggregate import Aggregate, with_manifest_annotations
from runtime.bundle import Bundle
from runtime.bundle_format import Server
from runtime.jsonrpc import (APPROVAL_REQUIRED, DENIED, HEADER_MISMATCH, INVALID_PARAMS,
                             INVALID_REQUEST,
                             METHOD_NOT_FOUND, NOT_FOUND, SESSION_INVALID, UNSUPPORTED_VERSION,
                             UPSTREAM_UNAVAILABLE, RpcError)
from runtime.mcp_wire import (check_routing_headers, encode_header_value, error_response,
                              negotiate, parse_message, result_response, stateless_version,
                              validate)
from runtime.naming import resource_uri
from runtime.policy import Principal, decide, listed_tools, visible_server
from runtime.request_keys import REQUEST_ID, STARTED
from runtime.sessions import Session, SessionTooLarge
from runtime.sse import EventRewriter, Rewrite
from runtime.upstream_catalog import Kind, UpstreamCatalog
from runtime.upstream_client import Answer, Outgoing, UpstreamClient, UpstreamFailure
from runtime.upstreams import Upstreams

if TYPE_CHECKING:
    from runtime.app import Gateway

log = logging.getLogger("gwc.mcp")

# Client headers a stateless (2026-07-28) request keeps on its way upstream, besides Mcp-Param-*;
# everything else (cookies, the client's Authorization, its Host) stays at the gateway.
STATELESS_HEADERS = ("Accept", "Content-Type", "MCP-Protocol-Version", "Mcp-Method", "Mcp-Name")
RELAYED_RESPONSE_HEADERS = ("Content-Type", "Cache-Control")
# Methods a caller who sees a server may use on its per-server endpoint without a tool decision.
PASSED_METHODS = frozenset({
    "tools/list", "resources/list", "resources/templates/list", "resources/read",
    "resources/subscribe", "resources/unsubscribe", "subscriptions/listen", "prompts/list",
    "prompts/get", "completion/complete", "logging/setLevel"})
SERVER_CAPABILITIES = {"tools": {"listChanged": True}, "resources": {}, "prompts": {},
                       "completions": {}, "logging": {}}
AGGREGATE_CAPABILITIES = {"tools": {"listChanged": True}, "resources": {}, "prompts": {}}
SERVER_INFO_META = "io.modelcontextprotocol/serverInfo"
SESSION_HEADER = "Mcp-Session-Id"
CACHE_TTL_MS = 30_000  # how long a 2026-07-28 client may reuse a list: about one bundle poll
AGGREGATE = ""  # the endpoint name of /mcp
AGGREGATE_LISTS: dict[str, Kind] = {"tools/list": "tools", "prompts/list": "prompts",
                                   "resources/list": "resources",
                                   "resources/templates/list": "resourceTemplates"}


@dataclass(slots=True)
class Call:
    """One JSON-RPC request on its way through the gateway."""

    request: web.Request
    bundle: Bundle
    principal: Principal
    endpoint: str  # a server name, or AGGREGATE
    message: dict[str, Any]
    method: str
    params: dict[str, Any]
    session: Session | None  # None: the stateless 2026-07-28 era
    body: bytes

    @property
    def id(self) -> Any:
        return self.message.get("id")


class McpProxy:
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self.client = UpstreamClient(Upstreams(gateway.metrics), gateway.credentials,
                                     gateway.metrics)
        self.catalog = UpstreamCatalog(self.client, gateway.metrics)
        self.aggregate = Aggregate(self.catalog)

    async def close(self) -> None:
        await self.client.close()

    # -- the front door: identity, visibility, era, session ------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            bundle, principal = await self._gateway.caller(request)
        except RpcError as exc:
            return error_response(exc)
        endpoint = request.match_info.get("server", AGGREGATE)
        if endpoint and visible_server(bundle.payload, principal, endpoint) is None:
            return error_response(RpcError(NOT_FOUND, f"unknown server '{endpoint}'", 404))
        try:
            if request.method == "POST":
                return await self._post(request, bundle, principal, endpoint)
            if request.method == "GET":
                if SESSION_HEADER not in request.headers:  # the stateless era has no GET stream
                    return web.Response(status=405, headers={"Allow": "POST, DELETE"})
                self._session(request, principal, endpoint)
                return await self._gateway.list_changed.stream(request, principal, endpoint)
            if request.method == "DELETE":  # nothing is stored: a sealed session just ends
                self._session(request, principal, endpoint)
                return web.Response(status=204)
        except RpcError as exc:
            return error_response(exc)
        return web.Response(status=405, headers={"Allow": "GET, POST, DELETE"})

    def _session(self, request: web.Request, principal: Principal, endpoint: str) -> Session:
        """The caller's own session on this endpoint, from its sealed id."""
        sealed = request.headers.get(SESSION_HEADER)
        if not sealed:
            raise RpcError(INVALID_REQUEST, "Mcp-Session-Id is required after initialize (or "
                           "send 2026-07-28 requests, which need no session)", 400)
        session = self._gateway.sealer.open(sealed)
        if session is None or not session.belongs_to(principal, endpoint):
            raise RpcError(SESSION_INVALID, "unknown or expired session; initialize again", 404)
        return session

    async def _post(self, request: web.Request, bundle: Bundle, principal: Principal,
                    endpoint: str) -> web.StreamResponse:
        message: dict[str, Any] = {}
        try:
            body = await request.read()
            message = parse_message(body)
            method = message.get("method")
            if method is None:  # a client's answer to an upstream's request
                session = self._session(request, principal, endpoint)
                call = Call(request, bundle, principal, endpoint, message, "", {}, session, body)
                return await self._answer_upstream_request(call)
            params = message.get("params", {})
            if not isinstance(method, str) or not isinstance(params, dict):
                raise RpcError(INVALID_REQUEST, "method must be a string and params an object", 400)
            version = stateless_version(request, params)
            session = None
            if version is None and method == "initialize":
                version = negotiate(params)
            elif version is None:
                session = self._session(request, principal, endpoint)
                version = session.protocol_version
                header = request.headers.get("MCP-Protocol-Version")
                if header is not None and header not in SUPPORTED_PROTOCOL_VERSIONS:
                    raise RpcError(UNSUPPORTED_VERSION, f"unsupported protocol version "
                                   f"{header!r}", 400, requested=header)
                if header is not None and header != version:
                    raise RpcError(HEADER_MISMATCH, f"MCP-Protocol-Version {header!r} is not "
                                   f"the session's {version!r}", 400)
            check_routing_headers(request, method, params, version)
            validate(method, params, version, notification="id" not in message)
            if "id" not in message:
                return web.Response(status=202)
            call = Call(request, bundle, principal, endpoint, message, method, params, session,
                        body)
            if method == "initialize":
                return self._initialize(call, version)
            if method == "ping":
                return result_response(call.id, {})
            if method == "server/discover":
                return self._answer(call, self._discover(call))
            if endpoint:
                return await self._server_call(call, endpoint)
            return await self._aggregate_call(call)
        except RpcError as exc:
            request_id = message.get("id") if isinstance(message, dict) else None
            return error_response(exc, request_id if isinstance(request_id, (str, int)) else None)

    # -- what the gateway answers itself --------------------------------------------------------

    def _server_info(self, call: Call) -> dict[str, Any]:
        return {"name": call.endpoint or "gwc", "version": call.bundle.payload.revision}

    def _instructions(self, call: Call) -> str | None:
        if call.endpoint:
            return call.bundle.payload.servers[call.endpoint].description or None
        return "One gateway for every MCP server you are entitled to: tools are named " \
               "{server}__{tool}."

    def _capabilities(self, call: Call) -> dict[str, Any]:
        return SERVER_CAPABILITIES if call.endpoint else AGGREGATE_CAPABILITIES

    @staticmethod
    def _answer(call: Call, result: dict[str, Any]) -> web.Response:
        """A list or discovery result the gateway builds. 2026-07-28 results say they are
        complete and how long a client may cache them: privately, as they differ per caller."""
        if call.session is None:
            result.update(resultType="complete", cacheScope="private", ttlMs=CACHE_TTL_MS)
        return result_response(call.id, result)

    def _initialize(self, call: Call, version: str) -> web.Response:
        principal, params = call.principal, call.params
        # What upstream sessions are opened with. The aggregate endpoint does not relay an
        # upstream's requests (elicitation, sampling) back, so upstreams must not think they
        # can ask: no client capabilities there.
        capabilities = params.get("capabilities") if call.endpoint else {}
        info = params.get("clientInfo")
        client_info = ({k: info[k] for k in ("name", "version") if isinstance(info.get(k), str)}
                       if isinstance(info, dict) else {})
        session = Session(principal.subject, principal.kind, principal.acting_for, call.endpoint,
                          version, capabilities if isinstance(capabilities, dict) else {},
                          client_info, int(time.time()))
        try:
            sealed = self._gateway.sealer.seal(session)
        except SessionTooLarge as exc:
            raise RpcError(INVALID_PARAMS, str(exc), 400) from None
        result = {"protocolVersion": version, "capabilities": self._capabilities(call),
                  "serverInfo": self._server_info(call)}
        instructions = self._instructions(call)
        if instructions:
            result["instructions"] = instructions
        self._gateway.metrics.count_request(call.endpoint, "initialize", "", "allow")
        return result_response(call.id, result, {SESSION_HEADER: sealed})

    def _discover(self, call: Call) -> dict[str, Any]:
        result = {"supportedVersions": list(SUPPORTED_PROTOCOL_VERSIONS),
                  "capabilities": self._capabilities(call),
                  "_meta": {SERVER_INFO_META: self._server_info(call)}}
        instructions = self._instructions(call)
        if instructions:
            result["instructions"] = instructions
        return result

    # -- per-server endpoint --------------------------------------------------------------------

    async def _server_call(self, call: Call, name: str) -> web.StreamResponse:
        server = call.bundle.payload.servers[name]
        if call.method == "tools/call":
            tool = self._authorize(call, name, call.params.get("name"))
            return await self._forward(call, name, server, call.message, tool,
                                       server.tools[tool].timeout_ms)
        if call.method not in PASSED_METHODS:
            raise RpcError(METHOD_NOT_FOUND, f"method '{call.method}' is not supported by the "
                           "gateway", 404)
        self._gateway.metrics.count_request(name, call.method, "", "allow")
        transform = self._tools_filter(call, name, server) if call.method == "tools/list" else None
        return await self._forward(call, name, server, call.message, None, server.timeout_ms,
                                   transform)

    def _tools_filter(self, call: Call, name: str, server: Server) -> Rewrite:
        """Keep declared tools the caller sees; hints from the manifest, not the upstream."""
        listed = set(listed_tools(call.bundle.payload, call.principal, name))

        def rewrite(message: dict[str, Any]) -> dict[str, Any]:
            result = message.get("result")
            if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
                return message
            kept = [with_manifest_annotations(t, server.tools[t["name"]], t["name"])
                    for t in result["tools"] if isinstance(t, dict) and t.get("name") in listed]
            filtered = {**result, "tools": kept}
            if "cacheScope" in result:  # the list is this caller's now, whatever upstream said
                filtered["cacheScope"] = "private"
            return {**message, "result": filtered}
        return rewrite

    # -- aggregate endpoint ---------------------------------------------------------------------

    async def _aggregate_call(self, call: Call) -> web.StreamResponse:
        bundle, principal, method, params = call.bundle, call.principal, call.method, call.params
        if method == "tools/call":
            target = self.aggregate.resolve_tool(bundle, str(params.get("name")))
            if target is None or visible_server(bundle.payload, principal, target[0]) is None:
                raise RpcError(NOT_FOUND, f"Unknown tool: {params.get('name')}")
            name, tool = target
            self._authorize(call, name, tool)
            server = bundle.payload.servers[name]
            return await self._forward(call, name, server, self._renamed(call, "name", tool), tool,
                                       server.tools[tool].timeout_ms)
        if method == "resources/read":
            target = self.aggregate.resolve_resource(bundle, principal, str(params.get("uri")))
            if target is None:
                raise RpcError(NOT_FOUND, f"Resource not found: {params.get('uri')}")
            name, uri = target
            server = bundle.payload.servers[name]
            self._gateway.metrics.count_request(name, method, "", "allow")
            return await self._forward(call, name, server, self._renamed(call, "uri", uri), None,
                                       server.timeout_ms, _namespace_contents(name))
        if method == "prompts/get":
            target = await self.aggregate.resolve_prompt(bundle, principal,
                                                         str(params.get("name")))
            if target is None:
                raise RpcError(NOT_FOUND, f"Unknown prompt: {params.get('name')}")
            name, prompt = target
            server = bundle.payload.servers[name]
            self._gateway.metrics.count_request(name, method, "", "allow")
            return await self._forward(call, name, server, self._renamed(call, "name", prompt),
                                       None, server.timeout_ms)
        if method not in AGGREGATE_LISTS:
            raise RpcError(METHOD_NOT_FOUND, f"method '{method}' is not supported on the "
                           "aggregate endpoint", 404)
        self._gateway.metrics.count_request(AGGREGATE, method, "", "allow")
        if method == "tools/list":
            items = await self.aggregate.tools(bundle, principal)
        elif method == "prompts/list":
            items = await self.aggregate.prompts(bundle, principal)
        else:
            items = await self.aggregate.resources(bundle, principal, AGGREGATE_LISTS[method])
        return self._answer(call, {AGGREGATE_LISTS[method]: items})

    @staticmethod
    def _renamed(call: Call, field: str, value: str) -> dict[str, Any]:
        return {**call.message, "params": {**call.params, field: value}}

    # -- policy ---------------------------------------------------------------------------------

    def _authorize(self, call: Call, name: str, tool: Any) -> str:
        """Decide a tools/call before anything is sent; returns the tool name."""
        if not isinstance(tool, str):
            raise RpcError(INVALID_REQUEST, "tools/call needs params.name", 400)
        bundle, principal = call.bundle, call.principal
        decision = decide(bundle.payload, principal, name, tool, call.params.get("arguments") or {})
        shadowed = decision.effect == "deny" and decision.mode == "shadow"
        passes = decision.effect == "allow" or shadowed
        # Whatever lets a call through (a grant, or shadow mode), an approval tool still waits.
        waits = passes and decision.approval_required
        outcome = ("approval_required" if waits else "would_deny" if shadowed
                   else decision.effect)
        if log.isEnabledFor(logging.INFO):  # the hot path builds no log payload it will not write
            log.info("decision", extra={
                "request_id": call.request[REQUEST_ID], "subject": principal.subject,
                "kind": principal.kind, "acting_for": principal.acting_for,
                "groups": sorted(principal.groups), "server": name, "tool": tool,
                "access": decision.access, "decision": outcome, "reason": decision.reason,
                "rules": list(decision.rule_ids), "bundle_serial": bundle.serial})
        self._gateway.metrics.count_request(name, "tools/call",
                                            tool if decision.effect != "not_found" else "", outcome)
        if decision.effect == "not_found":
            raise RpcError(NOT_FOUND, f"Unknown tool: {tool}")
        if not passes:
            raise RpcError(DENIED, f"{principal.subject} may not call {tool} on {name}",
                           rules=list(decision.rule_ids))
        if waits:
            raise RpcError(APPROVAL_REQUIRED, f"{tool} on {name} needs an approval, and this "
                           "gateway does not run approvals yet")
        return tool

    # -- upstream -------------------------------------------------------------------------------

    def _outgoing(self, call: Call, message: dict[str, Any], tool: str | None) -> Outgoing:
        request = call.request
        if call.session is not None:
            headers = {"Accept": request.headers.get("Accept", "application/json, "
                                                     "text/event-stream"),
                       "Content-Type": "application/json"}
            return Outgoing(call.method, message, call.session, request[REQUEST_ID], tool,
                            headers=headers)
        headers = {h: v for h in STATELESS_HEADERS if (v := request.headers.get(h))}
        headers.update((k, v) for k, v in request.headers.items()
                       if k.lower().startswith("mcp-param-"))
        unchanged = message is call.message
        if not unchanged and "Mcp-Name" in headers:
            field = "uri" if call.method == "resources/read" else "name"
            headers["Mcp-Name"] = encode_header_value(message["params"][field])
        return Outgoing(call.method, message, None, request[REQUEST_ID], tool,
                        body=call.body if unchanged else None, headers=headers)

    async def _answer_upstream_request(self, call: Call) -> web.StreamResponse:
        """Relay a client's answer (to an elicitation, sampling...) to the upstream that asked,
        on the per-server endpoint; the aggregate endpoint does not relay upstream requests."""
        if not call.endpoint:
            return web.Response(status=202)
        server = call.bundle.payload.servers[call.endpoint]
        return await self._forward(call, call.endpoint, server, call.message, None,
                                   server.timeout_ms)

    async def _forward(self, call: Call, name: str, server: Server, message: dict[str, Any],
                       tool: str | None, timeout_ms: int, transform: Rewrite | None = None
                       ) -> web.StreamResponse:
        request = call.request
        try:
            async with self.client.exchange(name, server, call.principal,
                                            self._outgoing(call, message, tool),
                                            timeout_ms) as answer:
                return await self._relay(request, answer, transform, name, timeout_ms)
        except UpstreamFailure as exc:
            self._gateway.metrics.count_upstream_error(name, exc.kind)
            log.warning("upstream failed", extra={"request_id": request[REQUEST_ID],
                                                  "server": name, "reason": exc.message})
            return error_response(exc, call.id)
        finally:
            self._gateway.metrics.observe_latency(name, time.perf_counter() - request[STARTED])

    async def _relay(self, request: web.Request, answer: Answer, transform: Rewrite | None,
                     name: str, timeout_ms: int) -> web.StreamResponse:
        """The upstream's answer to the client: plain answers in one write, SSE streams as they
        come; rewritten only when the id was replaced or the answer must be filtered."""
        upstream = answer.response
        if upstream.status >= 500:  # the caller gets the gateway's error, not the upstream's page
            raise UpstreamFailure(UPSTREAM_UNAVAILABLE, "status", f"upstream answered HTTP "
                                  f"{upstream.status}")
        headers = {h: v for h in RELAYED_RESPONSE_HEADERS if (v := upstream.headers.get(h))}
        rewrite = _chain(answer.restore if answer.rewrites_id else None, transform)
        if not upstream.headers.get("Content-Type", "").startswith("text/event-stream"):
            body = await upstream.read()
            if rewrite is not None and body:
                try:
                    message = orjson.loads(body)
                except orjson.JSONDecodeError:
                    raise UpstreamFailure(UPSTREAM_UNAVAILABLE, "bad_answer", "the upstream "
                                          "answered with invalid JSON") from None
                if isinstance(message, dict):
                    body = orjson.dumps(rewrite(message))
            return web.Response(body=body, status=upstream.status, headers=headers)
        return await self._relay_stream(request, answer, headers, rewrite, name, timeout_ms)

    async def _relay_stream(self, request: web.Request, answer: Answer, headers: dict[str, str],
                            rewrite: Rewrite | None, name: str, timeout_ms: int
                            ) -> web.StreamResponse:
        """Relay an SSE answer as it comes. Once started, a failure can only end the stream."""
        upstream = answer.response
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        rewriter = EventRewriter(rewrite) if rewrite is not None else None
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(rewriter.feed(chunk) if rewriter else chunk)
            if rewriter is not None:
                await response.write(rewriter.flush())
            await response.write_eof()
        except ConnectionResetError:  # the client went away: closing our side cancels upstream
            log.info("client disconnected", extra={"request_id": request[REQUEST_ID],
                                                   "server": name})
        except (asyncio.TimeoutError, aiohttp.ClientError, UnicodeDecodeError) as exc:
            kind = "timeout" if isinstance(exc, asyncio.TimeoutError) else "read"
            answer.broken = True
            self._gateway.metrics.count_upstream_error(name, kind)
            log.warning("upstream stream ended early", extra={
                "request_id": request[REQUEST_ID], "server": name, "reason": kind,
                "timeout_ms": timeout_ms})
        return response


def _chain(first: Rewrite | None, second: Rewrite | None) -> Rewrite | None:
    if first is None or second is None:
        return first or second
    return lambda message: second(first(message))


def _namespace_contents(server: str) -> Rewrite:
    """resources/read answers name their contents by URI: the aggregate's URIs, not upstream's."""
    def rewrite(message: dict[str, Any]) -> dict[str, Any]:
        result = message.get("result")
        if isinstance(result, dict) and isinstance(result.get("contents"), list):
            result["contents"] = [{**c, "uri": resource_uri(server, str(c.get("uri", "")))}
                                  if isinstance(c, dict) else c for c in result["contents"]]
        return message
    return rewrite
