"""``gwc dev-idp serve``: the development IdP as a real OpenID Connect provider, for demos and tests.

Authorization code flow with PKCE S256 (required of every client), a login page that lists the
configured development users instead of asking for a password, rotating refresh tokens. State lives in
this one process's memory, bounded and expiring. Not for production: anyone who can reach it can log
in as anyone it lists, which is why the CLI binds it to loopback unless told otherwise.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote_plus, urlsplit

import jinja2
from aiohttp import web
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oauth2.rfc7636.challenge import CODE_VERIFIER_PATTERN
from cachetools import TTLCache
from yarl import URL

from gwc.compiler.client.dev_idp import ALGORITHM, DevIdP
from gwc.compiler.client.dev_idp_config import DevClient, DevUser

LOGIN_TTL_S = 600       # from the login page being shown to a user being picked
CODE_TTL_S = 60         # an authorization code is exchanged at once, by a machine
TOKEN_TTL_S = 3600
REFRESH_TTL_S = 8 * 3600
MAX_PENDING = 1000      # caps on what the process keeps: a dev IdP must not grow without bound
BROWSER_COOKIE = "gwc_dev_idp_browser"
SCOPES = ("openid", "profile", "groups")
PAGE_HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
CSP = "default-src 'none'; base-uri 'none'; frame-ancestors 'none'"
_PAGES = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                            autoescape=True, undefined=jinja2.StrictUndefined)


@dataclass(frozen=True)
class AuthorizationRequest:
    """What GET /authorize accepted; ``browser`` ties the login POST to the browser that saw the page."""
    client_id: str
    redirect_uri: str
    state: str | None
    nonce: str | None
    code_challenge: str
    scope: str
    browser: str


@dataclass(frozen=True)
class Grant:
    """A user's consent to a client: behind an authorization code, then behind each refresh token."""
    client_id: str
    redirect_uri: str
    user: DevUser
    scope: str
    auth_time: int
    nonce: str | None = None
    code_challenge: str = ""


class OAuthError(Exception):
    """An RFC 6749 error: §5.2 JSON at the token endpoint, a redirect or a page at /authorize."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


class DevIdPServer:
    def __init__(self, idp: DevIdP, *, issuer: str, users: tuple[DevUser, ...],
                 clients: tuple[DevClient, ...], groups_claim: str = "groups") -> None:
        if len({client.client_id for client in clients}) != len(clients):
            raise ValueError("client ids must be distinct")
        self.idp, self.issuer, self.groups_claim = idp, issuer.rstrip("/"), groups_claim
        self.users = {user.login: user for user in users}
        self.clients = {client.client_id: client for client in clients}
        self.pending: TTLCache[str, AuthorizationRequest] = TTLCache(MAX_PENDING, LOGIN_TTL_S)
        self.codes: TTLCache[str, Grant] = TTLCache(MAX_PENDING, CODE_TTL_S)
        self.refresh_tokens: TTLCache[str, Grant] = TTLCache(MAX_PENDING, REFRESH_TTL_S)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_page_headers])
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/jwks.json", self.jwks)
        app.router.add_get("/authorize", self.authorize)
        app.router.add_post("/authorize", self.login)
        app.router.add_post("/token", self.token)
        return app

    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response({
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks.json",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "subject_types_supported": ["public"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "scopes_supported": list(SCOPES),
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "act",
                                 self.groups_claim],
            "authorization_response_iss_parameter_supported": True,
        })

    async def jwks(self, request: web.Request) -> web.Response:
        return web.json_response(self.idp.jwks())

    # --- the authorization endpoint -----------------------------------------------------------

    def _trusted_client(self, params: Mapping[str, str]) -> tuple[DevClient, str]:
        """The client and its redirect URI, or a page: before both check out, nothing is redirected."""
        client = self.clients.get(params.get("client_id", ""))
        if client is None:
            raise web.HTTPBadRequest(**_page("error", error="unknown client_id"))
        redirect_uri = params.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:
            raise web.HTTPBadRequest(**_page("error", error="redirect_uri is not registered for this client"))
        return client, redirect_uri

    async def authorize(self, request: web.Request) -> web.Response:
        client, redirect_uri = self._trusted_client(request.query)
        query, state = request.query, request.query.get("state")
        try:
            if query.get("response_type") != "code":
                raise OAuthError("unsupported_response_type", "only response_type=code")
            scopes = query.get("scope", "").split()
            if "openid" not in scopes:
                raise OAuthError("invalid_scope", "scope must include openid")
            if not query.get("code_challenge") or query.get("code_challenge_method") != "S256":
                raise OAuthError("invalid_request", "PKCE is required: code_challenge with method S256")
        except OAuthError as exc:
            raise self._redirect(redirect_uri, state, error=exc.error,
                                 error_description=exc.description) from None
        browser = request.cookies.get(BROWSER_COOKIE) or secrets.token_urlsafe(32)
        request_id = secrets.token_urlsafe(32)
        self.pending[request_id] = AuthorizationRequest(
            client.client_id, redirect_uri, state, query.get("nonce"), query["code_challenge"],
            " ".join(scope for scope in scopes if scope in SCOPES), browser)
        response = web.Response(**_page("login", client_id=client.client_id, request_id=request_id,
                                        users=list(self.users.values())))
        # a form's redirect is checked against form-action too, so the client's origin is allowed
        target = urlsplit(redirect_uri)
        response.headers["Content-Security-Policy"] = \
            f"{CSP}; form-action 'self' {target.scheme}://{target.netloc}"
        response.set_cookie(BROWSER_COOKIE, browser, httponly=True, samesite="Strict",
                            secure=self.issuer.startswith("https:"))
        return response

    async def login(self, request: web.Request) -> web.Response:
        """The user picked on the login page: a single-use code, redirected to the client."""
        form = await request.post()
        pending = _take(self.pending, str(form.get("request", "")))
        if pending is None or not hmac.compare_digest(request.cookies.get(BROWSER_COOKIE, "").encode(),
                                                       pending.browser.encode()):
            raise web.HTTPBadRequest(**_page("error", error="this login form has expired or was not "
                                                            "shown to this browser: start again"))
        user = self.users.get(str(form.get("sub", "")))
        if user is None:
            raise self._redirect(pending.redirect_uri, pending.state, error="access_denied",
                                 error_description="no such development user")
        code = secrets.token_urlsafe(32)
        self.codes[code] = Grant(pending.client_id, pending.redirect_uri, user, pending.scope,
                                 int(time.time()), pending.nonce, pending.code_challenge)
        raise self._redirect(pending.redirect_uri, pending.state, code=code)

    def _redirect(self, redirect_uri: str, state: str | None, **params: str) -> web.HTTPFound:
        """Back to the client, naming this issuer (RFC 9207) so it can tell IdPs apart."""
        extra = {"state": state} if state is not None else {}
        return web.HTTPFound(URL(redirect_uri).update_query({**params, **extra, "iss": self.issuer}))

    # --- the token endpoint -------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        try:
            form = {key: str(value) for key, value in (await request.post()).items()}
            client = self._authenticate(request.headers.get("Authorization"), form)
            grant_type = form.get("grant_type")
            grant: Grant | None
            if grant_type == "authorization_code":
                grant = self._redeem_code(client, form)
            elif grant_type == "refresh_token":
                grant = _take(self.refresh_tokens, form.get("refresh_token", ""))
                if grant is None or grant.client_id != client.client_id:
                    raise OAuthError("invalid_grant", "unknown, used or expired refresh token")
                # as a real IdP: a refresh answers for the user as they are now
                user = self.users.get(grant.user.login)
                if user is None:
                    raise OAuthError("invalid_grant", "the user no longer exists")
                grant = replace(grant, user=user)
            else:
                raise OAuthError("unsupported_grant_type", "authorization_code or refresh_token")
        except OAuthError as exc:
            headers = {"WWW-Authenticate": 'Basic realm="gwc-dev-idp"'} if exc.status == 401 else {}
            return web.json_response({"error": exc.error, "error_description": exc.description},
                                     status=exc.status, headers={**_NO_STORE, **headers})
        return web.json_response(self._tokens(grant), headers=_NO_STORE)

    def _authenticate(self, authorization: str | None, form: dict[str, str]) -> DevClient:
        """client_secret_basic, client_secret_post, or a public client naming itself (RFC 6749 §2.3)."""
        secret: str | None
        if authorization is not None:
            if "client_secret" in form:
                raise OAuthError("invalid_request", "use one client authentication method")
            client_id, secret = _basic_credentials(authorization)
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret")
        client = self.clients.get(client_id)
        if client is None or (secret is None) != (client.client_secret is None) or (
                secret is not None and not hmac.compare_digest(secret.encode(),
                                                               str(client.client_secret).encode())):
            raise OAuthError("invalid_client", "client authentication failed", status=401)
        return client

    def _redeem_code(self, client: DevClient, form: dict[str, str]) -> Grant:
        grant = _take(self.codes, form.get("code", ""))  # gone on first use, right or wrong
        if grant is None or grant.client_id != client.client_id:
            raise OAuthError("invalid_grant", "unknown, used or expired authorization code")
        if form.get("redirect_uri") != grant.redirect_uri:
            raise OAuthError("invalid_grant", "redirect_uri differs from the authorization request")
        verifier = form.get("code_verifier", "")
        if not CODE_VERIFIER_PATTERN.fullmatch(verifier) or not hmac.compare_digest(
                create_s256_code_challenge(verifier), grant.code_challenge):
            raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
        return grant

    def _tokens(self, grant: Grant) -> dict[str, Any]:
        """An ID token and an access token for the client, and the next refresh token (rotated)."""
        user = grant.user
        common: dict[str, Any] = dict(issuer=self.issuer, audience=grant.client_id, subject=user.sub,
                                      groups=list(user.groups), ttl_s=TOKEN_TTL_S, actor=user.agent,
                                      groups_claim=self.groups_claim)
        nonce: dict[str, Any] = {"nonce": grant.nonce} if grant.nonce is not None else {}
        refresh_token = secrets.token_urlsafe(32)
        self.refresh_tokens[refresh_token] = Grant(grant.client_id, grant.redirect_uri, user,
                                                   grant.scope, grant.auth_time)
        return {"id_token": self.idp.token(**common, auth_time=grant.auth_time, **nonce),
                "access_token": self.idp.token(**common, scope=grant.scope),
                "token_type": "Bearer", "expires_in": TOKEN_TTL_S, "scope": grant.scope,
                "refresh_token": refresh_token}


_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
Stored = TypeVar("Stored")


def _take(cache: TTLCache[str, Stored], key: str) -> Stored | None:
    """Remove and return what ``key`` names, so a request, code or refresh token serves once."""
    return cache.pop(key) if key in cache else None


def _basic_credentials(authorization: str) -> tuple[str, str]:
    """RFC 6749 §2.3.1: Basic over the form-urlencoded client id and secret."""
    scheme, _, encoded = authorization.partition(" ")
    try:
        if scheme.lower() != "basic":
            raise ValueError(scheme)
        client_id, colon, secret = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise OAuthError("invalid_client", "malformed Authorization header", status=401) from None
    if not colon:
        raise OAuthError("invalid_client", "malformed Authorization header", status=401)
    return unquote_plus(client_id), unquote_plus(secret)


def _page(template: str, **context: Any) -> dict[str, Any]:
    """Keyword arguments for a response or HTTP exception carrying an HTML page."""
    return {"text": _PAGES.get_template(f"dev_idp_{template}.html.j2").render(**context),
            "content_type": "text/html"}


@web.middleware
async def _page_headers(request: web.Request,
                        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                        ) -> web.StreamResponse:
    """Frame, sniffing and script protection on every response, errors raised as exceptions included."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # a page or redirect raised from a handler, as a plain response
        response = web.Response(status=exc.status, text=exc.text, headers=exc.headers)
    for name, value in PAGE_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Content-Security-Policy", CSP)
    return response
