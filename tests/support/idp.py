"""A test identity provider: the dev IdP's keys served as a JWKS over HTTP on 127.0.0.1."""
from __future__ import annotations

import base64
import hmac
import json
import time
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from gwc.compiler.client.dev_idp import DevIdP

ISSUER = "https://idp.test.example"
AUDIENCE = "gwc-test"


class TestIdP:
    """Serves ``/jwks.json`` from its current keys; rotating adds a key the gateway has not seen."""

    __test__ = False

    def __init__(self) -> None:
        self.idps = [DevIdP.generate("k1")]
        self.jwks_requests = 0

    @property
    def current(self) -> DevIdP:
        return self.idps[-1]

    def rotate(self) -> DevIdP:
        self.idps.append(DevIdP.generate(f"k{len(self.idps) + 1}"))
        return self.current

    def token(self, subject: str = "alice", groups: list[str] | None = None, **kw: Any) -> str:
        kw.setdefault("issuer", ISSUER)
        kw.setdefault("audience", AUDIENCE)
        return self.current.token(subject=subject, groups=groups, **kw)

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_requests += 1
        return web.json_response({"keys": [k for idp in self.idps for k in idp.jwks()["keys"]]})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/jwks.json", self._jwks)
        return app


# Forged tokens a gateway must refuse.
def unsigned_token(claims: dict, header: object = None) -> str:
    """A token nobody signed; ``header`` replaces its usual one (any JSON value, hostile ones
    included)."""
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    header = {'alg': 'none', 'typ': 'JWT', 'kid': 'k1'} if header is None else header
    return f"{part(header)}.{part(claims)}."


def hs256_with_public_key(idp: TestIdP) -> str:
    """The classic confusion attack: HMAC-sign with the IdP's public key as the shared secret."""
    secret = idp.current.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    signing_input = (part(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode()) + "."
                     + part(json.dumps(claims()).encode()))
    return signing_input + "." + part(hmac.new(secret, signing_input.encode(), "sha256").digest())


def claims(**overrides) -> dict:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now + 300, "iat": now,
            **overrides}
