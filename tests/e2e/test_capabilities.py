"""What a per-server endpoint says it can do is what its upstream can, never more: a client (MCP
Inspector) that sees ``logging`` calls ``logging/setLevel`` at once, and an upstream without it
answers ``Method not found``. The aggregate endpoint says what it serves itself."""
from __future__ import annotations

import httpx2
import pytest

from gwc.runtime.upstream.client import answer_to
from tests.support.e2e import INITIALIZE, raw, start_node, write_test_registry

pytestmark = pytest.mark.e2e
DISCOVER = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {
    "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
              "io.modelcontextprotocol/clientCapabilities": {},
              "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"}}}}


async def upstream_capabilities(upstream_url: str) -> dict:
    """What the upstream itself announces (the test upstream: no logging, no completions)."""
    async with httpx2.AsyncClient(timeout=10) as http:
        answer = await http.post(upstream_url, json=INITIALIZE, headers={
            "Accept": "application/json, text/event-stream"})
    reply = answer_to(answer.content, answer.headers.get("content-type", ""), INITIALIZE["id"])
    return reply["result"]["capabilities"]


async def test_a_per_server_endpoint_offers_what_its_upstream_offers(node, upstream_url) -> None:
    upstream = await upstream_capabilities(upstream_url)
    token = node.idp.token("alice", ["eng"])
    initialize = (await raw(node, "/servers/tools/mcp", INITIALIZE, token)).json()["result"]
    discover = (await raw(node, "/servers/tools/mcp", DISCOVER, token, {
        "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "server/discover"})).json()["result"]
    for offered in (initialize["capabilities"], discover["capabilities"]):
        assert offered["tools"] == {"listChanged": True}
        relayed = {"completions", "logging", "prompts", "resources"}
        assert set(offered) - {"tools"} == relayed & set(upstream)
        for name in set(offered) - {"tools"}:  # the upstream's own features of each, no more
            assert offered[name] == {feature: True for feature in ("subscribe", "listChanged")
                                     if upstream[name].get(feature) is True
                                     and name in ("resources", "prompts")}


async def test_the_aggregate_endpoint_offers_what_it_serves(node) -> None:
    token = node.idp.token("alice", ["eng"])
    offered = (await raw(node, "/mcp", INITIALIZE, token)).json()["result"]["capabilities"]
    assert offered == {"tools": {"listChanged": True},
                       "resources": {"subscribe": True, "listChanged": True},
                       "prompts": {"listChanged": True}, "completions": {}, "logging": {}}


async def test_an_unreachable_upstream_is_offered_with_tools_only(tmp_path, aiohttp_server,
                                                                  signing_key) -> None:
    dead = await start_node(tmp_path, aiohttp_server, signing_key, lambda root, jwks:
                            write_test_registry(root, jwks, "http://127.0.0.1:9/mcp"))
    token = dead.idp.token("alice", ["eng"])
    offered = (await raw(dead, "/servers/tools/mcp", INITIALIZE, token)).json()["result"]
    assert offered["capabilities"] == {"tools": {"listChanged": True}}
