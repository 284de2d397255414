"""What an upstream sends outside any call (2025 era: on its session's own GET stream) reaches the
client, on a server's endpoint and on the aggregate ``/mcp``: a question asked after the call
has ended gets the client's answer, and a change of the upstream's tools and resources reaches the
client namespaced on ``/mcp``, whose next listing shows the new tool."""
from __future__ import annotations

import asyncio

import pytest
import yaml
from mcp.types import (
    ElicitResult,
    ResourceUpdatedNotification,
    ToolListChangedNotification,
)

from tests.support.e2e import connect, running_upstream, start_node, text_of, write_test_registry

pytestmark = pytest.mark.e2e
LATER_TOOLS = ("ask_later", "answers", "grow", "grown")


def with_later_tools(root, jwks: str, upstream: str):
    write_test_registry(root, jwks, upstream)
    manifest = root / "registry" / "tools.yaml"
    spec = yaml.safe_load(manifest.read_text())
    spec["tools"].update({name: {"access": "read"} for name in LATER_TOOLS})
    manifest.write_text(yaml.safe_dump(spec))
    return root


@pytest.fixture
async def own_upstream():
    """An upstream of the test's own: ``grow`` changes it for good."""
    with running_upstream() as url:
        yield url


@pytest.fixture
async def later_node(tmp_path, aiohttp_server, signing_key, own_upstream):
    return await start_node(tmp_path, aiohttp_server, signing_key,
                            lambda root, jwks: with_later_tools(root, jwks, own_upstream))


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
