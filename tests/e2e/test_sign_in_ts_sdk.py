"""The TypeScript SDK's client (the one Claude Desktop, MCP Inspector and mcp-remote build on)
signs in through the gateway with its own OAuth code: discovery from the 401, dynamic
registration, PKCE, the browser (scripted here) at the dev IdP and the consent page, the code
exchanged, and then the tools of that user only."""
from __future__ import annotations

import asyncio
import json

import pytest

from demo.browser import ScriptedBrowser
from tests.support.e2e import free_port
from tests.support.node_packages import SCRIPTS
from tests.support.sign_in import CALLBACK, SignInWorld, world

pytestmark = pytest.mark.e2e
__all__ = ["world"]  # the fixture, from tests.support.sign_in


async def sign_in_with_the_ts_sdk(ts_sdk, server_url: str, user: str) -> dict:
    redirect = CALLBACK.format(port=free_port())
    node = await asyncio.create_subprocess_exec(
        "node", str(SCRIPTS / "ts_sdk_oauth.mjs"), str(ts_sdk), server_url, redirect,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        assert node.stdout is not None and node.stdin is not None
        first = json.loads(await asyncio.wait_for(node.stdout.readline(), 30))
        browser = ScriptedBrowser([("sub", user), ("decision", "allow")])
        try:
            landed = await browser.sign_in(first["authorize"], until=redirect)
        finally:
            await browser.close()
        node.stdin.write(landed.encode() + b"\n")
        await node.stdin.drain()
        out, err = await asyncio.wait_for(node.communicate(), 30)
        assert node.returncode == 0, err.decode()[-2000:]
        return json.loads(out.decode().strip().splitlines()[-1])
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()


async def test_the_typescript_sdk_signs_in_and_sees_its_users_tools(world: SignInWorld, ts_sdk):
    seen = await sign_in_with_the_ts_sdk(ts_sdk, world.url + "/mcp", "erin")
    assert "tools__echo" in seen["tools"] and not any(n.startswith("hidden__")
                                                      for n in seen["tools"])
    assert seen["client_id"].startswith("gwc-") and seen["refresh_token"]


async def test_the_typescript_sdk_signs_in_to_one_server(world: SignInWorld, ts_sdk):
    seen = await sign_in_with_the_ts_sdk(ts_sdk, world.url + "/servers/tools/mcp", "olga")
    assert "echo" in seen["tools"]
