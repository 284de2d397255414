"""MCP over Streamable HTTP on the two kinds of endpoint: one per server, ``/servers/{name}/mcp``,
and the aggregate ``/mcp`` with every entitled tool as ``{server}__{tool}``.

A request goes through named phases: authenticate; on a per-server endpoint, the visibility wall
(an invisible server answers exactly like one that does not exist); the protocol era, the session
and the wire checks (``protocol/wire.py``); then :meth:`McpEndpoint.call` — the gateway's own
answers (``handshake.py``), resolve the target (``routes.py``), admit (``admission.py``: one
verdict), record (``recording.py``: the record, the counts, the refusal), forward and relay
(``relay.py``). Client notifications end here (202), except a 2025-era cancellation, which follows
its call to the upstream; nothing else of a client's session reaches an upstream.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gwc.runtime.audit.record import Outcome
from gwc.runtime.bundle.format import Server
from gwc.runtime.bundle.read import Bundle
from gwc.runtime.governance.state import State
from gwc.runtime.mcp.admission import Admission, Verdict
from gwc.runtime.mcp.aggregate import Aggregate
from gwc.runtime.mcp.contracts import Contracts
from gwc.runtime.mcp.fan_in import MAX_FAN_IN, Source, merged, screen
from gwc.runtime.mcp.handshake import SESSION_HEADER, Handshake, built_result
from gwc.runtime.mcp.list_changed import UPSTREAM_OPEN_S, ListChangedStreams
from gwc.runtime.mcp.recording import Recording
from gwc.runtime.mcp.refusals import readable
from gwc.runtime.mcp.relay import Relay
from gwc.runtime.mcp.routes import AGGREGATE, Call, Routes
from gwc.runtime.mcp.sealed_sessions import Session, SessionSealer
from gwc.runtime.mcp.subscriptions import Subscriptions
from gwc.runtime.mcp.trail import Auditor
from gwc.runtime.metrics import Metrics
from gwc.runtime.policy.decide import Principal
from gwc.runtime.protocol.errors import INVALID_REQUEST, NOT_FOUND, SESSION_INVALID, RpcError
from gwc.runtime.protocol.wire import (
    check_limits,
    check_routing_headers,
    check_session_version,
    error_response,
    negotiate,
    parse_message,
    result_response,
    stateless_version,
    validate,
)
from gwc.runtime.upstream.catalog import UpstreamCatalog
from gwc.runtime.upstream.client import UpstreamClient

if TYPE_CHECKING:
    from gwc.runtime.telemetry.spans import Tracing

Caller = Callable[[web.Request], Awaitable[tuple[Bundle, Principal]]]


class McpEndpoint:
    def __init__(self, caller: Caller, active: Callable[[], Bundle | None], client: UpstreamClient,
                 sealer: SessionSealer, state: State, auditor: Auditor, metrics: Metrics,
                 list_changed: ListChangedStreams, public_url: str,
                 tracing: Tracing | None = None) -> None:
        """``tracing``: the node's spans, when it traces; without it a request takes no step
        of tracing (its authentication is wrapped here, once, and the other hooks are one test
        of ``_tracing`` each)."""
        self._caller, self._sealer, self._list_changed = caller, sealer, list_changed
        self._tracing = tracing
        if tracing is not None:
            self._caller = partial(_authenticated, tracing, caller)
        self._active = active
        self._catalog = catalog = UpstreamCatalog(client, metrics)
        self.contracts = Contracts(catalog, auditor, metrics, active)
        self.aggregate = Aggregate(catalog, self.contracts)
        self.recording = Recording(auditor, metrics, active, tracing)
        self.handshake = Handshake(sealer, self.recording, catalog)
        self.routes = Routes(self.aggregate)
        self.admission = Admission(state, public_url, self.contracts)
        self.relay = Relay(client, self.recording, auditor, metrics, sealer, self.contracts)
        self.subscriptions = Subscriptions(self.relay, self.aggregate, catalog, self.recording,
                                           list_changed, active)

    async def close(self) -> None:
        await self.contracts.close()
        await self.relay.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The front door: identity, the visibility wall, then the HTTP method."""
        endpoint = request.match_info.get("server", AGGREGATE)
        try:
            bundle, principal = await self._caller(request)
        except RpcError as exc:
            self.recording.unauthenticated(request, endpoint, exc)
            return error_response(exc)
        visible, seen = (await self.admission.wall(bundle, principal, endpoint) if endpoint
                         else (None, True))
        if not seen:
            error = RpcError(NOT_FOUND, f"unknown server '{endpoint}'", 404)
            await self.recording.unseen(request, bundle, principal, endpoint, error)
            return error_response(error)
        try:
            if request.method == "POST":
                return await self._post(request, bundle, principal, endpoint, visible)
            if request.method == "GET":
                if SESSION_HEADER not in request.headers:  # the stateless era has no GET stream
                    return web.Response(status=405, headers={"Allow": "POST, DELETE"})
                session = self._session(request, principal, endpoint)
                return await self._list_changed.stream(
                    request, principal, endpoint,
                    self._upstream_streams(request, bundle, principal, endpoint, session))
            if request.method == "DELETE":  # nothing is stored: a sealed session just ends
                self._session(request, principal, endpoint)
                return web.Response(status=204)
        except RpcError as exc:
            return error_response(exc)
        return web.Response(status=405, headers={"Allow": "GET, POST, DELETE"})

    def _upstream_streams(self, request: web.Request, bundle: Bundle, principal: Principal,
                          endpoint: str, session: Session) -> Source:
        """What upstreams send outside any call, for the client's GET stream: its server's on a
        server's endpoint; on the aggregate, every server's the caller sees (``fan_in.py``)."""
        names = ([endpoint] if endpoint else
                 self.aggregate.visible(bundle, principal)[:MAX_FAN_IN])
        servers = bundle.payload.servers
        sources: list[Source] = [
            partial(self.relay.upstream_messages, request, principal, name, servers[name],
                    session, screen(name, principal, self._active, self._catalog, not endpoint))
            for name in names]
        if endpoint:
            return sources[0]
        return partial(merged, sources, UPSTREAM_OPEN_S)

    def _session(self, request: web.Request, principal: Principal, endpoint: str) -> Session:
        """The caller's own session on this endpoint, from its sealed id."""
        sealed = request.headers.get(SESSION_HEADER)
        if not sealed:
            raise RpcError(INVALID_REQUEST, "Mcp-Session-Id is required after initialize (or "
                           "send 2026-07-28 requests, which need no session)", 400)
        session = self._sealer.open(sealed)
        if session is None or not session.belongs_to(principal, endpoint):
            raise RpcError(SESSION_INVALID, "unknown or expired session; initialize again", 404)
        return session

    async def _post(self, request: web.Request, bundle: Bundle, principal: Principal,
                    endpoint: str, visible: Server | None) -> web.StreamResponse:
        """One JSON-RPC message: its era, session and wire checks, then :meth:`call`. A refusal
        settles the call's record (when it has one) before it is answered."""
        message: dict[str, Any] = {}
        call: Call | None = None
        try:
            body = await request.read()
            message = parse_message(body)
            method = message.get("method")
            if method is None:  # a client's answer to an upstream's request
                check_limits(message, body)
                session: Session | None = self._session(request, principal, endpoint)
                call = Call(request, bundle, principal, endpoint, message, "", {}, session, body,
                            visible)
                return await self.relay.answer_upstream_request(call)
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
                check_session_version(request, version)
            check_routing_headers(request, method, params, version)
            validate(method, params, version, notification="id" not in message)
            if "id" not in message:  # a notification: only a cancellation goes on, to the upstream
                if method == "notifications/cancelled" and session is not None:
                    await self.relay.cancel(request, session, params)
                return web.Response(status=202)
            call = Call(request, bundle, principal, endpoint, message, method, params, session, body,
                        visible)
            self.recording.open(call)
            check_limits(message, body)  # refused with its record, before anything is judged
            return await self.call(call, version)
        except asyncio.CancelledError:  # the client went away, or the node is stopping
            if call is not None and call.record is not None:
                await self.recording.settle(call, Outcome.DISCONNECTED)
            raise
        except RpcError as exc:
            if call is not None and call.record is not None:
                await self.recording.settle(call, Outcome.REFUSED, exc)
            if call is not None and (result := readable(call, exc)) is not None:
                return result
            request_id = message.get("id") if isinstance(message, dict) else None
            return error_response(exc, request_id if isinstance(request_id, (str, int)) else None)

    async def call(self, call: Call, version: str) -> web.StreamResponse:
        """The phases of a request: the gateway's own answers; else resolve its target, admit it
        (one verdict), record the verdict, and forward it and relay the answer. A tools/call refused by
        policy, an approval or a limit is answered as a tool result (``refusals.py``)."""
        answer = await self.handshake.answer(call, version)
        if answer is not None:
            return answer
        if self.routes.lists_here(call):
            return await self._aggregate_list(call)
        if not call.endpoint and call.method == "logging/setLevel":
            return await self._aggregate_set_level(call)
        if call.method == "subscriptions/listen":
            return await self.subscriptions.listen(call)
        target = await self.routes.target(call)
        if self._tracing is None:
            verdict = await self.admission.admit(call, target)
        else:
            verdict = await self._tracing.child("gwc.admission", self.admission.admit(call, target),
                                                _verdict_attributes)
        self.recording.note(call, verdict)
        if verdict.refusal is not None:
            raise verdict.take_refusal()
        return await self.relay.forward(call, target, verdict)

    async def _aggregate_set_level(self, call: Call) -> web.StreamResponse:
        """``logging/setLevel`` on the aggregate: applied to the caller's session with every
        visible upstream that offers logging (its messages come with that upstream's calls)."""
        self.recording.answered(call)
        await self.relay.to_each(call, await self.aggregate.offering(call.bundle, call.principal,
                                                                     "logging"))
        await self.recording.settle(call, Outcome.ANSWERED)
        return result_response(call.id, {"resultType": "complete"} if call.session is None else {})

    async def _aggregate_list(self, call: Call) -> web.StreamResponse:
        """A list on the aggregate endpoint, built here from the upstreams' catalog."""
        self.recording.answered(call)
        response = built_result(call, await self.aggregate.listing(call.bundle, call.principal,
                                                                   call.method))
        await self.recording.settle(call, Outcome.ANSWERED)
        return response


async def _authenticated(tracing: Tracing, caller: Caller, request: web.Request
                         ) -> tuple[Bundle, Principal]:
    """The caller, authenticated in a span of its own (a tracing node's ``_caller``)."""
    return await tracing.child("gwc.authenticate", caller(request), lambda found: {
        "gwc.principal.kind": found[1].kind})


def _verdict_attributes(verdict: Verdict) -> dict[str, str | None]:
    return {"gwc.server": verdict.server or None, "gwc.decision": verdict.decision,
            "gwc.access": verdict.access, "error.type": (verdict.refusal.data["reason"]
                                                         if verdict.refusal is not None else None)}
