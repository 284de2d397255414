"""A real upstream MCP server whose SDK coerces arguments as pydantic's lax mode does (``"true"``
and ``1`` are ``True``, ``"0"`` is ``0``, a JSON string becomes a list), for
tests/e2e/test_coercion.py: ``python tests/support/coercion_upstream.py PORT``."""
from __future__ import annotations

import sys

from mcp.server import MCPServer

server = MCPServer("coercing-upstream", version="1.0.0")


@server.tool()
def scale(force: bool, replicas: int, schemas: list[str]) -> str:
    """Answers with the arguments as the tool received them, after the SDK's coercion."""
    return f"force={force!r} replicas={replicas!r} schemas={schemas!r}"


if __name__ == "__main__":
    server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]),
               streamable_http_path="/mcp")
