"""An upstream that asks the client something in the middle of a call (elicitation) gets the
client's answer, through the gateway, on a server's endpoint and on the aggregate ``/mcp``; the
request's id the client sees is sealed, so the answer reaches the upstream session that asked
whichever node receives it, and nobody else's."""
from __future__ import annotations

import logging

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import ElicitResult

from gwc.runtime.mcp.sealed_sessions import UpstreamRequest
from tests.support.e2e import open_session, raw, start_node, write_test_registry

pytestmark = pytest.mark.e2e


@pytest.fixture
async def asking_node(tmp_path, aiohttp_server, signing_key, upstream_url):
    return await start_node(tmp_path, aiohttp_server, signing_key,
                            lambda root, jwks: write_test_registry(
                                root, jwks, upstream_url, ("ask", "ask_aside")))


# 2025 era: the request travels on the call's stream. (In 2026-07-28 an upstream asks with an
# input_required result instead, which the gateway passes through untouched and whose retry is
# routed by the tool's name: test_input_required.py.)
@pytest.mark.parametrize("mode", ["legacy"])
@pytest.mark.parametrize(("path", "tool"), [("/servers/tools/mcp", "ask"), ("/mcp", "tools__ask"),
                                           ("/servers/tools/mcp", "ask_aside")])
async def test_an_upstream_asks_and_the_clients_answer_reaches_it(asking_node, path, tool, mode):
    asked: list[str] = []

    async def answer(context, params) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"answer": "blue"})

    token = asking_node.idp.token("alice", ["eng"])
    async with (httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                   timeout=httpx2.Timeout(10.0, read=30.0)) as http,
                Client(streamable_http_client(asking_node.url + path, http_client=http),
                       mode=mode, read_timeout_seconds=20,
                       elicitation_callback=answer) as client):
        result = await client.call_tool(tool, {"question": "favourite colour?"})
    assert asked == ["favourite colour?"]
    assert result.content[0].text == "accept: blue"


async def test_an_answer_to_someone_elses_request_goes_nowhere(asking_node, caplog) -> None:
    sealer = asking_node.gateway.sealer
    bobs = sealer.seal_request(UpstreamRequest("tools", "upstream-session", "2025-11-25", 7, "bob"))
    assert sealer.open_request(bobs).subject == "bob"
    assert sealer.open_request(bobs[:-2] + "xx") is None  # forged or damaged: nothing
    assert sealer.open_request("7") is None and sealer.open_request(7) is None
    token = asking_node.idp.token("alice", ["eng"])
    session = await open_session(asking_node, "/servers/tools/mcp", token)
    with caplog.at_level(logging.INFO, logger="gwc.mcp"):
        answer = await raw(asking_node, "/servers/tools/mcp", {
            "jsonrpc": "2.0", "id": bobs, "result": {"action": "accept", "content": {}}}, token,
            {"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"})
    assert answer.status_code == 202  # accepted and dropped: alice cannot answer for bob
    assert "an answer to no request of this caller's was dropped" in caplog.text
