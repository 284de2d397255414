"""MCP over Streamable HTTP, one endpoint per server: ``/servers/{name}/mcp``.

Per request: authenticate, apply the visibility wall (an invisible server answers exactly like one
that does not exist), check the 2026-07-28 routing headers against the body, decide policy before
anything reaches the upstream, then forward the client's original bytes with the gateway's own
credential and the upstream's own Host. ``tools/list`` answers are filtered to the entitled,
declared tools with annotations from the manifest; every other answer, SSE streams included, is
relayed as it comes. Sessions and protocol versions are negotiated end to end with the upstream.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from mcp_types import methods as mcp_methods
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION
from pydantic import ValidationError

from runtime.bundle import Bundle
from runtime.bundle_format import Server
from runtime.identity import AuthError
from runtime.jsonrpc import (APPROVAL_REQUIRED, DENIED, HEADER_MISMATCH, INVALID_PARAMS,
                             INVALID_REQUEST, METHOD_NOT_FOUND, NOT_FOUND, PARSE_ERROR,
                             UNAUTHENTICATED, UNSUPPORTED_VERSION, UPSTREAM_TIMEOUT,
                             UPSTREAM_UNAVAILABLE, RpcError)
from runtime.policy import Principal, decide, entitlement, visible_server
from runtime.request_keys import REQUEST_ID, STARTED
from runtime.sse import rewrite_events
from runtime.upstream_auth import CredentialError

if TYPE_CHECKING:
    from runtime.app import Gateway

log = logging.getLogger("gwc.mcp")

# Headers a client may send that the upstream needs; everything else (cookies, the client's
# Authorization, its Host) stays at the gateway.
FORWARDED_REQUEST_HEADERS = ("Accept", "Content-Type", "MCP-Protocol-Version", "Mcp-Session-Id",
                             "Mcp-Method", "Mcp-Name", "Last-Event-ID", "X-Request-Id")
RELAYED_RESPONSE_HEADERS = ("Content-Type", "Mcp-Session-Id", "MCP-Protocol-Version",
                            "Cache-Control")
VISIBLE_METHODS = frozenset({
    "initialize", "ping", "server/discover", "tools/list", "resources/list",
    "resources/templates/list", "resources/read", "resources/subscribe", "resources/unsubscribe",
    "subscriptions/listen", "prompts/list", "prompts/get", "completion/complete",
    "logging/setLevel"})
NAMED_PARAM = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
META_VERSION = "io.modelcontextprotocol/protocolVersion"
STATELESS_ERA = "2026-07-28"
DEFAULT_LEGACY_VERSION = "2025-03-26"  # what a legacy request without a version header means


def _protocol_version(request: web.Request, method: str, params: dict[str, Any]) -> str:
    """The protocol version a request speaks: ``_meta`` (2026-07-28), else the header, else the
    version an ``initialize`` asks for, else the legacy default. Header and body must agree."""
    meta = params.get("_meta")
    header = request.headers.get("MCP-Protocol-Version")
    if isinstance(meta, dict) and isinstance(meta.get(META_VERSION), str):
        if header is not None and header != meta[META_VERSION]:
            raise RpcError(HEADER_MISMATCH, f"MCP-Protocol-Version {header!r} does not match the "
                                            f"body's {meta[META_VERSION]!r}", 400)
        return meta[META_VERSION]
    if header:
        return header
    if method == "initialize":  # negotiation: an unknown requested version is not an error
        requested = params.get("protocolVersion")
        return requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
    return DEFAULT_LEGACY_VERSION


def _validate(method: str, params: dict[str, Any], version: str, notification: bool) -> None:
    """Check the message against the SDK's types for its protocol version. Only checked: the
    original bytes are what gets forwarded, so fields this version does not know survive."""
    check = (mcp_methods.validate_client_notification if notification
             else mcp_methods.validate_client_request)
    try:
        check(method, version, params)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RpcError(INVALID_PARAMS, f"invalid params for {method}: {where}: {first['msg']}",
                       400) from None
    except KeyError:
        raise RpcError(METHOD_NOT_FOUND, f"method '{method}' does not exist in protocol version "
                                         f"{version}", 404) from None
    except ValueError:
        raise RpcError(UNSUPPORTED_VERSION, f"unsupported protocol version {version!r}", 400,
                       requested=version) from None


def _decode_header_value(value: str) -> str:
    """Mcp-Name values that are not plain ASCII travel as ``=?base64?<b64>?=``."""
    if value.startswith("=?base64?") and value.endswith("?="):
        try:
            return base64.b64decode(value[9:-2], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise RpcError(HEADER_MISMATCH, "Mcp-Name is not valid base64", 400) from None
    return value


def _check_routing_headers(request: web.Request, method: str, params: dict[str, Any],
                           version: str) -> None:
    """Mcp-Method (always) and Mcp-Name (named methods) must match the body; 2026-07-28 requires
    them, older versions are checked only when they send them."""
    stateless = version == STATELESS_ERA
    header_method = request.headers.get("Mcp-Method")
    if header_method is None:
        if stateless:
            raise RpcError(HEADER_MISMATCH, "Mcp-Method header is required", 400)
        return
    if header_method != method:
        raise RpcError(HEADER_MISMATCH, f"Mcp-Method {header_method!r} does not match the body's "
                                        f"method {method!r}", 400)
    field = NAMED_PARAM.get(method)
    if field is None:
        return
    header_name = request.headers.get("Mcp-Name")
    if header_name is None:
        if stateless:
            raise RpcError(HEADER_MISMATCH, "Mcp-Name header is required", 400)
        return
    if _decode_header_value(header_name) != params.get(field):
        raise RpcError(HEADER_MISMATCH, f"Mcp-Name does not match the body's {field}", 400)


def _json_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None
                   ) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json",
                        headers=headers)


def _error_response(error: RpcError, request_id: Any = None,
                    headers: dict[str, str] | None = None) -> web.Response:
    return _json_response(error.body(request_id), error.http_status, headers)


class McpProxy:
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def _session(self, server: Server) -> aiohttp.ClientSession:
        """One connection pool per upstream, capped at its max_concurrency."""
        session = self._sessions.get(server.upstream)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=server.max_concurrency, ttl_dns_cache=300)
            session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",))
            self._sessions[server.upstream] = session
        return session

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self._sessions.values()))

    def _unauthorized(self, request: web.Request, reason: str) -> web.Response:
        metadata = self._gateway.resource_metadata_url(request.path)
        challenge = (f'Bearer resource_metadata="{metadata}", error="invalid_token", '
                     f'error_description="{reason}"')
        return _error_response(RpcError(UNAUTHENTICATED, reason, 401), None,
                               {"WWW-Authenticate": challenge})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        bundle = self._gateway.store.active
        if bundle is None:
            return _error_response(RpcError(UPSTREAM_UNAVAILABLE, "the gateway has no valid "
                                            "bundle yet", 503))
        try:
            principal = await self._gateway.authenticator(bundle).authenticate(
                request.headers.get("Authorization"))
        except AuthError as exc:
            return self._unauthorized(request, str(exc))
        name = request.match_info["server"]
        server = visible_server(bundle.payload, principal, name)
        if server is None:
            return _error_response(RpcError(NOT_FOUND, f"unknown server '{name}'", 404))
        if request.method == "POST":
            return await self._post(request, bundle, principal, name, server)
        if request.method in ("GET", "DELETE"):
            return await self._forward(request, principal, name, server, None, None, None)
        return web.Response(status=405, headers={"Allow": "GET, POST, DELETE"})

    async def _post(self, request: web.Request, bundle: Bundle, principal: Principal, name: str,
                    server: Server) -> web.StreamResponse:
        request_id: Any = None
        try:
            body = await request.read()
            try:
                message = json.loads(body)
            except (UnicodeDecodeError, ValueError):
                raise RpcError(PARSE_ERROR, "request body is not valid JSON", 400) from None
            if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
                raise RpcError(INVALID_REQUEST, "expected one JSON-RPC 2.0 message object", 400)
            request_id = message.get("id")
            if isinstance(request_id, (dict, list, bool)):
                request_id = None
                raise RpcError(INVALID_REQUEST, "id must be a string or a number", 400)
            method = message.get("method")
            if method is None:  # a client's response to a server request: relay it
                return await self._forward(request, principal, name, server, body, None, None)
            params = message.get("params", {})
            if not isinstance(method, str) or not isinstance(params, dict):
                raise RpcError(INVALID_REQUEST, "method must be a string and params an object", 400)
            version = _protocol_version(request, method, params)
            _check_routing_headers(request, method, params, version)
            _validate(method, params, version, notification="id" not in message)
            if "id" not in message:
                return await self._forward(request, principal, name, server, body, None, None)
            tool = self._authorize(request, bundle, principal, name, method, params)
            return await self._forward(request, principal, name, server, body, method, tool,
                                       request_id, bundle)
        except RpcError as exc:
            return _error_response(exc, request_id)

    def _authorize(self, request: web.Request, bundle: Bundle, principal: Principal, name: str,
                   method: str, params: dict[str, Any]) -> str | None:
        """Decide before forwarding. Returns the tool name for tools/call."""
        metrics = self._gateway.metrics
        if method in VISIBLE_METHODS:
            metrics.count_request(name, method, "", "allow")
            return None
        if method != "tools/call":
            raise RpcError(METHOD_NOT_FOUND, f"method '{method}' is not supported by the gateway", 404)
        tool = params.get("name")
        if not isinstance(tool, str):
            raise RpcError(INVALID_REQUEST, "tools/call needs params.name", 400)
        decision = decide(bundle.payload, principal, name, tool, params.get("arguments") or {})
        shadowed = decision.effect == "deny" and decision.mode == "shadow"
        passes = decision.effect == "allow" or shadowed
        # Whatever lets a call through (a grant, or shadow mode), an approval tool still waits.
        waits = passes and decision.approval_required
        outcome = ("approval_required" if waits else "would_deny" if shadowed
                   else decision.effect)
        if log.isEnabledFor(logging.INFO):  # the hot path builds no log payload it will not write
            log.info("decision", extra={
                "request_id": request[REQUEST_ID], "subject": principal.subject,
                "kind": principal.kind, "acting_for": principal.acting_for,
                "groups": sorted(principal.groups), "server": name, "tool": tool,
                "access": decision.access, "decision": outcome, "reason": decision.reason,
                "rules": list(decision.rule_ids), "bundle_serial": bundle.serial})
        metrics.count_request(name, method, tool if decision.effect != "not_found" else "", outcome)
        if decision.effect == "not_found":
            raise RpcError(NOT_FOUND, f"Unknown tool: {tool}")
        if not passes:
            raise RpcError(DENIED, f"{principal.subject} may not call {tool} on {name}",
                           rules=list(decision.rule_ids))
        if waits:
            raise RpcError(APPROVAL_REQUIRED, f"{tool} on {name} needs an approval, and this "
                           "gateway does not run approvals yet")
        return tool

    def _upstream_headers(self, request: web.Request, principal: Principal, server: Server,
                          tool: str | None) -> dict[str, str]:
        headers = {h: v for h in FORWARDED_REQUEST_HEADERS if (v := request.headers.get(h))}
        headers.update((k, v) for k, v in request.headers.items() if k.lower().startswith("mcp-param-"))
        headers["X-Request-Id"] = request[REQUEST_ID]
        key, value = self._gateway.credentials.header(server, principal, tool)
        headers[key] = value
        return headers

    async def _forward(self, request: web.Request, principal: Principal, name: str, server: Server,
                       body: bytes | None, method: str | None, tool: str | None,
                       request_id: Any = None, bundle: Bundle | None = None) -> web.StreamResponse:
        timeout_ms = server.tools[tool].timeout_ms if tool else server.timeout_ms
        timeout = aiohttp.ClientTimeout(total=None, connect=min(10.0, timeout_ms / 1000),
                                        sock_read=timeout_ms / 1000)
        started = time.perf_counter()
        upstream: aiohttp.ClientResponse | None = None
        try:
            headers = self._upstream_headers(request, principal, server, tool)
            upstream = await self._session(server).request(
                request.method, server.upstream, data=body, headers=headers, timeout=timeout,
                allow_redirects=False)
            self._gateway.metrics.observe_upstream(name, time.perf_counter() - started)
            return await self._relay(request, upstream, method, bundle, principal, name, server,
                                     timeout_ms)
        except CredentialError as exc:  # the caller learns nothing of the node's configuration
            log.error("upstream credential missing", extra={
                "request_id": request[REQUEST_ID], "server": name, "reason": str(exc)})
            return self._upstream_failed(request, name, request_id, UPSTREAM_UNAVAILABLE,
                                         "credential", "the gateway cannot authenticate to this "
                                         "upstream")
        except RpcError as exc:  # the upstream's answer could not be filtered
            return self._upstream_failed(request, name, request_id, exc.code, "bad_answer",
                                         exc.message)
        except asyncio.TimeoutError:
            return self._upstream_failed(request, name, request_id, UPSTREAM_TIMEOUT, "timeout",
                                         f"upstream did not answer within {timeout_ms} ms")
        except aiohttp.ClientError as exc:
            kind, what = ("connect", "unreachable") if upstream is None else ("read", "failed")
            return self._upstream_failed(request, name, request_id, UPSTREAM_UNAVAILABLE, kind,
                                         f"upstream {what} ({exc.__class__.__name__})")
        finally:
            if upstream is not None:
                upstream.release()
            self._gateway.metrics.observe_latency(name, time.perf_counter() - request[STARTED])

    async def _relay(self, request: web.Request, upstream: aiohttp.ClientResponse,
                     method: str | None, bundle: Bundle | None, principal: Principal, name: str,
                     server: Server, timeout_ms: int) -> web.StreamResponse:
        """The upstream's answer to the client: tools/list filtered, plain answers in one write,
        SSE streams as they come."""
        headers = {h: v for h in RELAYED_RESPONSE_HEADERS if (v := upstream.headers.get(h))}
        content_type = upstream.headers.get("Content-Type", "")
        if method == "tools/list" and upstream.status == 200 and bundle is not None:
            content = self._filter_tools(await upstream.read(), content_type, bundle, principal,
                                         name, server)
            return web.Response(body=content, status=upstream.status, headers=headers)
        if not content_type.startswith("text/event-stream"):
            return web.Response(body=await upstream.read(), status=upstream.status, headers=headers)
        return await self._relay_stream(request, upstream, headers, name, timeout_ms)

    async def _relay_stream(self, request: web.Request, upstream: aiohttp.ClientResponse,
                            headers: dict[str, str], name: str, timeout_ms: int
                            ) -> web.StreamResponse:
        """Relay an SSE answer as it comes. Once started, a failure can only end the stream."""
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        except ConnectionResetError:  # the client went away: closing our side cancels upstream
            log.info("client disconnected", extra={"request_id": request[REQUEST_ID],
                                                   "server": name})
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            kind = "timeout" if isinstance(exc, asyncio.TimeoutError) else "read"
            self._gateway.metrics.count_upstream_error(name, kind)
            log.warning("upstream stream ended early", extra={
                "request_id": request[REQUEST_ID], "server": name, "reason": kind,
                "timeout_ms": timeout_ms})
        return response

    def _upstream_failed(self, request: web.Request, name: str, request_id: Any, code: int,
                         kind: str, message: str) -> web.Response:
        self._gateway.metrics.count_upstream_error(name, kind)
        log.warning("upstream failed", extra={"request_id": request[REQUEST_ID], "server": name,
                                              "reason": message})
        return _error_response(RpcError(code, message, 504 if kind == "timeout" else 502),
                               request_id)

    def _filter_tools(self, content: bytes, content_type: str, bundle: Bundle,
                      principal: Principal, name: str, server: Server) -> bytes:
        """Keep declared, entitled tools; annotations come from the manifest, not the upstream."""
        def rewrite(message: dict[str, Any]) -> dict[str, Any]:
            result = message.get("result")
            if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
                return message
            kept = []
            for tool in result["tools"]:
                spec = server.tools.get(tool.get("name")) if isinstance(tool, dict) else None
                if spec is None or (spec.mode != "shadow" and entitlement(
                        bundle.payload, principal, name, tool["name"]) is None):
                    continue
                upstream_annotations = tool.get("annotations") or {}
                annotations = {k: v for k, v in upstream_annotations.items() if k == "title"}
                annotations.update(readOnlyHint=spec.access == "read",
                                   destructiveHint=spec.access == "write")
                kept.append({**tool, "annotations": annotations})
            return {**message, "result": {**result, "tools": kept}}

        if content_type.startswith("text/event-stream"):
            try:
                return rewrite_events(content, rewrite)
            except UnicodeDecodeError:
                raise RpcError(UPSTREAM_UNAVAILABLE, "upstream answered tools/list with "
                               "undecodable events") from None
        try:
            message = json.loads(content)
        except ValueError:
            raise RpcError(UPSTREAM_UNAVAILABLE, "upstream answered tools/list with invalid JSON")
        return json.dumps(rewrite(message) if isinstance(message, dict) else message).encode()
