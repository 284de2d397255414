"""Signing in at ``gwc dev-idp serve`` in a real headless Chromium: the browser opens the authorization
URL an OIDC client built (PKCE S256, state, nonce), the user presses their button on the login page,
and the browser lands on the client's redirect URI with a code the client redeems for an ID token."""
from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import jwt
import pytest
from authlib.common.security import generate_token
from authlib.oauth2.client import OAuth2Client
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from gwc.compiler.client.dev_idp import DevIdP
from gwc.compiler.client.dev_idp_config import DEFAULT_USERS, DevClient
from gwc.compiler.client.dev_idp_server import DevIdPServer
from tests.support.browser import Callback

SECRET = "s3cret"


@pytest.fixture
async def signed_in_world(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on loopback
    callback = Callback()
    redirect = str((await aiohttp_server(callback.app(), host="127.0.0.1")).make_url("/callback"))
    server = DevIdPServer(DevIdP.generate(), issuer="http://placeholder", users=DEFAULT_USERS,
                          clients=(DevClient(client_id="gateway", client_secret=SECRET,
                                             redirect_uris=(redirect,)),))
    running = await aiohttp_server(server.app(), host="127.0.0.1")
    server.issuer = str(running.make_url("")).rstrip("/")  # known once the socket is bound
    oauth = OAuth2Client(None, client_id="gateway", client_secret=SECRET, redirect_uri=redirect,
                         scope="openid groups", code_challenge_method="S256")
    return {"issuer": server.issuer, "callback": callback, "oauth": oauth, "redirect": redirect}


async def test_a_user_signs_in_by_pressing_their_button_in_a_real_browser(
        signed_in_world: dict[str, Any], browser: WebDriver) -> None:
    issuer, oauth = signed_in_world["issuer"], signed_in_world["oauth"]
    verifier, nonce = generate_token(48), generate_token(20)
    url, state = oauth.create_authorization_url(f"{issuer}/authorize", code_verifier=verifier, nonce=nonce)

    await asyncio.to_thread(browser.get, url)
    assert "not for production" in await asyncio.to_thread(lambda: browser.page_source)
    button = await asyncio.to_thread(browser.find_element, By.CSS_SELECTOR, 'button[value="bob"]')
    await asyncio.to_thread(button.click)
    arrived = await asyncio.wait_for(signed_in_world["callback"].arrived.get(), timeout=30)
    assert arrived["state"] == state and arrived["iss"] == issuer and arrived["code"]

    async with aiohttp.ClientSession() as http:
        basic = {"Authorization": aiohttp.encode_basic_auth("gateway", SECRET)}
        async with http.post(f"{issuer}/token", headers=basic, data={
                "grant_type": "authorization_code", "code": arrived["code"],
                "redirect_uri": signed_in_world["redirect"], "code_verifier": verifier}) as response:
            assert response.status == 200, await response.text()
            tokens = await response.json()
        async with http.get(f"{issuer}/jwks.json") as response:
            keys = jwt.PyJWKSet.from_dict(await response.json())
    key = next(k for k in keys.keys if k.key_id == jwt.get_unverified_header(tokens["id_token"])["kid"])
    claims = jwt.decode(tokens["id_token"], key, algorithms=["ES256"], audience="gateway", issuer=issuer)
    assert (claims["sub"], claims["groups"], claims["nonce"]) == ("bob", ["engineering"], nonce)


async def test_a_login_form_posted_from_another_browser_is_refused(
        signed_in_world: dict[str, Any], browser: WebDriver) -> None:
    """The login page's form only works in the browser that was shown it: its request id is tied to
    a cookie of that browser, so a page elsewhere cannot post a login for it."""
    issuer, oauth = signed_in_world["issuer"], signed_in_world["oauth"]
    url, _ = oauth.create_authorization_url(f"{issuer}/authorize", code_verifier=generate_token(48))
    await asyncio.to_thread(browser.get, url)
    await asyncio.to_thread(browser.delete_all_cookies)  # as if another browser posts the form
    button = await asyncio.to_thread(browser.find_element, By.CSS_SELECTOR, 'button[value="bob"]')
    await asyncio.to_thread(button.click)
    page = await asyncio.to_thread(lambda: browser.page_source)
    assert "signed in" not in page and signed_in_world["callback"].arrived.empty()
