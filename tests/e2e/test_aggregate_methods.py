"""The aggregate endpoint serves completions and resource subscriptions by routing them, as it
routes prompts and resources, to the server behind the namespaced name."""
from __future__ import annotations

import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.types import PromptReference

from gwc.runtime.policy.names import resource_uri
from gwc.runtime.upstream.client import answer_to
from tests.support.e2e import MODES, open_session, raw

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("mode", MODES)
async def test_completion_on_the_aggregate_goes_to_the_prompts_server(node, mode) -> None:
    token = node.idp.token("alice", ["eng"])
    async with (httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                   timeout=20) as http,
                Client(streamable_http_client(node.url + "/mcp", http_client=http), mode=mode,
                       read_timeout_seconds=20) as client):
        prompts = [p.name for p in (await client.list_prompts()).prompts]
        assert "tools__review" in prompts and not any(p.startswith("hidden__") for p in prompts)
        review = "tools__review"
        done = await client.complete(PromptReference(type="ref/prompt", name=review),
                                     {"name": "code", "value": "x"})
        assert done.completion.values == ["x-for-review"]  # the upstream saw "review"
        with pytest.raises(MCPError) as refused:  # a server alice cannot see: as if missing
            await client.complete(PromptReference(type="ref/prompt", name="hidden__review"),
                                  {"name": "code", "value": "x"})
    assert refused.value.data["reason"] == "not_found"


async def test_a_subscription_on_the_aggregate_goes_to_the_resources_server(node) -> None:
    token = node.idp.token("alice", ["eng"])
    session = await open_session(node, "/mcp", token)
    headers = {"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"}

    async def subscribe(uri: str) -> dict:
        answer = await raw(node, "/mcp", {"jsonrpc": "2.0", "id": 3, "method":
                                          "resources/subscribe", "params": {"uri": uri}},
                           token, headers)
        return answer_to(answer.content, answer.headers.get("content-type", ""), 3)

    routed = await subscribe(resource_uri("tools", "test://greeting"))
    hidden = await subscribe(resource_uri("hidden", "test://greeting"))
    # the test upstream does not offer subscriptions: its own refusal, not the gateway's
    # (the gateway's own refusal would carry data.reason; this is the upstream's plain answer)
    assert routed["error"] == {"code": -32601, "message": "Method not found",
                               "data": "resources/subscribe"}
    assert hidden["error"]["data"]["reason"] == "not_found"
