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

from gwc.runtime.audit.chain import arguments_record, utc_time
from gwc.runtime.audit.record import policy_fields
from gwc.runtime.bundle.format import Server
from gwc.runtime.bundle.read import Bundle
from gwc.runtime.governance.approvals import TooManyApprovals, approval_path, arguments_digest
from gwc.runtime.governance.backend import StateUnavailable
from gwc.runtime.governance.bypasses import Bypass, is_break_glass
from gwc.runtime.governance.limits import limits_for
from gwc.runtime.mcp.aggregate import Aggregate, with_manifest_annotations
from gwc.runtime.mcp.sealed_sessions import Session, SessionTooLarge
from gwc.runtime.policy.decide import Decision, Principal, decide, listed_tools, visible_server
from gwc.runtime.policy.names import resource_uri
from gwc.runtime.protocol.errors import (
    APPROVAL_REQUIRED,
    DENIED,
    HEADER_MISMATCH,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    NOT_FOUND,
    RATE_LIMITED,
    SESSION_INVALID,
    STATE_UNAVAILABLE,
    UNSUPPORTED_VERSION,
    UPSTREAM_UNAVAILABLE,
    RpcError,
)
from gwc.runtime.protocol.sse import EventRewriter, Rewrite
from gwc.runtime.protocol.wire import (
    check_limits,
    check_routing_headers,
    encode_header_value,
    error_response,
    negotiate,
    parse_message,
    result_response,
    stateless_version,
    validate,
)
from gwc.runtime.request_keys import REQUEST_ID, STARTED
from gwc.runtime.upstream.catalog import Kind, UpstreamCatalog
from gwc.runtime.upstream.client import Answer, Outgoing, UpstreamClient, UpstreamFailure
from gwc.runtime.upstream.isolation import Upstreams

if TYPE_CHECKING:
    from gwc.runtime.app import Gateway

log = logging.getLogger("gwc.mcp")

# Client headers a stateless (2026-07-28) request keeps on its way upstream; everything else (cookies,
# the client's Authorization, its Host, Mcp-Param-* headers the gateway cannot check against the
# body) stays at the gateway.
STATELESS_HEADERS = ("Accept", "Content-Type", "MCP-Protocol-Version", "Mcp-Method", "Mcp-Name")
RELAYED_RESPONSE_HEADERS = ("Content-Type", "Cache-Control")
# What the audit record of a request names as its tool: the tool, prompt or resource it is about.
NAMED_BY = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
# Requests that use an upstream (as opposed to listing it): they count against rate limits.
USES = frozenset(NAMED_BY)
# Requests the gateway answers itself, with no audit record.
ANSWERED_HERE = frozenset({"initialize", "ping", "server/discover"})
# Answer bytes that mean a stream carries its final JSON-RPC response: from there on the stream is
# held back until the call's audit record is durable.
RESPONSE_KEYS = (b'"result"', b'"error"')
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
UNKNOWN_SERVER = Decision("not_found", "unknown_server")  # what the wall decides, for the record
AGGREGATE_LISTS: dict[str, Kind] = {"tools/list": "tools", "prompts/list": "prompts",
                                   "resources/list": "resources",
                                   "resources/templates/list": "resourceTemplates"}
# The method label of gwc_requests_total: MCP methods the gateway serves and HTTP methods.
METHOD_LABELS = frozenset({*PASSED_METHODS, *NAMED_BY, *ANSWERED_HERE, "tools/call", "GET",
                           "POST", "DELETE"})
UNKNOWN_LABEL, OTHER_LABEL = "unknown", "other"


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
    record: dict[str, Any] | None = None  # its audit record, until written

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
        except RpcError as exc:  # no principal, so no audit record: a log line and a count
            log.info("refused", extra={"request_id": request[REQUEST_ID], "path": request.path,
                                       "reason": exc.data["reason"], "detail": exc.message})
            self._count(request.match_info.get("server", AGGREGATE), "", exc.data["reason"],
                        request.method)
            return error_response(exc)
        endpoint = request.match_info.get("server", AGGREGATE)
        if (endpoint and visible_server(bundle.payload, principal, endpoint) is None
                and await self._bypass(bundle, principal, endpoint) is None):
            return await self._unseen(request, bundle, principal, endpoint)
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

    async def _unseen(self, request: web.Request, bundle: Bundle, principal: Principal,
                      endpoint: str) -> web.Response:
        """A server outside the caller's visibility answers as one that does not exist; the
        attempt is recorded like every other denial."""
        error = RpcError(NOT_FOUND, f"unknown server '{endpoint}'", 404)
        self._count(endpoint, "", "not_found", request.method)
        auditor = self._gateway.auditor
        if auditor.enabled:
            record = self._record(auditor.record(request, bundle, principal, "call"), endpoint,
                                  None, endpoint)
            record.update(policy=policy_fields(UNKNOWN_SERVER), decision="not_found")
            await self._write(record, "refused", error, None, request[STARTED])
        return error_response(error)

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
        call: Call | None = None
        try:
            body = await request.read()
            message = parse_message(body)
            method = message.get("method")
            if method is None:  # a client's answer to an upstream's request
                check_limits(message, body)
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
            auditor = self._gateway.auditor
            if auditor.enabled and method not in ANSWERED_HERE:
                call.record = self._record(
                    auditor.record(request, bundle, principal,
                                   "call" if method in USES else "list"),
                    endpoint, method, endpoint or None)
            check_limits(message, body)  # refused with its record, before anything is judged
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
            if call is not None and call.record is not None:
                await self._settle(call, "refused", exc)
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
        self._count(call.endpoint, "", "allow", "initialize")
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
            tool = await self._admit(call, name, call.params.get("name"))
            return await self._forward(call, name, server, call.message, tool,
                                       server.tools[tool].timeout_ms)
        if call.method not in PASSED_METHODS:
            raise RpcError(METHOD_NOT_FOUND, f"method '{call.method}' is not supported by the "
                           "gateway", 404)
        bypass = await self._pass(call, name, call.params.get(NAMED_BY.get(call.method, "")))
        transform = None
        if call.method == "tools/list":
            transform = self._tools_filter(call, server, set(server.tools) if bypass else set(
                listed_tools(call.bundle.payload, call.principal, name)))
        return await self._forward(call, name, server, call.message, None, server.timeout_ms,
                                   transform)

    @staticmethod
    def _tools_filter(call: Call, server: Server, listed: set[str]) -> Rewrite:
        """Keep declared tools the caller sees; hints from the manifest, not the upstream."""

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
            if target is None or (visible_server(bundle.payload, principal, target[0]) is None
                                  and await self._bypass(bundle, principal, target[0]) is None):
                self._unresolved(call, params.get("name"))
                raise RpcError(NOT_FOUND, f"Unknown tool: {params.get('name')}")
            name, tool = target
            await self._admit(call, name, tool)
            server = bundle.payload.servers[name]
            return await self._forward(call, name, server, self._renamed(call, "name", tool), tool,
                                       server.tools[tool].timeout_ms)
        if method == "resources/read":
            target = self.aggregate.resolve_resource(bundle, principal, str(params.get("uri")))
            if target is None:
                self._unresolved(call, params.get("uri"))
                raise RpcError(NOT_FOUND, f"Resource not found: {params.get('uri')}")
            name, uri = target
            server = bundle.payload.servers[name]
            await self._pass(call, name, uri)
            return await self._forward(call, name, server, self._renamed(call, "uri", uri), None,
                                       server.timeout_ms, _namespace_contents(name))
        if method == "prompts/get":
            target = await self.aggregate.resolve_prompt(bundle, principal,
                                                         str(params.get("name")))
            if target is None:
                self._unresolved(call, params.get("name"))
                raise RpcError(NOT_FOUND, f"Unknown prompt: {params.get('name')}")
            name, prompt = target
            server = bundle.payload.servers[name]
            await self._pass(call, name, prompt)
            return await self._forward(call, name, server, self._renamed(call, "name", prompt),
                                       None, server.timeout_ms)
        if method not in AGGREGATE_LISTS:
            raise RpcError(METHOD_NOT_FOUND, f"method '{method}' is not supported on the "
                           "aggregate endpoint", 404)
        self._count(AGGREGATE, "", "allow", method)
        if method == "tools/list":
            items = await self.aggregate.tools(bundle, principal)
        elif method == "prompts/list":
            items = await self.aggregate.prompts(bundle, principal)
        else:
            items = await self.aggregate.resources(bundle, principal, AGGREGATE_LISTS[method])
        response = self._answer(call, {AGGREGATE_LISTS[method]: items})
        if call.record is not None:
            call.record["decision"] = "allow"
            await self._settle(call, "answered")
        return response

    @staticmethod
    def _renamed(call: Call, field: str, value: str) -> dict[str, Any]:
        return {**call.message, "params": {**call.params, field: value}}

    # -- policy, limits, approvals -----------------------------------------------------------------

    async def _admit(self, call: Call, name: str, tool: Any) -> str:
        """Decide a tools/call before anything is sent (policy, then limits, then approvals);
        returns the tool name or raises the refusal. The decision goes into the audit record."""
        if not isinstance(tool, str):
            raise RpcError(INVALID_REQUEST, "tools/call needs params.name", 400)
        bundle, principal = call.bundle, call.principal
        arguments = call.params.get("arguments") or {}
        decision = decide(bundle.payload, principal, name, tool, arguments)
        shadowed = decision.effect == "deny" and decision.mode == "shadow"
        outcome = "would_deny" if shadowed else decision.effect
        # Break-glass: an open bypass skips policy, limits and approvals (never auth or audit);
        # the policy is still evaluated, so the record says what it would have decided.
        declared = tool in bundle.payload.servers[name].tools
        bypass = await self._bypass(bundle, principal, name) if declared else None
        if bypass is not None:
            outcome = "bypass"
        record = call.record
        if record is not None:
            record.update(server=name, tool=tool,
                          access=bundle.payload.servers[name].tools[tool].access if declared
                          else None,
                          arguments=arguments_record(bundle.payload, name, tool, arguments),
                          policy=policy_fields(decision), decision=outcome,
                          bypass=bypass.id if bypass is not None else None)
        self._log_decision(call, name, tool, decision, outcome)
        if bypass is not None:
            self._count(name, tool, "bypass")
            return tool
        if decision.effect == "not_found":
            self._count(name, "", "not_found")
            raise RpcError(NOT_FOUND, f"Unknown tool: {tool}")
        if decision.effect == "deny" and not shadowed:
            self._count(name, tool, "deny")
            raise RpcError(DENIED, f"{principal.subject} may not call {tool} on {name}",
                           rules=list(decision.rule_ids))
        await self._limit(call, name, tool, decision)
        # Shadow mode makes only the access decision advisory: approvals still hold.
        if decision.approval_required:
            await self._approval(call, name, tool, arguments)
            outcome = "approved"
        self._count(name, tool, outcome)
        return tool

    async def _approval(self, call: Call, name: str, tool: str, arguments: Any) -> None:
        """Go on only with an approval granted for exactly this call (used up by going on);
        otherwise refuse, with the pending approval the caller's approvers must decide."""
        spec = call.bundle.payload.servers[name].tools[tool].approval
        assert spec is not None
        try:
            found = await self._gateway.state.approvals.redeem_or_request(
                call.principal, name, tool, arguments_digest(arguments), spec.approvers)
        except TooManyApprovals:  # answered as it is; counted like every refusal
            self._count(name, tool, "too_many_approvals")
            raise
        except StateUnavailable as exc:
            self._count(name, tool, "state_unavailable")
            log.warning("approvals unavailable", extra={
                "request_id": call.request[REQUEST_ID], "server": name, "reason": str(exc)})
            raise RpcError(STATE_UNAVAILABLE, "approvals cannot be checked: the gateway's "
                           "shared state is unreachable", 503) from None
        approval = found.approval
        if call.record is not None and approval is not None:
            call.record["approval"] = approval.id
        if found.status == "redeemed":
            if call.record is not None:
                call.record["decision"] = "approved"
            return
        if found.status == "denied" and approval is not None:
            self._count(name, tool, "approval_denied")
            if call.record is not None:
                call.record["decision"] = "deny"
            raise RpcError(DENIED, f"the approval of this call ({approval.id}) was denied by "
                           f"{approval.decided_by}", approval_id=approval.id)
        self._count(name, tool, "approval_required")
        if call.record is not None:
            call.record["decision"] = "approval_required"
        assert approval is not None
        url = self._gateway.config.public_url + approval_path(approval.id)
        raise RpcError(APPROVAL_REQUIRED, f"{tool} on {name} needs an approval: ask one of "
                       f"{', '.join(approval.approvers)} to approve {approval.id} "
                       f"(POST {url}/approve or `gwc approvals approve {approval.id}`), then "
                       "call again with the same arguments", approval_id=approval.id,
                       approve_url=url + "/approve", approvers=list(approval.approvers),
                       expires_at=utc_time(approval.expires))

    async def _bypass(self, bundle: Bundle, principal: Principal, server: str) -> Bypass | None:
        """The open break-glass bypass of ``server`` that covers this caller, if any (looked
        up only for members of the break-glass group)."""
        if not is_break_glass(bundle.payload, principal):
            return None
        return await self._gateway.state.bypasses.active(server)

    async def _pass(self, call: Call, name: str, target: Any) -> Bypass | None:
        """A request that needs no tool decision: visible is enough. Reads and prompts still
        count against the server's limits; lists do not. Returns the bypass it went under."""
        bypass = await self._bypass(call.bundle, call.principal, name)
        if call.record is not None:
            call.record.update(tool=target if isinstance(target, str) else None,
                               decision="bypass" if bypass else "allow",
                               bypass=bypass.id if bypass else None)
        if call.method in USES and bypass is None:
            await self._limit(call, name, None, None)
        self._count(name, "", "bypass" if bypass else "allow", call.method)
        return bypass

    def _unresolved(self, call: Call, target: Any) -> None:
        """An aggregate name that resolves to nothing the caller sees: recorded as not found."""
        if call.record is not None:
            call.record.update(tool=target if isinstance(target, str) else None,
                               decision="not_found")
        self._count(AGGREGATE, "", "not_found", call.method)

    async def _limit(self, call: Call, name: str, tool: str | None,
                     decision: Decision | None) -> None:
        """Every limit that applies (DESIGN rule 6), checked together: a refused call uses none."""
        limits = limits_for(call.bundle.payload, name, call.principal.subject, tool, decision)
        if not limits:
            return
        verdict = await self._gateway.state.limits.check_all(limits)
        if verdict.allowed:
            return
        retry = round(verdict.retry_after_s, 3)
        if call.record is not None:
            call.record["decision"] = "rate_limited"
        self._count(name, tool or "", "rate_limited", call.method)
        raise RpcError(RATE_LIMITED, f"rate limit reached ({verdict.limited_by}); retry in "
                       f"{retry:g} s", 429, retry_after_s=retry,
                       headers={"Retry-After": str(max(1, round(verdict.retry_after_s + 0.5)))})

    def _count(self, name: str, tool: str, decision: str, method: str = "tools/call") -> None:
        """Count a request. Labels never take a caller's words: a server name not in the bundle
        is ``unknown`` and a method outside the known set ``other``, so no caller can make
        series without end (tool names reach here only once resolved against the bundle)."""
        if name:
            bundle = self._gateway.store.active
            if bundle is None or name not in bundle.payload.servers:
                name = UNKNOWN_LABEL
        self._gateway.metrics.count_request(
            name, method if method in METHOD_LABELS else OTHER_LABEL, tool, decision)

    def _log_decision(self, call: Call, name: str, tool: str, decision: Decision,
                      outcome: str) -> None:
        """The decision as a debug log line; the audit trail is the record of it."""
        if log.isEnabledFor(logging.DEBUG):
            principal = call.principal
            log.debug("decision", extra={
                "request_id": call.request[REQUEST_ID], "subject": principal.subject,
                "kind": principal.kind, "acting_for": principal.acting_for,
                "groups": sorted(principal.groups), "server": name, "tool": tool,
                "access": decision.access, "decision": outcome, "reason": decision.reason,
                "rules": list(decision.rule_ids), "bundle_serial": call.bundle.serial})

    # -- audit ----------------------------------------------------------------------------------

    @staticmethod
    def _record(base: dict[str, Any], endpoint: str, method: str | None,
                server: str | None) -> dict[str, Any]:
        """A request's record with every field present, filled in as the request is decided."""
        base.update(endpoint=endpoint, method=method, server=server, tool=None, access=None,
                    arguments=None, policy=None, decision=None, approval=None, bypass=None)
        return base

    async def _settle(self, call: Call, outcome: str, error: RpcError | None = None,
                      answer: Answer | None = None) -> None:
        """Write the call's record (once). For an answer that used an upstream, a record that
        cannot be written withholds the answer (audit failure mode closed); a refusal stands."""
        record, call.record = call.record, None
        if record is not None:
            await self._write(record, outcome, error, answer, call.request[STARTED])

    async def _write(self, record: dict[str, Any], outcome: str, error: RpcError | None,
                     answer: Answer | None, started: float) -> None:
        total = time.perf_counter() - started
        upstream_s = answer.upstream_s if answer is not None else None
        record.update(outcome=outcome, error=error.data["reason"] if error else None,
                      upstream_status=answer.response.status if answer is not None else None,
                      latency_ms={"gateway": round((total - (upstream_s or 0.0)) * 1000, 3),
                                  "upstream": None if upstream_s is None
                                  else round(upstream_s * 1000, 3)})
        try:
            await self._gateway.auditor.write(record)
        except RpcError:
            if outcome in ("forwarded", "answered"):
                raise

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
        if call.record is not None:
            self._gateway.auditor.check_ready()
        try:
            async with self.client.exchange(name, server, call.principal,
                                            self._outgoing(call, message, tool),
                                            timeout_ms) as answer:
                response = await self._relay(call, answer, transform, name, timeout_ms)
        except UpstreamFailure as exc:
            self._gateway.metrics.count_upstream_error(name, exc.kind)
            log.warning("upstream failed", extra={"request_id": request[REQUEST_ID],
                                                  "server": name, "reason": exc.message})
            await self._settle(call, "failed", exc)
            return error_response(exc, call.id)
        finally:
            self._gateway.metrics.observe_latency(name, time.perf_counter() - request[STARTED])
        # A plain answer is sent once the handler returns: its record is durable before that.
        # A streamed one was settled before its last bytes (_relay_stream).
        await self._settle(call, "forwarded", None, answer)
        return response

    async def _relay(self, call: Call, answer: Answer, transform: Rewrite | None, name: str,
                     timeout_ms: int) -> web.StreamResponse:
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
        return await self._relay_stream(call, answer, headers, rewrite, name, timeout_ms)

    async def _relay_stream(self, call: Call, answer: Answer, headers: dict[str, str],
                            rewrite: Rewrite | None, name: str, timeout_ms: int
                            ) -> web.StreamResponse:
        """Relay an SSE answer as it comes. Once started, a failure can only end the stream.

        Notifications (progress, logs) pass at once; from the bytes that carry the final
        response on, the rest is held until the call's audit record is durable, so a client
        never holds a result the trail does not."""
        request, upstream = call.request, answer.response
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        rewriter = EventRewriter(rewrite) if rewrite is not None else None
        holding, held, tail = False, bytearray(), b""
        try:
            async for chunk in upstream.content.iter_any():
                out = rewriter.feed(chunk) if rewriter else chunk
                if not out:
                    continue
                if (not holding and call.record is not None
                                and _carries_response(tail + out)):
                    holding = True
                if holding:
                    held += out
                else:
                    await response.write(out)
                    tail = out[-16:]
            rest = bytes(held) + (rewriter.flush() if rewriter is not None else b"")
            try:
                await self._settle(call, "forwarded", None, answer)
            except RpcError as exc:  # the trail failed: the result is not handed out
                log.error("audit record not written; streamed answer withheld", extra={
                    "request_id": request[REQUEST_ID], "server": name, "reason": exc.message})
                rest = b"event: message\ndata: " + exc.body(call.id) + b"\n\n"
            await response.write(rest)
            await response.write_eof()
        except ConnectionResetError:  # the client went away: closing our side cancels upstream
            log.info("client disconnected", extra={"request_id": request[REQUEST_ID],
                                                   "server": name})
            await self._settle(call, "disconnected", None, answer)
        except (TimeoutError, aiohttp.ClientError, UnicodeDecodeError) as exc:
            kind = "timeout" if isinstance(exc, asyncio.TimeoutError) else "read"
            answer.broken = True
            self._gateway.metrics.count_upstream_error(name, kind)
            log.warning("upstream stream ended early", extra={
                "request_id": request[REQUEST_ID], "server": name, "reason": kind,
                "timeout_ms": timeout_ms})
            await self._settle(call, "failed", UpstreamFailure(
                UPSTREAM_UNAVAILABLE, kind, "the upstream's stream ended early"), answer)
        return response


def _carries_response(window: bytes) -> bool:
    return any(key in window for key in RESPONSE_KEYS)


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
