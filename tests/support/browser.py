"""A real headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven over WebDriver by
selenium, for the pages people click through: sign-in, consent, approvals.

Selenium's calls block, so async tests make them with ``asyncio.to_thread`` while the servers the page
talks to keep running on the event loop. Without Chromium the tests skip, except under ``CI=1``, where
they fail: ``.ci/run`` installs it.
"""
from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

# What a sandboxed test machine needs: no GPU, no sandbox (root in a container), and none of the
# background traffic a closed network refuses.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--window-size=1280,900")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver are missing (Debian: chromium chromium-driver)")
        pytest.skip("chromium and chromedriver are not installed")
    options = Options()
    options.binary_location = binary
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Callback:
    """A client's redirect URI for a browser to land on: keeps what the browser brought back."""

    def __init__(self) -> None:
        self.arrived: asyncio.Queue[dict[str, str]] = asyncio.Queue()

    async def handle(self, request: web.Request) -> web.Response:
        await self.arrived.put(dict(request.query))
        return web.Response(text="back in the client", content_type="text/html")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/callback", self.handle)
        return app
