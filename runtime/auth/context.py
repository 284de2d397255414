"""What every step of the sign-in flows shares: settings from the active bundle, the store, the
IdP, the token minter, and how a step refuses (OAuth error JSON, or a redirect to the client)."""
from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any

from aiohttp import web
from authlib.common.urls import add_params_to_uri

from gwc.runtime.auth.browser import BrowserSessions
from gwc.runtime.auth.clients import ClientDirectory
from gwc.runtime.auth.idp import IdentityProvider
from gwc.runtime.auth.store import AuthStore
from gwc.runtime.auth.tokens import AccessTokens
from gwc.runtime.bundle.format import SignIn
from gwc.runtime.bundle.read import Bundle
from gwc.runtime.governance.limits import RateLimiter
from gwc.runtime.metrics import Metrics
from gwc.runtime.policy.decide import Principal

log = logging.getLogger("gwc.auth")
LOGIN_TTL_S = 600  # a login at the IdP, and a consent page, must be finished within this
CODE_TTL_S = 60  # an authorization code is redeemed within this (RFC 6749 §4.1.2: at most 10 min)
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
BaseRecord = Callable[[web.Request, Bundle, Principal, str], dict[str, Any]]
WriteRecord = Callable[[dict[str, Any]], Awaitable[None]]


class OAuthError(Exception):
    """An OAuth error answer (RFC 6749 §5.2): ``error`` is one of the codes the RFCs define."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status

    def response(self) -> web.Response:
        headers = dict(NO_STORE)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="gwc"'
        return web.json_response({"error": self.error, "error_description": self.description},
                                 status=self.status, headers=headers)


@dataclass
class AuthContext:
    public_url: str
    active: Callable[[], Bundle | None]
    store: AuthStore
    sessions: BrowserSessions
    tokens: AccessTokens
    clients: ClientDirectory
    idp_client_secret: str | None
    write_record: WriteRecord
    base_record: BaseRecord
    limits: RateLimiter
    metrics: Metrics
    _idp: IdentityProvider | None = field(default=None, repr=False)

    async def audit(self, request: web.Request, bundle: Bundle, principal: Principal, event: str,
                    **fields: Any) -> None:
        """A ``sign_in`` record in the audit trail: who let which client in, for what, when a
        sign-in was refreshed, reused or revoked. Raises when the trail fails closed, so the step
        that needed it does not happen."""
        await self.write_record({**self.base_record(request, bundle, principal, "sign_in"),
                                 "event": event, **fields})

    def settings(self) -> tuple[Bundle, SignIn] | None:
        bundle = self.active()
        if bundle is None or bundle.payload.gateway.sign_in is None:
            return None
        return bundle, bundle.payload.gateway.sign_in

    def idp(self, bundle: Bundle) -> IdentityProvider:
        """The IdP client for the bundle's settings, rebuilt only when they change."""
        gateway = bundle.payload.gateway
        assert gateway.sign_in is not None
        current = self._idp
        if (current is None or current.identity != gateway.identity
                or current.settings != gateway.sign_in):
            self._idp = IdentityProvider(gateway.identity, gateway.sign_in,
                                         self.idp_client_secret, self.public_url + "/oauth/callback")
            if current is not None:
                asyncio.get_running_loop().create_task(current.close())
        assert self._idp is not None
        return self._idp

    def serves(self, bundle: Bundle, resource: str) -> bool:
        """Whether a token may be for ``resource`` (RFC 8707): the gateway, its /mcp, or the
        endpoint of a server the bundle has (looked up, not listed: a bundle has thousands)."""
        if resource in (self.public_url, self.public_url + "/mcp"):
            return True
        name = self.server_of(resource)
        return name is not None and name in bundle.payload.servers

    def looks_like_resource(self, resource: str) -> bool:
        """Whether ``resource`` has the shape of one of this gateway's resources. Before the
        user is known, only the shape is checked: whether the server exists (and is visible to
        them) is judged after login, so nobody learns server names from this endpoint."""
        if resource in (self.public_url, self.public_url + "/mcp"):
            return True
        name = self.server_of(resource)
        return name is not None and SERVER_NAME.fullmatch(name) is not None

    def server_of(self, resource: str) -> str | None:
        """The server a per-server resource names, None for the gateway and /mcp."""
        prefix = self.public_url + "/servers/"
        if not resource.startswith(prefix) or not resource.endswith("/mcp"):
            return None
        return resource[len(prefix):-len("/mcp")]

    def redirect(self, redirect_uri: str, *, step: str, **params: str | None) -> web.Response:
        """Back to the client, with ``iss`` (RFC 9207) and whatever else the ``step`` answers
        (counted in gwc_sign_in_total by its error, or ok)."""
        self.metrics.count_sign_in(step, params.get("error") or "ok")
        pairs = [(k, v) for k, v in params.items() if v is not None] + [("iss", self.public_url)]
        return see_other(add_params_to_uri(redirect_uri, pairs), status=302)

    async def close(self) -> None:
        if self._idp is not None:
            await self._idp.close()


SERVER_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")  # as manifests name servers


def sign_in_id(family: str) -> str:
    """What the trail calls one sign-in (a refresh-token family): not the family's key itself."""
    return sha256(b"gwc-sign-in:" + family.encode()).hexdigest()[:24]


def see_other(location: str, status: int = 303) -> web.Response:
    """A redirect answer (returned, not raised, so cookies can be set on it)."""
    return web.Response(status=status, headers={**NO_STORE, "Location": location})


def metadata(public_url: str, settings: SignIn) -> dict[str, Any]:
    """RFC 8414 authorization-server metadata (served at the OpenID discovery path too)."""
    document: dict[str, Any] = {
        "issuer": public_url,
        "authorization_endpoint": f"{public_url}/oauth/authorize",
        "token_endpoint": f"{public_url}/oauth/token",
        "revocation_endpoint": f"{public_url}/oauth/revoke",
        "jwks_uri": f"{public_url}/.well-known/jwks.json",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "client_id_metadata_document_supported": settings.client_id_metadata_documents,
        "authorization_response_iss_parameter_supported": True,
    }
    if settings.dynamic_registration == "open":
        document["registration_endpoint"] = f"{public_url}/oauth/register"
    return document
