"""Who is calling: bearer JWTs from the company IdP, checked against its JWKS.

Checks: signature by a key of the IdP's JWKS (found by ``kid``), an algorithm from the configured
allow-list (never ``none``, never HMAC: a public key is not a shared secret), issuer, audience,
expiry and not-before with a small leeway, and a subject. Valid tokens are cached until they expire,
so the hot path verifies each token once. An unknown ``kid`` refreshes the JWKS, at most every few
seconds, so a key rotation at the IdP is picked up without letting garbage tokens hammer it.

A token with an RFC 8693 ``act`` claim is an agent's: the caller is the actor (``act.sub``), acting
for the token's subject.

Beside the IdP's tokens, a node accepts the access tokens of the gateway's own authorization
server (``gwc.runtime.auth``): RFC 9068 JWTs (``typ: at+jwt``) signed with the gateway's key,
issued by its public URL, whose ``aud`` is the one resource they were requested for (RFC 8707):
the aggregate ``/mcp``, one ``/servers/<name>/mcp``, or the gateway itself (every endpoint and its
APIs). Used anywhere else they are refused. The upstream tokens the gateway mints with the same key are
not access tokens (no ``at+jwt``) and are refused too.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import jwt
from cachetools import LRUCache
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gwc.runtime.bundle.format import Identity
from gwc.runtime.policy.decide import Principal

log = logging.getLogger("gwc.identity")
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                        "ES512", "EdDSA"})
JWKS_MIN_REFRESH_S = 5.0
JWKS_MAX_AGE_S = 600.0
TOKEN_CACHE_SIZE = 50_000
ACCESS_TOKEN_TYPE = "at+jwt"  # RFC 9068: what sets the gateway's access tokens apart
GATEWAY_GROUPS_CLAIM = "groups"  # where the gateway's own tokens carry the caller's groups


class AuthError(Exception):
    """The request carries no usable credential; the message is safe to show the caller.

    ``challenge`` is a fixed text, fit for the ``WWW-Authenticate`` header: nothing a caller
    sent (a token's ``alg``, a library's message about it) ever reaches a header.
    ``token_sent`` is false when no bearer token came at all (RFC 6750 §3.1: no error code)."""

    def __init__(self, challenge: str, *, token_sent: bool = True, message: str = "") -> None:
        super().__init__(message or challenge)
        self.challenge, self.token_sent = challenge, token_sent


def covers(audience: str, path: str | None, root: str) -> bool:
    """Whether a gateway token issued for ``audience`` may be used at the endpoint ``path``
    (``root`` + ``path`` is its resource; None: the gateway's own APIs, approvals and bypasses
    among them, which only a token for the gateway itself may call: a client let in to one
    MCP endpoint cannot approve). Compared in place: no string is built per request."""
    return audience == root or (path is not None and len(audience) == len(root) + len(path)
                                and audience.startswith(root) and audience.endswith(path))


class GatewayTokens:
    """Checks the access tokens the gateway's authorization server issued
    (``gwc.runtime.auth.tokens`` mints them with the private half of one of ``keys``)."""

    def __init__(self, issuer: str, keys: dict[str, Ed25519PublicKey], leeway_s: int = 30) -> None:
        self.issuer = issuer
        self.keys, self._leeway_s = keys, leeway_s  # by key id: the node's own, and any accepted

    def is_ours(self, header: dict[str, Any]) -> bool:
        return header.get("typ") == ACCESS_TOKEN_TYPE and header.get("kid") in self.keys

    def verify(self, token: str, kid: str) -> tuple[Principal, float, str]:
        """(principal, expiry, the resource the token is for), or :class:`AuthError`."""
        try:
            claims = jwt.decode(token, key=self.keys[kid], algorithms=["EdDSA"], issuer=self.issuer,
                                leeway=self._leeway_s, options={
                                    "require": ["exp", "sub", "iss", "aud", "client_id"],
                                    "verify_aud": False})
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.PyJWTError as exc:
            raise AuthError("invalid token", message=f"invalid token: {exc}") from None
        audience = claims["aud"]
        if not isinstance(audience, str) or not (audience == self.issuer
                                                 or audience.startswith(self.issuer + "/")):
            raise AuthError("token audience is not this gateway")
        return _principal(claims, GATEWAY_GROUPS_CLAIM), float(claims["exp"]), audience


class Authenticator:
    def __init__(self, identity: Identity, session: aiohttp.ClientSession | None = None, *,
                 gateway_tokens: GatewayTokens | None = None) -> None:
        self.identity = identity
        self.gateway_tokens = gateway_tokens
        self._algorithms = [a for a in identity.algorithms if a in ASYMMETRIC]
        self._audience = list(identity.audience)
        self._session = session
        self._keys: dict[str, tuple[jwt.PyJWK, str | None]] = {}  # kid -> (key, declared alg)
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        # token -> (principal, expiry, kid of the key that signed it, resource of a gateway token)
        self._cache: LRUCache[str, tuple[Principal, float, str, str | None]] = LRUCache(
            TOKEN_CACHE_SIZE)
        self._refreshing: asyncio.Task | None = None
        if identity.jwks is not None:
            self._keys = self._parse_jwks(identity.jwks)
            self._fetched_at = float("inf")  # embedded in the signed bundle: never refetched

    @staticmethod
    def _parse_jwks(document: Any) -> dict[str, tuple[jwt.PyJWK, str | None]]:
        keys = {}
        for entry in (document or {}).get("keys", []):
            try:
                key = jwt.PyJWK(entry)
            except (jwt.PyJWKError, jwt.InvalidKeyError, KeyError, TypeError, ValueError):
                continue  # an unusable key (e.g. a symmetric one) is skipped, not trusted
            if key.key_type != "oct":
                keys[entry.get("kid", "")] = (key, entry.get("alg"))
        return keys

    async def _refresh(self, force: bool) -> None:
        uri = self.identity.jwks_uri
        if uri is None:
            return
        async with self._lock:
            age = time.monotonic() - self._fetched_at
            if age < JWKS_MIN_REFRESH_S or (not force and age < JWKS_MAX_AGE_S):
                return
            self._fetched_at = time.monotonic()
            if self._session is None:
                self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
            try:
                async with self._session.get(uri) as resp:
                    resp.raise_for_status()
                    keys = self._parse_jwks(await resp.json(content_type=None))
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                log.warning("JWKS fetch failed; keeping the keys we have",
                            extra={"jwks_uri": uri, "reason": str(exc)})
                return
            self._keys = keys

    async def authenticate(self, authorization: str | None, path: str | None = None
                           ) -> Principal:
        """The principal behind an ``Authorization`` header value, or :class:`AuthError`.
        ``path``: the MCP endpoint called (``/mcp``, ``/servers/<name>/mcp``), whose resource a
        gateway token must be for; None for the gateway's other APIs."""
        if not authorization:
            raise AuthError("missing bearer token", token_sent=False)
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("expected 'Authorization: Bearer <token>'", token_sent=False)
        cached = self._cache.get(token)
        if cached is None or cached[1] <= time.time() or not self._key_alive(cached[2]):
            cached = self._cache[token] = await self._verify(token)
        if cached[3] is not None and self.gateway_tokens is not None and not covers(
                cached[3], path, self.gateway_tokens.issuer):
            raise AuthError("token was issued for another resource")
        return cached[0]

    def _key_alive(self, kid: str) -> bool:
        """A cached token stays good while its key does; one whose key left the JWKS is checked
        again (and fails)."""
        if self.gateway_tokens is not None and kid in self.gateway_tokens.keys:
            return True
        self._keep_keys_fresh()
        return kid in self._keys

    def _keep_keys_fresh(self) -> None:
        """Cached tokens need no keys, so without this a node serving only cached tokens would
        never learn that the IdP removed a key: refetch a stale JWKS in the background."""
        if (self.identity.jwks_uri is not None
                and time.monotonic() - self._fetched_at >= JWKS_MAX_AGE_S
                and (self._refreshing is None or self._refreshing.done())):
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh(force=False))

    async def _verify(self, token: str) -> tuple[Principal, float, str, str | None]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:  # undecodable, or a header PyJWT refuses (a kid not a string)
            raise AuthError("malformed token") from None
        if self.gateway_tokens is not None and self.gateway_tokens.is_ours(header):
            kid = header["kid"]
            principal, expires, resource = self.gateway_tokens.verify(token, kid)
            return principal, expires, kid, resource
        claims, kid = await self._claims(token, header, self._audience)
        return _principal(claims, self.identity.groups_claim), float(claims["exp"]), kid, None

    async def id_token_claims(self, token: str, client_id: str) -> dict[str, Any]:
        """The verified claims of an OIDC ID token the IdP issued to ``client_id`` (the gateway's
        login at the IdP): the same keys, algorithms and issuer as its access tokens."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:  # undecodable, or a header PyJWT refuses (a kid not a string)
            raise AuthError("malformed token") from None
        return (await self._claims(token, header, [client_id]))[0]

    async def _claims(self, token: str, header: dict[str, Any], audience: list[str]
                      ) -> tuple[dict[str, Any], str]:
        alg = header.get("alg")
        if alg not in self._algorithms:
            raise AuthError("token algorithm is not accepted",
                            message=f"token algorithm {str(alg)[:20]!r} is not accepted")
        kid = header.get("kid", "")
        await self._refresh(force=False)
        found = self._keys.get(kid)
        if found is None:
            await self._refresh(force=True)
            found = self._keys.get(kid)
        if found is None:
            raise AuthError("token signed by an unknown key")
        key, declared_alg = found
        if declared_alg is not None and declared_alg != alg:
            raise AuthError("token algorithm does not match its key")
        try:
            claims = jwt.decode(token, key=key.key, algorithms=[alg], audience=audience,
                                issuer=self.identity.issuer, leeway=self.identity.leeway_s,
                                options={"require": ["exp", "sub", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token audience is not this gateway") from None
        except jwt.InvalidIssuerError:
            raise AuthError("token issuer is not trusted") from None
        except jwt.PyJWTError as exc:
            raise AuthError("invalid token", message=f"invalid token: {exc}") from None
        return claims, kid

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        if self._session is not None:
            await self._session.close()


def groups_of(claims: dict[str, Any], groups_claim: str) -> frozenset[str]:
    """Groups from a claim that is a list of strings or one space-separated string."""
    raw = claims.get(groups_claim, [])
    return frozenset(raw.split() if isinstance(raw, str) else
                     (g for g in raw if isinstance(g, str)) if isinstance(raw, list) else ())


def _principal(claims: dict[str, Any], groups_claim: str) -> Principal:
    groups = groups_of(claims, groups_claim)
    subject = str(claims["sub"])
    actor = claims.get("act")
    if isinstance(actor, dict) and isinstance(actor.get("sub"), str):
        agent = actor["sub"]
        return Principal(agent, groups, "agent", None if agent == subject else subject)
    return Principal(subject, groups)
