"""The MCP endpoints a client talks to: per server (``/servers/{name}/mcp``) and aggregate (``/mcp``),
their sealed sessions, list_changed streams and audit recording.
"""
