"""The relay of ``gwc connect`` against a scripted gateway in this process: the headers of each
era, answers as JSON or SSE, the gateway's own requests and messages, a lost session opened
again, retries and what is never repeated, cancellation, and bad input."""
from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gwc.compiler.client.connect import Bridge
from gwc.compiler.client.sign_in import SignInError

INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {"elicitation": {}},
    "clientInfo": {"name": "c", "version": "1"}}}
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}
Handler = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


def result(message: dict[str, Any], value: dict[str, Any] | None = None) -> web.Response:
    return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": value or {}})


async def sse(request: web.Request, *messages: dict[str, Any], end: bool = True
              ) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for message in messages:
        await response.write(f"event: message\ndata: {json.dumps(message)}\n\n".encode())
    if end:
        await response.write_eof()
    return response


class Gateway:
    """Records every request; ``on`` maps a method (or "answer" for the client's answers, "GET")
    to a handler; initialize opens session ``s<n>``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str], dict[str, Any] | None]] = []
        self.on: dict[str, Handler] = {}
        self.sessions = 0
        self.live: set[str] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.method == "POST" else None
        self.seen.append((request.method, dict(request.headers), body))
        if request.method == "GET":
            return await self.on.get("GET", lambda r, m: self._no_get())(request, {})
        if request.method == "DELETE":
            return web.Response(status=204)
        assert body is not None
        method = body.get("method", "answer")
        if method in self.on:
            return await self.on[method](request, body)
        if method == "initialize":
            self.sessions += 1
            session = f"s{self.sessions}"
            self.live.add(session)
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "serverInfo": {"name": "gwc", "version": "1"}}}, headers={"Mcp-Session-Id": session})
        session = request.headers.get("Mcp-Session-Id")
        if session is not None and session not in self.live:
            return web.json_response({"jsonrpc": "2.0", "id": body.get("id"), "error": {
                "code": -32006, "message": "unknown or expired session"}}, status=404)
        if "id" not in body:
            return web.Response(status=202)
        return result(body, {"echo": method})

    async def _no_get(self) -> web.Response:
        return web.Response(status=405)

    def posts(self, method: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
        return [(h, b) for m, h, b in self.seen if m == "POST" and b is not None
                and b.get("method", "answer") == method]


class Bearer:
    def __init__(self) -> None:
        self.current, self.refusals = "t1", 0

    async def token(self) -> str | None:
        return self.current

    async def refused(self, sent: str | None, requested: str, challenge: str | None) -> str:
        self.refusals += 1
        if self.refusals > 1:
            raise SignInError("no more tokens")
        self.current = "t2"
        return self.current


class Client:
    """The local client's side: lines in, messages out."""

    def __init__(self, bridge: Bridge, out: asyncio.Queue[dict[str, Any]]) -> None:
        self.bridge, self.out = bridge, out

    def send(self, message: Any) -> None:
        self.bridge.from_client(json.dumps(message).encode())

    async def next(self, timeout_s: float = 5) -> dict[str, Any]:
        return await asyncio.wait_for(self.out.get(), timeout_s)

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self.send(message)
        while True:
            answer = await self.next()
            if answer.get("id") == message["id"] and "method" not in answer:
                return answer


@pytest.fixture
async def gateway() -> Gateway:
    return Gateway()


@pytest.fixture
async def connected(aiohttp_server: Any, gateway: Gateway) -> Any:
    app = web.Application()
    app.router.add_route("*", "/mcp", gateway.handle)
    server = await aiohttp_server(app)
    out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    bearer = Bearer()

    async def send(message: dict[str, Any]) -> None:
        await out.put(message)

    async with aiohttp.ClientSession() as http:
        bridge = Bridge(str(server.make_url("")).rstrip("/"), bearer, http, send, retry_for_s=2)
        yield Client(bridge, out)
        await bridge.close()


async def test_headers_follow_each_messages_era(connected: Client, gateway: Gateway) -> None:
    assert (await connected.request(INIT))["result"]["protocolVersion"] == "2025-11-25"
    await connected.request({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                             "params": {"name": "caf\u00e9", "arguments": {}}})
    await connected.request({"jsonrpc": "2.0", "id": 2, "method": "tools/list",
                             "params": {"_meta": META}})
    (init_headers, _), = gateway.posts("initialize")
    assert "MCP-Protocol-Version" not in init_headers and "Mcp-Session-Id" not in init_headers
    assert init_headers["Authorization"] == "Bearer t1"
    assert "application/json" in init_headers["Accept"]
    assert "text/event-stream" in init_headers["Accept"]
    (call, _), = gateway.posts("tools/call")
    assert (call["MCP-Protocol-Version"], call["Mcp-Session-Id"]) == ("2025-11-25", "s1")
    assert call["Mcp-Method"] == "tools/call"
    assert call["Mcp-Name"] == "=?base64?" + base64.b64encode("caf\u00e9".encode()).decode() + "?="
    (stateless, _), = gateway.posts("tools/list")
    assert stateless["MCP-Protocol-Version"] == "2026-07-28" and "Mcp-Session-Id" not in stateless


async def test_sse_answers_carry_notifications_and_the_gateways_requests(
        connected: Client, gateway: Gateway) -> None:
    async def streamed(request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        return await sse(request,
                         {"jsonrpc": "2.0", "method": "notifications/progress",
                          "params": {"progressToken": "p", "progress": 1}},
                         {"jsonrpc": "2.0", "id": "e1", "method": "elicitation/create",
                          "params": {"message": "sure?"}},
                         {"jsonrpc": "2.0", "id": message["id"], "result": {"done": True}})
    gateway.on["tools/call"] = streamed
    await connected.request(INIT)
    connected.send({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "x"}})
    assert (await connected.next())["method"] == "notifications/progress"
    assert (await connected.next())["method"] == "elicitation/create"
    assert (await connected.next()) == {"jsonrpc": "2.0", "id": 5, "result": {"done": True}}
    connected.send({"jsonrpc": "2.0", "id": "e1", "result": {"action": "accept"}})  # the answer
    for _ in range(50):
        if gateway.posts("answer"):
            break
        await asyncio.sleep(0.02)
    (headers, body), = gateway.posts("answer")
    assert body == {"jsonrpc": "2.0", "id": "e1", "result": {"action": "accept"}}
    assert headers["Mcp-Session-Id"] == "s1" and "Mcp-Method" not in headers


async def test_the_get_stream_opens_after_initialized_and_relays(connected: Client,
                                                                 gateway: Gateway) -> None:
    opened = asyncio.Event()

    async def listen(request: web.Request, _: dict[str, Any]) -> web.StreamResponse:
        if opened.is_set():
            await asyncio.sleep(30)
        opened.set()
        return await sse(request, {"jsonrpc": "2.0",
                                   "method": "notifications/tools/list_changed"})
    gateway.on["GET"] = listen
    await connected.request(INIT)
    connected.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert (await connected.next())["method"] == "notifications/tools/list_changed"
    get = next(h for m, h, _ in gateway.seen if m == "GET")
    assert (get["Mcp-Session-Id"], get["MCP-Protocol-Version"]) == ("s1", "2025-11-25")


async def test_a_lost_session_is_opened_again_with_the_clients_initialize(
        connected: Client, gateway: Gateway) -> None:
    await connected.request(INIT)
    gateway.live.clear()  # the gateway forgot every session (a restart without shared keys)
    answer = await connected.request({"jsonrpc": "2.0", "id": 9, "method": "tools/list"})
    assert answer == {"jsonrpc": "2.0", "id": 9, "result": {"echo": "tools/list"}}
    _, again = gateway.posts("initialize")
    assert again[1]["params"] == INIT["params"] and again[1]["id"] != INIT["id"]
    assert gateway.posts("notifications/initialized")[0][0]["Mcp-Session-Id"] == "s2"
    assert [h.get("Mcp-Session-Id") for h, _ in gateway.posts("tools/list")] == ["s1", "s2"]
    assert connected.out.empty()  # the bridge's own initialize is not the client's business


async def test_a_404_for_an_unknown_method_is_relayed_not_a_lost_session(
        connected: Client, gateway: Gateway) -> None:
    async def unknown(request: web.Request, message: dict[str, Any]) -> web.Response:
        return web.json_response({"jsonrpc": "2.0", "id": message["id"], "error": {
            "code": -32601, "message": "no such method"}}, status=404)
    gateway.on["foo/bar"] = unknown
    await connected.request(INIT)
    answer = await connected.request({"jsonrpc": "2.0", "id": 3, "method": "foo/bar"})
    assert answer["error"]["code"] == -32601 and len(gateway.posts("initialize")) == 1


async def test_an_error_refused_before_its_id_was_read_gets_the_requests_id(
        connected: Client, gateway: Gateway) -> None:
    async def refuse(request: web.Request, message: dict[str, Any]) -> web.Response:
        return web.json_response({"jsonrpc": "2.0", "id": None, "error": {
            "code": -32020, "message": "header mismatch"}}, status=400)
    gateway.on["tools/list"] = refuse
    answer = await connected.request({"jsonrpc": "2.0", "id": "a", "method": "tools/list",
                                      "params": {"_meta": META}})
    assert answer["id"] == "a" and answer["error"]["code"] == -32020


async def test_a_401_gets_a_new_token_once(connected: Client, gateway: Gateway) -> None:
    async def picky(request: web.Request, message: dict[str, Any]) -> web.Response:
        if request.headers["Authorization"] != "Bearer t2":
            return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})
        return result(message)
    gateway.on["ping"] = picky
    assert "result" in await connected.request({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    gateway.on["ping"] = lambda r, m: asyncio.sleep(0, web.Response(status=401))
    refused = await connected.request({"jsonrpc": "2.0", "id": 2, "method": "ping"})
    assert refused["error"]["code"] == -32005 and "no more tokens" in refused["error"]["message"]


async def test_a_proxys_503_is_tried_again_and_reported_when_it_lasts(
        connected: Client, gateway: Gateway) -> None:
    tries = []

    async def flaky(request: web.Request, message: dict[str, Any]) -> web.Response:
        tries.append(1)
        if len(tries) < 3:
            return web.Response(status=503, text="<html>down</html>", content_type="text/html")
        return result(message)
    gateway.on["ping"] = flaky
    assert "result" in await connected.request({"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert len(tries) == 3
    gateway.on["ping"] = lambda r, m: asyncio.sleep(0, web.Response(status=502))
    failed = await connected.request({"jsonrpc": "2.0", "id": 2, "method": "ping"})
    assert failed["error"]["code"] == -32004
    assert "is unreachable; retrying failed after 2 s (HTTP 502)" in failed["error"]["message"]


async def test_a_call_cut_off_is_not_repeated_but_a_list_is(connected: Client,
                                                            gateway: Gateway) -> None:
    async def cut(request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        if message["method"] == "tools/list" and len(gateway.posts("tools/list")) > 1:
            return result(message)
        response = await sse(request, {"jsonrpc": "2.0", "method": "notifications/message",
                                       "params": {"level": "info", "data": "working"}}, end=False)
        request.transport.close()  # the node died mid-answer
        return response
    gateway.on["tools/call"] = gateway.on["tools/list"] = cut
    answer = await connected.request({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                      "params": {"name": "deploy"}})
    assert answer["error"]["code"] == -32004
    assert "may have been carried out" in answer["error"]["message"]
    assert len(gateway.posts("tools/call")) == 1
    assert "result" in await connected.request({"jsonrpc": "2.0", "id": 2, "method": "tools/list",
                                                "params": {"_meta": META}})
    assert len(gateway.posts("tools/list")) == 2


@pytest.mark.parametrize("era", ["2025", "2026"])
async def test_cancelling(connected: Client, gateway: Gateway, era: str) -> None:
    started, closed = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        response = await sse(request, end=False)
        started.set()
        try:
            for _ in range(100):
                await response.write(b": still here\n\n")
                await asyncio.sleep(0.05)
        except (ConnectionResetError, ConnectionError):
            closed.set()
        except asyncio.CancelledError:  # the server cancels a handler whose client went away
            closed.set()
            raise
        return response
    gateway.on["tools/call"] = slow
    params: dict[str, Any] = {"name": "slow"}
    cancel: dict[str, Any] = {"requestId": 7, "reason": "user"}
    if era == "2025":
        await connected.request(INIT)
    else:
        params["_meta"] = cancel["_meta"] = META
    connected.send({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params})
    await asyncio.wait_for(started.wait(), 5)
    connected.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": cancel})
    await asyncio.wait_for(closed.wait(), 5)  # the request's POST is closed
    await asyncio.sleep(0.2)  # time for a notification to arrive, if one were sent
    posted = gateway.posts("notifications/cancelled")
    if era == "2025":
        assert posted[0][0]["Mcp-Session-Id"] == "s1"  # 2025: the gateway is told
    else:
        assert posted == []  # 2026-07-28: closing the POST is the cancellation
    assert connected.out.empty()  # no answer to a cancelled request


async def test_lines_that_are_no_message_get_json_rpc_errors(connected: Client) -> None:
    connected.bridge.from_client(b"{not json\n")
    assert (await connected.next())["error"]["code"] == -32700
    connected.send([1, 2])
    assert (await connected.next())["error"]["code"] == -32600
    connected.send({"jsonrpc": "2.0"})
    assert (await connected.next())["error"]["code"] == -32600
