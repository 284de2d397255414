"""The tokens the gateway's authorization server hands out.

Access tokens: RFC 9068 JWTs (``typ: at+jwt``) signed with the gateway's Ed25519 key, ``iss`` the
gateway's public URL, ``aud`` the one resource they were requested for, the caller's subject and
groups, the client's id; short-lived (``sign_in.access_token_ttl_s``) because nothing revokes them
early. ``gwc.runtime.identity.GatewayTokens`` checks them on every node.

Refresh tokens: opaque random strings, each used once. Every refresh hands out a new one of the
same *family* (one sign-in of one user in one client); presenting a used one again means it leaked
or was copied, and the whole family is revoked (OAuth 2.1 §4.3.1, reuse detection).
"""
from __future__ import annotations

import secrets
import time
import uuid

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gwc.runtime.bundle.envelope import jwk_kid
from gwc.runtime.identity import ACCESS_TOKEN_TYPE, GATEWAY_GROUPS_CLAIM, GatewayTokens
from gwc.runtime.policy.decide import Principal


class AccessTokens:
    def __init__(self, key: Ed25519PrivateKey, issuer: str) -> None:
        self._key, self.issuer = key, issuer
        self.kid = jwk_kid(key.public_key())

    def verifier(self, accepted: tuple[Ed25519PublicKey, ...] = ()) -> GatewayTokens:
        """What a node checks these tokens with: its own key, and the keys it accepts while the
        fleet rotates its signing key (``--accept-key``)."""
        keys = {jwk_kid(key): key for key in accepted}
        return GatewayTokens(self.issuer, {**keys, self.kid: self._key.public_key()})

    def mint(self, principal: Principal, *, client_id: str, resource: str, scope: str,
             ttl_s: int) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": principal.subject, "aud": resource,
                  "client_id": client_id, "iat": now, "nbf": now, "exp": now + ttl_s,
                  "jti": uuid.uuid4().hex, GATEWAY_GROUPS_CLAIM: sorted(principal.groups)}
        if scope:
            claims["scope"] = scope
        return jwt.encode(claims, self._key, algorithm="EdDSA",
                          headers={"typ": ACCESS_TOKEN_TYPE, "kid": self.kid})


def new_secret() -> str:
    """A code, refresh token or handle: 256 bits from the OS, URL-safe."""
    return secrets.token_urlsafe(32)
