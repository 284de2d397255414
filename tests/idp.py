"""A test identity provider: the dev IdP's keys served as a JWKS over HTTP on 127.0.0.1."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from compiler.devidp import DevIdP

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
