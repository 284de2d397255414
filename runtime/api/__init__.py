"""The node's JSON APIs beside the MCP endpoint: the catalog and governance (approvals, bypasses)."""
