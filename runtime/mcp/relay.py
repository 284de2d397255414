"""An admitted request to its upstream (``upstream/client.py``, with the gateway's own credential)
and the answer back to the client: plain answers in one write, SSE streams as they come, rewritten
only where they must be (the client's id restored, lists filtered, URIs namespaced). The call's
record is settled before the client holds the result: a streamed answer's tail is held until it is
durable."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from gwc.runtime.audit.record import Outcome
from gwc.runtime.bundle.format import Server
from gwc.runtime.mcp.admission import Verdict
from gwc.runtime.mcp.contracts import Contracts
from gwc.runtime.mcp.disconnects import Disconnects
from gwc.runtime.mcp.handshake import SESSION_HEADER
from gwc.runtime.mcp.recording import Recording
from gwc.runtime.mcp.routes import AGGREGATE, Call, Target
from gwc.runtime.mcp.sealed_sessions import SessionSealer, UpstreamRequest
from gwc.runtime.mcp.trail import Auditor
from gwc.runtime.metrics import Metrics
from gwc.runtime.policy.decide import Principal, listed_on, visible_server
from gwc.runtime.protocol.errors import UPSTREAM_UNAVAILABLE, RpcError
from gwc.runtime.protocol.sse import EventRewriter, Rewrite, Screen
from gwc.runtime.protocol.wire import NAMED_PARAM, encode_header_value, error_response
from gwc.runtime.request_keys import REQUEST_ID, STARTED
from gwc.runtime.upstream.client import (
    Answer,
    ClientTerms,
    Outgoing,
    Stream,
    UpstreamClient,
    UpstreamFailure,
    json_headers,
)
from gwc.runtime.upstream.session_pool import UpstreamSession

log = logging.getLogger("gwc.mcp")
# Client headers a stateless (2026-07-28) request keeps on its way upstream; everything else (cookies,
# the client's Authorization, its Host, Mcp-Param-* headers the gateway cannot check against the
# body) stays at the gateway.
STATELESS_HEADERS = ("Accept", "Content-Type", "MCP-Protocol-Version", "Mcp-Method", "Mcp-Name")
RELAYED_RESPONSE_HEADERS = ("Content-Type", "Cache-Control")
# Answer bytes that mean a stream carries its final JSON-RPC response: from there on the stream is
# held back until the call's audit record is durable.
RESPONSE_KEYS = (b'"result"', b'"error"')


# A 2025-era request in flight on this node, by (the client's session id, its request id): where
# it went and under which upstream id, so the client's notifications/cancelled can follow it.
InFlight = tuple[str, Server, Principal, ClientTerms, int]
CANCEL_TIMEOUT_MS = 5000


class Relay:
    def __init__(self, client: UpstreamClient, recording: Recording, auditor: Auditor,
                 metrics: Metrics, sealer: SessionSealer, contracts: Contracts) -> None:
        self.client, self._sealer, self._contracts = client, sealer, contracts
        self._recording, self._auditor, self._metrics = recording, auditor, metrics
        self._in_flight: dict[tuple[str, Any], InFlight] = {}
        self._disconnects = Disconnects()

    async def _deliver(self, name: str, server: Server, principal: Principal, out: Outgoing,
                       timeout_ms: int) -> None:
        """Send something whose answer nobody waits for (a notification, a client's answer, a
        level); an upstream that does not take it is logged."""
        try:
            async with self.client.exchange(name, server, principal, out, timeout_ms) as answer:
                await answer.response.read()
        except UpstreamFailure as exc:
            log.warning("upstream did not take a message", extra={
                "request_id": out.request_id, "server": name, "method": out.method,
                "reason": exc.message})

    async def to_each(self, call: Call, names: list[str]) -> None:
        """The request to each named server at once (``logging/setLevel`` on ``/mcp``, in the
        caller's upstream session there)."""
        servers = call.bundle.payload.servers
        await asyncio.gather(*(self._deliver(name, servers[name], call.principal,
                                             self._outgoing(call, call.message, None),
                                             servers[name].timeout_ms) for name in names))

    async def cancel(self, request: web.Request, session: ClientTerms,
                     params: dict[str, Any]) -> None:
        """A client's ``notifications/cancelled`` (2025 era), to the upstream running the call,
        under the id the gateway sent it with. A call this node is not running (finished, or on
        another node) is left alone: the client stops waiting either way."""
        key = (request.headers.get(SESSION_HEADER, ""), params.get("requestId"))
        found = self._in_flight.get(key)
        if found is None:
            return
        name, server, principal, terms, upstream_id = found
        reason = params.get("reason")
        message = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {
            "requestId": upstream_id, **({"reason": reason} if isinstance(reason, str) else {})}}
        await self._deliver(name, server, principal, Outgoing(
            "notifications/cancelled", message, terms, request[REQUEST_ID],
            headers=json_headers()), CANCEL_TIMEOUT_MS)

    async def forward(self, call: Call, target: Target, verdict: Verdict) -> web.StreamResponse:
        """An admitted request to its server; the answer back."""
        server = target.server
        assert server is not None
        if call.method == "tools/call":
            return await self._forward(call, target.name, server, target.message, verdict.tool,
                                       server.tools[target.named].timeout_ms)
        rewrite = target.rewrite
        if call.method == "tools/list":  # only on a per-server endpoint: the aggregate lists here
            rewrite = self._tools_filter(call, target.name, server, set(server.tools)
                                         if verdict.bypass else set(listed_on(
                                             call.bundle.payload, target.visible, call.principal)))
        return await self._forward(call, target.name, server, target.message, None,
                                   server.timeout_ms, rewrite)

    async def answer_upstream_request(self, call: Call) -> web.StreamResponse:
        """Relay a client's answer (to an elicitation, sampling...) to the upstream session that
        asked, under the upstream's own id: the id the client answers is the sealed one the relay
        gave the request (:meth:`_sealer_for`), so any node can route it, on either kind of
        endpoint. An answer to nothing the gateway sealed, or not this caller's, goes nowhere."""
        asked = self._sealer.open_request(call.id)
        if (asked is None or asked.subject != call.principal.subject
                or call.endpoint not in (AGGREGATE, asked.server)
                or visible_server(call.bundle.payload, call.principal, asked.server) is None):
            log.info("an answer to no request of this caller's was dropped",
                     extra={"request_id": call.request[REQUEST_ID]})
            return web.Response(status=202)
        server = call.bundle.payload.servers[asked.server]
        await self._deliver(asked.server, server, call.principal, Outgoing(
            "", {**call.message, "id": asked.request_id}, call.session, call.request[REQUEST_ID],
            headers=json_headers(), to_session=(asked.session_id, asked.protocol_version)),
            server.timeout_ms)
        return web.Response(status=202)

    def upstream_messages(self, request: web.Request, principal: Principal, name: str,
                          server: Server, session: ClientTerms, screen: Screen
                          ) -> AbstractAsyncContextManager[AsyncIterator[bytes] | None]:
        """What the upstream sends outside any call (2025 era: its GET stream), as events for
        the client's own GET stream: what ``screen`` lets through (``fan_in.screen``), requests
        (elicitation, sampling...) with sealed ids so the client's answers find their way back.
        None when the upstream keeps no such stream."""
        return self._events(self.client.listen(name, server, principal, session,
                                               request[REQUEST_ID]),
                            name, principal.subject, screen)

    def upstream_subscription(self, call: Call, name: str, server: Server,
                              message: dict[str, Any], screen: Screen
                              ) -> AbstractAsyncContextManager[AsyncIterator[bytes] | None]:
        """The upstream's ``subscriptions/listen`` stream (2026-07-28) for ``message``, as
        events for the client's own listen stream (``subscriptions.py``)."""
        return self._events(self.client.subscribe(name, server, call.principal, self._outgoing(
            call, message, None)), name, call.principal.subject, screen)

    @asynccontextmanager
    async def _events(self, opening: AbstractAsyncContextManager[Stream | None], name: str,
                      subject: str, screen: Screen
                      ) -> AsyncIterator[AsyncIterator[bytes] | None]:
        async with opening as opened:
            if opened is None:
                yield None
                return
            stream, upstream = opened
            seal = self._sealer_for(upstream, name, subject)

            def screened(message: dict[str, Any]) -> dict[str, Any] | None:
                kept = screen(message)
                return seal(kept) if kept is not None else None
            rewriter = EventRewriter(screened)

            async def events() -> AsyncIterator[bytes]:
                async for chunk in stream:
                    out = rewriter.feed(chunk)
                    if out:
                        yield out
            yield events()

    def _sealer_for(self, session: UpstreamSession | None, name: str, subject: str) -> Rewrite:
        """Seals the ids of an upstream's requests to the client (see UpstreamRequest)."""
        def rewrite(message: dict[str, Any]) -> dict[str, Any]:
            if "method" in message and "id" in message and session is not None:
                message["id"] = self._sealer.seal_request(UpstreamRequest(
                    name, session.session_id, session.protocol_version, message["id"], subject))
            return message
        return rewrite

    async def close(self) -> None:
        await self._disconnects.close()
        await self.client.close()

    def _tools_filter(self, call: Call, name: str, server: Server, listed: set[str]) -> Rewrite:
        """Keep declared tools the caller sees, as ``contracts.py`` shows them (the pinned
        definition, hints from the manifest), the upstream's list compared with the pins."""

        def rewrite(message: dict[str, Any]) -> dict[str, Any]:
            result = message.get("result")
            if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
                return message
            self._contracts.observe(call.bundle, name, result["tools"])
            shown = (self._contracts.view(name, server, t, t["name"]) for t in result["tools"]
                     if isinstance(t, dict) and t.get("name") in listed)
            filtered = {**result, "tools": [t for t in shown if t is not None]}
            if "cacheScope" in result:  # the list is this caller's now, whatever upstream said
                filtered["cacheScope"] = "private"
            return {**message, "result": filtered}
        return rewrite

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
        if not unchanged and "Mcp-Name" in headers and call.method in NAMED_PARAM:
            headers["Mcp-Name"] = encode_header_value(message["params"][NAMED_PARAM[call.method]])
        return Outgoing(call.method, message, None, request[REQUEST_ID], tool,
                        body=call.body if unchanged else None, headers=headers)

    async def _forward(self, call: Call, name: str, server: Server, message: dict[str, Any],
                       tool: str | None, timeout_ms: int, transform: Rewrite | None = None
                       ) -> web.StreamResponse:
        request = call.request
        if call.record is not None:
            self._auditor.check_ready()
        out = self._outgoing(call, message, tool)
        key = None
        if call.session is not None and call.method and call.id is not None:
            out.upstream_id = self.client.new_id()
            key = (request.headers.get(SESSION_HEADER, ""), call.id)
            self._in_flight[key] = (name, server, call.principal, call.session, out.upstream_id)
        else:  # stateless: the client closing its stream cancels the request, upstream too
            self._disconnects.watch(request)
        try:
            async with self.client.exchange(name, server, call.principal, out,
                                            timeout_ms) as answer:
                response = await self._relay(call, answer, transform, name, timeout_ms)
        except UpstreamFailure as exc:
            self._metrics.count_upstream_error(name, exc.kind)
            log.warning("upstream failed", extra={"request_id": request[REQUEST_ID],
                                                  "server": name, "reason": exc.message})
            await self._recording.settle(call, Outcome.FAILED, exc)
            return error_response(exc, call.id)
        except asyncio.CancelledError:  # its record is settled by the endpoint
            if key is None and self._disconnects.unwatch(request):
                log.info("client cancelled (closed its stream); upstream request ended",
                         extra={"request_id": request[REQUEST_ID], "server": name})
            raise
        finally:
            self._metrics.observe_latency(name, time.perf_counter() - request[STARTED])
            if key is not None:
                self._in_flight.pop(key, None)
            else:
                self._disconnects.unwatch(request)
        # A plain answer is sent once the handler returns: its record is durable before that.
        # A streamed one was settled before its last bytes (_relay_stream).
        await self._recording.settle(call, Outcome.FORWARDED, None, answer)
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
        if call.session is not None:  # 2025 era: an upstream may ask the client things
            rewrite = _chain(rewrite, self._sealer_for(answer.session, name,
                                                       call.principal.subject))
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
                await self._recording.settle(call, Outcome.FORWARDED, None, answer)
            except RpcError as exc:  # the trail failed: the result is not handed out
                log.error("audit record not written; streamed answer withheld", extra={
                    "request_id": request[REQUEST_ID], "server": name, "reason": exc.message})
                rest = b"event: message\ndata: " + exc.body(call.id) + b"\n\n"
            await response.write(rest)
            await response.write_eof()
        except ConnectionResetError:  # the client went away: closing our side cancels upstream
            log.info("client disconnected", extra={"request_id": request[REQUEST_ID],
                                                   "server": name})
            await self._recording.settle(call, Outcome.DISCONNECTED, None, answer)
        except (TimeoutError, aiohttp.ClientError, UnicodeDecodeError) as exc:
            kind = "timeout" if isinstance(exc, asyncio.TimeoutError) else "read"
            answer.broken = True
            self._metrics.count_upstream_error(name, kind)
            log.warning("upstream stream ended early", extra={
                "request_id": request[REQUEST_ID], "server": name, "reason": kind,
                "timeout_ms": timeout_ms})
            await self._recording.settle(call, Outcome.FAILED, UpstreamFailure(
                UPSTREAM_UNAVAILABLE, kind, "the upstream's stream ended early"), answer)
        return response


def _carries_response(window: bytes) -> bool:
    return any(key in window for key in RESPONSE_KEYS)


def _chain(first: Rewrite | None, second: Rewrite | None) -> Rewrite | None:
    if first is None or second is None:
        return first or second
    return lambda message: second(first(message))
