"""Who is calling: bearer JWTs from the company IdP, checked against its JWKS.

Checks: signature by a key of the IdP's JWKS (found by ``kid``), an algorithm from the configured
allow-list (never ``none``, never HMAC: a public key is not a shared secret), issuer, audience,
expiry and not-before with a small leeway, and a subject. Valid tokens are cached until they expire,
so the hot path verifies each token once. An unknown ``kid`` refreshes the JWKS, at most every few
seconds, so a key rotation at the IdP is picked up without letting garbage tokens hammer it.

A token with an RFC 8693 ``act`` claim is an agent's: the caller is the actor (``act.sub``), acting
for the token's subject.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import jwt
from cachetools import LRUCache

from gwc.runtime.bundle.format import Identity
from gwc.runtime.policy.decide import Principal

log = logging.getLogger("gwc.identity")
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                        "ES512", "EdDSA"})
JWKS_MIN_REFRESH_S = 5.0
JWKS_MAX_AGE_S = 600.0
TOKEN_CACHE_SIZE = 50_000


class AuthError(Exception):
    """The request carries no usable credential; the message is safe to show the caller.

    ``challenge`` is a fixed text, fit for the ``WWW-Authenticate`` header: nothing a caller
    sent (a token's ``alg``, a library's message about it) ever reaches a header.
    ``token_sent`` is false when no bearer token came at all (RFC 6750 §3.1: no error code)."""

    def __init__(self, challenge: str, *, token_sent: bool = True, message: str = "") -> None:
        super().__init__(message or challenge)
        self.challenge, self.token_sent = challenge, token_sent


class Authenticator:
    def __init__(self, identity: Identity, session: aiohttp.ClientSession | None = None) -> None:
        self.identity = identity
        self._algorithms = [a for a in identity.algorithms if a in ASYMMETRIC]
        self._audience = list(identity.audience)
        self._session = session
        self._keys: dict[str, tuple[jwt.PyJWK, str | None]] = {}  # kid -> (key, declared alg)
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        # token -> (principal, expiry, kid of the key that signed it)
        self._cache: LRUCache[str, tuple[Principal, float, str]] = LRUCache(TOKEN_CACHE_SIZE)
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

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal behind an ``Authorization`` header value, or :class:`AuthError`."""
        if not authorization:
            raise AuthError("missing bearer token", token_sent=False)
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("expected 'Authorization: Bearer <token>'", token_sent=False)
        cached = self._cache.get(token)
        if cached is not None and cached[1] > time.time():
            self._keep_keys_fresh()
            if cached[2] in self._keys:
                return cached[0]
            del self._cache[token]  # its key left the JWKS: the token is checked again, and fails
        principal, expires, kid = await self._verify(token)
        self._cache[token] = (principal, expires, kid)
        return principal

    def _keep_keys_fresh(self) -> None:
        """Cached tokens need no keys, so without this a node serving only cached tokens would
        never learn that the IdP removed a key: refetch a stale JWKS in the background."""
        if (self.identity.jwks_uri is not None
                and time.monotonic() - self._fetched_at >= JWKS_MAX_AGE_S
                and (self._refreshing is None or self._refreshing.done())):
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh(force=False))

    async def _verify(self, token: str) -> tuple[Principal, float, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise AuthError("malformed token") from None
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
            claims = jwt.decode(token, key=key.key, algorithms=[alg], audience=self._audience,
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
        return self._principal(claims), float(claims["exp"]), kid

    def _principal(self, claims: dict[str, Any]) -> Principal:
        raw = claims.get(self.identity.groups_claim, [])
        groups = frozenset(raw.split() if isinstance(raw, str) else
                           (g for g in raw if isinstance(g, str)) if isinstance(raw, list) else ())
        subject = str(claims["sub"])
        actor = claims.get("act")
        if isinstance(actor, dict) and isinstance(actor.get("sub"), str):
            agent = actor["sub"]
            return Principal(agent, groups, "agent", None if agent == subject else subject)
        return Principal(subject, groups)

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        if self._session is not None:
            await self._session.close()
