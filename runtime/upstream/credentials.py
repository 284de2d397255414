"""What an upstream receives instead of the caller's token: never the client's credential.

``gateway_jwt``: a JWT minted and signed by the gateway's own Ed25519 key (``iss`` = the gateway's
public URL, ``aud`` = the upstream URL, ``sub`` = the caller, ``scope`` = the tool, ``act`` = the agent
for agent calls), living at most five minutes; upstreams verify it with ``/.well-known/jwks.json``.
``static_env``: a fixed secret from an environment variable of the node, never from the registry.
"""
from __future__ import annotations

import base64
import os
import time
import uuid

import jwt
from cachetools import LRUCache
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gwc.runtime.bundle.envelope import jwk_kid
from gwc.runtime.bundle.format import Server
from gwc.runtime.policy.decide import Principal

TOKEN_TTL_S = 300
REUSE_MARGIN_S = 60  # a cached token is reused while it has at least this long to live


class CredentialError(Exception):
    """The node lacks the credential an upstream needs (a missing environment variable)."""


class UpstreamCredentials:
    def __init__(self, signing_key: Ed25519PrivateKey, issuer: str,
                 published: tuple[Ed25519PublicKey, ...] = ()) -> None:
        self._key = signing_key
        self._issuer = issuer
        self.kid = jwk_kid(signing_key.public_key())
        self._cache: LRUCache[tuple, tuple[str, float]] = LRUCache(100_000)
        # The JWK Set: the node's own key first, then the keys published beside it while the
        # fleet rotates its signing key (upstreams then know both before any node signs with
        # the new one), each once.
        keys = {self.kid: signing_key.public_key(), **{jwk_kid(k): k for k in published}}
        self._jwks = {"keys": [_jwk(key) for key in keys.values()]}

    def jwks(self) -> dict:
        return self._jwks

    def header(self, server: Server, principal: Principal, tool: str | None) -> tuple[str, str]:
        """(header name, value) for one upstream request."""
        auth = server.upstream_auth
        if auth.type == "static_env":
            value = os.environ.get(auth.env or "")
            if not value:
                raise CredentialError(f"environment variable {auth.env} is not set on this node")
            return auth.header, f"{auth.scheme} {value}" if auth.scheme else value
        return "Authorization", "Bearer " + self.token(server.upstream, principal, tool)

    def token(self, audience: str, principal: Principal, tool: str | None) -> str:
        key = (audience, principal.subject, principal.kind, principal.acting_for, tool)
        now = time.time()
        cached = self._cache.get(key)
        if cached is not None and cached[1] - now > REUSE_MARGIN_S:
            return cached[0]
        issued = int(now)
        claims: dict = {"iss": self._issuer, "aud": audience, "iat": issued, "nbf": issued,
                        "exp": issued + TOKEN_TTL_S, "jti": uuid.uuid4().hex,
                        "kind": principal.kind}
        if principal.is_agent:
            claims["sub"] = principal.acting_for or principal.subject
            claims["act"] = {"sub": principal.subject}
        else:
            claims["sub"] = principal.subject
        if tool is not None:
            claims["scope"] = tool
        token = jwt.encode(claims, self._key, algorithm="EdDSA", headers={"kid": self.kid})
        self._cache[key] = (token, issued + TOKEN_TTL_S)
        return token


def _jwk(key: Ed25519PublicKey) -> dict[str, str]:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode(),
            "kid": jwk_kid(key), "alg": "EdDSA", "use": "sig"}
