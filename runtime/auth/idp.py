"""The company IdP, to which the gateway is an ordinary confidential OIDC client.

The user's login happens there: the gateway sends the browser to the IdP's authorization endpoint
(code flow, PKCE S256, ``state``, ``nonce``), redeems the code at its token endpoint with the
client secret from the node's environment, and believes only the ID token, verified against the
IdP's JWKS with the same issuer, algorithms and keys as the IdP's access tokens (audience: the
gateway's client id; ``nonce``: the one sent). Subject and groups come from the claims the node
already uses (``identity.groups_claim``).

The IdP's refresh token is kept with the gateway's refresh token: each refresh at the gateway is a
refresh at the IdP, so a user disabled there, or whose groups changed, is seen at the next refresh
(within one gateway access-token lifetime). An IdP that issues no refresh token (no
``offline_access``) leaves the gateway unable to re-check, so the gateway then issues none either.
"""
from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode

import aiohttp
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from gwc.runtime.bundle.format import Identity, SignIn
from gwc.runtime.identity import Authenticator, AuthError, groups_of
from gwc.runtime.policy.decide import Principal

DISCOVERY_TTL_S = 600.0
TIMEOUT_S = 10.0
MAX_RESPONSE_BYTES = 256 * 1024


class IdpError(Exception):
    """The IdP refused (``refused``: the grant is dead, e.g. the user is disabled) or could not be
    reached (``refused`` false: try again later). The message is safe to show."""

    def __init__(self, message: str, *, refused: bool) -> None:
        super().__init__(message)
        self.refused = refused


@dataclass(frozen=True, slots=True)
class IdpLogin:
    principal: Principal
    refresh_token: str | None


class IdentityProvider:
    def __init__(self, identity: Identity, settings: SignIn, client_secret: str | None,
                 redirect_uri: str) -> None:
        self.identity, self.settings = identity, settings
        self.redirect_uri = redirect_uri
        self._secret = client_secret
        self._verifier = Authenticator(identity)
        self._session: aiohttp.ClientSession | None = None
        self._metadata: dict[str, Any] | None = None
        self._fetched_at = float("-inf")

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        return self._session

    async def _json(self, response: aiohttp.ClientResponse) -> Any:
        body = bytearray()
        async for chunk in response.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > MAX_RESPONSE_BYTES:
                raise ValueError("answer too large")
        return json.loads(body)

    async def metadata(self) -> dict[str, Any]:
        """The IdP's OpenID discovery document, fetched again every ten minutes."""
        if self._metadata is not None and time.monotonic() - self._fetched_at < DISCOVERY_TTL_S:
            return self._metadata
        url = self.identity.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            async with self._client().get(url, allow_redirects=False) as resp:
                resp.raise_for_status()
                document = await self._json(resp)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            if self._metadata is not None:
                return self._metadata  # keep the last good one through an outage
            raise IdpError(f"the identity provider cannot be reached ({type(exc).__name__})",
                           refused=False) from None
        if (not isinstance(document, dict) or document.get("issuer") != self.identity.issuer
                or not isinstance(document.get("authorization_endpoint"), str)
                or not isinstance(document.get("token_endpoint"), str)):
            raise IdpError("the identity provider's discovery document does not match "
                           "identity.issuer", refused=False)
        self._metadata, self._fetched_at = document, time.monotonic()
        return document

    async def authorization_url(self, state: str, nonce: str, verifier: str) -> str:
        metadata = await self.metadata()
        query = urlencode({
            "response_type": "code", "client_id": self.settings.idp_client_id,
            "redirect_uri": self.redirect_uri, "scope": " ".join(self.settings.idp_scopes),
            "state": state, "nonce": nonce, "code_challenge_method": "S256",
            "code_challenge": create_s256_code_challenge(verifier)})
        endpoint = metadata["authorization_endpoint"]
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    async def redeem(self, code: str, verifier: str, nonce: str) -> IdpLogin:
        """The user the IdP logged in, from the code it sent back."""
        answer = await self._token({"grant_type": "authorization_code", "code": code,
                                    "redirect_uri": self.redirect_uri,
                                    "code_verifier": verifier})
        claims = await self._id_token(answer)
        if claims is None:
            raise IdpError("the identity provider sent no ID token (is openid among "
                           "sign_in.idp_scopes?)", refused=True)
        if claims.get("nonce") != nonce:
            raise IdpError("the identity provider's ID token is not for this login (nonce)",
                           refused=True)
        return IdpLogin(self._principal(claims), _refresh_token(answer))

    async def refresh(self, refresh_token: str, known: Principal) -> IdpLogin:
        """Ask the IdP again: a refused refresh (user disabled, session revoked) kills the login.
        An answer without an ID token keeps the groups known so far."""
        answer = await self._token({"grant_type": "refresh_token",
                                    "refresh_token": refresh_token})
        claims = await self._id_token(answer)
        principal = known
        if claims is not None:
            if claims["sub"] != known.subject:
                raise IdpError("the identity provider answered for another user", refused=True)
            principal = self._principal(claims)
        return IdpLogin(principal, _refresh_token(answer) or refresh_token)

    def _principal(self, claims: dict[str, Any]) -> Principal:
        return Principal(str(claims["sub"]), groups_of(claims, self.identity.groups_claim))

    async def _id_token(self, answer: dict[str, Any]) -> dict[str, Any] | None:
        token = answer.get("id_token")
        if not isinstance(token, str):
            return None
        try:
            return await self._verifier.id_token_claims(token, self.settings.idp_client_id)
        except AuthError as exc:
            raise IdpError(f"the identity provider's ID token is not valid: {exc}",
                           refused=True) from None

    async def _token(self, form: dict[str, str]) -> dict[str, Any]:
        metadata = await self.metadata()
        client_id = self.settings.idp_client_id
        headers = {"Accept": "application/json"}
        methods = metadata.get("token_endpoint_auth_methods_supported", ["client_secret_basic"])
        if self._secret is None:
            form = {**form, "client_id": client_id}
        elif "client_secret_basic" in methods:
            pair = f"{_form_quote(client_id)}:{_form_quote(self._secret)}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        else:
            form = {**form, "client_id": client_id, "client_secret": self._secret}
        try:
            async with self._client().post(metadata["token_endpoint"], data=form, headers=headers,
                                           allow_redirects=False) as resp:
                answer = await self._json(resp)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise IdpError(f"the identity provider cannot be reached ({type(exc).__name__})",
                           refused=False) from None
        if not isinstance(answer, dict):
            raise IdpError("the identity provider's token answer is not a JSON object",
                           refused=False)
        if status != 200:
            # only invalid_grant says the login is over (user disabled, session revoked); any
            # other refusal (invalid_client after a secret rotation, a 429, a 5xx) is the
            # gateway's or the IdP's trouble, and must not end everyone's sign-in
            error = str(answer.get("error", "error"))[:64]
            raise IdpError(f"the identity provider refused: {error} ({status})",
                           refused=error == "invalid_grant")
        return answer

    async def close(self) -> None:
        await self._verifier.close()
        if self._session is not None:
            await self._session.close()


def _refresh_token(answer: dict[str, Any]) -> str | None:
    token = answer.get("refresh_token")
    return token if isinstance(token, str) and token else None


def _form_quote(value: str) -> str:
    """RFC 6749 §2.3.1: client id and secret are form-encoded before the Basic header."""
    return quote_plus(value)
