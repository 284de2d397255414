"""An upstream MCP server that notices cancellation: `python tests/support/cancel_upstream.py PORT`.

Tools: ``wait`` (sleeps, and records it when it is cancelled instead of finishing) and
``cancelled`` (how many ``wait`` calls were cancelled so far), for the tests that check a client's
cancellation reaches the upstream through the gateway."""
from __future__ import annotations

import sys

import anyio
import uvicorn
from mcp.server import MCPServer

server = MCPServer("cancel-upstream", version="1.0.0")
CANCELLED: list[float] = []


@server.tool()
async def wait(seconds: float) -> str:
    """Sleep ``seconds``; a cancellation is recorded."""
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        CANCELLED.append(seconds)
        raise
    return f"waited {seconds} s"


@server.tool()
def cancelled() -> int:
    """How many waits were cancelled."""
    return len(CANCELLED)


if __name__ == "__main__":
    app = server.streamable_http_app(streamable_http_path="/mcp", host="127.0.0.1")
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
