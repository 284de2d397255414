"""The gateway's own OAuth 2.1 authorization server: what MCP clients sign in with.

MCP clients speak OAuth to whatever the protected-resource metadata names; the gateway names itself,
issues its own short-lived access tokens and rotating refresh tokens, and delegates the user's login
to the company IdP as an ordinary confidential OIDC client. Codes, logins, consents and refresh
tokens live in the state backend, so any node serves any step.
"""
