"""A real upstream MCP server for tests/cli/test_pin.py: ``python tests/support/pin_upstream.py PORT``.

It lists its tools two to a page (``gwc pin`` must follow the cursor). Tools: deploy (typed
parameters, annotations, a title), get_status (structured output), list_services, and
internal_debug (which the test manifest does not declare). ``/mcp`` is open; ``/guarded/mcp`` is
the same server behind a credential: HTTP 401 unless the request carries ``GUARDED_HEADERS``' one
header with its exact value.
"""
from __future__ import annotations

import sys
from typing import Any, Literal

import uvicorn
from mcp.server import MCPServer
from mcp.types import ListToolsResult, PaginatedRequestParams, ToolAnnotations

PAGE = 2
GUARDED_PATH = "/guarded/mcp"
# a request to GUARDED_PATH passes with any one of these (header name lowercase, value)
GUARDED_HEADERS = {"authorization": "Bearer pin-token", "x-api-key": "Key s3cret"}


class PagingServer(MCPServer):
    """An MCPServer whose tools/list answers a page of PAGE tools at a time."""

    async def _handle_list_tools(self, ctx: Any, params: PaginatedRequestParams | None) -> ListToolsResult:
        tools = await self.list_tools()
        start = int(params.cursor) if params is not None and params.cursor else 0
        end = start + PAGE
        return ListToolsResult(tools=tools[start:end], next_cursor=str(end) if end < len(tools) else None)


server = PagingServer("pin-upstream", version="1.0.0")


@server.tool(title="Deploy a service", description="Deploy a service with the given number of "
             "replicas.\nRefuses a service that is not healthy unless force is set.",
             annotations=ToolAnnotations(destructiveHint=True, idempotentHint=False))
def deploy(service: str, replicas: int, env: Literal["staging", "prod"] = "staging",
           force: bool = False) -> str:
    return f"deployed {service} x{replicas} to {env}"


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def get_status(service: str) -> dict[str, str]:
    """The current status of a service."""
    return {"service": service, "status": "ok"}


@server.tool()
def list_services() -> list[str]:
    """Every service this upstream deploys."""
    return ["web", "api"]


@server.tool()
def internal_debug() -> str:
    """Not declared in the test manifest: never pinned."""
    return "debug"


class Guard:
    """ASGI middleware: GUARDED_PATH is the MCP endpoint behind a credential, answered 401 without it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == GUARDED_PATH:
            headers = {name.decode().lower(): value.decode() for name, value in scope["headers"]}
            if not any(headers.get(name) == value for name, value in GUARDED_HEADERS.items()):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"text/plain")]})
                await send({"type": "http.response.body", "body": b"unauthorized"})
                return
            scope = {**scope, "path": "/mcp", "raw_path": b"/mcp"}
        await self.app(scope, receive, send)


if __name__ == "__main__":
    app = server.streamable_http_app(streamable_http_path="/mcp", host="127.0.0.1")
    uvicorn.run(Guard(app), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
