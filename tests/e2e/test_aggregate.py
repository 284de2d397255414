"""End to end on the aggregate endpoint ``/mcp``: one URL, every entitled tool as
``{server}__{tool}``, resources and prompts namespaced, the catalog API, list_changed streams, and
one dead upstream never breaking the listing of the others. Real SDK clients, real upstream."""
from __future__ import annotations

import asyncio

import httpx2
import pytest
from aiohttp import web
from mcp import MCPError

from tests.support.e2e import INITIALIZE, LIST, MODES, Node, connect, raw, refusal, text_of
from tests.support.helpers import dump

ALICE_TOOLS = {"tools__echo", "tools__whoami", "tools__slow_count", "tools__write_thing",
               "guarded__echo", "guarded__write_thing"}


def aggregate(node: Node) -> str:
    return node.url + "/mcp"


@pytest.mark.parametrize("mode", MODES)
async def test_one_url_lists_every_entitled_tool_and_routes_calls(node, mode) -> None:
    async with connect(aggregate(node), node.idp.token("alice", ["eng"]), mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == ALICE_TOOLS  # not hidden (invisible), not secret_tool (undeclared)
        assert tools["tools__echo"].annotations.read_only_hint is True
        assert tools["tools__echo"].annotations.destructive_hint is False  # upstream said True
        assert tools["tools__echo"].description.startswith("Echo the text back")
        assert "text" in tools["tools__echo"].input_schema["properties"]
        assert text_of(await client.call_tool("tools__echo", {"text": "hi"})) == "echo: hi"
        assert text_of(await client.call_tool("tools__write_thing", {
            "target": "x", "env": "staging"})) == "wrote x in staging"
        denied = await client.call_tool("tools__write_thing", {"target": "x", "env": "production"})
        assert refusal(denied) == {"reason": "denied", "rules": []}
        assert denied.structured_content["message"] == "alice may not call write_thing on tools"
        # an unknown tool is a protocol error: -32602, reason not_found
        with pytest.raises(MCPError) as invisible:
            await client.call_tool("hidden__echo", {"text": "x"})
        with pytest.raises(MCPError) as missing:
            await client.call_tool("nope__echo", {"text": "x"})
        assert invisible.value.code == missing.value.code == -32602
        assert invisible.value.data == missing.value.data == {"reason": "not_found"}
        assert invisible.value.message == "Unknown tool: hidden__echo"


@pytest.mark.parametrize("mode", MODES)
async def test_progress_flows_through_the_aggregate(node, mode) -> None:
    seen = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        seen.append(value)
    async with connect(aggregate(node), node.idp.token("alice", ["eng"]), mode) as client:
        result = await client.call_tool("tools__slow_count", {"n": 3}, progress_callback=progress)
    assert text_of(result) == "counted 3" and seen == [1, 2, 3]


@pytest.mark.parametrize("mode", MODES)
async def test_resources_and_prompts_are_namespaced(node, mode) -> None:
    async with connect(aggregate(node), node.idp.token("alice", ["eng"]), mode) as client:
        resources = {str(r.uri) for r in (await client.list_resources()).resources}
        assert "gwc://tools/test://greeting" in resources
        assert not any(uri.startswith("gwc://hidden/") for uri in resources)
        read = await client.read_resource("gwc://tools/test://greeting")
        assert read.contents[0].text == "hello from the upstream"
        assert str(read.contents[0].uri) == "gwc://tools/test://greeting"
        prompts = {p.name for p in (await client.list_prompts()).prompts}
        assert {"tools__review", "guarded__review"} <= prompts
        assert "hidden__review" not in prompts
        prompt = await client.get_prompt("tools__review", {"code": "x = 1"})
        assert "x = 1" in prompt.messages[0].content.text
        with pytest.raises(MCPError) as hidden:
            await client.read_resource("gwc://hidden/test://greeting")
        assert hidden.value.data["reason"] == "not_found"


async def test_a_prompt_resolves_on_a_node_that_never_listed_prompts(node) -> None:
    async with connect(aggregate(node), node.idp.token("alice", ["eng"]), "legacy") as client:
        prompt = await client.get_prompt("tools__review", {"code": "y = 2"})
        assert "y = 2" in prompt.messages[0].content.text
        with pytest.raises(MCPError) as hidden:
            await client.get_prompt("hidden__review", {"code": "y"})
        assert hidden.value.data["reason"] == "not_found"


async def test_a_2025_version_in_meta_still_needs_its_session(node) -> None:
    body = {**LIST, "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2025-06-18"}}}
    response = await raw(node, "/mcp", body, node.idp.token("alice", ["eng"]))
    assert response.status_code == 400
    assert response.json()["error"]["data"]["reason"] == "invalid_request"


async def test_a_client_declaring_too_much_gets_a_clear_error(node) -> None:
    body = {**INITIALIZE, "params": {**INITIALIZE["params"], "capabilities": {
        "experimental": {"blob": "x" * 10_000}}}}
    response = await raw(node, "/servers/tools/mcp", body, node.idp.token("alice", ["eng"]))
    assert response.status_code == 400
    assert response.json()["error"]["data"]["reason"] == "invalid_params"


async def test_the_catalog_lists_what_the_caller_may_use(node) -> None:
    async with httpx2.AsyncClient() as http:
        unauthenticated = await http.get(node.url + "/v1/catalog")
        alice = (await http.get(node.url + "/v1/catalog", headers={
            "Authorization": f"Bearer {node.idp.token('alice', ['eng'])}"})).json()
        mallory = (await http.get(node.url + "/v1/catalog", headers={
            "Authorization": f"Bearer {node.idp.token('mallory', ['ops'])}"})).json()
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["WWW-Authenticate"].startswith("Bearer resource_metadata=")
    servers = {s["name"]: s for s in alice["servers"]}
    assert set(servers) == {"tools", "guarded"}
    assert servers["tools"]["endpoint"] == f"{node.url}/servers/tools/mcp"
    names = {t["aggregate_name"] for s in alice["servers"] for t in s["tools"]}
    assert names == ALICE_TOOLS
    write = next(t for t in servers["tools"]["tools"] if t["name"] == "write_thing")
    assert (write["access"], write["entitlement"]) == ("write", "conditional")
    assert alice["gateway"] == {"endpoint": f"{node.url}/mcp", "bundle_serial": 1,
                                "bundle_revision": "r1"}
    assert mallory["servers"] == [{**{k: v for k, v in servers["tools"].items() if k != "tools"},
                                   "tools": []}]  # visible to ops, but a deny rule covers all


async def test_a_dead_or_hanging_upstream_is_left_out_of_the_listing(node, aiohttp_server) -> None:
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), 30)
        return web.Response(status=503)
    app = web.Application()
    app.router.add_post("/mcp", hang)
    hanging = await aiohttp_server(app, host="127.0.0.1")
    for name, url in (("slow", str(hanging.make_url("/mcp"))),
                      ("dead", "http://127.0.0.1:9/mcp")):  # the discard port: refused
        (node.registry_root / "registry" / f"{name}.yaml").write_text(dump({
            "name": name, "owner": "eng", "upstream": url, "visibility": "team:eng",
            "tools": {"echo": {"access": "read"}}}))
    node.publish(2)
    assert await node.gateway.poller.poll_once() == "activated"
    try:
        async with connect(aggregate(node), node.idp.token("bob", ["ops", "eng"]), "legacy") as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert "tools__echo" in names and not {"slow__echo", "dead__echo"} & names
            with pytest.raises(MCPError) as dead:
                await c.call_tool("dead__echo", {"text": "x"})
            assert dead.value.data["reason"] == "upstream_unavailable"
    finally:
        release.set()


async def test_legacy_streams_hear_when_a_new_bundle_changes_their_tools(node) -> None:
    heard = asyncio.Event()

    async def on_message(message) -> None:
        if getattr(getattr(message, "root", message), "method", "") == \
                "notifications/tools/list_changed":
            heard.set()
    token = node.idp.token("alice", ["eng"])
    async with connect(aggregate(node), token, "legacy", message_handler=on_message) as client:
        assert "tools__whoami" in {t.name for t in (await client.list_tools()).tools}
        for _ in range(50):  # the client opens its GET stream in the background
            if node.gateway.metrics.registry.get_sample_value("gwc_list_changed_streams"):
                break
            await asyncio.sleep(0.1)
        node.publish(2)  # same policy: nobody's tools change, nobody is told
        assert await node.gateway.poller.poll_once() == "activated"
        await asyncio.sleep(0.3)
        assert not heard.is_set()
        manifest = node.registry_root / "registry" / "tools.yaml"
        manifest.write_text(manifest.read_text().replace("  whoami:\n    access: read\n", ""))
        node.publish(3)
        assert await node.gateway.poller.poll_once() == "activated"
        await asyncio.wait_for(heard.wait(), 10)
        assert "tools__whoami" not in {t.name for t in (await client.list_tools()).tools}
