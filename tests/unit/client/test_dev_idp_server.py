"""gwc dev-idp serve on a real loopback socket, driven the way an OIDC client drives it: authlib builds
the authorization URL (PKCE S256, state, nonce), the token requests and the client authentication;
ID tokens are verified with pyjwt against the JWKS the server publishes."""
from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestServer
from authlib.common.security import generate_token
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.client import OAuth2Client
from authlib.oauth2.rfc6749.parameters import parse_authorization_code_response, prepare_token_request
from yarl import URL

from gwc.compiler.client.dev_idp import DevIdP
from gwc.compiler.client.dev_idp_config import DEFAULT_USERS, DevClient, DevUser
from gwc.compiler.client.dev_idp_server import DevIdPServer

REDIRECT = "http://127.0.0.1:9/callback"
CONFIDENTIAL = DevClient(client_id="gateway", client_secret="s3cret", redirect_uris=(REDIRECT,))
PUBLIC = DevClient(client_id="cli", redirect_uris=("http://127.0.0.1:9/cli",))
USERS = (*DEFAULT_USERS, DevUser(sub="alice", groups=("data-platform",), agent="bot"))


@dataclass
class Flow:
    """One OIDC client talking to the dev IdP: its authlib client, browser session and secrets."""
    issuer: str
    http: aiohttp.ClientSession
    oauth: OAuth2Client
    verifier: str
    nonce: str
    state: str = ""

    def authorization_url(self, **overrides: str) -> str:
        url, self.state = self.oauth.create_authorization_url(
            f"{self.issuer}/authorize", code_verifier=self.verifier, nonce=self.nonce, **overrides)
        return url

    async def login_page(self, **overrides: str) -> tuple[aiohttp.ClientResponse, str]:
        async with self.http.get(self.authorization_url(**overrides), allow_redirects=False) as response:
            return response, await response.text()

    async def pick(self, page: str, user: str, **form: str) -> str:
        """Press the user's button on the login page; the Location the IdP redirects to."""
        fields = {"request": re.search(r'name="request" value="([^"]+)"', page)[1], "sub": user, **form}
        async with self.http.post(f"{self.issuer}/authorize", data=fields, allow_redirects=False) as response:
            assert response.status == 302, await response.text()
            return response.headers["Location"]

    async def code_for(self, user: str = "alice") -> str:
        _, page = await self.login_page()
        location = await self.pick(page, user)
        params = parse_authorization_code_response(location, self.state)
        assert params["iss"] == self.issuer  # RFC 9207
        return params["code"]

    async def token(self, grant_type: str, auth_method: str = "client_secret_basic",
                    secret: str | None = None, **params: Any
                    ) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
        body = prepare_token_request(grant_type, **params)
        auth = ClientAuth(self.oauth.client_id, secret or self.oauth.client_secret, auth_method)
        url, headers, body = auth.prepare("POST", f"{self.issuer}/token",
                                          {"Content-Type": "application/x-www-form-urlencoded"}, body)
        async with self.http.post(url, data=body, headers=headers) as response:
            return response.status, await response.json(), response

    async def exchange(self, code: str, **overrides: Any) -> tuple[int, dict[str, Any]]:
        params = {"code": code, "redirect_uri": REDIRECT, "code_verifier": self.verifier, **overrides}
        status, body, _ = await self.token("authorization_code", **params)
        return status, body

    async def verified(self, id_token: str) -> dict[str, Any]:
        async with self.http.get(f"{self.issuer}/jwks.json") as response:
            keys = jwt.PyJWKSet.from_dict(await response.json())
        key = next(k for k in keys.keys if k.key_id == jwt.get_unverified_header(id_token)["kid"])
        return jwt.decode(id_token, key, algorithms=["ES256"], audience=self.oauth.client_id,
                          issuer=self.issuer, options={"require": ["exp", "iat", "sub", "aud", "iss"]})


@pytest.fixture
async def idp(aiohttp_server: Any) -> AsyncIterator[DevIdPServer]:
    server = DevIdPServer(DevIdP.generate(), issuer="http://placeholder", users=USERS,
                          clients=(CONFIDENTIAL, PUBLIC))
    running: TestServer = await aiohttp_server(server.app(), host="127.0.0.1")
    server.issuer = str(running.make_url("")).rstrip("/")  # known once the socket is bound
    yield server


def flow_for(idp: DevIdPServer, http: aiohttp.ClientSession, client: DevClient = CONFIDENTIAL) -> Flow:
    oauth = OAuth2Client(None, client_id=client.client_id, client_secret=client.client_secret,
                         redirect_uri=client.redirect_uris[0], scope="openid profile groups",
                         code_challenge_method="S256")
    return Flow(idp.issuer, http, oauth, generate_token(48), generate_token(20))


@pytest.fixture
async def flow(idp: DevIdPServer, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Flow]:
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on loopback
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        yield flow_for(idp, http)


async def test_discovery_names_the_endpoints_and_what_a_confidential_client_needs(flow: Flow) -> None:
    async with flow.http.get(f"{flow.issuer}/.well-known/openid-configuration") as response:
        meta = await response.json()
    assert meta["issuer"] == flow.issuer and meta["jwks_uri"] == f"{flow.issuer}/jwks.json"
    assert (meta["authorization_endpoint"], meta["token_endpoint"]) == \
        (f"{flow.issuer}/authorize", f"{flow.issuer}/token")
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert {"client_secret_basic", "client_secret_post"} <= set(meta["token_endpoint_auth_methods_supported"])
    assert meta["grant_types_supported"] == ["authorization_code", "refresh_token"]


async def test_the_code_flow_yields_an_id_token_the_jwks_verifies(flow: Flow) -> None:
    response, page = await flow.login_page()
    assert "not for production" in page and "sre-oncall" in page
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert "form-action 'self' http://127.0.0.1:9" in response.headers["Content-Security-Policy"]
    location = await flow.pick(page, "sam")
    code = parse_authorization_code_response(location, flow.state)["code"]
    assert URL(location).query["iss"] == flow.issuer  # RFC 9207
    status, body, raw = await flow.token("authorization_code", code=code, redirect_uri=REDIRECT,
                                         code_verifier=flow.verifier)
    assert status == 200 and raw.headers["Cache-Control"] == "no-store"
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0 and body["refresh_token"]
    claims = await flow.verified(body["id_token"])
    assert (claims["sub"], claims["groups"], claims["nonce"]) == ("sam", ["sre", "sre-oncall"], flow.nonce)
    assert claims["auth_time"] <= claims["iat"] and "act" not in claims
    assert (await flow.verified(body["access_token"]))["sub"] == "sam"


async def test_an_agent_user_gets_an_agents_token(flow: Flow) -> None:
    status, body = await flow.exchange(await flow.code_for("bot for alice"))
    claims = await flow.verified(body["id_token"])
    assert status == 200 and (claims["sub"], claims["act"]) == ("alice", {"sub": "bot"})


async def test_a_public_client_logs_in_with_pkce_alone(idp: DevIdPServer, flow: Flow) -> None:
    public = flow_for(idp, flow.http, PUBLIC)
    code = await public.code_for()
    status, body, _ = await public.token("authorization_code", auth_method="none", code=code,
                                         redirect_uri=PUBLIC.redirect_uris[0], code_verifier=public.verifier)
    assert status == 200, body


async def test_a_refresh_token_works_once_and_is_rotated(flow: Flow) -> None:
    _, first = await flow.exchange(await flow.code_for("bob"))
    status, second, _ = await flow.token("refresh_token", refresh_token=first["refresh_token"],
                                         auth_method="client_secret_post")
    assert status == 200 and second["refresh_token"] != first["refresh_token"]
    claims = await flow.verified(second["id_token"])
    assert claims["sub"] == "bob" and "nonce" not in claims
    status, refused, _ = await flow.token("refresh_token", refresh_token=first["refresh_token"])
    assert (status, refused["error"]) == (400, "invalid_grant")


async def test_a_code_works_once(flow: Flow) -> None:
    code = await flow.code_for()
    assert (await flow.exchange(code))[0] == 200
    status, body = await flow.exchange(code)
    assert (status, body["error"]) == (400, "invalid_grant")


@pytest.mark.parametrize("override", [
    {"code_verifier": generate_token(48)},      # not the verifier the challenge was made from
    {"code_verifier": ""},
    {"redirect_uri": "http://127.0.0.1:9/other"},
])
async def test_a_code_is_refused_without_the_verifier_and_redirect_uri_it_was_issued_for(
        flow: Flow, override: dict[str, str]) -> None:
    code = await flow.code_for()
    status, body = await flow.exchange(code, **override)
    assert (status, body["error"]) == (400, "invalid_grant")
    assert (await flow.exchange(code))[0] == 400  # and a failed attempt spends the code


@pytest.mark.parametrize("auth_method, secret", [
    ("client_secret_basic", "wrong"), ("client_secret_post", "wrong"), ("none", None)])
async def test_a_wrong_or_missing_secret_is_invalid_client(flow: Flow, auth_method: str,
                                                           secret: str | None) -> None:
    code = await flow.code_for()
    if secret is None:
        flow.oauth.client_secret = None
    status, body, raw = await flow.token("authorization_code", auth_method=auth_method, secret=secret,
                                         code=code, redirect_uri=REDIRECT, code_verifier=flow.verifier)
    assert (status, body["error"]) == (401, "invalid_client")
    assert raw.headers["Cache-Control"] == "no-store"


async def test_an_unknown_client_is_refused_at_both_endpoints(flow: Flow) -> None:
    flow.oauth.client_id = "stranger"
    response, page = await flow.login_page()
    assert response.status == 400 and "Location" not in response.headers and "unknown client" in page
    status, body, _ = await flow.token("authorization_code", code="x", redirect_uri=REDIRECT,
                                       code_verifier=flow.verifier)
    assert (status, body["error"]) == (401, "invalid_client")


async def test_an_unregistered_redirect_uri_is_shown_on_a_page_never_redirected_to(flow: Flow) -> None:
    response, page = await flow.login_page(redirect_uri="http://evil.example/callback")
    assert response.status == 400 and "Location" not in response.headers
    assert "redirect_uri is not registered" in page and response.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("overrides, error", [
    ({"code_challenge": ""}, "invalid_request"),
    ({"code_challenge_method": "plain"}, "invalid_request"),
    ({"response_type": "token"}, "unsupported_response_type"),
    ({"scope": "profile"}, "invalid_scope"),
])
async def test_a_bad_request_from_a_trusted_client_is_redirected_back_with_the_error(
        flow: Flow, overrides: dict[str, str], error: str) -> None:
    url = flow.authorization_url()
    query = {**URL(url).query, **overrides}
    async with flow.http.get(URL(url).with_query(query), allow_redirects=False) as response:
        assert response.status == 302
        redirected = URL(response.headers["Location"])
    assert str(redirected.with_query(None)) == REDIRECT
    assert (redirected.query["error"], redirected.query["state"], redirected.query["iss"]) == \
        (error, flow.state, flow.issuer)


@pytest.mark.parametrize("field", ["missing", "forged", "other browser"])
async def test_the_login_post_must_carry_this_browsers_authorization_request(flow: Flow, field: str) -> None:
    _, page = await flow.login_page()
    request_id = re.search(r'name="request" value="([^"]+)"', page)[1]
    form = {"sub": "alice"} if field == "missing" else {
        "sub": "alice", "request": generate_token(32) if field == "forged" else request_id}
    if field == "other browser":
        flow.http.cookie_jar.clear()
    async with flow.http.post(f"{flow.issuer}/authorize", data=form, allow_redirects=False) as response:
        assert response.status == 400 and "Location" not in response.headers
        assert "expired or was not shown to this browser" in await response.text()


async def test_an_unknown_grant_type_is_refused(flow: Flow) -> None:
    status, body, _ = await flow.token("password", username="alice", password="x")
    assert (status, body["error"]) == (400, "unsupported_grant_type")


@pytest.mark.parametrize("authorization", ["Basic !!!", "Basic " + "w6k=", "Bearer abc", "Basic"])
async def test_a_malformed_authorization_header_is_invalid_client_not_a_crash(flow: Flow,
                                                                             authorization: str) -> None:
    async with flow.http.post(f"{flow.issuer}/token", data={"grant_type": "refresh_token"},
                              headers={"Authorization": authorization}) as response:
        assert (response.status, (await response.json())["error"]) == (401, "invalid_client")


async def test_a_non_ascii_browser_cookie_is_refused_not_a_crash(flow: Flow) -> None:
    _, page = await flow.login_page()
    request_id = re.search(r'name="request" value="([^"]+)"', page)[1]
    flow.http.cookie_jar.clear()
    async with flow.http.post(f"{flow.issuer}/authorize", data={"request": request_id, "sub": "alice"},
                              headers={"Cookie": "gwc_dev_idp_browser=caf\u00e9"},
                              allow_redirects=False) as response:
        assert response.status == 400
