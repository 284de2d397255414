"""The authorization server as a node serves it: metadata, the browser flows and the token
endpoint, on the node's own HTTP server (``Gateway.app`` adds the routes)."""
from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gwc.runtime.auth.authorize import Authorization
from gwc.runtime.auth.context import AuthContext, metadata
from gwc.runtime.auth.token_endpoint import TokenEndpoint

WELL_KNOWN = ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration")
# What a client running in a browser page (MCP Inspector) fetches itself while signing in: the
# metadata, registration, token and revocation. No cookie is involved in any of them (public
# clients, PKCE), so any origin may read the answers; the pages (authorize, consent) are not here.
CORS_PATHS = ("/.well-known/", "/oauth/token", "/oauth/register", "/oauth/revoke")
CORS_HEADERS = {"Access-Control-Allow-Origin": "*",
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Content-Type, MCP-Protocol-Version",
                "Access-Control-Max-Age": "600"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def cors_for_browser_clients(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(CORS_PATHS):
        return await handler(request)
    if request.method == "OPTIONS":  # a preflight: answered before routing, which knows no OPTIONS
        return web.Response(status=204, headers=CORS_HEADERS)
    response = await handler(request)
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


class AuthorizationServer:
    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx
        self.authorization = Authorization(ctx)
        self.token_endpoint = TokenEndpoint(ctx)

    @property
    def enabled(self) -> bool:
        return self.ctx.settings() is not None

    async def metadata(self, request: web.Request) -> web.Response:
        found = self.ctx.settings()
        if found is None:
            return web.json_response({"error": "not_found", "error_description": "sign-in is "
                                      "not enabled on this gateway"}, status=404)
        return web.json_response(metadata(self.ctx.public_url, found[1]),
                                 headers={"Cache-Control": "max-age=300"})

    def add_routes(self, app: web.Application) -> None:
        for path in WELL_KNOWN:  # RFC 8414 §3.1: an issuer with a path has it after the suffix
            app.router.add_get(path, self.metadata)
            app.router.add_get(path + "/{path:.*}", self.metadata)
        app.router.add_routes(self.authorization.routes())
        app.router.add_routes(self.token_endpoint.routes())

    async def close(self) -> None:
        await self.ctx.close()
