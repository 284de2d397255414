"""A call the client cancels stops at the upstream too: in the 2025 era the client's
``notifications/cancelled`` follows the call, under the id the gateway sent it with; in
2026-07-28 the client closes the call's stream, and so does the gateway upstream."""
from __future__ import annotations

import asyncio
import json

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support.e2e import (
    connect,
    open_session,
    raw,
    running_upstream,
    start_node,
    write_test_registry,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def cancel_upstream():
    with running_upstream("cancel_upstream.py") as url:
        yield url


async def cancellations(upstream: str) -> int:
    async with (httpx2.AsyncClient(timeout=10) as http,
                Client(streamable_http_client(upstream, http_client=http)) as client):
        result = await client.call_tool("cancelled", {})
    return int(result.content[0].text)


async def test_a_cancelled_call_is_cancelled_upstream(tmp_path, aiohttp_server, signing_key,
                                                      cancel_upstream) -> None:
    node = await start_node(tmp_path, aiohttp_server, signing_key,
                            lambda root, jwks: write_test_registry(root, jwks, cancel_upstream, ("wait",)))
    token = node.idp.token("alice", ["eng"])
    session = await open_session(node, "/servers/tools/mcp", token)
    headers = {"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"}
    call = asyncio.create_task(raw(node, "/servers/tools/mcp", {
        "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "wait", "arguments": {"seconds": 20}}}, token, headers))
    try:
        await asyncio.sleep(1.0)
        assert await cancellations(cancel_upstream) == 0
        cancel = await raw(node, "/servers/tools/mcp", {
            "jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": 7, "reason": "the user pressed stop"}}, token, headers)
        assert cancel.status_code == 202
        for _ in range(50):
            if await cancellations(cancel_upstream) == 1:
                break
            await asyncio.sleep(0.1)
        assert await cancellations(cancel_upstream) == 1
        # another session's cancellation of "7" touches nothing of this one
        other = await open_session(node, "/servers/tools/mcp", token)
        await raw(node, "/servers/tools/mcp", {"jsonrpc": "2.0", "method": "notifications/cancelled",
                                               "params": {"requestId": 7}}, token,
                  {**headers, "Mcp-Session-Id": other})
    finally:
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)


@pytest.mark.parametrize(("path", "tool"), [("/servers/tools/mcp", "wait"), ("/mcp", "tools__wait")])
async def test_a_stateless_client_cancels_by_closing_its_stream(tmp_path, aiohttp_server,
                                                               signing_key, cancel_upstream,
                                                               path, tool) -> None:
    """2026-07-28: no notification, the client just closes the request's stream; the gateway
    ends its own request to the upstream, which sees its stream close and stops the tool."""
    node = await start_node(tmp_path, aiohttp_server, signing_key,
                            lambda root, jwks: write_test_registry(root, jwks, cancel_upstream, ("wait",)))
    before = await cancellations(cancel_upstream)
    async with connect(node.url + path, node.idp.token("alice", ["eng"]), "auto") as client:
        with anyio.move_on_after(1.0) as scope:
            await client.call_tool(tool, {"seconds": 20})
        assert scope.cancelled_caught
    for _ in range(50):
        if await cancellations(cancel_upstream) == before + 1:
            break
        await asyncio.sleep(0.1)
    assert await cancellations(cancel_upstream) == before + 1
    records = [json.loads(line) for line in node.audit_path.read_text().splitlines()]
    [record] = [r for r in records if r.get("tool") == "wait"]
    assert record["outcome"] == "disconnected"
