"""The gateway's side of each upstream MCP server: the client, its isolation (slots, breakers),
pooled sessions, minted credentials and the list cache of the aggregate endpoint.
"""
