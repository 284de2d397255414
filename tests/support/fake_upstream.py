"""An MCP upstream as an in-process aiohttp app, for unit tests that drive the gateway without
processes: it answers JSON (never SSE), echoes a tools/call's arguments and keeps every request;
given messages to send ``outside`` any call, it keeps a GET stream that sends them once opened."""
from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web


class FakeUpstream:
    def __init__(self, capabilities: dict[str, Any] | None = None,
                 outside: list[dict[str, Any]] | None = None) -> None:
        self.requests: list[dict[str, Any]] = []  # every JSON-RPC message received, in order
        self.capabilities = capabilities or {}  # what it announces in its initialize
        self.outside = outside  # sent on each GET stream; None: it keeps no GET stream

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        if self.outside is None:
            return web.Response(status=405)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for message in self.outside:
            await response.write(b"event: message\ndata: " + orjson.dumps(message) + b"\n\n")
        while request.transport is not None and not request.transport.is_closing():
            await asyncio.sleep(0.05)  # held open until the gateway lets go
        return response

    def calls(self, method: str = "tools/call") -> list[dict[str, Any]]:
        return [m for m in self.requests if m.get("method") == method]

    async def _mcp(self, request: web.Request) -> web.Response:
        message = orjson.loads(await request.read())
        self.requests.append(message)
        if "id" not in message:  # a notification
            return web.Response(status=202)
        method, params = message["method"], message.get("params", {})
        if method == "initialize":
            result: dict[str, Any] = {"protocolVersion": params["protocolVersion"],
                                      "capabilities": self.capabilities,
                                      "serverInfo": {"name": "fake", "version": "1"}}
        elif method == "tools/call":
            result = {"content": [{"type": "text", "text": orjson.dumps(
                {"tool": params["name"], "arguments": params.get("arguments")}).decode()}]}
        else:
            result = {}
        return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": result})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/mcp", self._mcp)
        app.router.add_get("/mcp", self._listen)
        return app
