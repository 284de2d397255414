"""What an upstream sends outside any call (2025 era: on its session's own GET stream) reaches the
client, on a server's endpoint and on the aggregate ``/mcp``: a question asked after the call
has ended gets the client's answer, and a change of the upstream's tools and resources reaches the
client namespaced on ``/mcp``, whose next listing shows the new tool."""
from __future__ import annotations

import asyncio

import anyio
import httpx2
import orjson
import pytest
import yaml
from mcp.types import (
    ElicitResult,
    ResourceUpdatedNotification,
    ToolListChangedNotification,
)

from tests.support.e2e import (
    INITIALIZE,
    connect,
    raw,
    running_upstream,
    start_node,
    text_of,
    write_test_registry,
)

pytestmark = pytest.mark.e2e
LATER_TOOLS = ("ask_later", "answers", "grow", "grown", "ask_aside")


@pytest.fixture
async def own_upstream():
    """An upstream of the test's own: ``grow`` changes it for good."""
    with running_upstream() as url:
        yield url


@pytest.fixture
async def later_node(own_upstream, tmp_path, aiohttp_server, signing_key):  # node ends first
    return await start_node(tmp_path, aiohttp_server, signing_key,
                            lambda root, jwks: write_test_registry(root, jwks, own_upstream, LATER_TOOLS))


async def eventually(check, what: str, timeout_s: float = 10.0):
    for _ in range(int(timeout_s / 0.05)):
        if (found := check()):
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


@pytest.mark.parametrize(("path", "prefix"), [("/servers/tools/mcp", ""), ("/mcp", "tools__")])
async def test_a_question_asked_after_the_call_reaches_the_client(later_node, path, prefix):
    asked: list[str] = []

    async def answer(context, params) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"answer": "blue"})

    token = later_node.idp.token("alice", ["eng"])
    async with connect(later_node.url + path, token, "legacy",
                       elicitation_callback=answer) as client:
        await asyncio.sleep(0.3)  # the client's GET stream is open (the SDK opens it meanwhile)
        assert text_of(await client.call_tool(f"{prefix}ask_later",
                                              {"question": "favourite colour?"})) == "asked"
        await eventually(lambda: asked, "the upstream's question reached the client")
        assert asked == ["favourite colour?"]
        answers = ""
        for _ in range(100):
            answers = text_of(await client.call_tool(f"{prefix}answers", {}))
            if answers != "none":
                break
            await asyncio.sleep(0.05)
    assert answers == "accept: blue"


async def test_an_upstreams_changes_reach_the_aggregate_namespaced(later_node):
    heard: list = []

    async def note(message) -> None:
        if isinstance(message, (ToolListChangedNotification, ResourceUpdatedNotification)):
            heard.append(message)

    token = later_node.idp.token("alice", ["eng"])
    async with connect(later_node.url + "/mcp", token, "legacy", message_handler=note) as client:
        before = {tool.name for tool in (await client.list_tools()).tools}
        assert "tools__grow" in before and "tools__grown" not in before  # not upstream's yet
        await asyncio.sleep(0.3)  # the client's GET stream is open
        assert text_of(await client.call_tool("tools__grow", {})) == "grew"
        await eventually(lambda: len(heard) >= 2, "the upstream's notifications")
        changed = [m for m in heard if isinstance(m, ToolListChangedNotification)]
        updated = [m for m in heard if isinstance(m, ResourceUpdatedNotification)]
        assert len(changed) == 1
        assert [str(m.params.uri) for m in updated] == ["gwc://tools/test://greeting"]
        after = {tool.name for tool in (await client.list_tools()).tools}
    assert after == before | {"tools__grown"}  # the node's catalog listed the upstream again


@pytest.mark.parametrize(("path", "prefix", "uri"), [
    ("/servers/tools/mcp", "", "test://greeting"),
    ("/mcp", "tools__", "gwc://tools/test://greeting")])
async def test_a_stateless_client_listens_for_an_upstreams_changes(later_node, path, prefix, uri):
    """2026-07-28: ``subscriptions/listen`` on either endpoint: the gateway acknowledges what it
    honours, then relays the upstream's notifications with the client's subscription id, the
    resource named as the client named it."""
    token = later_node.idp.token("alice", ["eng"])
    async with (connect(later_node.url + path, token, "auto") as client,
                client.listen(tools_list_changed=True, resource_subscriptions=[uri]) as listening):
        assert listening.honored.tools_list_changed is True
        assert listening.honored.resource_subscriptions == [uri]
        assert text_of(await client.call_tool(f"{prefix}grow", {})) == "grew"
        heard = []
        with anyio.fail_after(10):
            async for change in listening:
                heard.append(change)
                if len(heard) == 2:
                    break
        after = {tool.name for tool in (await client.list_tools()).tools}
    # the client has gone: the gateway lets go of its stream and of the upstream's
    await eventually(lambda: not later_node.gateway.list_changed._listeners, "stream released")
    assert sorted(type(change).__name__ for change in heard) == ["ResourceUpdated",
                                                                 "ToolsListChanged"]
    assert [change.uri for change in heard if hasattr(change, "uri")] == [uri]
    assert f"{prefix}grown" in after


async def test_a_listening_client_hears_when_a_bundle_changes_its_tools(later_node):
    """The gateway's own tools/list_changed (a new bundle changed what the caller sees) reaches a
    2026-07-28 listen stream too, tagged with its subscription id; a stream that did not ask for
    it hears nothing."""
    token = later_node.idp.token("alice", ["eng"])
    async with (connect(later_node.url + "/mcp", token, "auto") as client,
                client.listen(tools_list_changed=True) as listening,
                client.listen(prompts_list_changed=True) as other):
        manifest = later_node.registry_root / "registry" / "tools.yaml"
        spec = yaml.safe_load(manifest.read_text())
        spec["tools"]["newly_declared"] = {"access": "read"}
        manifest.write_text(yaml.safe_dump(spec))
        later_node.publish(2)
        assert await later_node.gateway.poller.poll_once() == "activated"
        with anyio.fail_after(10):
            change = await listening.__anext__()
        assert type(change).__name__ == "ToolsListChanged"
        with anyio.move_on_after(1.5) as quiet:
            await other.__anext__()
        assert quiet.cancelled_caught  # it asked for prompts only


async def test_a_question_sent_before_the_client_listens_is_kept_for_it(later_node):
    """An upstream asks on its session's own stream as soon as the call starts, before the
    client has opened its GET stream (an upstream without an event store would drop it): the
    gateway opened that stream with the session and kept the question for the client's."""
    token = later_node.idp.token("alice", ["eng"])
    path = "/servers/tools/mcp"
    initialize = {**INITIALIZE, "params": {**INITIALIZE["params"],
                                           "capabilities": {"elicitation": {}}}}
    session = (await raw(later_node, path, initialize, token)).headers["Mcp-Session-Id"]
    headers = {"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"}
    await raw(later_node, path, {"jsonrpc": "2.0", "method": "notifications/initialized"},
              token, headers)
    call = asyncio.get_running_loop().create_task(raw(later_node, path, {
        "jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "ask_aside", "arguments": {"question": "which way?"}}}, token, headers))
    try:
        await asyncio.sleep(0.5)  # the upstream has asked by now, on a stream nobody listens to
        asked = None
        async with (httpx2.AsyncClient(timeout=10) as http,
                    http.stream("GET", later_node.url + path, headers={
                        **headers, "Authorization": f"Bearer {token}",
                        "Accept": "text/event-stream"}) as stream):
            with anyio.fail_after(5):
                async for line in stream.aiter_lines():
                    if line.startswith("data:"):
                        asked = orjson.loads(line[5:])
                        break
        assert asked["method"] == "elicitation/create"
        assert asked["params"]["message"] == "which way?"
        answer = await raw(later_node, path, {"jsonrpc": "2.0", "id": asked["id"], "result": {
            "action": "accept", "content": {"answer": "left"}}}, token, headers)
        assert answer.status_code == 202
        with anyio.fail_after(10):
            result = await call
        assert "accept: left" in result.text
    finally:
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
