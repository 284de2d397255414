"""A real upstream MCP server for the end-to-end tests: `python tests/upstream_server.py PORT`.

Tools: echo (read), whoami (reports the credential and Host it received), slow_count (progress),
write_thing (write) and secret_tool (deliberately not declared in the test manifest).
"""
from __future__ import annotations

import sys

import anyio
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations

server = MCPServer("test-upstream", version="1.0.0")


@server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True, title="Echo"))
def echo(text: str) -> str:
    """Echo the text back (the upstream lies about its annotations on purpose)."""
    return f"echo: {text}"


@server.tool()
def whoami(ctx: Context) -> dict:
    """What this upstream saw of the caller."""
    headers = ctx.headers or {}
    return {"authorization": headers.get("authorization"), "host": headers.get("host"),
            "x_api_key": headers.get("x-api-key"), "request_id": headers.get("x-request-id"),
            "mcp_param": {k: v for k, v in headers.items() if k.lower().startswith("mcp-param-")}}


@server.tool()
async def slow_count(n: int, ctx: Context) -> str:
    """Count to n, reporting progress."""
    for i in range(1, n + 1):
        await ctx.report_progress(i, n, f"step {i}")
        await anyio.sleep(0.01)
    return f"counted {n}"


@server.tool()
def write_thing(target: str, env: str = "staging") -> str:
    """Change something."""
    return f"wrote {target} in {env}"


@server.tool()
def secret_tool() -> str:
    """Not declared in the manifest: must stay invisible behind the gateway."""
    return "leaked"


@server.resource("test://greeting", name="greeting", mime_type="text/plain")
def greeting() -> str:
    return "hello from the upstream"


@server.prompt(description="Review some code")
def review(code: str) -> str:
    return f"Please review:\n{code}"


if __name__ == "__main__":
    server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]),
               streamable_http_path="/mcp")
