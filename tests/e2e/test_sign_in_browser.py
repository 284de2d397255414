"""Signing in through the gateway in a real headless Chromium: the client's authorization URL opens
at the gateway, the browser is sent to the dev IdP's login page, the user presses their button,
the gateway's consent page says which application wants what as whom, the user presses Allow (or
Deny), and the browser lands on the client's loopback redirect with a code (or access_denied)."""
from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import pytest
from authlib.common.security import generate_token
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.browser import Callback
from tests.support.sign_in import SignInWorld, authorize_url, register, world

pytestmark = pytest.mark.e2e
__all__ = ["world"]  # the fixture, from tests.support.sign_in


async def click(browser: WebDriver, css: str) -> None:
    """Press a button once the page that has it has loaded (a form's answer loads on its own
    time: a redirect or two later)."""
    element = await asyncio.to_thread(WebDriverWait(browser, 20).until,
                                      expected_conditions.element_to_be_clickable(
                                          (By.CSS_SELECTOR, css)))
    await asyncio.to_thread(element.click)


async def open_consent(world: SignInWorld, browser: WebDriver, aiohttp_server: Any
                       ) -> tuple[Callback, str, str, str]:
    callback = Callback()
    redirect = str((await aiohttp_server(callback.app(), host="127.0.0.1")).make_url("/callback"))
    client_id = (await register(world.url, redirect)).json()["client_id"]
    verifier = generate_token(48)
    await asyncio.to_thread(browser.get, authorize_url(world.url, client_id, redirect, verifier))
    await click(browser, 'button[value="erin"]')  # the dev IdP's login page
    return callback, client_id, redirect, verifier


async def test_a_user_logs_in_and_allows_a_client_in_a_real_browser(
        world: SignInWorld, browser: WebDriver, aiohttp_server: Any) -> None:
    callback, client_id, redirect, verifier = await open_consent(world, browser, aiohttp_server)
    await asyncio.to_thread(WebDriverWait(browser, 20).until,
                            expected_conditions.title_contains("Allow access"))
    consent = await asyncio.to_thread(lambda: browser.page_source)
    assert "Allow raw test to use your tools?" in consent
    assert "erin" in consent and f"{world.url}/mcp" in consent and "127.0.0.1" in consent
    await click(browser, 'button[value="allow"]')
    arrived = await asyncio.wait_for(callback.arrived.get(), timeout=30)
    assert arrived["iss"] == world.url and arrived["code"]
    async with httpx2.AsyncClient(timeout=10) as http:
        tokens = await http.post(world.url + "/oauth/token", data={
            "grant_type": "authorization_code", "code": arrived["code"], "client_id": client_id,
            "redirect_uri": redirect, "code_verifier": verifier})
    assert tokens.status_code == 200 and tokens.json()["token_type"] == "Bearer"


async def test_pressing_deny_sends_the_client_access_denied(
        world: SignInWorld, browser: WebDriver, aiohttp_server: Any) -> None:
    callback, *_ = await open_consent(world, browser, aiohttp_server)
    await click(browser, 'button[value="deny"]')
    arrived = await asyncio.wait_for(callback.arrived.get(), timeout=30)
    assert arrived["error"] == "access_denied" and "code" not in arrived
