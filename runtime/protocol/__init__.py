"""The MCP and JSON-RPC wire as the gateway speaks it: error codes, parsing and routing headers,
Server-Sent Events framing. No HTTP server, no policy.
"""
